"""Finer progress from the toolkit's own tqdm bars ("I Quantizating :  50%|...") tailed from the job's raw log."""

from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

BAR_RE = re.compile(r"I (?P<label>[A-Za-z][A-Za-z0-9 ]*?)\s*:\s+(?P<pct>\d{1,3})%\|")


@dataclass(frozen=True)
class ToolkitPhases:
    """Where each of the toolkit's bars (and plain marker lines) sits within one toolkit call, as 0..1 spans."""
    bars: dict[str, tuple[float, float]]
    markers: dict[str, float] = field(default_factory=dict)

    def fraction(self, fragment: str) -> float | None:
        m = BAR_RE.search(fragment)
        if m and m["label"] in self.bars:
            lo, hi = self.bars[m["label"]]
            return lo + (hi - lo) * min(100, int(m["pct"])) / 100
        for marker, value in self.markers.items():
            if marker in fragment:
                return value
        return None


# Measured on rknn-toolkit2 2.5.0: load_* draws "Loading"; build draws three "OpFusing" bars, then (int8 only)
# "GraphPreparing" and "Quantizating", then prints "rknn building ..." and compiles natively without a bar.
LOAD_PHASES = ToolkitPhases({"Loading": (0.0, 1.0)})
BUILD_PHASES_FP16 = ToolkitPhases({"OpFusing 0": (0.0, 0.15), "OpFusing 1": (0.15, 0.25), "OpFusing 2": (0.25, 0.35)},
                                  {"rknn building ...": 0.4, "rknn building done": 1.0})
BUILD_PHASES_INT8 = ToolkitPhases({"OpFusing 0": (0.0, 0.1), "OpFusing 1": (0.1, 0.15), "OpFusing 2": (0.15, 0.2),
                                   "GraphPreparing": (0.2, 0.3), "Quantizating": (0.3, 0.7)},
                                  {"rknn building ...": 0.75, "rknn building done": 1.0})


@dataclass
class RawLogTail:
    """Reads what the toolkit appended to the raw log since `offset`; keeps an unfinished fragment for later."""
    path: Path
    offset: int = 0
    rest: str = ""

    def fragments(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(1 << 20)
        except OSError:
            return []
        self.offset += len(data)
        parts = re.split(r"[\r\n]", self.rest + data.decode("utf-8", errors="replace"))
        self.rest = parts.pop()
        return parts + [self.rest]  # a bar redraw often has no terminator yet: look at it too


@contextlib.contextmanager
def toolkit_progress(raw_log: Path, report: Callable[[float], None], start: float, end: float,
                     phases: ToolkitPhases, interval: float = 0.25) -> Iterator[None]:
    """While the block runs, report start..end (only upwards) as the toolkit's bars advance in raw_log."""
    try:
        offset = raw_log.stat().st_size
    except OSError:
        offset = 0
    tail = RawLogTail(raw_log, offset)
    done = threading.Event()
    best = 0.0

    def follow() -> None:
        nonlocal best
        while not done.wait(interval):
            for fragment in tail.fragments():
                value = phases.fraction(fragment)
                if value is not None and value > best + 0.01:
                    best = value
                    report(start + (end - start) * min(value, 0.99))

    thread = threading.Thread(target=follow, name="toolkit-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()  # no report from this thread after the block: the caller's next report follows

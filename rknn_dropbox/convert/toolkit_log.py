"""The toolkit's output in one job: fd capture into the job's raw log, its error patterns explained as sentences,
its calls wrapped (ConversionError), and finer progress from its tqdm bars ("I Quantizating :  50%|...")."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rknn_dropbox.formats.graphtraits import DATA_DEPENDENT_HINT, data_dependent_error
from rknn_dropbox.joblog import clean_log_text

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


class ConversionError(Exception):
    """A conversion that failed for a reason a person can act on."""

    def __init__(self, error: str, hint: str | None = None, crash: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint
        # failed inside the toolkit (a rule crash, an internal exception), where another version may not: the
        # job adds {"toolkit": the version that crashed, "toolkit_version"/"runtime_version": what it asked for}
        self.crash = crash


@contextlib.contextmanager
def captured_output(raw_log: Path) -> Iterator[None]:
    """Send fd 1 and 2 (Python, the toolkit's rknnLogger and its native compiler alike) to raw_log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(raw_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """The toolkit writes into cwd and release() unsets TMPDIR: contain both."""
    old_cwd = os.getcwd()
    old_tmp = os.environ.get("TMPDIR")
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp


_ERROR_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[str, str | None]]]] = [
    (re.compile(r"Not support '(\w+)' of opset-(\d+)"),
     lambda m: (f"the toolkit does not support operator {m[1]} at opset {m[2]}",
                "re-export the model with a newer opset (e.g. torch.onnx.export(..., opset_version=13)), "
                "or export it in eval mode so that training-only operators disappear")),
    (re.compile(r"operators are not implemented: \[([^\]]*)\]"),
     lambda m: (f"the toolkit cannot convert this TorchScript model: {m[1]} not implemented (a torch.jit.script "
                "model?)", "trace the model instead: torch.jit.trace(model, example).save('model.pt')")),
    (re.compile(r"[Nn]ot support (?:the )?op(?:erator)?[ :]+'?(\w+)'?"),
     lambda m: (f"the toolkit does not support operator {m[1]}", "replace the operator or use a custom op")),
    # data-dependent shapes the graph check did not see (e.g. a TFLite/TorchScript model): the toolkit's own words
    (re.compile(r"input 0 of (\w+)\('([^']*)'\) need to be constant|It will cause the graph to be a dynamic graph"),
     lambda m: data_dependent_error([f"{m[1]} '{m[2]}'"] if m[1] else [])),
    (re.compile(r"Reshape[^\n]*Input shape:\{[\d,]+\}, requested shape:\{[\d,]+\}"),
     lambda m: (data_dependent_error([])[0], DATA_DEPENDENT_HINT)),
    (re.compile(r"MemoryError|std::bad_alloc|Cannot allocate memory|Unable to allocate \d"),
     lambda m: ("the toolkit ran out of memory", "large inputs (e.g. 512x512 segmentation) need several GB for one "
                "build: export at a smaller input size, run fewer workers, or give the machine (or "
                "worker_memory_limit_mb) more memory")),
    (re.compile(r"input_size_list"),
     lambda m: ("the toolkit needs input_size_list for this model",
                "add `input_size_list: [[1, 3, 224, 224]]` (one shape per input) to the sidecar")),
]


def explain_toolkit_error(message: str) -> tuple[str, str | None]:
    """Turn a toolkit exception or log line into one sentence a person understands."""
    for pattern, make in _ERROR_PATTERNS:
        m = pattern.search(message)
        if m:
            return make(m)
    last = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return (last[-1] if last else "the toolkit failed without a message"), None


def last_error_lines(raw_log: Path, n: int = 3) -> str:
    try:
        text = clean_log_text(raw_log.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""
    errs = [ln[2:].strip() for ln in text.splitlines() if ln.startswith("E ") and "Traceback" not in ln]
    return "; ".join(dict.fromkeys(errs[-n:]))


def _explain_exception(exc: Exception, raw_log: Path) -> tuple[str, str | None]:
    error, hint = explain_toolkit_error(str(exc) or type(exc).__name__)
    if hint is None:  # the exception's last line may only be a fallback's failure: the log has the cause
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            logged = explain_toolkit_error(raw_log.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            logged = (error, None)
        if logged[1] is not None:
            return logged
    return error, hint


def toolkit_caller(raw_log: Path, what: str) -> Callable[..., None]:
    """call(step, fn, **kwargs): run one toolkit call; a raise or a non-zero return becomes a ConversionError
    that says which step failed and why (`what` names the model: "ONNX net.onnx")."""
    def call(step: str, fn: Callable[..., int], **kwargs: Any) -> None:
        try:
            offset = raw_log.stat().st_size
        except OSError:
            offset = 0
        try:
            _call(step, fn, **kwargs)
        except ConversionError as exc:
            if step != "configuring" and exc.hint is None and toolkit_crashed(log_since(raw_log, offset)):
                exc.crash = {"error": exc.error}
            raise

    def _call(step: str, fn: Callable[..., int], **kwargs: Any) -> None:
        try:
            ret = fn(**kwargs)
        except ConversionError:
            raise
        except Exception as exc:  # noqa: BLE001 - the toolkit raises anything; we explain what we can
            error, hint = _explain_exception(exc, raw_log)
            raise ConversionError(f"{step} failed: {error}", hint) from exc
        if ret != 0:
            detail = last_error_lines(raw_log) or f"return code {ret}"
            error, hint = explain_toolkit_error(detail)
            raise ConversionError(f"{step} failed ({what}): {error}", hint)
    return call


# the toolkit's own code failing, not the user's model or config: another toolkit version may well build it
INTERNAL_EXCEPTIONS = ("IndexError", "KeyError", "AttributeError", "TypeError", "AssertionError",
                       "ZeroDivisionError", "UnboundLocalError", "NameError", "RecursionError", "RuntimeError")


def toolkit_crashed(log_text: str) -> bool:
    """The toolkit's log shows a rule crash (its disable_rules advice) or an internal exception in its own code."""
    if "disable_rules=" in log_text:
        return True
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith('File "rknn/'):
            for following in lines[i + 1:]:
                if following and not following[0].isspace():
                    if following.split(":")[0].strip() in INTERNAL_EXCEPTIONS:
                        return True
                    break
    return False


def log_since(raw_log: Path, offset: int, limit: int = -1) -> str:
    """What the job's raw log got from `offset` on (at most `limit` bytes; -1: all); "" when it cannot be read."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with open(raw_log, "rb") as fh:
            fh.seek(offset)
            return fh.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""

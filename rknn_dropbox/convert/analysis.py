"""Per-layer accuracy: the toolkit's accuracy_analysis in the simulator, its report parsed into the worst layers."""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WORST_COUNT = 10
REPORT_NAME = "error_analysis.txt"
# "[Conv] name   0.99987 | 19.18947  0.99987 | 19.18947": op, tensor, entire cos | euc, single cos | euc
_ROW = re.compile(r"^\[(?P<op>[^\]]+)\]\s+(?P<name>\S+)(?:\s+(?P<ec>[-\d.naif]+)\s*\|\s*(?P<ee>[-\d.naif]+)"
                  r"\s+(?P<sc>[-\d.naif]+)\s*\|\s*(?P<se>[-\d.naif]+))?\s*$")


@dataclass
class LayerError:
    """One row of error_analysis.txt: a layer whose output tensor the simulator compared with fp32."""
    name: str
    op: str
    cosine: float | None          # entire: the error accumulated up to this layer
    single_cosine: float | None   # single: this layer alone, fed the golden inputs
    index: int                    # the row number (the toolkit lists layers in execution order)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("index")
        return d


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def parse_report(text: str) -> list[LayerError]:
    """Every layer row of the report; a layer fused into the next one has no figures (None)."""
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line.strip())
        if m:
            rows.append(LayerError(m["name"], m["op"], _number(m["ec"]), _number(m["sc"]), len(rows)))
    return rows


def worst_layers(rows: list[LayerError], count: int = WORST_COUNT) -> list[LayerError]:
    """The layers that lose most by themselves (single-layer cosine), then by accumulated cosine."""
    measured = [r for r in rows if r.single_cosine is not None and r.op not in ("Input", "exDataConvert")]
    return sorted(measured, key=lambda r: (r.single_cosine, r.cosine if r.cosine is not None else 1.0))[:count]


def hybrid_range(rows: list[LayerError], layer: LayerError) -> list[str] | None:
    """A custom_hybrid [start, end] that keeps `layer` and the producer of its input out of int8.

    The toolkit keeps in float the layers after `start` up to `end`; a layer's single-layer error comes
    from its int8 input, so the range starts two measured rows back (past the fused group producing it)."""
    measured_before = [r for r in rows[:layer.index] if r.cosine is not None]
    if not measured_before:
        return None
    start = measured_before[-2] if len(measured_before) >= 2 else measured_before[0]
    return [start.name, layer.name]


def hybrid_ranges(rows: list[LayerError], worst: list[LayerError], losing_below: float = 0.99
                  ) -> list[list[list[str]]]:
    """custom_hybrid candidates, narrow to wide: the layers that lose by themselves (single-layer cosine below
    `losing_below`, at most 3, at least the worst), then the worst 6."""
    losing = [w for w in worst if w.single_cosine is not None and w.single_cosine < losing_below][:3] or worst[:1]
    out: list[list[list[str]]] = []
    for chosen in (losing, worst[:6]):
        ranges = [r for r in (hybrid_range(rows, w) for w in chosen) if r]
        if ranges and ranges not in out:
            out.append(ranges)
    return out


def run_analysis(rknn: Any, sample_files: list[Path], scratch: Path, deliver_to: Path) -> list[LayerError]:
    """accuracy_analysis in the simulator (no board) on one sample; deliver error_analysis.txt; its rows."""
    snapshot = scratch / "accuracy_snapshot"
    shutil.rmtree(snapshot, ignore_errors=True)
    ret = rknn.accuracy_analysis(inputs=[str(f) for f in sample_files], output_dir=str(snapshot), target=None)
    report = snapshot / REPORT_NAME
    if ret not in (0, None) or not report.is_file():
        raise RuntimeError(f"accuracy_analysis returned {ret} and wrote no {REPORT_NAME}")
    deliver_to.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report, deliver_to / REPORT_NAME)
    rows = parse_report(report.read_text(encoding="utf-8", errors="replace"))
    shutil.rmtree(snapshot, ignore_errors=True)  # golden/ and simulator/ hold every tensor: large
    return rows

"""Plain tensors: the error measured against the output's own range (meaningful for 1- and 2-element outputs too),
and an output a final Concat assembles measured part by part, each part's range set against the int8 step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rknn_dropbox.convert.checks.base import CheckResult, ConcatPart, OutputInfo, stack
from rknn_dropbox.thresholds import MIN_LEVELS, threshold_for


def robust_range(values: np.ndarray) -> tuple[float, float]:
    """The 0.1th..99.9th percentile of the reference's values (a few outliers do not set the scale)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 0.0
    if v.size < 1000:
        return float(v.min()), float(v.max())
    lo, hi = np.percentile(v, [0.1, 99.9])
    return float(lo), float(hi)


def error_scale(values: np.ndarray, floor: float = 0.0) -> float:
    """What an error is measured against: the robust range, or the largest magnitude when the values barely vary
    (a 1-element logit that reads 3.1, 2.9, 3.3 over the samples), or the floor when it is larger (the 0..1 of a
    probability whose samples all read near 0)."""
    lo, hi = robust_range(values)
    finite = values[np.isfinite(values)]
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    return max(hi - lo, peak, floor, 1e-6)


@dataclass(frozen=True)
class ErrorStats:
    max_rel: float
    mean_rel: float
    snr_db: float
    lo: float
    hi: float

    def to_json(self) -> dict[str, Any]:
        return {"max_rel": _r(self.max_rel), "mean_rel": _r(self.mean_rel), "snr_db": _r(self.snr_db, 2),
                "range": [_r(self.lo), _r(self.hi)]}


def _r(v: float, digits: int = 6) -> float | None:
    return round(float(v), digits) if np.isfinite(v) else None


def error_stats(want: np.ndarray, got: np.ndarray, floor: float = 0.0) -> ErrorStats:
    """Errors of got against want (all samples stacked), relative to want's own scale (at least floor); NaN/inf
    count as total."""
    want = want.astype(np.float64)
    got = got.astype(np.float64)
    scale = error_scale(want, floor)
    diff = np.abs(got - want)
    diff[~np.isfinite(diff)] = scale * 1e3
    noise = float(np.sum(diff ** 2))
    signal = float(np.sum(want[np.isfinite(want)] ** 2))
    snr = 10 * np.log10(signal / noise) if noise > 0 and signal > 0 else (float("inf") if noise == 0 else 0.0)
    lo, hi = robust_range(want)
    return ErrorStats(float(diff.max() / scale), float(diff.mean() / scale), float(snr), lo, hi)


def part_slice(a: np.ndarray, part: ConcatPart) -> np.ndarray:
    index = [slice(None)] * a.ndim
    axis = part.axis if part.axis >= 0 else a.ndim + part.axis
    index[axis] = slice(part.start, part.stop)
    return a[tuple(index)]


def part_rows(part: ConcatPart) -> str:
    return f"rows {part.start}–{part.stop - 1}" if part.stop - part.start > 1 else f"row {part.start}"


def _fmt(v: float) -> str:
    return f"{v:.2g}" if abs(v) < 10 else f"{v:.0f}"


def measure_part(want: np.ndarray, got: np.ndarray, part: ConcatPart, step: float | None, limit: float
                 ) -> dict[str, Any]:
    """One Concat part of samples stacked in front (want, got: [S, *shape]): its range, the int8 step over it, its
    range-relative error; a sentence when it is lost."""
    w, g = part_slice(want, batched_part(part)), part_slice(got, batched_part(part))
    stats = error_stats(w, g)
    finite = w[np.isfinite(w)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    stats = ErrorStats(stats.max_rel, stats.mean_rel, stats.snr_db, lo, hi)   # a part's span: its full range
    span = hi - lo
    out: dict[str, Any] = {"axis": part.axis, "start": part.start, "stop": part.stop,
                           "range": [_r(stats.lo), _r(stats.hi)], "max_rel": _r(stats.max_rel),
                           "mean_rel": _r(stats.mean_rel)}
    lost = step is not None and span > 0 and span / step < MIN_LEVELS
    if step is not None:
        out["step"] = _r(step)
    out["passed"] = not lost and stats.mean_rel <= limit
    if lost:
        out["summary"] = (f"{part_rows(part)} span {_fmt(stats.lo)}–{_fmt(stats.hi)} but the int8 step is "
                          f"{step:.3g}: {span / step:.1f} steps for the whole range")
    elif not out["passed"]:
        out["summary"] = f"{part_rows(part)}: mean error {stats.mean_rel:.1%} of their range {_fmt(stats.lo)}–" \
                         f"{_fmt(stats.hi)}"
    else:
        out["summary"] = f"{part_rows(part)}: mean error {stats.mean_rel:.2%} of their range"
    return out


@dataclass
class TensorCheck:
    """Any output without a task of its own: the range-relative mean error, per Concat part where there are parts."""
    outputs: list[int]
    kind: str = "tensor"
    floor: float = 0.0   # the smallest range an error is measured against (1.0: a probability's 0..1)

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        i = self.outputs[0]
        info = infos[i]
        want, got = stack(refs, i), stack(sims, i)
        limit = threshold_for("relative_error", quantized, thresholds)
        stats = error_stats(want, got, self.floor)
        details: dict[str, Any] = {"error": stats.to_json()}
        worst = stats.mean_rel
        what = "its 0–1 range" if self.floor >= 1.0 and error_scale(want) < self.floor else "the output's range"
        summary = f"mean error {stats.mean_rel:.2%} of {what} (max {stats.max_rel:.1%})"
        passed = stats.mean_rel <= limit
        if info.parts:
            parts = [measure_part(want, got, p, info.step, limit) for p in info.parts]
            details["parts"] = parts
            failing = [p for p in parts if not p["passed"]]
            worst = max([worst] + [p["mean_rel"] or 0.0 for p in parts])
            if failing:
                passed, summary = False, failing[0]["summary"]
        return CheckResult(self.kind, [info.name], "relative_error", worst if passed else max(worst, limit * 1.0001),
                           limit, passed, summary, details)


def batched_part(part: ConcatPart) -> ConcatPart:
    """The same part on samples stacked in front (one more leading axis)."""
    return ConcatPart(part.axis + 1 if part.axis >= 0 else part.axis, part.start, part.stop)

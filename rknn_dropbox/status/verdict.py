"""What a target's task checks say (issue 17), as the pages show it: the verdict, each check, each output's parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUS_CSS = {"passed": "ok", "below_threshold": "bad", "warning": "warn"}
SYNTHETIC_WORDS = "synthetic samples"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def _span(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list) and len(value) == 2:
        lo, hi = _number(value[0]), _number(value[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


@dataclass
class CheckView:
    """One task check of a target: the kind of output it recognised, the metric, its value against the threshold."""
    kind: str
    outputs: list[str]
    metric: str | None
    value: float | None
    threshold: float | None
    passed: bool | None
    summary: str | None


@dataclass
class PartView:
    """One slice of an output along its final Concat's axis, its reference range against the quantization step."""
    output: str
    axis: int | None
    start: int | None
    stop: int | None
    span: tuple[float, float] | None
    step: float | None
    mean_rel: float | None
    max_rel: float | None
    passed: bool | None
    summary: str | None

    @property
    def rows(self) -> str:
        if self.start is None or self.stop is None:
            return "–"
        return f"axis {self.axis if self.axis is not None else '?'}: {self.start}–{self.stop - 1}"


@dataclass
class OutputError:
    """An output's error measured against its reference's own range (meaningful for 1- and 2-element outputs)."""
    output: str
    max_rel: float | None
    mean_rel: float | None
    snr_db: float | None
    span: tuple[float, float] | None


@dataclass
class Verdict:
    """A target's verdict: status, the deciding check's metric and sentence, whether the samples were synthetic."""
    status: str | None
    passed: bool | None
    metric: str | None
    summary: str | None
    decided_by: str | None
    synthetic: bool
    checks: list[CheckView] = field(default_factory=list)
    parts: list[PartView] = field(default_factory=list)
    errors: list[OutputError] = field(default_factory=list)

    @property
    def css(self) -> str:
        """ok (green) / bad (red) / warn (amber: fell short on synthetic samples) / none (grey: could not run)."""
        if self.status in STATUS_CSS:
            return STATUS_CSS[self.status]
        if self.status in ("error", "skipped"):
            return "none"
        return {True: "ok", False: "warn" if self.synthetic else "bad"}.get(self.passed, "none")

    @property
    def failed_parts(self) -> list[PartView]:
        return [p for p in self.parts if p.passed is False]

    @property
    def label(self) -> str:
        """The chip's words: the deciding sentence, and "synthetic samples" when they were."""
        text = self.summary or next((c.summary for c in self.checks if c.summary), None) or self.status or "–"
        return f"{text} ({SYNTHETIC_WORDS})" if self.synthetic else text

    @property
    def detail(self) -> str:
        """A tooltip: the metric that decided, its value against the threshold, the parts that lost the output."""
        decider = next((c for c in self.checks if c.metric == self.metric), None)
        words = [f"decided by {self.metric}" if self.metric else ""]
        if decider and decider.value is not None and decider.threshold is not None:
            words.append(f"{decider.value:.4g} vs threshold {decider.threshold:.4g}")
        words += [p.summary for p in self.failed_parts if p.summary]
        if self.synthetic:
            words.append("verified on synthetic samples (no real samples were given): a shortfall is a warning")
        return "; ".join(w for w in words if w)


def _check(raw: dict[str, Any]) -> CheckView:
    outputs = raw.get("outputs") if isinstance(raw.get("outputs"), list) else []
    return CheckView(_text(raw.get("kind")) or "tensor", [str(o) for o in outputs], _text(raw.get("metric")),
                     _number(raw.get("value")), _number(raw.get("threshold")), _flag(raw.get("passed")),
                     _text(raw.get("summary")))


def _parts(output: dict[str, Any]) -> list[PartView]:
    name = str(output.get("name", "output"))
    parts = output.get("parts") if isinstance(output.get("parts"), list) else []
    return [PartView(name, _int(p.get("axis")), _int(p.get("start")), _int(p.get("stop")), _span(p.get("range")),
                     _number(p.get("step")), _number(p.get("mean_rel")), _number(p.get("max_rel")),
                     _flag(p.get("passed")),
                     _text(p.get("summary"))) for p in parts if isinstance(p, dict)]


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _error(output: dict[str, Any]) -> OutputError | None:
    raw = output.get("error")
    if not isinstance(raw, dict):
        return None
    return OutputError(str(output.get("name", "output")), _number(raw.get("max_rel")), _number(raw.get("mean_rel")),
                       _number(raw.get("snr_db")), _span(raw.get("range")))


def parse_verdict(raw: dict[str, Any]) -> Verdict | None:
    """The verdict of one `verification.<platform>` block; None for a result.json from before the task checks."""
    verdict = raw.get("verdict") if isinstance(raw.get("verdict"), dict) else None
    checks = [_check(c) for c in raw.get("checks") or [] if isinstance(c, dict)] \
        if isinstance(raw.get("checks"), list) else []
    if verdict is None and not checks:
        return None
    verdict = verdict or {}
    outputs = [o for o in raw.get("outputs") or [] if isinstance(o, dict)] if isinstance(raw.get("outputs"), list) \
        else []
    return Verdict(_text(raw.get("status")), _flag(verdict.get("passed")), _text(verdict.get("metric")),
                   _text(verdict.get("summary")), _text(verdict.get("decided_by")),
                   raw.get("synthetic") is True or verdict.get("synthetic") is True,
                   checks, [p for o in outputs for p in _parts(o)],
                   [err for err in map(_error, outputs) if err is not None])

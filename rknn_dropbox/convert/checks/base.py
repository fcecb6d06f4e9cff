"""The checks' shared vocabulary: what an output is (OutputInfo), one check's result, the thresholds, alignment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from rknn_dropbox.thresholds import LOWER_IS_BETTER, threshold_for


@dataclass(frozen=True)
class ConcatPart:
    """One input of the Concat that makes an output: a slice [start, stop) along `axis`."""
    axis: int
    start: int
    stop: int


@dataclass(frozen=True)
class OutputInfo:
    """What the graph says about one output: its shape, the op that makes it, the activation it ends in, the Concat
    parts it is assembled from, and (after a build) the int8 step of the delivered .rknn's output."""
    name: str
    shape: list[int]
    producer: str | None = None            # Concat, Softmax, Sigmoid, Conv, ... (through Identity/Reshape)
    activation: str | None = None          # Softmax, Sigmoid, LogSoftmax or None
    parts: list[ConcatPart] = field(default_factory=list)
    step: float | None = None              # the .rknn output's int8 scale (None: float output)

    def with_step(self, step: float | None) -> "OutputInfo":
        return OutputInfo(self.name, self.shape, self.producer, self.activation, self.parts, step)


@dataclass
class CheckResult:
    """One check's measurement and verdict, as result.json lists it under verification.<platform>.checks."""
    kind: str
    outputs: list[str]
    metric: str
    value: float
    threshold: float
    passed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """How far above its threshold (1.0: exactly on it; below 1: failing); comparable across metrics."""
        if self.metric in LOWER_IS_BETTER:
            return float(self.threshold / max(self.value, 1e-9))
        return float(self.value / max(self.threshold, 1e-9))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "outputs": self.outputs, "metric": self.metric, "value": _round(self.value),
                "threshold": self.threshold, "passed": self.passed, "summary": self.summary,
                "details": self.details}


@dataclass
class Verdict:
    """A target's verdict: every check's result, the one that decided, and whether the samples were real."""
    checks: list[CheckResult]
    synthetic: bool

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def deciding(self) -> CheckResult | None:
        return min(self.checks, key=lambda c: (c.passed, c.margin)) if self.checks else None

    @property
    def score(self) -> float:
        """The deciding check's margin (the repair search compares attempts by it)."""
        d = self.deciding
        return d.margin if d is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        d = self.deciding
        return {"passed": self.passed, "metric": d.metric if d else None, "summary": d.summary if d else "",
                "decided_by": d.kind if d else None, "synthetic": self.synthetic}


class Check(Protocol):
    """One kind of output: recognised from OutputInfo, measured over samples, judged in words."""
    kind: str
    outputs: list[int]                     # indices into the model's outputs

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult: ...


def stack(samples: list[list[np.ndarray]], index: int) -> np.ndarray:
    """One output over the samples, stacked in front: [S, *shape]."""
    return np.stack([np.asarray(s[index], dtype=np.float32) for s in samples])


@dataclass
class SingleOutputCheck:
    """A check of one output by one metric (higher is better): measure() stacks both runtimes' samples of it, and
    the kind's judge() says the value, the summary and the details."""
    outputs: list[int]
    kind: str = "single_output"
    metric: ClassVar[str] = ""

    def judge(self, want: np.ndarray, got: np.ndarray, info: OutputInfo) -> tuple[float, str, dict[str, Any]]:
        raise NotImplementedError

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        i = self.outputs[0]
        value, summary, details = self.judge(stack(refs, i), stack(sims, i), infos[i])
        limit = threshold_for(self.metric, quantized, thresholds)
        return CheckResult(self.kind, [infos[i].name], self.metric, value, limit, value >= limit, summary, details)


def align(got: Any, want: Any) -> np.ndarray:
    """The simulator's output in the reference's layout (it may hand back NHWC for an NCHW model, or the reverse)."""
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want)
    if got.shape == want.shape:
        return got
    if got.size == want.size and got.ndim == 4 and want.ndim == 4:
        for perm in ((0, 3, 1, 2), (0, 2, 3, 1)):
            if got.transpose(perm).shape == want.shape:
                return got.transpose(perm)
    return got.reshape(want.shape) if got.size == want.size else got


def _round(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


def fraction(n: int, total: int) -> str:
    return f"{n}/{total}"

"""What the status pages show of one job: its store record plus what its delivered result.json / error.json say."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rknn_dropbox.status.verdict import Verdict, parse_verdict
from rknn_dropbox.store import COMPLETED, JobRecord


@dataclass
class OutputCheck:
    """One model output's verification: the lowest cosine over the samples, and each sample's."""
    name: str
    cosine: float | None
    samples: list[float] = field(default_factory=list)
    shape: list[int] | None = None


@dataclass
class TargetView:
    """One target platform of a job: its build and its verification."""
    platform: str
    built: bool | None = None
    file: str | None = None
    size: int | None = None
    sha256: str | None = None
    error: str | None = None
    check_status: str | None = None  # passed | below_threshold | warning | skipped | error | None (not verified)
    threshold: float | None = None
    reference: str | None = None
    inputs_used: list[str] = field(default_factory=list)
    reason: str | None = None
    outputs: list[OutputCheck] = field(default_factory=list)
    accuracy: dict[str, Any] = field(default_factory=dict)  # {attempts, worst_layers, delivered} when repaired
    rknn: dict[str, Any] = field(default_factory=dict)  # what the .rknn says about itself (toolkit, tensors)
    build_settings: dict[str, Any] = field(default_factory=dict)  # how a repaired build differs from the options
    verdict: Verdict | None = None  # the task checks' verdict; None in a result.json from before them (cosine only)

    @property
    def min_cosine(self) -> float | None:
        values = [o.cosine for o in self.outputs if o.cosine is not None]
        return min(values) if values else None

    @property
    def below_threshold(self) -> bool:
        low = self.min_cosine
        return self.check_status == "below_threshold" or (
            low is not None and self.threshold is not None and low < self.threshold)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_output(raw: dict[str, Any]) -> OutputCheck:
    """One row of verification.outputs: {name, shape, cosine (the lowest), cosines (one per sample)}."""
    samples = [v for v in map(_number, raw.get("cosines") or []) if v is not None] \
        if isinstance(raw.get("cosines"), list) else []
    low = _number(raw.get("cosine"))
    if low is None and samples:
        low = min(samples)
    shape = raw.get("shape") if isinstance(raw.get("shape"), list) else None
    return OutputCheck(str(raw.get("name", "output")), low, samples, shape)


def _apply_verification(target: TargetView, raw: dict[str, Any]) -> None:
    """verification.<platform>: {status, reference, reason, input, samples {source, names}, min_cosine, outputs}."""
    target.check_status = str(raw.get("status")) if raw.get("status") is not None else None
    target.threshold = _number(raw.get("min_cosine"))
    target.reference = raw.get("reference")
    target.reason = raw.get("reason")
    samples = raw.get("samples") if isinstance(raw.get("samples"), dict) else {}
    names = samples.get("names") if isinstance(samples.get("names"), list) else []
    described = raw.get("input") or samples.get("source")
    target.inputs_used = [str(n) for n in names] or ([str(described)] if described else [])
    target.outputs = [parse_output(o) for o in raw.get("outputs") or [] if isinstance(o, dict)]
    target.verdict = parse_verdict(raw)


def accuracy_by_target(doc: dict[str, Any], platforms: list[str]) -> dict[str, dict[str, Any]]:
    """result.json's `accuracy` block of each platform (written per target)."""
    acc = doc.get("accuracy")
    if not isinstance(acc, dict):
        return {}
    return {p: acc[p] for p in platforms if isinstance(acc.get(p), dict)}


def was_repaired(block: dict[str, Any]) -> bool:
    """True when accuracy repair delivered another attempt than the first build (`delivered`: its index)."""
    delivered = block.get("delivered")
    return isinstance(delivered, int) and not isinstance(delivered, bool) and delivered != 0


@dataclass
class JobView:
    """A job as the pages show it; `doc` is its result.json (completed) or error.json (failed), else {}."""
    record: JobRecord
    doc: dict[str, Any] = field(default_factory=dict)

    @property
    def folder_name(self) -> str | None:
        return Path(self.record.output_dir).name if self.record.output_dir else None

    @property
    def platforms(self) -> list[str]:
        listed = self.doc.get("target_platform")
        if isinstance(listed, list) and listed:
            return [str(p) for p in listed]
        return [p for p in (self.record.target or "").split(",") if p]

    @property
    def targets(self) -> list[TargetView]:
        built = {t.get("platform"): t for t in self.doc.get("targets") or [] if isinstance(t, dict)}
        checks = self.doc.get("verification") if isinstance(self.doc.get("verification"), dict) else {}
        accuracy = accuracy_by_target(self.doc, self.platforms)
        views = []
        for platform in self.platforms:
            t = built.get(platform, {})
            view = TargetView(platform, t.get("ok") if t else None, t.get("file"), t.get("size"), t.get("sha256"),
                              t.get("error"), accuracy=accuracy.get(platform, {}),
                              rknn=t.get("rknn") if isinstance(t.get("rknn"), dict) else {},
                              build_settings=t.get("build_settings") if isinstance(t.get("build_settings"), dict)
                              else {})
            if isinstance(checks.get(platform), dict):
                _apply_verification(view, checks[platform])
            views.append(view)
        return views

    @property
    def verdicts(self) -> dict[str, dict[str, Any]]:
        """Each verified target's verdict for the task JSON: status, metric, summary, synthetic; {} before them."""
        return {t.platform: {"status": t.check_status, "passed": t.verdict.passed, "metric": t.verdict.metric,
                             "summary": t.verdict.summary, "synthetic": t.verdict.synthetic}
                for t in self.targets if t.verdict is not None}

    @property
    def quantization(self) -> dict[str, Any]:
        q = self.doc.get("quantization")
        return q if isinstance(q, dict) else {}

    @property
    def precision(self) -> str:
        """int8 / fp16 / prequantized (a QDQ model built as is) / the dtype of other quantizations; "" if unknown."""
        quantized = self.doc.get("quantized", self.quantization.get("quantized"))
        if quantized is None:
            return ""
        dtype = str(self.quantization.get("dtype") or ("int8" if quantized else "float16"))
        if not quantized:
            return "prequantized" if dtype == "prequantized" else "fp16"
        return "int8" if dtype == "w8a8" else dtype

    @property
    def repaired(self) -> bool:
        return any(was_repaired(block) for block in accuracy_by_target(self.doc, self.platforms).values())

    @property
    def warnings(self) -> list[str]:
        listed = self.doc.get("warnings")
        return [str(w) for w in listed] if isinstance(listed, list) else list(self.record.warnings)

    @property
    def outputs_layout(self) -> dict[str, Any]:
        """A YOLO head's delivered output layout (result.json `outputs_layout`), or {}."""
        layout = self.doc.get("outputs_layout")
        return layout if isinstance(layout, dict) else {}

    @property
    def output_size(self) -> int | None:
        sizes = [o.get("size") for o in self.doc.get("outputs") or [] if isinstance(o, dict)]
        sizes = [s for s in sizes if isinstance(s, int)]
        return sum(sizes) if sizes else None

    @property
    def toolkit_version(self) -> str:
        version = self.doc.get("toolkit_version")
        for target in self.doc.get("targets") or []:
            rknn = target.get("rknn") if isinstance(target, dict) else None
            if not version and isinstance(rknn, dict):
                version = rknn.get("toolkit_version")
        return str(version) if version else ""

    @property
    def error(self) -> str | None:
        return self.doc.get("error") or self.record.error

    @property
    def hint(self) -> str | None:
        return self.doc.get("hint") or self.record.hint

    @property
    def downloadable(self) -> bool:
        return self.record.status == COMPLETED and bool(self.record.outputs)

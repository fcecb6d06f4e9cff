"""Accuracy repair: when a build verifies below the threshold, search the toolkit's own remedies within a budget."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rknn_dropbox.platforms import DTYPE_PLATFORMS, NO_FP16_PLATFORMS

MIN_BUDGET_SECONDS = 60.0
BUDGET_FACTOR = 3.0
MMSE_COST_FACTOR = 25.0      # measured: mmse builds 20-25x slower than normal (mobilenet_v2, rk3588)
HYBRID_COST_FACTOR = 2.5     # hybrid step1 + step2: measured 1.5x (a small net) to 2.65x (lraspp) a build
OUT_OF_FP16 = "out of the float16"


@dataclass(frozen=True)
class Candidate:
    """One way to build the target: config() overrides plus build()'s auto_hybrid or a custom hybrid."""
    label: str
    config: dict[str, Any] = field(default_factory=dict)
    quantize: bool = True
    auto_hybrid: bool = False
    custom_hybrid: tuple[tuple[str, str], ...] = ()
    cost_factor: float = 1.0     # expected build time as a multiple of the first build

    def settings(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.config)
        d["do_quantization"] = self.quantize
        if self.auto_hybrid:
            d["auto_hybrid"] = True
        if self.custom_hybrid:
            d["custom_hybrid"] = [list(r) for r in self.custom_hybrid]
        return d


@dataclass
class Attempt:
    """A candidate built and verified (or refused): what result.json lists under accuracy.attempts."""
    candidate: Candidate
    min_cosine: float | None = None             # the lowest cosine over outputs and samples
    cosines: dict[str, float] = field(default_factory=dict)  # output -> its lowest cosine over the samples
    build_seconds: float = 0.0
    passed: bool = False
    error: str | None = None
    artifact: Any = None                        # whatever the builder needs to deliver it (a file path)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"label": self.candidate.label, "settings": self.candidate.settings(),
                             "build_seconds": round(self.build_seconds, 2), "passed": self.passed}
        if self.min_cosine is not None:
            d["min_cosine"] = round(self.min_cosine, 6)
            d["cosines"] = {k: round(v, 6) for k, v in self.cosines.items()}
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class RepairOutcome:
    attempts: list[Attempt]
    delivered: int                              # index into attempts
    passed: bool
    skipped: list[str] = field(default_factory=list)  # candidates left out, with why (budget, platform)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"attempts": [a.to_json() for a in self.attempts], "delivered": self.delivered,
                             "delivered_label": self.attempts[self.delivered].candidate.label,
                             "passed": self.passed}
        if self.skipped:
            d["not_tried"] = self.skipped
        return d


BuildFn = Callable[[Candidate], Attempt]


def budget_seconds(configured: float | None, first_build_seconds: float) -> float:
    """repair_budget_seconds, or 3x the first build and at least 60 s."""
    if configured is not None:
        return float(configured)
    return max(MIN_BUDGET_SECONDS, BUDGET_FACTOR * first_build_seconds)


def higher_precision_dtype(platform: str) -> str | None:
    """The dtype with 16-bit activations the platform can build, if any."""
    for dtype in ("w8a16", "w16a16i_dfp"):
        if platform in DTYPE_PLATFORMS.get(dtype, frozenset()):
            return dtype
    return None


def int8_candidates(platform: str, algorithm: str, method: str, hybrid_ranges: list[list[list[str]]]
                    ) -> list[Candidate]:
    """The remedies in the order tried: the layers that lose kept out of int8 (the rest stays fast on the NPU),
    then the most reliable one (16-bit activations) while the budget is fresh, then the toolkit's other knobs."""
    out: list[Candidate] = []
    if hybrid_ranges:
        out.append(Candidate(f"custom_hybrid worst {_layers(hybrid_ranges[0])}",
                             custom_hybrid=_pairs(hybrid_ranges[0]), cost_factor=HYBRID_COST_FACTOR))
    dtype = higher_precision_dtype(platform)
    if dtype:
        out.append(Candidate(dtype, {"quantized_dtype": dtype}))
    out.append(Candidate("auto_hybrid", auto_hybrid=True, cost_factor=1.5))
    if algorithm != "kl_divergence":
        out.append(Candidate("kl_divergence", {"quantized_algorithm": "kl_divergence"}))
    for ranges in hybrid_ranges[1:]:
        out.append(Candidate(f"custom_hybrid worst {_layers(ranges)}", custom_hybrid=_pairs(ranges),
                             cost_factor=HYBRID_COST_FACTOR))
    other_method = "channel" if method != "channel" else "layer"
    out.append(Candidate(f"quantized_method {other_method}", {"quantized_method": other_method}))
    if algorithm != "mmse":
        out.append(Candidate("mmse", {"quantized_algorithm": "mmse"}, cost_factor=MMSE_COST_FACTOR))
    return out


def _layers(ranges: list[list[str]]) -> str:
    return "layer" if len(ranges) == 1 else f"{len(ranges)} layers"


def fp16_candidates() -> list[Candidate]:
    """An fp16 build whose tensors overflow float16: auto_hybrid moves such layers to int16."""
    return [Candidate("auto_hybrid (fp16 overflow to int16)", quantize=False, auto_hybrid=True)]


def fp16_fallback(platform: str) -> Candidate | None:
    return None if platform in NO_FP16_PLATFORMS else Candidate("fp16 fallback", quantize=False)


def _pairs(ranges: list[list[str]]) -> tuple[tuple[str, str], ...]:
    return tuple((a, b) for a, b in ranges)


def _best(attempts: list[Attempt]) -> int:
    scored = [(a.min_cosine if a.min_cosine is not None else -2.0, -i) for i, a in enumerate(attempts)]
    return -max(scored)[1]


def search(first: Attempt, candidates: list[Candidate], build: BuildFn, budget: float,
           fallback: Candidate | None = None) -> RepairOutcome:
    """Try candidates in order until one passes or the budget is spent; the best one is delivered.

    `first` is the build that fell short. A candidate whose expected time (cost_factor x the first build)
    does not fit the time left is not tried. `fallback` (fp16) is built when nothing passes and is delivered
    if it verifies."""
    attempts = [first]
    skipped: list[str] = []
    started = time.monotonic()
    unit = max(first.build_seconds, 0.1)
    for cand in candidates:
        left = budget - (time.monotonic() - started)
        if cand.cost_factor * unit > left:
            skipped.append(f"{cand.label}: expected {cand.cost_factor * unit:.0f} s, {max(left, 0):.0f} s left "
                           "of repair_budget_seconds")
            continue
        attempt = build(cand)
        attempts.append(attempt)
        if attempt.passed:
            return RepairOutcome(attempts, len(attempts) - 1, True, skipped)
    if fallback is not None:
        attempt = build(fallback)
        attempts.append(attempt)
        if attempt.error is None:
            return RepairOutcome(attempts, len(attempts) - 1, attempt.passed, skipped)
    return RepairOutcome(attempts, _best(attempts), False, skipped)


def delivered_dtype(settings: dict[str, Any], configured: str) -> str:
    """The precision a repaired build was delivered at, from its build settings."""
    if not settings.get("do_quantization", True):
        return "float16 (int16 where auto_hybrid moved layers)" if settings.get("auto_hybrid") else "float16"
    dtype = settings.get("quantized_dtype", configured)
    if settings.get("custom_hybrid") or settings.get("auto_hybrid"):
        return f"{dtype} hybrid (some layers in float16)"
    return dtype


def delivered_quantization(configured: dict[str, Any], targets: list[dict[str, Any]]) -> dict[str, Any]:
    """result.json's quantization after repair: what was delivered (per target when they differ), and what the
    options asked for as `configured_dtype`."""
    delivered = {t["platform"]: delivered_dtype(t["build_settings"], configured["dtype"])
                 for t in targets if t.get("ok") and t.get("build_settings")}
    if not delivered:
        return configured
    dtypes = {t["platform"]: delivered.get(t["platform"], configured["dtype"]) for t in targets if t.get("ok")}
    out = {**configured, "configured_dtype": configured["dtype"], "repaired": sorted(delivered)}
    if len(set(dtypes.values())) == 1:
        out["dtype"] = next(iter(dtypes.values()))
    else:
        out["dtype"], out["per_target"] = "mixed", dtypes
    out["quantized"] = any(not d.startswith("float16") for d in dtypes.values())
    return out

"""Accuracy repair: when a build fails its task check, search the toolkit's own remedies within a budget, cheapest
for the NPU first (hybrid int8, other quantization algorithms and methods, 16-bit dtypes last)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from rknn_dropbox.platforms import DTYPE_PLATFORMS, NO_FP16_PLATFORMS

MIN_BUDGET_SECONDS = 60.0
BUDGET_FACTOR = 3.0
MMSE_COST_FACTOR = 25.0      # measured: mmse builds 20-25x slower than normal (mobilenet_v2, rk3588)
HYBRID_COST_FACTOR = 2.5     # hybrid step1 + step2: measured 1.5x (a small net) to 2.65x (lraspp) a build
OUT_OF_FP16 = "out of the float16"
CLEARLY_BETTER = 0.05        # a failing candidate replaces the first build only when its verdict margin is this much
#                              higher (fcn_resnet50: a hybrid at 0.6742 against 0.6736 is no reason to ship it)


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
    score: float | None = None                  # the verdict's margin over its threshold (>= 1: passed)
    summary: str = ""                           # the verdict in words ("top-1 agrees 4/4")
    size: int | None = None                     # the .rknn's bytes

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"label": self.candidate.label, "settings": self.candidate.settings(),
                             "build_seconds": round(self.build_seconds, 2), "passed": self.passed}
        if self.summary:
            d["verdict"] = self.summary
        if self.score is not None:
            d["score"] = round(self.score, 4)
        if self.size is not None:
            d["size"] = self.size
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
    reason: str = ""                                  # why the delivered attempt won

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"attempts": [a.to_json() for a in self.attempts], "delivered": self.delivered,
                             "delivered_label": self.attempts[self.delivered].candidate.label,
                             "passed": self.passed, "delivered_because": self.reason}
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
    """The remedies in the order tried, cheapest for the NPU first: the layers that lose kept out of int8 (the set
    growing as the per-layer report ranks them; the rest stays int8), the toolkit's own hybrid, the other
    quantization algorithms and method, and 16-bit activations last (bigger and slower on the NPU)."""
    out: list[Candidate] = [Candidate(f"custom_hybrid worst {_layers(r)}", custom_hybrid=_pairs(r),
                                      cost_factor=HYBRID_COST_FACTOR) for r in hybrid_ranges]
    out.append(Candidate("auto_hybrid", auto_hybrid=True, cost_factor=1.5))
    if algorithm != "kl_divergence":
        out.append(Candidate("kl_divergence", {"quantized_algorithm": "kl_divergence"}))
    other_method = "channel" if method != "channel" else "layer"
    out.append(Candidate(f"quantized_method {other_method}", {"quantized_method": other_method}))
    if algorithm != "mmse":
        out.append(Candidate("mmse", {"quantized_algorithm": "mmse"}, cost_factor=MMSE_COST_FACTOR))
    dtype = higher_precision_dtype(platform)
    if dtype:
        out.append(Candidate(dtype, {"quantized_dtype": dtype}))
    return out


def keeping_float(candidates: list[Candidate], kept: tuple[tuple[str, str], ...]) -> list[Candidate]:
    """The int8 candidates with `kept` (the ranges the first build kept in float16: a YOLO pose head's keypoint
    branch) added to their custom hybrid; auto_hybrid and 16-bit candidates decide their own precision."""
    if not kept:
        return candidates
    return [replace(c, custom_hybrid=tuple(dict.fromkeys(kept + c.custom_hybrid)))
            if c.quantize and not c.auto_hybrid and "quantized_dtype" not in c.config else c for c in candidates]


def _layers(ranges: list[list[str]]) -> str:
    return "layer" if len(ranges) == 1 else f"{len(ranges)} layers"


def fp16_candidates() -> list[Candidate]:
    """An fp16 build whose tensors overflow float16: auto_hybrid moves such layers to int16."""
    return [Candidate("auto_hybrid (fp16 overflow to int16)", quantize=False, auto_hybrid=True)]


def fp16_fallback(platform: str) -> Candidate | None:
    return None if platform in NO_FP16_PLATFORMS else Candidate("fp16 fallback", quantize=False)


def _pairs(ranges: list[list[str]]) -> tuple[tuple[str, str], ...]:
    return tuple((a, b) for a, b in ranges)


def _score(a: Attempt) -> float:
    return a.score if a.score is not None else -1.0


def _best(attempts: list[Attempt]) -> tuple[int, str]:
    """The attempt to deliver when none passed, and why: the first build unless one is clearly better."""
    best = max(range(len(attempts)), key=lambda i: (_score(attempts[i]), -i))
    first = attempts[0]
    if best and _score(attempts[best]) >= _score(first) + CLEARLY_BETTER:
        return best, (f"no attempt passed; {attempts[best].candidate.label} came closest "
                      f"({attempts[best].summary or 'verdict'}, against {first.summary or 'the first build'})")
    return 0, "no attempt passed and none was clearly better than the build as configured, which is kept"


def search(first: Attempt, candidates: list[Candidate], build: BuildFn, budget: float,
           fallback: Candidate | None = None, spent: float = 0.0) -> RepairOutcome:
    """Try candidates in order until one passes or the budget is spent (`spent`: the per-layer analysis already took
    that much of it).

    `first` is the build that fell short. A candidate whose expected time (cost_factor x the first build)
    does not fit the time left is not tried. `fallback` (fp16) is built when nothing passes and is delivered
    if it verifies."""
    attempts = [first]
    skipped: list[str] = []
    started = time.monotonic() - spent
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
            return RepairOutcome(attempts, len(attempts) - 1, True, skipped,
                                 f"{cand.label} is the first candidate, cheapest for the NPU, that passes its check")
    if fallback is not None:
        attempt = build(fallback)
        attempts.append(attempt)
        if attempt.error is None:
            return RepairOutcome(attempts, len(attempts) - 1, attempt.passed, skipped,
                                 "accuracy_fallback = fp16: no int8 candidate passed")
    best, why = _best(attempts)
    return RepairOutcome(attempts, best, False, skipped, why)


def npu_cost(settings: dict[str, Any], sizes: tuple[int | None, int | None]) -> str | None:
    """What a repaired delivery costs on the NPU against plain int8 (None: plain int8)."""
    dtype = delivered_dtype(settings, "w8a8")
    first, chosen = sizes
    size = f" ({chosen / 1e6:.1f} MB against {first / 1e6:.1f} MB as configured)" if first and chosen else ""
    if dtype.startswith("float16"):
        return f"float16 on the NPU: about twice the memory traffic of int8 and several times slower{size}"
    if "16" in dtype.split()[0]:
        return f"{dtype.split()[0]}: 16-bit activations run slower on the NPU than int8 and need more memory{size}"
    if "hybrid" in dtype:
        return f"hybrid: the layers kept out of int8 run in float16, slower than the int8 rest{size}"
    return None


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

"""Each task-check metric's default threshold (int8, fp16): read by the options parser (daemon side) and by
convert/checks/ in the workers."""

from __future__ import annotations

# Default thresholds per metric, int8 and fp16 (see README "Verification": measured on the trained models and the
# real-architecture corpus; verify_thresholds overrides any of them). Agreement metrics: at least; errors: at most.
DEFAULT_THRESHOLDS: dict[str, tuple[float, float]] = {
    "top1_agreement": (0.75, 0.75),
    "detection_agreement": (0.8, 0.9),
    "argmax_agreement": (0.9, 0.97),
    "mask_iou": (0.9, 0.97),
    "ctc_agreement": (0.75, 0.75),
    "relative_error": (0.05, 0.01),
}
LOWER_IS_BETTER = frozenset({"relative_error"})
MIN_LEVELS = 8.0   # a part whose robust range spans fewer int8 steps than this has lost its values


def threshold_for(metric: str, quantized: bool, overrides: dict[str, float] | None) -> float:
    if overrides and metric in overrides:
        return float(overrides[metric])
    int8, fp16 = DEFAULT_THRESHOLDS[metric]
    return int8 if quantized else fp16

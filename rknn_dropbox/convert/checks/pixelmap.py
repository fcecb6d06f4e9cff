"""Per-pixel outputs: class maps [1, C, H, W] (argmax agreement and mIoU) and single-channel probability maps
[1, 1, H, W] ending in a sigmoid (mask IoU at a threshold)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rknn_dropbox.convert.checks.base import CheckResult, OutputInfo, SingleOutputCheck, stack
from rknn_dropbox.convert.checks.tensor import TensorCheck

MASK_AT = 0.3      # PP-OCR's DB text detector binarises its probability map at 0.3
TIE = 0.01         # pixels whose two best classes are within 1 % of the score range are not counted


def mean_iou(want: np.ndarray, got: np.ndarray, classes: int) -> float:
    ious = []
    for c in range(classes):
        a, b = want == c, got == c
        union = np.logical_or(a, b).sum()
        if union:
            ious.append(np.logical_and(a, b).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


@dataclass
class PixelClassesCheck(SingleOutputCheck):
    kind: str = "pixel_classes"
    metric = "argmax_agreement"

    def judge(self, want: np.ndarray, got: np.ndarray, info: OutputInfo) -> tuple[float, str, dict[str, Any]]:
        want, got = want[:, 0], got[:, 0]                                # [S, C, H, W]
        a, b = np.argmax(want, 1), np.argmax(got, 1)
        top2 = np.sort(want, axis=1)[:, -2:]
        span = float(want.max() - want.min()) or 1.0
        clear = (top2[:, 1] - top2[:, 0]) > TIE * span                  # pixels that are no near-tie
        agreement = float(np.mean((a == b)[clear])) if clear.any() else 1.0
        miou = float(np.mean([mean_iou(x, y, want.shape[1]) for x, y in zip(a, b)]))
        summary = f"per-pixel class agrees on {agreement:.1%} of pixels, mIoU {miou:.2f}"
        return agreement, summary, {"miou": round(miou, 4), "pixels_compared": int(clear.sum())}


@dataclass
class ProbabilityMapCheck(SingleOutputCheck):
    kind: str = "probability_map"
    metric = "mask_iou"

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        i = self.outputs[0]
        if not (stack(refs, i) > MASK_AT).any():  # nothing on any sample: empty masks prove nothing, the error does
            result = TensorCheck([i]).measure(refs, sims, quantized, thresholds, infos)
            result.kind, result.summary = self.kind, f"no sample shows a region above {MASK_AT}: " + result.summary
            return result
        return super().measure(refs, sims, quantized, thresholds, infos)

    def judge(self, want: np.ndarray, got: np.ndarray, info: OutputInfo) -> tuple[float, str, dict[str, Any]]:
        want, got = want > MASK_AT, got > MASK_AT
        inter = [int(np.logical_and(w, g).sum()) for w, g in zip(want, got)]
        union = [int(np.logical_or(w, g).sum()) for w, g in zip(want, got)]
        # pooled over the samples: a photo with a few stray reference pixels does not decide alone
        iou = sum(inter) / sum(union) if sum(union) else 1.0
        summary = f"mask IoU at {MASK_AT} is {iou:.2f} over {len(want)} samples"
        return iou, summary, {"per_sample": [round(a / u, 4) if u else None for a, u in zip(inter, union)],
                              "mask_pixels": [int(w.sum()) for w in want], "threshold_at": MASK_AT,
                              "empty_reference_masks": int(sum(not w.any() for w in want))}

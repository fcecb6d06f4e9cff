"""Per-pixel outputs: class maps [1, C, H, W] (argmax agreement and mIoU) and single-channel probability maps
[1, 1, H, W] ending in a sigmoid (mask IoU at a threshold)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rknn_dropbox.convert.checks.base import CheckResult, OutputInfo, threshold_for
from rknn_dropbox.convert.checks.tensor import stack

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
class PixelClassesCheck:
    outputs: list[int]
    kind: str = "pixel_classes"

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        i = self.outputs[0]
        want, got = stack(refs, i)[:, 0], stack(sims, i)[:, 0]          # [S, C, H, W]
        a, b = np.argmax(want, 1), np.argmax(got, 1)
        top2 = np.sort(want, axis=1)[:, -2:]
        span = float(want.max() - want.min()) or 1.0
        clear = (top2[:, 1] - top2[:, 0]) > TIE * span                  # pixels that are no near-tie
        agreement = float(np.mean((a == b)[clear])) if clear.any() else 1.0
        miou = float(np.mean([mean_iou(x, y, want.shape[1]) for x, y in zip(a, b)]))
        limit = threshold_for("argmax_agreement", quantized, thresholds)
        summary = f"per-pixel class agrees on {agreement:.1%} of pixels, mIoU {miou:.2f}"
        return CheckResult(self.kind, [infos[i].name], "argmax_agreement", agreement, limit, agreement >= limit,
                           summary, {"miou": round(miou, 4), "pixels_compared": int(clear.sum())})


@dataclass
class ProbabilityMapCheck:
    outputs: list[int]
    kind: str = "probability_map"

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        i = self.outputs[0]
        want, got = stack(refs, i) > MASK_AT, stack(sims, i) > MASK_AT
        ious = []
        for w, g in zip(want, got):
            union = np.logical_or(w, g).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(w, g).sum() / union))
        iou = min(ious)
        limit = threshold_for("mask_iou", quantized, thresholds)
        empty = int(sum(not w.any() for w in want))
        summary = f"mask IoU at {MASK_AT} is {iou:.2f} on the worst of {len(ious)} samples"
        return CheckResult(self.kind, [infos[i].name], "mask_iou", iou, limit, iou >= limit, summary,
                           {"per_sample": [round(x, 4) for x in ious], "threshold_at": MASK_AT,
                            "empty_reference_masks": empty})

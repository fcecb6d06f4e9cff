"""Class scores ([1, C] logits or probabilities): top-1 agreement (near-ties forgiven) and top-5 overlap."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rknn_dropbox.convert.checks.base import CheckResult, OutputInfo
from rknn_dropbox.thresholds import threshold_for
from rknn_dropbox.convert.checks.tensor import stack

TIE = 0.01   # two classes within 1 % of the reference's score range (or top score) are a tie: either agrees


def top1_agrees(want: np.ndarray, got: np.ndarray) -> bool:
    a, b = int(np.argmax(want)), int(np.argmax(got))
    span = max(float(np.max(want) - np.min(want)), abs(float(want[a])))
    return a == b or float(want[a] - want[b]) <= TIE * span


def top_k_overlap(want: np.ndarray, got: np.ndarray, k: int = 5) -> float:
    k = min(k, want.size)
    return len(set(np.argsort(-want)[:k]) & set(np.argsort(-got)[:k])) / k


@dataclass
class ClassScoresCheck:
    outputs: list[int]
    kind: str = "class_scores"

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        i = self.outputs[0]
        want = stack(refs, i).reshape(len(refs), -1)
        got = stack(sims, i).reshape(len(sims), -1)
        agree = sum(top1_agrees(w, g) for w, g in zip(want, got))
        overlap = float(np.mean([top_k_overlap(w, g) for w, g in zip(want, got)]))
        n = len(want)
        limit = threshold_for("top1_agreement", quantized, thresholds)
        value = agree / n
        summary = f"top-1 agrees {agree}/{n}" + (f", top-5 overlap {overlap:.0%}" if want.shape[1] > 5 else "")
        diff = float(np.max(np.abs(got - want))) if np.all(np.isfinite(got)) else float("inf")
        return CheckResult(self.kind, [infos[i].name], "top1_agreement", value, limit, value >= limit, summary,
                           {"agree": agree, "samples": n, "top5_overlap": round(overlap, 4),
                            "max_score_diff": round(diff, 6) if np.isfinite(diff) else None})

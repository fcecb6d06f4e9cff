"""Class scores ([1, C] logits or probabilities): top-1 agreement (near-ties forgiven) and top-5 overlap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rknn_dropbox.convert.checks.base import OutputInfo, SingleOutputCheck

TIE = 0.01   # two classes within 1 % of the reference's score range (or top score) are a tie: either agrees


def top1_agrees(want: np.ndarray, got: np.ndarray) -> bool:
    a, b = int(np.argmax(want)), int(np.argmax(got))
    span = max(float(np.max(want) - np.min(want)), abs(float(want[a])))
    return a == b or float(want[a] - want[b]) <= TIE * span


def top_k_overlap(want: np.ndarray, got: np.ndarray, k: int = 5) -> float:
    k = min(k, want.size)
    return len(set(np.argsort(-want)[:k]) & set(np.argsort(-got)[:k])) / k


@dataclass
class ClassScoresCheck(SingleOutputCheck):
    kind: str = "class_scores"
    metric = "top1_agreement"

    def judge(self, want: np.ndarray, got: np.ndarray, info: OutputInfo) -> tuple[float, str, dict[str, Any]]:
        want, got = want.reshape(len(want), -1), got.reshape(len(got), -1)
        agree = sum(top1_agrees(w, g) for w, g in zip(want, got))
        overlap = float(np.mean([top_k_overlap(w, g) for w, g in zip(want, got)]))
        n = len(want)
        summary = f"top-1 agrees {agree}/{n}" + (f", top-5 overlap {overlap:.0%}" if want.shape[1] > 5 else "")
        diff = float(np.max(np.abs(got - want))) if np.all(np.isfinite(got)) else float("inf")
        return agree / n, summary, {"agree": agree, "samples": n, "top5_overlap": round(overlap, 4),
                                    "max_score_diff": round(diff, 6) if np.isfinite(diff) else None}

"""Per-step distributions ([1, T, C], a CTC text recogniser): per-step argmax agreement and greedy CTC decode
equality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rknn_dropbox.convert.checks.base import OutputInfo, SingleOutputCheck


def _without_edges(seq: list[int]) -> list[list[int]]:
    """seq, and seq less its first and/or last token: a recogniser's space at a line's edge is no misreading."""
    out = [seq, seq[1:], seq[:-1], seq[1:-1]]
    return [x for x in out if x is not None]


def decodes_alike(want: np.ndarray, got: np.ndarray) -> bool:
    """Greedy CTC decodes equal, or equal once a single token at either end of one of them is dropped (PP-OCR
    reads a space at a line's edge in float where int8 reads none: the same text)."""
    a, b = ctc_greedy(want), ctc_greedy(got)
    if a == b:
        return True
    return any(x == b for x in _without_edges(a)) or any(a == y for y in _without_edges(b))


def ctc_greedy(steps: np.ndarray, blank: int = 0) -> list[int]:
    """Best path: argmax per step, repeats merged, blanks dropped."""
    best = np.argmax(steps, axis=-1)
    out, prev = [], None
    for c in best.tolist():
        if c != prev and c != blank:
            out.append(c)
        prev = c
    return out


@dataclass
class SequenceCheck(SingleOutputCheck):
    kind: str = "sequence"
    metric = "ctc_agreement"

    def judge(self, want: np.ndarray, got: np.ndarray, info: OutputInfo) -> tuple[float, str, dict[str, Any]]:
        c = info.shape[-1]
        want, got = want.reshape(len(want), -1, c), got.reshape(len(got), -1, c)
        same = sum(decodes_alike(w, g) for w, g in zip(want, got))
        steps = float(np.mean(np.argmax(want, -1) == np.argmax(got, -1)))
        n = len(want)
        summary = f"decoded text agrees on {same}/{n} lines, per-step argmax {steps:.0%}"
        return same / n, summary, {"sequences_equal": same, "samples": n, "step_agreement": round(steps, 4)}

"""Per-step distributions ([1, T, C], a CTC text recogniser): per-step argmax agreement and greedy CTC decode
equality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rknn_dropbox.convert.checks.base import CheckResult, OutputInfo, threshold_for
from rknn_dropbox.convert.checks.tensor import stack


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
class SequenceCheck:
    outputs: list[int]
    kind: str = "sequence"

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        i = self.outputs[0]
        c = infos[i].shape[-1]
        want = stack(refs, i).reshape(len(refs), -1, c)
        got = stack(sims, i).reshape(len(sims), -1, c)
        same = sum(ctc_greedy(w) == ctc_greedy(g) for w, g in zip(want, got))
        steps = float(np.mean(np.argmax(want, -1) == np.argmax(got, -1)))
        n = len(want)
        limit = threshold_for("ctc_agreement", quantized, thresholds)
        summary = f"decoded sequences agree {same}/{n}, per-step argmax {steps:.0%}"
        return CheckResult(self.kind, [infos[i].name], "ctc_agreement", same / n, limit, same / n >= limit, summary,
                           {"sequences_equal": same, "samples": n, "step_agreement": round(steps, 4)})

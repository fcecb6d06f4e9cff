"""A target's verdict: every planned check measured on the samples; the worst one decides, in words."""

from __future__ import annotations

from typing import Any

import numpy as np

from rknn_dropbox.convert.checks.base import Check, CheckResult, OutputInfo, Verdict


def judge(checks: list[Check], refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
          thresholds: dict[str, float] | None, infos: list[OutputInfo], synthetic: bool) -> Verdict:
    """Measure every check; a check that cannot measure (an unexpected shape) falls back to its error in words."""
    results = []
    for check in checks:
        try:
            results.append(check.measure(refs, sims, quantized, thresholds, infos))
        except Exception as exc:  # noqa: BLE001 - one check's bug must not lose the verification
            names = [infos[i].name for i in check.outputs]
            results.append(CheckResult(check.kind, names, "error", 0.0, 1.0, False,
                                       f"the {check.kind} check could not measure {', '.join(names)} "
                                       f"({type(exc).__name__}: {str(exc)[:120]})"))
    return Verdict(results, synthetic)


def output_details(verdict: Verdict) -> dict[str, dict[str, Any]]:
    """Per output name: its range-relative error and parts, for result.json's outputs rows."""
    out: dict[str, dict[str, Any]] = {}
    for c in verdict.checks:
        for name in c.outputs:
            row = out.setdefault(name, {})
            if "error" in c.details and len(c.outputs) == 1:
                row["error"] = c.details["error"]
            if "parts" in c.details and len(c.outputs) == 1:
                row["parts"] = c.details["parts"]
    return out

"""A target's accuracy: its verification, and below the threshold the per-layer report and the repair search."""

from __future__ import annotations

import inspect
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rknn_dropbox.convert import repair as rp
from rknn_dropbox.convert.attempts import NoJournal, TargetJournal
from rknn_dropbox.convert.analysis import LayerError, hybrid_ranges, run_analysis, worst_layers
from rknn_dropbox.convert.simulator import lean_sessions
from rknn_dropbox.convert.verify import (
    Judging, Reference, error_reason, lowest, timed_verification, verify_session,
)

_FP16_OVERFLOW = re.compile(r"Tensor name:'([^']+)' value range exceeds Fp16 Max|out of the float16")


def fp16_overflow(log_text: str) -> list[str] | None:
    """Tensors the toolkit says exceed float16 (None: no such warning)."""
    found = _FP16_OVERFLOW.findall(log_text)
    if not found:
        return None
    return sorted({t for t in found if t})


# ----------------------------------------------------------------------------------------------- one target
CandidateBuilder = Callable[[rp.Candidate, Path], tuple[Any, float, str]]  # -> (session, build seconds, its log)


@dataclass
class TargetAccuracy:
    """What the accuracy step decided for one target."""
    verification: dict[str, Any] | None
    accuracy: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)   # verify, analysis, repair


@dataclass
class TargetContext:
    """What settle() needs beside the first build: the job's reference, the options, where files go."""
    spec: Any
    ref: Reference
    platform: str
    quantize: bool
    min_cos: float
    final: Path                       # the delivered .rknn
    report_dir: Path                  # where accuracy/error_analysis.txt goes
    scratch: Path
    first_seconds: float
    build_log: str = ""               # the toolkit's output during the first build
    # every attempt and its verdict on disk before the next starts (convert/attempts.py)
    journal: TargetJournal | NoJournal = field(default_factory=NoJournal)
    configured: rp.Candidate | None = None   # the first build's candidate (a YOLO pose head: its float16 ranges)

    def judging(self, rknn_path: Path) -> Judging:
        return Judging(self.quantize, self.spec.options.verify_thresholds, rknn_path)


def _analysis(rknn: Any, ctx: TargetContext, out: dict[str, Any]) -> list[LayerError]:
    sample = ctx.ref.samples.samples[0] if ctx.ref.samples and ctx.ref.samples.samples else None
    files = sample.files if sample and sample.files else []
    if sample and not files:  # seeded random: accuracy_analysis reads files; the source layout is what it wants
        files = []
        for i, x in enumerate(sample.raw):
            f = ctx.scratch / f"analysis_input{i}.npy"
            np.save(f, x)
            files.append(f)
    try:
        with lean_sessions():
            rows = run_analysis(rknn, files, ctx.scratch, ctx.report_dir)
    except Exception as exc:  # noqa: BLE001 - the report is a help, not the delivery
        out["analysis_error"] = error_reason(exc)
        return []
    out["report"] = str(ctx.report_dir.name + "/error_analysis.txt")
    worst = worst_layers(rows)
    out["worst_layers"] = [w.to_json() for w in worst]
    return rows


def _attempt_of(cand: rp.Candidate, verification: dict[str, Any], seconds: float, artifact: Path) -> rp.Attempt:
    low = lowest(verification)
    verdict = verification.get("verdict") or {}
    margins = [c["value"] / c["threshold"] if c["metric"] != "relative_error" else c["threshold"] / max(c["value"] or 0,
               1e-9) for c in verification.get("checks", []) if c.get("value") is not None and c.get("threshold")]
    try:
        size = artifact.stat().st_size
    except OSError:
        size = None
    return rp.Attempt(cand, low, {r["name"]: r["cosine"] if r["cosine"] is not None else float("nan")
                                  for r in verification.get("outputs", [])}, seconds,
                      verification.get("status") == "passed", verification.get("reason")
                      if verification.get("status") == "error" else None, (artifact, verification),
                      min(margins) if margins else None, verdict.get("summary") or "", size)


def _candidate_runner(ctx: TargetContext, build: CandidateBuilder, overflow: set[str]
                      ) -> Callable[[rp.Candidate], rp.Attempt]:
    counter = iter(range(1, 1000))

    def run(cand: rp.Candidate) -> rp.Attempt:
        path = ctx.scratch / f"{ctx.final.name}.attempt{next(counter)}"
        started = time.monotonic()
        rknn = None
        ctx.journal.record_started(cand, path)  # on disk before it starts: a crash in it names it
        try:
            rknn, seconds, log = build(cand, path)
            overflow.update(fp16_overflow(log) or [])  # auto_hybrid names the tensors it moves out of float16
            verification = verify_session(rknn, ctx.spec, ctx.ref, ctx.min_cos, ctx.judging(path))
            print(f"accuracy {ctx.platform} attempt {cand.label}: {verification.get('status')} "
                  f"{(verification.get('verdict') or {}).get('summary')}")
            attempt = _attempt_of(cand, verification, seconds, path)
            ctx.journal.record_finished(attempt, verification, path)
            return attempt
        except Exception as exc:  # noqa: BLE001 - one candidate failing is one data point
            path.unlink(missing_ok=True)
            attempt = rp.Attempt(cand, None, {}, time.monotonic() - started, False,
                                 getattr(exc, "error", None) or error_reason(exc))
            ctx.journal.record_finished(attempt, None, None)
            return attempt
        finally:
            if rknn is not None:
                try:
                    rknn.release()
                except Exception:  # noqa: BLE001
                    pass
    return run


def _candidates(ctx: TargetContext, rows: list[LayerError]) -> list[rp.Candidate]:
    o = ctx.spec.options
    if ctx.quantize:
        ranges = hybrid_ranges(rows, worst_layers(rows)) if rows else []
        kept = ctx.configured.custom_hybrid if ctx.configured is not None else ()
        return rp.keeping_float(rp.int8_candidates(ctx.platform, o.quantized_algorithm, o.quantized_method, ranges),
                                kept)
    if ctx.spec.dataset is not None:  # the toolkit's remedy for float16 overflow: those layers in int16
        return rp.fp16_candidates()
    return []


def _supported(candidates: list[rp.Candidate], rknn: Any) -> tuple[list[rp.Candidate], list[str]]:
    """The candidates this toolkit can build, and why the others are left out (build()'s auto_hybrid came in
    rknn-toolkit2 2.3.2)."""
    try:
        has_auto_hybrid = "auto_hybrid" in inspect.signature(rknn.build).parameters
    except (TypeError, ValueError):
        has_auto_hybrid = True
    if has_auto_hybrid:
        return candidates, []
    return ([c for c in candidates if not c.auto_hybrid],
            [f"{c.label}: this rknn-toolkit2's build() has no auto_hybrid (2.3.2 and later have it)"
             for c in candidates if c.auto_hybrid])


def settle(rknn: Any, ctx: TargetContext, build: CandidateBuilder) -> TargetAccuracy:
    """Verify the first build; below the threshold: per-layer report, repair within the budget, deliver the best.

    `rknn` is the first build's session, released here before any rebuild (one session in memory at a time)."""
    o = ctx.spec.options
    verification, seconds = timed_verification(rknn, ctx.spec, ctx.ref, ctx.min_cos, ctx.judging(ctx.final),
                                               ctx.first_seconds)
    result = TargetAccuracy(verification, seconds={"verify": seconds})
    if verification.get("status") == "warning":  # synthetic samples only: say so, never repair
        result.warnings.append(f"{ctx.platform}: on synthetic images (the bundle brings no real samples) "
                               f"{verification['verdict']['summary']}; not repaired: add a dataset.txt with real "
                               "inputs (or verify_dataset) to check and repair it")
    if verification.get("status") != "below_threshold":
        return result
    first = _attempt_of(ctx.configured or rp.Candidate("as configured", quantize=ctx.quantize), verification, ctx.first_seconds,
                        ctx.final)
    ctx.journal.record_finished(first, verification, ctx.final)  # on disk before the analysis or any candidate
    accuracy: dict[str, Any] = {}
    rows: list[LayerError] = []
    if ctx.quantize:
        t1 = time.monotonic()
        ctx.journal.record_analysis(started=True)  # the toolkit's native code: a death in it is named too
        rows = _analysis(rknn, ctx, accuracy)
        ctx.journal.record_analysis(started=False)
        result.seconds["analysis"] = round(time.monotonic() - t1, 3)
    overflow = set(fp16_overflow(ctx.build_log) or [])
    if overflow:
        accuracy["fp16_overflow_tensors"] = sorted(overflow)
    result.accuracy = accuracy
    candidates, unsupported = _supported(_candidates(ctx, rows) if o.accuracy_repair == "auto" else [], rknn)
    if unsupported:
        accuracy["not_tried"] = unsupported
    fallback = rp.fp16_fallback(ctx.platform) if ctx.quantize and o.accuracy_fallback == "fp16" else None
    if not candidates and fallback is None:
        return result
    rknn.release()  # the first session's simulator holds its tensors; rebuilds get the memory
    t2 = time.monotonic()
    ctx.journal.record_context(dict(accuracy), dict(result.seconds))  # what the step found, before any candidate
    outcome = rp.search(first, candidates, _candidate_runner(ctx, build, overflow),
                        rp.budget_seconds(o.repair_budget_seconds, ctx.first_seconds), fallback,
                        spent=result.seconds.get("analysis", 0.0))
    result.seconds["repair"] = round(time.monotonic() - t2, 3)
    accuracy.update(outcome.to_json())
    if unsupported:
        accuracy["not_tried"] = unsupported + accuracy.get("not_tried", [])
    if overflow:
        accuracy["fp16_overflow_tensors"] = sorted(overflow)
    _deliver(outcome, ctx, result)
    return result


def _deliver(outcome: rp.RepairOutcome, ctx: TargetContext, result: TargetAccuracy) -> None:
    """Move the chosen attempt's .rknn to the target's file; remove the others."""
    chosen = outcome.attempts[outcome.delivered]
    for i, attempt in enumerate(outcome.attempts):
        if i == 0 or not attempt.artifact:
            continue
        path, verification = attempt.artifact
        if i == outcome.delivered:
            os.replace(path, ctx.final)
            result.verification = verification
        else:
            Path(path).unlink(missing_ok=True)
    label = chosen.candidate.label
    first = outcome.attempts[0]
    if outcome.delivered and result.accuracy is not None:
        cost = rp.npu_cost(chosen.candidate.settings(), (first.size, chosen.size))
        if cost:
            result.accuracy["npu_cost"] = cost
    if outcome.passed and outcome.delivered:
        result.warnings.append(f"{ctx.platform}: the build as configured failed its check ({first.summary}); "
                               f"delivered the repaired build ({label}: {chosen.summary})")
    elif not outcome.passed:
        tried = ", ".join(a.candidate.label for a in outcome.attempts[1:]) or "nothing"
        result.warnings.append(f"{ctx.platform}: no build passed its check (tried {tried}); delivered {label} "
                               f"({chosen.summary or 'unverified'}): {outcome.reason}")

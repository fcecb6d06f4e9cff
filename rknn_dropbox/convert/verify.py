"""Verified conversions: the toolkit's simulator against the source framework's runtime on real samples, each output
judged by its task (convert/checks/), with the cosine per output and sample kept beside for older clients."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rknn_dropbox.convert.checks.base import Verdict
from rknn_dropbox.convert.checks.recognise import plan_checks
from rknn_dropbox.convert.checks.verdict import judge
from rknn_dropbox.convert.checks.base import align
from rknn_dropbox.convert.checks.recognise import output_infos
from rknn_dropbox.convert.checks.tensor import error_stats
from rknn_dropbox.convert.checks.verdict import output_details
from rknn_dropbox.convert.samples import InputLayout, SampleSet, collect_samples
from rknn_dropbox.convert.simulator import lean_sessions
from rknn_dropbox.formats.base import OutputFacts

INT8_MIN_COSINE = 0.98
FP16_MIN_COSINE = 0.999
# a format without a runtime here says "no <Format> runtime": not a failure under verify_strict
NO_RUNTIME = re.compile(r"^no \w+ runtime")


def threshold(configured: float | None, quantized: bool) -> float:
    if configured is not None:
        return configured
    return INT8_MIN_COSINE if quantized else FP16_MIN_COSINE


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        return float("nan")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def _rounded(c: float) -> float | None:
    return None if math.isnan(c) or math.isinf(c) else round(c, 6)


VERIFY_MIN_SECONDS = 5.0  # verification this short runs every sample, whatever the build took


@dataclass
class Reference:
    """Per job: the verification samples and the source runtime's outputs on each, computed when first needed (the
    source model is loaded after the build, not beside its peak) and kept for every target and repair attempt."""
    samples: SampleSet | None = None
    names: list[str] | None = None
    skipped: str | None = None        # why nothing is verified
    error: str | None = None          # the reference runtime failed
    seconds: float = 0.0
    runner: Callable[[], Callable[[list[np.ndarray]], list[np.ndarray]]] | None = None  # loads the source model
    outputs: list[list[np.ndarray]] = field(default_factory=list)
    limit: int | None = None          # samples verified: fewer than collected when each costs too much
    limited: str | None = None        # why
    facts: OutputFacts | None = None  # what the format's graph says of each output (for the task checks)
    _run: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None

    def output(self, i: int) -> list[np.ndarray]:
        """The source runtime's outputs on sample i (computed once); the model is dropped after the last one."""
        while len(self.outputs) <= i:
            started = time.monotonic()
            with lean_sessions():  # no onnxruntime arena left in the heap
                if self._run is None and self.runner is not None:
                    self._run = self.runner()
                if self._run is None:
                    raise RuntimeError("no reference runtime")
                self.outputs.append(self._run(self.samples.samples[len(self.outputs)].norm))
            self.seconds += time.monotonic() - started
            self._let_go_when_done()
        return self.outputs[i]

    def _let_go_when_done(self) -> None:
        """Every sample that will be verified has its outputs: the source model is no longer needed."""
        if len(self.outputs) >= self.count:
            self._run = self.runner = None

    @property
    def count(self) -> int:
        n = len(self.samples.samples) if self.samples else 0
        return n if self.limit is None else min(n, self.limit)

    def bound_samples(self, per_sample_seconds: float, build_seconds: float | None, share: float) -> None:
        """After the second sample: verify only as many as fit in `share` of the build's time (at least two; all
        of them when the whole verification is short)."""
        n = len(self.samples.samples) if self.samples else 0
        if self.limit is not None or build_seconds is None or n <= 1:
            return
        budget = max(VERIFY_MIN_SECONDS, share * build_seconds)
        if per_sample_seconds * n <= budget:
            return
        self.limit = max(2, int(budget // max(per_sample_seconds, 1e-6)))
        self.limited = (f"{self.limit} of {n} samples: each took {per_sample_seconds:.1f} s (source runtime + "
                        f"simulator); verification is kept within {share:.0%} of the {build_seconds:.0f} s build "
                        "(verify_time_share)")
        self._let_go_when_done()


def error_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1][:200] if text else ''}"


def prepare_reference(spec: Any, prepared: Any, verify_dataset: Path | None) -> Reference:
    """Collect the samples; the format's reference runtime runs on them when verification asks. Never raises."""
    o, fmt = spec.options, spec.fmt
    started = time.monotonic()
    skipped = fmt.skip_verification()
    if skipped:
        return Reference(skipped=skipped)
    try:
        shapes, names = fmt.verify_io(spec, prepared)
        if not shapes or any(not d or any(x <= 0 for x in d) for d in shapes):
            return Reference(skipped="the input shapes are not fixed")
        layout = InputLayout([list(s) for s in shapes], fmt.channels_last, o.mean_values, o.std_values,
                             o.quant_img_RGB2BGR)
        samples = collect_samples(layout, verify_dataset, spec.dataset, o.verify_samples)
        return Reference(samples, names, seconds=time.monotonic() - started,
                         runner=lambda: fmt.reference_runner(spec, prepared), facts=fmt.output_facts(spec, prepared))
    except Exception as exc:  # noqa: BLE001 - a verification problem must not lose a good .rknn
        return Reference(error=error_reason(exc), seconds=time.monotonic() - started)


def _description(samples: SampleSet, count: int) -> str:
    names = [s.name for s in samples.samples[:count]]
    if samples.source == "seeded random":
        return f"seeded random ({len(names)} inputs)"
    if samples.synthetic:
        return f"{samples.source} ({', '.join(n.removeprefix('synthetic ') for n in names)}): the bundle brings no " \
               "real samples"
    return f"{samples.source}: {', '.join(names)}"


@dataclass(frozen=True)
class Judging:
    """How a target's outputs are judged: int8 or float thresholds, the thresholds the options override, and the
    delivered .rknn (its output int8 steps)."""
    quantized: bool
    thresholds: dict[str, float] | None = None
    rknn_path: Path | None = None


def output_steps(rknn_path: Path | None) -> list[float | None]:
    """Each output's int8 step as the .rknn records it (None: a float output, or the file cannot be read)."""
    if rknn_path is None:
        return []
    from rknn_dropbox.formats.rknnfile import RknnFileError, read_rknn_file
    try:
        info = read_rknn_file(rknn_path)
    except (RknnFileError, OSError):
        return []
    steps: list[float | None] = []
    for t in info.outputs:
        scales = (t.quant or {}).get("scale") or []
        steps.append(float(max(scales)) if scales and not t.dtype.startswith("float") else None)
    return steps


def _run_samples(rknn: Any, spec: Any, ref: Reference, build_seconds: float | None
                 ) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]] | str:
    """Every sample through the simulator beside the reference: (reference outputs, simulator outputs aligned to
    them) per sample, or why not."""
    fmt = spec.fmt
    if rknn.init_runtime() != 0:
        return "init_runtime() of the simulator failed"
    refs, sims = [], []
    i = 0
    while i < ref.count:
        started = time.monotonic()
        want = ref.output(i)
        sample = ref.samples.samples[i]
        sim_inputs, convert = fmt.simulator_io(spec, sample.raw, sample.norm)
        got = rknn.inference(inputs=sim_inputs, data_format="nhwc" if fmt.channels_last else "nchw")
        if got is None:
            return "the simulator returned no outputs"
        got = convert(got) if convert is not None else got
        if len(got) != len(want):
            return f"the simulator returned {len(got)} outputs, the model has {len(want)}"
        refs.append([np.asarray(w) for w in want])
        sims.append([align(g, w) for g, w in zip(got, want)])
        if i == 1:  # the second sample's time: the first one's includes loading both runtimes
            ref.bound_samples(time.monotonic() - started, build_seconds, spec.options.verify_time_share)
        i += 1
    return refs, sims


def _input_hw(ref: Reference, channels_last: bool) -> tuple[int, int]:
    shape = ref.samples.samples[0].raw[0].shape if ref.samples and ref.samples.samples else ()
    if len(shape) != 4:
        return (0, 0)
    return (int(shape[1]), int(shape[2])) if channels_last else (int(shape[2]), int(shape[3]))


def _verdict(spec: Any, ref: Reference, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]],
             judging: Judging, names: list[str]) -> Verdict:
    facts = ref.facts or OutputFacts()
    infos = output_infos(names, [list(np.asarray(w).shape) for w in refs[0]], facts.graph,
                         output_steps(judging.rknn_path))
    checks = plan_checks(infos, _input_hw(ref, spec.fmt.channels_last), facts.yolo_layout, facts.yolo_concat)
    return judge(checks, refs, sims, judging.quantized, judging.thresholds, infos, ref.samples.synthetic)


def _output_rows(names: list[str], refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], verdict: Verdict
                 ) -> list[dict[str, Any]]:
    details = output_details(verdict)
    rows = []
    for j, name in enumerate(names):
        cosines = [cosine(s[j], r[j]) for r, s in zip(refs, sims)]
        worst = min(cosines, key=lambda c: -2.0 if math.isnan(c) else c)
        want = np.stack([r[j] for r in refs])
        got = np.stack([s[j] for s in sims]) if all(s[j].shape == r[j].shape for r, s in zip(refs, sims)) else None
        row = {"name": name, "shape": list(refs[0][j].shape), "cosine": _rounded(worst),
               "cosines": [_rounded(c) for c in cosines]}
        if got is not None:
            row["error"] = error_stats(want, got).to_json()
        row.update(details.get(name, {}))
        rows.append(row)
    return rows


def verify_session(rknn: Any, spec: Any, ref: Reference, min_cos: float, judging: Judging,
                   build_seconds: float | None = None) -> dict[str, Any]:
    """Run the built session's simulator on the samples and judge each output by its task (checks/); result.json's
    verification of one target. With the build's time given, the first verification of a job decides how many
    samples fit (Reference.bound_samples)."""
    base: dict[str, Any] = {"reference": spec.fmt.reference_name}
    if ref.skipped:
        return {"status": "skipped", "reason": ref.skipped}
    if ref.error or ref.samples is None:
        return {"status": "error", **base, "reason": ref.error or "no samples"}
    try:
        with lean_sessions():
            ran = _run_samples(rknn, spec, ref, build_seconds)
        if isinstance(ran, str):
            return {"status": "error", **base, "reason": ran}
        refs, sims = ran
        names = [ref.names[j] if ref.names and j < len(ref.names) else f"output{j}" for j in range(len(refs[0]))]
        verdict = _verdict(spec, ref, refs, sims, judging, names)
        rows = _output_rows(names, refs, sims, verdict)
    except Exception as exc:  # noqa: BLE001 - a verification problem must not lose a good .rknn
        return {"status": "error", **base, "reason": error_reason(exc)}
    status = "passed" if verdict.passed else "warning" if verdict.synthetic else "below_threshold"
    out = {"status": status, **base, "input": _description(ref.samples, ref.count),
           "samples": ref.samples.to_json(ref.count), "min_cosine": min_cos, "verdict": verdict.to_json(),
           "checks": [c.to_json() for c in verdict.checks], "outputs": rows}
    if verdict.synthetic:
        out["synthetic"] = True
    if ref.limited:
        out["samples_limited"] = ref.limited
    return out


def timed_verification(rknn: Any, spec: Any, ref: Reference, min_cos: float, judging: Judging,
                       build_seconds: float | None = None) -> tuple[dict[str, Any], float]:
    """verify_session and the seconds it took beside the source runtime's (timings: verify vs reference)."""
    started, ref_before = time.monotonic(), ref.seconds
    verification = verify_session(rknn, spec, ref, min_cos, judging, build_seconds)
    return verification, round(time.monotonic() - started - (ref.seconds - ref_before), 3)


def lowest(verification: dict[str, Any]) -> float | None:
    values = [r["cosine"] for r in verification.get("outputs", [])]
    if not values:
        return None
    return min(-2.0 if v is None else v for v in values)


def strict_failure(verification: dict[str, Any] | None) -> str | None:
    """Why verify_strict fails the target, or None: below threshold, errored, or skipped with a runtime here."""
    if verification is None:
        return None
    status = verification.get("status")
    if status == "below_threshold":
        verdict = verification.get("verdict") or {}
        return f"{verdict.get('summary')} ({verdict.get('metric')} below its threshold)"
    if status == "error":
        return f"the verification failed ({verification.get('reason')})"
    if status == "skipped" and not NO_RUNTIME.match(verification.get("reason") or ""):
        return f"the verification was skipped ({verification.get('reason')})"
    return None

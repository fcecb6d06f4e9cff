"""One target platform of a job: configure the toolkit, let the format load the model, build, export, verify
(and rebuild with the accuracy repair's candidates)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from rknn_dropbox import __version__
from rknn_dropbox.convert.bundle import ModelSpec
from rknn_dropbox.platforms import NO_FP16_PLATFORMS, dtype_platform_error
from rknn_dropbox.convert.rulefix import (
    AdvisedBuild, LogWindow, RuleCrash, Workaround, build_with_advice, failed_verification_story, rule_crash_error,
)
from rknn_dropbox.toolkit_keys import toolkit_config_kwargs
from rknn_dropbox.convert.toolkit_log import (
    BUILD_PHASES_FP16, BUILD_PHASES_INT8, LOAD_PHASES, ConversionError, log_since, toolkit_caller, toolkit_progress,
)
from rknn_dropbox.filehash import sha256_file
from rknn_dropbox.convert.accuracy import TargetAccuracy, TargetContext, settle
from rknn_dropbox.convert.attempts import AttemptJournal, NoJournal, TargetJournal
from rknn_dropbox.convert.faults import inject_repair_fault
from rknn_dropbox.convert.resume import resume_target
from rknn_dropbox.convert.verify import (
    Judging, Reference, prepare_reference, strict_failure, threshold, timed_verification,
)
from rknn_dropbox.convert.repair import Candidate
from rknn_dropbox.formats import FormatError
from rknn_dropbox.toolkits import loaded_toolkit_version

StageProgress = Callable[[str, float], None]


@dataclass
class TargetBuild:
    """What one target's build needs besides its platform: the model, the quantization decided, where to write."""
    spec: ModelSpec
    quantize: bool
    prequantized: bool
    prepared: Any                     # the format's preparation (a frozen TensorFlow graph), or None
    output: Path                      # the job's output folder
    job_id: str
    raw_log: Path
    lock_dir: Path | None
    reference: Reference | None = None  # the job's verification samples and the source runtime's outputs
    # dynamic_input: one (shape set, reference) per set verification runs at; `reference` is the first one's
    shape_references: list[tuple[Any, Reference]] = field(default_factory=list)
    journal: AttemptJournal | None = None  # every attempt's .rknn and verdict on disk (None: not kept)
    bundle_name: str = ""             # the job's name (test-only fault injection picks bundles by it)


def configured_candidate(b: TargetBuild) -> Candidate:
    """The build as configured: int8 keeps in float16 what its YOLO layout needs there (a pose head's keypoints)."""
    layout = getattr(b.prepared, "yolo_layout", None)
    ranges = tuple((str(a), str(z)) for a, z in (layout.float_ranges if layout is not None and b.quantize else ()))
    return Candidate("as configured", quantize=b.quantize, custom_hybrid=ranges)


def target_name(name: str, platforms: tuple[str, ...], platform: str) -> str:
    return f"{name}.rknn" if len(platforms) == 1 else f"{name}.{platform}.rknn"


def target_error(spec: ModelSpec, platform: str, quantize: bool) -> str | None:
    """The toolkit's quantized_dtype / fp16 rules for one platform, checked before its build."""
    if quantize:
        return dtype_platform_error(spec.options.quantized_dtype, platform)
    if platform in NO_FP16_PLATFORMS:
        return f"{platform} cannot run fp16 models: give a calibration dataset for an int8 build"
    return None


def _named_for_toolkit(model: Path, ext: str | None) -> Path:
    """The toolkit refuses a model whose extension is not its format's: link it under the right name in the cwd."""
    if ext is None or model.suffix.lower() == ext:
        return model
    alias = Path.cwd() / f"model{ext}"
    if not alias.exists():
        try:
            os.link(model, alias)
        except OSError:
            shutil.copyfile(model, alias)
    return alias


def _toolkit_config(b: TargetBuild, platform: str, disable_rules: list[str], overrides: dict[str, Any]
                    ) -> dict[str, Any]:
    o = b.spec.options
    config: dict[str, Any] = dict(target_platform=platform, optimization_level=o.optimization_level,
                                  quantized_dtype=o.quantized_dtype, quantized_algorithm=o.quantized_algorithm,
                                  quantized_method=o.quantized_method,
                                  **toolkit_config_kwargs(o, f"rknn-dropbox {__version__} job {b.job_id}",
                                                          disable_rules))
    if o.mean_values is not None:
        config["mean_values"] = o.mean_values
    if o.std_values is not None:
        config["std_values"] = o.std_values
    for flag in ("quant_img_RGB2BGR", "single_core_mode", "compress_weight"):
        if getattr(o, flag):
            config[flag] = True
    config.update(overrides)
    return config


def _hybrid_build(RKNN: Any, rknn: Any, b: TargetBuild, call: Callable[..., None], cand: Candidate) -> Any:
    """The toolkit's two-step hybrid quantization with `cand.custom_hybrid` kept out of int8; the new session."""
    cwd = Path.cwd()
    for old in [*cwd.glob("*.quantization.cfg"), *cwd.glob("*.model"), *cwd.glob("*.data")]:
        old.unlink(missing_ok=True)
    call("hybrid quantization step 1", rknn.hybrid_quantization_step1, dataset=str(b.spec.dataset),
         proposal=False, custom_hybrid=[list(r) for r in cand.custom_hybrid])
    cfg = next(cwd.glob("*.quantization.cfg"))
    stem = cfg.name[: -len(".quantization.cfg")]
    rknn.release()
    second = RKNN(verbose=False)
    try:
        call("hybrid quantization step 2", second.hybrid_quantization_step2, model_input=str(cwd / f"{stem}.model"),
             data_input=str(cwd / f"{stem}.data"), model_quantization_cfg=str(cfg))
    except BaseException:
        second.release()
        raise
    return second


def _load_and_build(RKNN: Any, rknn: Any, b: TargetBuild, call: Callable[..., None], progress: StageProgress,
                    cand: Candidate) -> Any:
    """Load and build (or hybrid-build) in `rknn`; returns the session holding the built model."""
    spec, fmt = b.spec, b.spec.fmt
    # the format's lock (TensorFlow's loaders share the fixed /tmp/optimized_tf.pb: one such build at a time)
    with fmt.toolkit_lock(b.lock_dir):
        with toolkit_progress(b.raw_log, lambda f: progress("load", f), 0.1, 0.3, LOAD_PHASES):
            try:
                fmt.load(rknn, spec, call, str(_named_for_toolkit(spec.model, fmt.toolkit_ext)), b.prepared)
            except FormatError as exc:
                raise ConversionError(exc.error, exc.hint) from None
        if cand.custom_hybrid:
            return _hybrid_build(RKNN, rknn, b, call, cand)
        stage = "quantize" if cand.quantize else "build"
        progress(stage, 0.3)
        with_dataset = (cand.quantize or cand.auto_hybrid) and spec.dataset
        hybrid = {"auto_hybrid": True} if cand.auto_hybrid else {}  # toolkits before 2.3.2 have no such argument
        with toolkit_progress(b.raw_log, lambda f: progress(stage, f), 0.3, 0.85,
                              BUILD_PHASES_INT8 if cand.quantize else BUILD_PHASES_FP16):
            call("building", rknn.build, do_quantization=cand.quantize,
                 dataset=str(spec.dataset) if with_dataset else None, **hybrid)
    return rknn


def _advised_build(b: TargetBuild, attempt: Callable[[list[str]], Any]) -> AdvisedBuild[Any]:
    """attempt(disable_rules) retried with the rules the toolkit's log says to disable."""
    try:
        return build_with_advice(attempt, LogWindow(b.raw_log), b.spec.options.disable_rules, ConversionError,
                                 loaded_toolkit_version())
    except RuleCrash as crash:  # no retry fixed it: another toolkit version may (the job's fallback)
        error, hint = rule_crash_error(crash.rule, crash.where, crash.exception, crash.tried)
        raise ConversionError(error, hint, crash={"error": error}) from None


def _build_session(RKNN: Any, b: TargetBuild, platform: str, cand: Candidate, export: Path,
                   progress: StageProgress) -> tuple[Any, float, Workaround | None]:
    """Configure, load, build (retried on the toolkit's disable_rules advice) and export one candidate to `export`;
    the live session, its build seconds and the toolkit workaround it needed (if any)."""
    call = toolkit_caller(b.raw_log, f"{b.spec.fmt.display} {b.spec.model.name}")
    started = time.monotonic()

    def attempt(disable_rules: list[str]) -> Any:
        rknn = RKNN(verbose=False)
        try:
            call("configuring", rknn.config, **_toolkit_config(b, platform, disable_rules, cand.config))
            progress("load", 0.1)
            return _load_and_build(RKNN, rknn, b, call, progress, cand)
        except BaseException:
            _release(rknn)
            raise
    built = _advised_build(b, attempt)
    rknn = built.value
    try:
        progress("export", 0.85)
        tmp = export.with_name(f".{export.name}.part")
        call("exporting", rknn.export_rknn, export_path=str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, export)
        return rknn, time.monotonic() - started, built.workaround
    except BaseException:
        _release(rknn)
        raise


def describe_rknn(path: Path) -> dict[str, Any]:
    """What the produced .rknn says about itself (format version, compiler, target, tensors), read from the file."""
    from rknn_dropbox.formats.rknnfile import RknnFileError, read_rknn_file
    try:
        return read_rknn_file(path).to_json()
    except RknnFileError as exc:
        return {"error": str(exc)}


def shape_references(spec: Any, prepared: Any, verify_dataset: Path | None) -> list[tuple[Any, Reference]]:
    """The reference at each shape set verification runs at (dynamic_input: every one; otherwise the one)."""
    sets = getattr(prepared, "verify_shapes", None) or []
    if len(sets) <= 1:
        return [(None, prepare_reference(spec, prepared, verify_dataset))]
    return [(shapes, prepare_reference(spec, replace(prepared, verify_shapes=[shapes]), verify_dataset))
            for shapes in sets]


def _verify_shapes(rknn: Any, b: TargetBuild, min_cos: float, build_seconds: float, judging: Judging
                   ) -> tuple[dict[str, Any], Reference, float]:
    """verify_session at each shape set; the combined verification (the worst set leads), that set's reference and
    the simulator's seconds."""
    per_shape, seconds = [], 0.0
    for shapes, ref in b.shape_references:
        verification, took = timed_verification(rknn, b.spec, ref, min_cos, judging, build_seconds)
        per_shape.append({"shapes": shapes, **verification})
        seconds += took
    worst = next((i for i, v in enumerate(per_shape) if v.get("status") != "passed"), 0)
    lead = {k: v for k, v in per_shape[worst].items() if k != "shapes"}
    return {**lead, "per_shape": per_shape}, b.shape_references[worst][1], round(seconds, 3)


def _refuse_unproven(workaround: Workaround | None, verification: dict[str, Any] | None, final: Path) -> None:
    """A build that needed the toolkit's workaround is delivered only when verification agrees with the source."""
    if workaround is None or verification is None or verification.get("status") in ("passed", "skipped"):
        return
    final.unlink(missing_ok=True)
    error, hint = failed_verification_story(workaround, verification)
    raise ConversionError(error, hint, crash={"error": error})  # the workaround broke it: another version may not


def _release(rknn: Any) -> None:
    try:
        rknn.release()
    except Exception:  # noqa: BLE001 - release of a failed or already released session
        pass


def _log_size(raw_log: Path) -> int:
    try:
        return raw_log.stat().st_size
    except OSError:
        return 0


def _journal(b: TargetBuild, platform: str) -> TargetJournal | NoJournal:
    return b.journal.target(platform) if b.journal is not None else NoJournal()


def _settle(RKNN: Any, b: TargetBuild, platform: str, rknn: Any, final: Path, seconds: float, build_log: str,
            workarounds: dict[str, Workaround | None]) -> TargetAccuracy:
    spec = b.spec
    o, fmt = spec.options, spec.fmt
    min_cos = threshold(o.verify_min_cosine, b.quantize or (b.prequantized and fmt.int8_threshold_when_prequantized))
    several = len(o.target_platform) > 1
    report_dir = b.output / "accuracy" / platform if several else b.output / "accuracy"
    reference = b.reference or Reference(error="no reference")
    per_shape = None
    if len(b.shape_references) > 1:  # dynamic_input: every shape set; a repair works on the worst one
        judging = Judging(b.quantize, o.verify_thresholds, final)
        per_shape, reference, verify_seconds = _verify_shapes(rknn, b, min_cos, seconds, judging)
        if per_shape.get("status") != "below_threshold":
            return TargetAccuracy(per_shape, seconds={"verify": verify_seconds})
    journal = _journal(b, platform)
    ctx = TargetContext(spec, reference, platform, b.quantize, min_cos, final, report_dir, Path.cwd(), seconds,
                        build_log, journal, configured_candidate(b))

    def build(cand: Candidate, path: Path) -> tuple[Any, float, str]:
        inject_repair_fault(b.bundle_name)
        start = _log_size(b.raw_log)
        session, seconds, workaround = _build_session(RKNN, b, platform, cand, path, lambda stage, frac: None)
        workarounds[path.name] = workaround
        journal.record_workaround(path, workaround)
        return session, seconds, log_since(b.raw_log, start, 4 << 20)
    acc = settle(rknn, ctx, build)
    if per_shape is not None and not (acc.accuracy and acc.accuracy.get("delivered")):
        acc.verification = per_shape  # the build as configured was delivered: its check at every shape set
    return acc


def _verified(RKNN: Any, b: TargetBuild, platform: str, rknn: Any, final: Path, seconds: float, log_start: int,
              first_workaround: Workaround | None) -> tuple[TargetAccuracy, Workaround | None]:
    """The accuracy step for the first build's session (released here); the delivered build's workaround."""
    acc = TargetAccuracy(None, seconds={"build": round(seconds, 3)})
    workarounds: dict[str, Workaround | None] = {}
    try:
        if b.spec.options.verify:
            acc = _settle(RKNN, b, platform, rknn, final, seconds, log_since(b.raw_log, log_start, 4 << 20), workarounds)
            acc.seconds["build"] = round(seconds, 3)
            print(f"verification {platform}: {acc.verification}")
    finally:
        _release(rknn)
    delivered = (acc.accuracy or {}).get("delivered") or 0
    return acc, workarounds.get(f"{final.name}.attempt{delivered}") if delivered else first_workaround


def _first_build(RKNN: Any, b: TargetBuild, platform: str, final: Path, progress: StageProgress
                 ) -> tuple[TargetAccuracy, Workaround | None]:
    """The build as configured and its accuracy step (repair included)."""
    journal = _journal(b, platform)
    journal.reset()
    log_start = _log_size(b.raw_log)
    first = configured_candidate(b)
    rknn, seconds, first_workaround = _build_session(RKNN, b, platform, first, final, progress)
    journal.record_workaround(final, first_workaround)
    progress("verify", 0.9)
    return _verified(RKNN, b, platform, rknn, final, seconds, log_start, first_workaround)


def build_target(RKNN: Any, b: TargetBuild, platform: str, out_name: str, progress: StageProgress
                 ) -> tuple[dict[str, Any], TargetAccuracy, Workaround | None]:
    """Build `out_name` for `platform`, verify it (repair it below the threshold); its result.json entry, the
    accuracy step's outcome and the toolkit workaround the delivered build needed (if any)."""
    print(f"--- target {platform}: building {out_name}")
    final = b.output / out_name
    journal = _journal(b, platform)
    resumed = resume_target(journal, platform, final)
    if resumed is not None:  # an earlier run's repair candidate killed the worker: its best build so far
        print(f"--- target {platform}: delivered from the attempt journal: {resumed[0].warnings[0]}")
        acc, workaround = resumed
    else:
        acc, workaround = _first_build(RKNN, b, platform, final, progress)
    _refuse_unproven(workaround, acc.verification, final)
    failure = strict_failure(acc.verification)
    if failure and b.spec.options.verify_strict:
        final.unlink(missing_ok=True)
        raise ConversionError(f"verification failed on {platform}: {failure} (verify_strict)",
                              "see conversion.log; set verify_strict = false to deliver such models with a warning")
    if failure and acc.verification and acc.verification.get("status") != "below_threshold":
        acc.warnings.append(f"{platform}: {failure}; the model was delivered unverified")
    progress("export", 1.0)
    entry = {"platform": platform, "ok": True, "file": out_name, "size": final.stat().st_size,
             "sha256": sha256_file(final), "rknn": describe_rknn(final)}
    if acc.accuracy and acc.accuracy.get("delivered"):  # a repaired build: how it was built differs from options
        entry["build_settings"] = acc.accuracy["attempts"][acc.accuracy["delivered"]]["settings"]
    return entry, acc, workaround

"""One target platform of a job: configure the toolkit, let the format load the model, build, export, verify
(and rebuild with the accuracy repair's candidates)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rknn_dropbox import __version__
from rknn_dropbox.convert.bundle import ModelSpec
from rknn_dropbox.convert.platforms import NO_FP16_PLATFORMS, dtype_platform_error
from rknn_dropbox.convert.toolkit_log import (
    BUILD_PHASES_FP16, BUILD_PHASES_INT8, LOAD_PHASES, ConversionError, toolkit_caller, toolkit_progress,
)
from rknn_dropbox.convert.accuracy import TargetAccuracy, TargetContext, settle
from rknn_dropbox.convert.verify import Reference, strict_failure, threshold
from rknn_dropbox.convert.repair import Candidate
from rknn_dropbox.formats import FormatError

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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _toolkit_config(b: TargetBuild, platform: str, overrides: dict[str, Any]) -> dict[str, Any]:
    o = b.spec.options
    config: dict[str, Any] = dict(target_platform=platform, optimization_level=o.optimization_level,
                                  quantized_dtype=o.quantized_dtype, quantized_algorithm=o.quantized_algorithm,
                                  quantized_method=o.quantized_method,
                                  custom_string=f"rknn-dropbox {__version__} job {b.job_id}")
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
        with toolkit_progress(b.raw_log, lambda f: progress(stage, f), 0.3, 0.85,
                              BUILD_PHASES_INT8 if cand.quantize else BUILD_PHASES_FP16):
            call("building", rknn.build, do_quantization=cand.quantize,
                 dataset=str(spec.dataset) if with_dataset else None, auto_hybrid=cand.auto_hybrid)
    return rknn


def _build_session(RKNN: Any, b: TargetBuild, platform: str, cand: Candidate, export: Path,
                   progress: StageProgress) -> tuple[Any, float]:
    """Configure, load, build and export one candidate to `export`; the live session and its build seconds."""
    call = toolkit_caller(b.raw_log, f"{b.spec.fmt.display} {b.spec.model.name}")
    started = time.monotonic()
    rknn = RKNN(verbose=False)
    try:
        call("configuring", rknn.config, **_toolkit_config(b, platform, cand.config))
        progress("load", 0.1)
        rknn = _load_and_build(RKNN, rknn, b, call, progress, cand)
        progress("export", 0.85)
        tmp = export.with_name(f".{export.name}.part")
        call("exporting", rknn.export_rknn, export_path=str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, export)
        return rknn, time.monotonic() - started
    except BaseException:
        _release(rknn)
        raise


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


def _log_since(raw_log: Path, offset: int) -> str:
    sys.stdout.flush()
    try:
        with open(raw_log, "rb") as fh:
            fh.seek(offset)
            return fh.read(4 << 20).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _settle(RKNN: Any, b: TargetBuild, platform: str, rknn: Any, final: Path, seconds: float, build_log: str
            ) -> TargetAccuracy:
    spec = b.spec
    o, fmt = spec.options, spec.fmt
    min_cos = threshold(o.verify_min_cosine, b.quantize or (b.prequantized and fmt.int8_threshold_when_prequantized))
    several = len(o.target_platform) > 1
    report_dir = b.output / "accuracy" / platform if several else b.output / "accuracy"
    reference = b.reference or Reference(error="no reference")
    ctx = TargetContext(spec, reference, platform, b.quantize, min_cos, final, report_dir, Path.cwd(), seconds,
                        build_log)

    def build(cand: Candidate, path: Path) -> tuple[Any, float, str]:
        start = _log_size(b.raw_log)
        session, seconds = _build_session(RKNN, b, platform, cand, path, lambda stage, frac: None)
        return session, seconds, _log_since(b.raw_log, start)
    return settle(rknn, ctx, build)


def build_target(RKNN: Any, b: TargetBuild, platform: str, out_name: str, progress: StageProgress
                 ) -> tuple[dict[str, Any], TargetAccuracy]:
    """Build `out_name` for `platform`, verify it (repair it below the threshold); its result.json entry."""
    print(f"--- target {platform}: building {out_name}")
    final = b.output / out_name
    log_start = _log_size(b.raw_log)
    first = Candidate("as configured", quantize=b.quantize)
    rknn, seconds = _build_session(RKNN, b, platform, first, final, progress)
    acc = TargetAccuracy(None, seconds={"build": round(seconds, 3)})
    try:
        progress("verify", 0.9)
        if b.spec.options.verify:
            acc = _settle(RKNN, b, platform, rknn, final, seconds, _log_since(b.raw_log, log_start))
            acc.seconds["build"] = round(seconds, 3)
            print(f"verification {platform}: {acc.verification}")
    finally:
        _release(rknn)
    failure = strict_failure(acc.verification)
    if failure and b.spec.options.verify_strict:
        final.unlink(missing_ok=True)
        raise ConversionError(f"verification failed on {platform}: {failure} (verify_strict)",
                              "see conversion.log; set verify_strict = false to deliver such models with a warning")
    if failure and acc.verification and acc.verification.get("status") != "below_threshold":
        acc.warnings.append(f"{platform}: {failure}; the model was delivered unverified")
    progress("export", 1.0)
    entry = {"platform": platform, "ok": True, "file": out_name, "size": final.stat().st_size,
             "sha256": sha256_file(final)}
    if acc.accuracy and acc.accuracy.get("delivered"):  # a repaired build: how it was built differs from options
        entry["build_settings"] = acc.accuracy["attempts"][acc.accuracy["delivered"]]["settings"]
    return entry, acc

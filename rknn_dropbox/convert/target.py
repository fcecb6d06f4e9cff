"""One target platform of a job: configure the toolkit, let the format load the model, build, export, verify."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from rknn_dropbox import __version__
from rknn_dropbox.convert.bundle import ModelSpec
from rknn_dropbox.convert.platforms import NO_FP16_PLATFORMS, dtype_platform_error
from rknn_dropbox.convert.rulefix import (
    AdvisedBuild, LogWindow, RuleCrash, Workaround, build_with_advice, failed_verification_story, rule_crash_error,
)
from rknn_dropbox.convert.toolkit_keys import toolkit_config_kwargs
from rknn_dropbox.convert.toolkit_log import (
    BUILD_PHASES_FP16, BUILD_PHASES_INT8, LOAD_PHASES, ConversionError, toolkit_caller, toolkit_progress,
)
from rknn_dropbox.convert.verify import verify_target
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


def _toolkit_config(b: TargetBuild, platform: str, disable_rules: list[str]) -> dict[str, Any]:
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
    return config


def _load_and_build(rknn: Any, b: TargetBuild, call: Callable[..., None], progress: StageProgress) -> None:
    spec, fmt = b.spec, b.spec.fmt
    # the format's lock (TensorFlow's loaders share the fixed /tmp/optimized_tf.pb: one such build at a time)
    with fmt.toolkit_lock(b.lock_dir):
        with toolkit_progress(b.raw_log, lambda f: progress("load", f), 0.1, 0.3, LOAD_PHASES):
            try:
                fmt.load(rknn, spec, call, str(_named_for_toolkit(spec.model, fmt.toolkit_ext)), b.prepared)
            except FormatError as exc:
                raise ConversionError(exc.error, exc.hint) from None
        stage = "quantize" if b.quantize else "build"
        progress(stage, 0.3)
        with toolkit_progress(b.raw_log, lambda f: progress(stage, f), 0.3, 0.85,
                              BUILD_PHASES_INT8 if b.quantize else BUILD_PHASES_FP16):
            call("building", rknn.build, do_quantization=b.quantize,
                 dataset=str(spec.dataset) if b.quantize and spec.dataset else None)


def describe_rknn(path: Path) -> dict[str, Any]:
    """What the produced .rknn says about itself (format version, compiler, target, tensors), read from the file."""
    from rknn_dropbox.formats.rknnfile import RknnFileError, read_rknn_file
    try:
        return read_rknn_file(path).to_json()
    except RknnFileError as exc:
        return {"error": str(exc)}


def _strict_failure(platform: str, verification: dict[str, Any]) -> ConversionError:
    return ConversionError(
        f"verification failed on {platform}: cosine "
        f"{', '.join(str(r['cosine']) for r in verification['outputs'])} is below verify_min_cosine "
        f"{verification['min_cosine']} (verify_strict)", "see conversion.log; set verify_strict = false to "
        "deliver such models with a warning")


def _release(rknn: Any) -> None:
    try:
        rknn.release()
    except Exception:  # noqa: BLE001 - release of a failed session
        pass


def _advised_build(RKNN: Any, b: TargetBuild, platform: str, call: Callable[..., None],
                   progress: StageProgress) -> AdvisedBuild[Any]:
    """A toolkit session configured, loaded and built; retried with the rules the toolkit's log says to disable."""
    def attempt(disable_rules: list[str]) -> Any:
        rknn = RKNN(verbose=False)
        try:
            call("configuring", rknn.config, **_toolkit_config(b, platform, disable_rules))
            progress("load", 0.1)
            _load_and_build(rknn, b, call, progress)
        except BaseException:
            _release(rknn)
            raise
        return rknn
    try:
        return build_with_advice(attempt, LogWindow(b.raw_log), b.spec.options.disable_rules, ConversionError,
                                 md.version("rknn-toolkit2"))
    except RuleCrash as crash:
        raise ConversionError(*rule_crash_error(crash.rule, crash.where, crash.exception, crash.tried)) from None


def _verify(rknn: Any, b: TargetBuild) -> dict[str, Any] | None:
    """verify_target at each of the prepared shape sets (dynamic_input: every one; the worst one leads)."""
    sets = getattr(b.prepared, "verify_shapes", None) or []
    if len(sets) <= 1:
        return verify_target(rknn, b.spec, b.prepared, b.quantize, b.prequantized)
    per_shape = []
    for shapes in sets:
        one = verify_target(rknn, b.spec, replace(b.prepared, verify_shapes=[shapes]), b.quantize, b.prequantized)
        if one is None:
            return None
        per_shape.append({"shapes": shapes, **one})
    worst = next((v for v in per_shape if v.get("status") != "passed"), per_shape[0])
    return {**{k: v for k, v in worst.items() if k != "shapes"}, "per_shape": per_shape}


def _refuse_unproven(workaround: Workaround | None, verification: dict[str, Any] | None, final: Path) -> None:
    """A build that needed the toolkit's workaround is delivered only when verification agrees with the source."""
    if workaround is None or verification is None or verification.get("status") in ("passed", "skipped"):
        return
    final.unlink(missing_ok=True)
    raise ConversionError(*failed_verification_story(workaround, verification))


def build_target(RKNN: Any, b: TargetBuild, platform: str, out_name: str, progress: StageProgress
                 ) -> tuple[dict[str, Any], dict[str, Any] | None, Workaround | None]:
    """Build `out_name` for `platform` into the output folder; its result.json target entry, verification and the
    toolkit workaround it needed (if any)."""
    spec = b.spec
    call = toolkit_caller(b.raw_log, f"{spec.fmt.display} {spec.model.name}")
    print(f"--- target {platform}: building {out_name}")
    built = _advised_build(RKNN, b, platform, call, progress)
    rknn = built.value
    try:
        progress("export", 0.85)
        tmp = b.output / f".{out_name}.part"
        call("exporting", rknn.export_rknn, export_path=str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        final = b.output / out_name
        os.replace(tmp, final)
        described = describe_rknn(final)
        progress("verify", 0.9)
        verification = _verify(rknn, b)
        if verification is not None:
            print(f"verification {platform}: {verification}")
        _refuse_unproven(built.workaround, verification, final)
        if verification and verification.get("status") == "below_threshold" and spec.options.verify_strict:
            final.unlink(missing_ok=True)
            raise _strict_failure(platform, verification)
        progress("export", 1.0)
        return ({"platform": platform, "ok": True, "file": out_name, "size": final.stat().st_size,
                 "sha256": sha256_file(final), "rknn": described}, verification, built.workaround)
    finally:
        _release(rknn)

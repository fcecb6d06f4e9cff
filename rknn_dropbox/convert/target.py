"""One target platform of a job: configure the toolkit, let the format load the model, build, export, verify."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rknn_dropbox import __version__
from rknn_dropbox.convert.bundle import ModelSpec
from rknn_dropbox.convert.platforms import NO_FP16_PLATFORMS, dtype_platform_error
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


def _toolkit_config(b: TargetBuild, platform: str) -> dict[str, Any]:
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


def _strict_failure(platform: str, verification: dict[str, Any]) -> ConversionError:
    return ConversionError(
        f"verification failed on {platform}: cosine "
        f"{', '.join(str(r['cosine']) for r in verification['outputs'])} is below verify_min_cosine "
        f"{verification['min_cosine']} (verify_strict)", "see conversion.log; set verify_strict = false to "
        "deliver such models with a warning")


def build_target(RKNN: Any, b: TargetBuild, platform: str, out_name: str, progress: StageProgress
                 ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Build `out_name` for `platform` into the output folder; its result.json target entry and verification."""
    spec = b.spec
    call = toolkit_caller(b.raw_log, f"{spec.fmt.display} {spec.model.name}")
    print(f"--- target {platform}: building {out_name}")
    rknn = RKNN(verbose=False)
    try:
        call("configuring", rknn.config, **_toolkit_config(b, platform))
        progress("load", 0.1)
        _load_and_build(rknn, b, call, progress)
        progress("export", 0.85)
        tmp = b.output / f".{out_name}.part"
        call("exporting", rknn.export_rknn, export_path=str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        final = b.output / out_name
        os.replace(tmp, final)
        progress("verify", 0.9)
        verification = verify_target(rknn, spec, b.prepared, b.quantize, b.prequantized)
        if verification is not None:
            print(f"verification {platform}: {verification}")
        if verification and verification.get("status") == "below_threshold" and spec.options.verify_strict:
            final.unlink(missing_ok=True)
            raise _strict_failure(platform, verification)
        progress("export", 1.0)
        return ({"platform": platform, "ok": True, "file": out_name, "size": final.stat().st_size,
                 "sha256": sha256_file(final)}, verification)
    finally:
        try:
            rknn.release()
        except Exception:  # noqa: BLE001 - release of a failed session
            pass

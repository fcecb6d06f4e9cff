"""The converter: runs one job's rknn-toolkit2 conversion in the worker process, its log captured per job."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import __version__
from .modelfiles import FORMAT_NAMES, BundleError, ModelSpec, inspect_bundle
from .options import ConvertOptions, OptionsError, check_fp16_platforms, effective_quantization
from .toolprogress import BUILD_PHASES_FP16, BUILD_PHASES_INT8, LOAD_PHASES, toolkit_progress
from .workarea import JobDir

ProgressFn = Callable[[str, float], None]
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


class ConversionError(Exception):
    """A conversion that failed for a reason a person can act on."""

    def __init__(self, error: str, hint: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


@dataclass
class ConversionResult:
    format: str
    targets: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    quantization: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    toolkit_version: str = ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path, root: Path) -> dict[str, Any]:
    return {"name": str(path.relative_to(root)), "size": path.stat().st_size, "sha256": sha256_file(path)}


def clean_log_text(raw: str) -> str:
    """Strip ANSI colours and keep only the last state of each carriage-return progress bar."""
    out = []
    for line in ANSI_RE.sub("", raw).split("\n"):
        if "\r" in line:
            parts = [p for p in line.split("\r") if p.strip()]
            line = parts[-1] if parts else ""
        out.append(line.rstrip())
    return "\n".join(out)


@contextlib.contextmanager
def captured_output(raw_log: Path) -> Iterator[None]:
    """Send fd 1 and 2 (Python, the toolkit's rknnLogger and its native compiler alike) to raw_log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(raw_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """The toolkit writes into cwd and release() unsets TMPDIR: contain both."""
    old_cwd = os.getcwd()
    old_tmp = os.environ.get("TMPDIR")
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp


_ERROR_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[str, str | None]]]] = [
    (re.compile(r"Not support '(\w+)' of opset-(\d+)"),
     lambda m: (f"the toolkit does not support operator {m[1]} at opset {m[2]}",
                "re-export the model with a newer opset (e.g. torch.onnx.export(..., opset_version=13)), "
                "or export it in eval mode so that training-only operators disappear")),
    (re.compile(r"[Nn]ot support (?:the )?op(?:erator)?[ :]+'?(\w+)'?"),
     lambda m: (f"the toolkit does not support operator {m[1]}", "replace the operator or use a custom op")),
    (re.compile(r"input_size_list"),
     lambda m: ("the toolkit needs input_size_list for this model",
                "add `input_size_list: [[1, 3, 224, 224]]` (one shape per input) to the sidecar")),
]


def explain_toolkit_error(message: str) -> tuple[str, str | None]:
    """Turn a toolkit exception or log line into one sentence a person understands."""
    for pattern, make in _ERROR_PATTERNS:
        m = pattern.search(message)
        if m:
            return make(m)
    last = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return (last[-1] if last else "the toolkit failed without a message"), None


def last_error_lines(raw_log: Path, n: int = 3) -> str:
    try:
        text = clean_log_text(raw_log.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""
    errs = [ln[2:].strip() for ln in text.splitlines() if ln.startswith("E ") and "Traceback" not in ln]
    return "; ".join(dict.fromkeys(errs[-n:]))


def inject_fault(fault: str | None) -> None:
    """Test-only: make this worker die the ways the toolkit's native code does."""
    if not fault or os.environ.get("RKNN_DROPBOX_FAULT_INJECTION") != "1":
        return
    if fault == "segfault":
        import ctypes
        ctypes.string_at(0)
    elif fault == "abort":
        os.abort()
    elif fault == "exit":
        os._exit(1)
    elif fault == "hang":
        time.sleep(10**6)
    elif fault == "oom":
        hog = []
        while True:
            hog.append(bytearray(64 * 1024 * 1024))
    elif fault == "raise":
        raise RuntimeError("injected fault")
    elif fault == "slow":
        time.sleep(float(os.environ.get("RKNN_DROPBOX_FAULT_SLOW_SECONDS", "5")))


def _call(step: str, fn: Callable[..., int], raw_log: Path, spec: ModelSpec, **kwargs: Any) -> None:
    try:
        ret = fn(**kwargs)
    except ConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - the toolkit raises anything; we explain what we can
        error, hint = explain_toolkit_error(str(exc) or type(exc).__name__)
        raise ConversionError(f"{step} failed: {error}", hint) from exc
    if ret != 0:
        detail = last_error_lines(raw_log) or f"return code {ret}"
        error, hint = explain_toolkit_error(detail)
        raise ConversionError(f"{step} failed ({FORMAT_NAMES.get(spec.format, spec.format)} "
                              f"{spec.model.name}): {error}", hint)


def _load(rknn: Any, spec: ModelSpec, raw_log: Path) -> None:
    o = spec.options
    m = str(spec.model)
    if spec.format == "onnx":
        _call("loading", rknn.load_onnx, raw_log, spec, model=m, inputs=o.inputs, outputs=o.outputs,
              input_size_list=o.input_size_list)
    elif spec.format == "pytorch":
        if not o.input_size_list:
            raise ConversionError(f"{spec.model.name} is TorchScript, which needs its input shapes",
                                  "add `input_size_list: [[1, 3, 224, 224]]` (one shape per input) to the sidecar")
        _call("loading", rknn.load_pytorch, raw_log, spec, model=m, input_size_list=o.input_size_list)
    elif spec.format == "tflite":
        _require_tensorflow(spec)
        _call("loading", rknn.load_tflite, raw_log, spec, model=m)
    elif spec.format == "tensorflow":
        _require_tensorflow(spec)
        if not (o.inputs and o.outputs and o.input_size_list):
            raise ConversionError(f"{spec.model.name} is a TensorFlow graph: the sidecar must name inputs, "
                                  "outputs and input_size_list",
                                  "add e.g. `inputs: [input]`, `outputs: [output]`, "
                                  "`input_size_list: [[1, 224, 224, 3]]` to the sidecar")
        _call("loading", rknn.load_tensorflow, raw_log, spec, tf_pb=m, inputs=o.inputs, outputs=o.outputs,
              input_size_list=o.input_size_list)
    elif spec.format == "darknet":
        _call("loading", rknn.load_darknet, raw_log, spec, model=m, weight=str(spec.weights))
    elif spec.format == "caffe":
        _call("loading", rknn.load_caffe, raw_log, spec, model=m, blobs=str(spec.weights))
    else:  # pragma: no cover
        raise ConversionError(f"unknown format {spec.format}")


def _require_tensorflow(spec: ModelSpec) -> None:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise ConversionError(f"{FORMAT_NAMES[spec.format]} models need TensorFlow, which is not installed",
                              "install rknn-dropbox[tensorflow] (scripts/setup-venv.sh --tensorflow)") from None


def is_prequantized(spec: ModelSpec) -> bool:
    if spec.format == "onnx":
        import onnx
        model = onnx.load(str(spec.model), load_external_data=False)
        return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul")
                   for n in model.graph.node)
    return False


def convert_job(job: JobDir, name: str, defaults: ConvertOptions, progress: ProgressFn) -> ConversionResult:
    """Convert the claimed bundle in `job` into job.output; raises ConversionError / BundleError."""
    from rknn.api import RKNN  # imported once per worker process, never in the daemon

    import importlib.metadata as md
    toolkit_version = md.version("rknn-toolkit2")
    job.output.mkdir(parents=True, exist_ok=True)
    raw_log = job.root / "conversion.raw"
    scratch = job.root / "tmp"
    try:
        with captured_output(raw_log), working_directory(scratch):
            print(f"rknn-dropbox {__version__}: job {job.job_id} ({name}), rknn-toolkit2 {toolkit_version}")
            progress("analyze", 2.0)
            try:
                spec = inspect_bundle(job.input, name, defaults, scratch)
            except BundleError as exc:
                raise ConversionError(exc.error, exc.hint) from None
            inject_fault(spec.options.fault)
            prequantized = is_prequantized(spec)
            try:
                quantize, why = effective_quantization(spec.options, spec.dataset is not None, prequantized)
                check_fp16_platforms(spec.options, quantize)
            except OptionsError as exc:
                raise ConversionError(str(exc)) from None
            print(f"model: {FORMAT_NAMES[spec.format]} {spec.model.name}; quantization: {why}")
            result = ConversionResult(format=spec.format, toolkit_version=toolkit_version,
                                      options=spec.options.to_json())
            result.inputs = [file_entry(f, job.input) for f in spec.files]
            result.quantization = {"quantized": quantize, "dtype": spec.options.quantized_dtype if quantize else
                                   ("prequantized" if prequantized else "float16"),
                                   "dataset_size": spec.dataset_size if quantize else 0, "reason": why}
            if not quantize:
                result.warnings.append(why) if "no calibration dataset" in why else None
            platforms = spec.options.target_platform
            share = 90.0 / len(platforms)
            for i, platform in enumerate(platforms):
                base = 5.0 + i * share
                out_name = (f"{name}.rknn" if len(platforms) == 1 else f"{name}.{platform}.rknn")
                try:
                    result.targets.append(_build_target(RKNN, spec, platform, quantize, job, out_name, raw_log,
                                                        lambda stage, frac: progress(stage, base + frac * share)))
                except ConversionError as exc:
                    if len(platforms) == 1:
                        raise
                    result.targets.append({"platform": platform, "ok": False, "error": exc.error,
                                           "hint": exc.hint})
                    result.warnings.append(f"{platform}: {exc.error}")
            if not any(t.get("ok") for t in result.targets):
                errors = "; ".join(f"{t['platform']}: {t['error']}" for t in result.targets)
                raise ConversionError(f"every target failed: {errors}")
            progress("export", 97.0)
            return result
    finally:
        finish_log(job)


def _build_target(RKNN: Any, spec: ModelSpec, platform: str, quantize: bool, job: JobDir, out_name: str,
                  raw_log: Path, progress: Callable[[str, float], None]) -> dict[str, Any]:
    o = spec.options
    print(f"--- target {platform}: building {out_name}")
    rknn = RKNN(verbose=False)
    try:
        config: dict[str, Any] = dict(target_platform=platform, optimization_level=o.optimization_level,
                                      quantized_dtype=o.quantized_dtype, quantized_algorithm=o.quantized_algorithm,
                                      quantized_method=o.quantized_method,
                                      custom_string=f"rknn-dropbox {__version__} job {job.job_id}")
        if o.mean_values is not None:
            config["mean_values"] = o.mean_values
        if o.std_values is not None:
            config["std_values"] = o.std_values
        _call("configuring", rknn.config, raw_log, spec, **config)
        progress("load", 0.1)
        with toolkit_progress(raw_log, lambda f: progress("load", f), 0.1, 0.3, LOAD_PHASES):
            _load(rknn, spec, raw_log)
        stage = "quantize" if quantize else "build"
        progress(stage, 0.3)
        with toolkit_progress(raw_log, lambda f: progress(stage, f), 0.3, 0.85,
                              BUILD_PHASES_INT8 if quantize else BUILD_PHASES_FP16):
            _call("building", rknn.build, raw_log, spec, do_quantization=quantize,
                  dataset=str(spec.dataset) if quantize and spec.dataset else None)
        progress("export", 0.85)
        tmp = job.output / f".{out_name}.part"
        _call("exporting", rknn.export_rknn, raw_log, spec, export_path=str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        final = job.output / out_name
        os.replace(tmp, final)
        progress("export", 1.0)
        return {"platform": platform, "ok": True, "file": out_name, "size": final.stat().st_size,
                "sha256": sha256_file(final)}
    finally:
        try:
            rknn.release()
        except Exception:  # noqa: BLE001 - release of a failed session
            pass


def finish_log(job: JobDir) -> None:
    """Turn the job's raw captured output into conversion.log (also after a worker died mid-job)."""
    raw_log, log = job.root / "conversion.raw", job.log
    try:
        text = raw_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(clean_log_text(text), encoding="utf-8")
    raw_log.unlink(missing_ok=True)


def describe_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()

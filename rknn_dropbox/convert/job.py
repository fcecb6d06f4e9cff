"""The converter: runs one job's rknn-toolkit2 conversion in the worker process, its log captured per job."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rknn_dropbox import __version__
from rknn_dropbox.convert.bundle import FORMAT_NAMES, BundleError, ModelSpec, inspect_bundle
from rknn_dropbox.convert.cache import ResultCache, cache_key
from rknn_dropbox.convert.options import ConvertOptions, OptionsError, check_fp16_platforms, effective_quantization
from rknn_dropbox.convert.platforms import NO_FP16_PLATFORMS, dtype_platform_error
from rknn_dropbox.convert.toolprogress import BUILD_PHASES_FP16, BUILD_PHASES_INT8, LOAD_PHASES, toolkit_progress
from rknn_dropbox.intake.workarea import JobDir
from rknn_dropbox.joblog import clean_log_text, finish_log

ProgressFn = Callable[[str, float], None]
TF_FORMATS = ("tensorflow", "savedmodel", "checkpoint", "tflite")


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
    extra: dict[str, Any] = field(default_factory=dict)  # more result.json fields: cached, cache_of, verification


@dataclass(frozen=True)
class JobSettings:
    """Daemon-level settings a worker needs for a job (sent in the order)."""
    cache_dir: Path | None = None
    cache_max_bytes: int = 0
    lock_dir: Path | None = None  # where the cross-worker TensorFlow lock lives (the state dir)

    @classmethod
    def from_order(cls, order: dict[str, Any]) -> "JobSettings":
        cache_dir = order.get("cache_dir")
        lock_dir = order.get("lock_dir")
        return cls(Path(cache_dir) if cache_dir else None, int(order.get("cache_max_bytes") or 0),
                   Path(lock_dir) if lock_dir else None)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path, root: Path, unpacked_root: Path | None = None) -> dict[str, Any]:
    if path.is_relative_to(root) or unpacked_root is None:
        name = str(path.relative_to(root))
    else:
        name = f"(unpacked) {path.relative_to(unpacked_root)}"
    return {"name": name, "size": path.stat().st_size, "sha256": sha256_file(path)}


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
    (re.compile(r"operators are not implemented: \[([^\]]*)\]"),
     lambda m: (f"the toolkit cannot convert this TorchScript model: {m[1]} not implemented (a torch.jit.script "
                "model?)", "trace the model instead: torch.jit.trace(model, example).save('model.pt')")),
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
        if hint is None:  # the exception's last line may only be a fallback's failure: the log has the cause
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                logged = explain_toolkit_error(raw_log.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                logged = (error, None)
            if logged[1] is not None:
                error, hint = logged
        raise ConversionError(f"{step} failed: {error}", hint) from exc
    if ret != 0:
        detail = last_error_lines(raw_log) or f"return code {ret}"
        error, hint = explain_toolkit_error(detail)
        raise ConversionError(f"{step} failed ({FORMAT_NAMES.get(spec.format, spec.format)} "
                              f"{spec.model.name}): {error}", hint)


_TOOLKIT_EXTS = {"onnx": ".onnx", "tflite": ".tflite", "pytorch": ".pt"}


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


def _load(rknn: Any, spec: ModelSpec, raw_log: Path, tf_graph: Any = None) -> None:
    o = spec.options
    m = str(_named_for_toolkit(spec.model, _TOOLKIT_EXTS.get(spec.format)))
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
    elif spec.format in ("tensorflow", "savedmodel", "checkpoint"):
        assert tf_graph is not None
        _call("loading", rknn.load_tensorflow, raw_log, spec, tf_pb=str(tf_graph.pb), inputs=tf_graph.inputs,
              outputs=tf_graph.outputs, input_size_list=tf_graph.input_size_list)
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


def prepare_tf_graph(spec: ModelSpec, scratch: Path) -> Any:
    """Frozen .pb / SavedModel / checkpoint -> a TFGraph for load_tensorflow (freezing in this worker)."""
    if spec.format not in ("tensorflow", "savedmodel", "checkpoint"):
        return None
    _require_tensorflow(spec)
    from rknn_dropbox.formats.tfgraph import TFGraphError, freeze_checkpoint, freeze_saved_model, prepare_frozen
    o = spec.options
    try:
        if spec.format == "tensorflow":
            graph = prepare_frozen(spec.model, o.inputs, o.outputs, o.input_size_list)
        elif spec.format == "savedmodel":
            graph = freeze_saved_model(spec.model, scratch / "frozen_savedmodel.pb", o.inputs, o.outputs,
                                       o.input_size_list)
        else:
            graph = freeze_checkpoint(spec.model, scratch / "frozen_checkpoint.pb", o.inputs, o.outputs,
                                      o.input_size_list)
    except TFGraphError as exc:
        raise ConversionError(str(exc), "name the graph's tensors in the sidecar: `inputs: [x]`, `outputs: [y]`, "
                              "`input_size_list: [[1, 224, 224, 3]]`") from None
    print(f"TensorFlow graph: inputs {graph.inputs} {graph.input_size_list}, outputs {graph.outputs} ({graph.found})")
    return graph


def is_prequantized(spec: ModelSpec) -> bool:
    if spec.format == "tflite":
        import numpy as np
        try:
            import tensorflow as tf
        except ImportError:
            return False
        interp = tf.lite.Interpreter(model_path=str(spec.model))
        return any(d["dtype"] in (np.int8, np.uint8) for d in interp.get_tensor_details()
                   if d["name"] and d["quantization"][0])
    if spec.onnx is not None:
        return spec.onnx.prequantized
    return False


def _target_name(name: str, platforms: tuple[str, ...], platform: str) -> str:
    return f"{name}.rknn" if len(platforms) == 1 else f"{name}.{platform}.rknn"


def _target_error(spec: ModelSpec, platform: str, quantize: bool) -> str | None:
    """The toolkit's quantized_dtype / fp16 rules for one platform, checked before its build."""
    if quantize:
        return dtype_platform_error(spec.options.quantized_dtype, platform)
    if platform in NO_FP16_PLATFORMS:
        return f"{platform} cannot run fp16 models: give a calibration dataset for an int8 build"
    return None


def _from_cache(cache: ResultCache, key: str, name: str, platforms: tuple[str, ...], job: JobDir,
                result: ConversionResult) -> bool:
    hit = cache.lookup(key)
    if hit is None:
        return False
    meta = hit.meta
    targets, copied = [], []
    for target in meta["targets"]:
        entry = dict(target)
        if entry.get("ok"):
            out_name = _target_name(name, platforms, entry["platform"])
            tmp = job.output / f".{out_name}.part"
            if not cache.copy_out(hit, entry["platform"], tmp, entry.get("sha256")):
                for done in copied:  # evicted meanwhile, or damaged (a power loss): a miss, converted afresh
                    done.unlink(missing_ok=True)
                print(f"cache entry {key[:16]} unusable (evicted or damaged): converting afresh")
                return False
            os.replace(tmp, job.output / out_name)
            copied.append(job.output / out_name)
            entry["file"] = out_name
        targets.append(entry)
    result.targets.extend(targets)
    result.warnings.extend(meta.get("warnings", []))
    result.extra.update({"cached": True, "cache_of": meta.get("job_id"), "cache_key": key})
    if meta.get("verification") is not None:
        result.extra["verification"] = meta["verification"]
    print(f"cache hit {key[:16]}: outputs of job {meta.get('job_id')} ({meta.get('name')}) reused")
    return True


def convert_job(job: JobDir, name: str, defaults: ConvertOptions, progress: ProgressFn,
                settings: JobSettings = JobSettings()) -> ConversionResult:
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
            if spec.format in TF_FORMATS:
                _require_tensorflow(spec)
            prequantized = is_prequantized(spec)
            try:
                quantize, why = effective_quantization(spec.options, spec.dataset is not None, prequantized)
                if len(spec.options.target_platform) == 1:
                    check_fp16_platforms(spec.options, quantize)
            except OptionsError as exc:
                raise ConversionError(str(exc)) from None
            print(f"model: {FORMAT_NAMES[spec.format]} {spec.model.name}; quantization: {why}")
            result = ConversionResult(format=spec.format, toolkit_version=toolkit_version,
                                      options=spec.options.to_public_json())
            unpacked = spec.root if spec.root and not spec.root.is_relative_to(job.input) else None
            result.inputs = [file_entry(f, job.input, unpacked) for f in spec.files]
            result.quantization = {"quantized": quantize, "dtype": spec.options.quantized_dtype if quantize else
                                   ("prequantized" if prequantized else "float16"),
                                   "dataset_size": spec.dataset_size if quantize else 0, "reason": why}
            if not quantize and "no calibration dataset" in why:
                result.warnings.append(why)
            platforms = spec.options.target_platform
            cache = ResultCache(settings.cache_dir, settings.cache_max_bytes) if settings.cache_dir else None
            key = None
            if cache is not None:
                config = {**spec.options.to_json(), "format": spec.format, "quantize": quantize}
                config.pop("dataset", None)  # a path; the samples' bytes go into the key instead
                config.pop("callback_url", None)  # where to report, not how to convert
                # a file's role, not its name: the same model dropped under another name is the same key
                roles = [(str(f.relative_to(spec.model)) if spec.format == "savedmodel" else
                          f.name[len(f.name.split(".")[0]):].lower(), f) for f in spec.model_files]
                key = cache_key(roles, config, toolkit_version,
                                spec.dataset_samples if quantize else [])
                if _from_cache(cache, key, name, platforms, job, result):
                    progress("export", 97.0)
                    return result
            result.extra["cached"] = False
            tf_graph = prepare_tf_graph(spec, scratch)
            share = 90.0 / len(platforms)
            verifications: dict[str, Any] = {}
            for i, platform in enumerate(platforms):
                base = 5.0 + i * share
                out_name = _target_name(name, platforms, platform)
                try:
                    reason = _target_error(spec, platform, quantize)
                    if reason:
                        raise ConversionError(reason, "drop this platform from target_platform or change "
                                              "quantized_dtype")
                    target, verification = _build_target(
                        RKNN, spec, platform, quantize, prequantized, job, out_name, raw_log, tf_graph, settings,
                        lambda stage, frac: progress(stage, base + frac * share))
                    result.targets.append(target)
                    if verification is not None:
                        verifications[platform] = verification
                        if verification.get("status") == "below_threshold":
                            result.warnings.append(
                                f"{platform}: verification below verify_min_cosine "
                                f"{verification['min_cosine']}: cosine "
                                f"{', '.join(str(o['cosine']) for o in verification['outputs'])}")
                except ConversionError as exc:
                    if len(platforms) == 1:
                        raise
                    result.targets.append({"platform": platform, "ok": False, "error": exc.error,
                                           "hint": exc.hint})
                    result.warnings.append(f"{platform}: {exc.error}")
            if not any(t.get("ok") for t in result.targets):
                errors = "; ".join(f"{t['platform']}: {t['error']}" for t in result.targets)
                raise ConversionError(f"every target failed: {errors}")
            if verifications:
                result.extra["verification"] = verifications
            if cache is not None and key and all(t.get("ok") for t in result.targets) and not any(
                    v.get("status") in ("below_threshold", "error") for v in verifications.values()):
                files = {t["platform"]: job.output / t["file"] for t in result.targets}
                cache.store(key, {"job_id": job.job_id, "name": name, "targets": result.targets,
                                  "warnings": result.warnings, "verification": verifications or None}, files)
            progress("export", 97.0)
            return result
    finally:
        finish_log(job)


def _verify(rknn: Any, spec: ModelSpec, quantize: bool, tf_graph: Any, prequantized_tflite: bool
            ) -> dict[str, Any] | None:
    """Run the simulator on one input and compare with the source framework; None when verify is off."""
    from rknn_dropbox.convert import verify as v
    o = spec.options
    if not o.verify:
        return None
    min_cos = v.threshold(o.verify_min_cosine, quantize or prequantized_tflite)
    if spec.format in ("darknet", "caffe"):
        return v.Verification("skipped", reason=f"no {FORMAT_NAMES[spec.format]} runtime here; the weights were "
                              "checked against the network description instead").to_json()
    try:
        names: list[str] | None = None
        if spec.onnx is not None:
            shapes = o.input_size_list or spec.onnx.input_shapes
            names = spec.onnx.output_names
            channels_last, ref_name = False, "onnxruntime"
        elif spec.format == "pytorch":
            shapes, channels_last, ref_name = list(o.input_size_list or []), False, "torch"
        elif spec.format == "tflite":
            import tensorflow as tf
            interp = tf.lite.Interpreter(model_path=str(spec.model))
            shapes = [list(map(int, d["shape"])) for d in interp.get_input_details()]
            names = [d["name"] for d in interp.get_output_details()]
            channels_last, ref_name = True, "tensorflow (tf.lite)"
        else:
            shapes, names = tf_graph.input_size_list, tf_graph.outputs
            channels_last, ref_name = True, "tensorflow"
        if not shapes or any(not d or any(x <= 0 for x in d) for d in shapes):
            return v.Verification("skipped", reason="the input shapes are not fixed").to_json()
        raw, norm, source = v.make_inputs(shapes, o.mean_values, o.std_values, channels_last,
                                          spec.dataset if quantize else None)
        if rknn.init_runtime() != 0:
            return v.Verification("error", ref_name, reason="init_runtime() of the simulator failed").to_json()
        dequantize = None
        if spec.format == "tflite":  # int8 in/out: the simulator takes and returns the quantized integers
            raw, dequantize = v.tflite_simulator_io(spec.model, raw, norm)
        got = rknn.inference(inputs=raw, data_format="nhwc" if channels_last else "nchw")
        if got is None:
            return v.Verification("error", ref_name, reason="the simulator returned no outputs").to_json()
        if dequantize is not None:
            got = dequantize(got)
        if spec.format == "onnx":
            want = v.reference_onnx(spec.model, norm)
        elif spec.format == "pytorch":
            want = v.reference_torch(spec.model, norm)
        elif spec.format == "tflite":
            want = v.reference_tflite(spec.model, norm)
        else:
            want = v.reference_tf_graph(tf_graph.pb, tf_graph.inputs, tf_graph.outputs, norm)
        rows, ok = v.compare(got, want, names, min_cos)
        return v.Verification("passed" if ok else "below_threshold", ref_name, source, min_cos, rows).to_json()
    except Exception as exc:  # noqa: BLE001 - a verification problem must not lose a good .rknn
        return v.Verification("error", reason=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}").to_json()


def _build_target(RKNN: Any, spec: ModelSpec, platform: str, quantize: bool, prequantized: bool, job: JobDir,
                  out_name: str, raw_log: Path, tf_graph: Any, settings: JobSettings,
                  progress: Callable[[str, float], None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from rknn_dropbox.formats.tfgraph import toolkit_tf_lock
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
        for flag in ("quant_img_RGB2BGR", "single_core_mode", "compress_weight"):
            if getattr(o, flag):
                config[flag] = True
        _call("configuring", rknn.config, raw_log, spec, **config)
        progress("load", 0.1)
        # load_tensorflow (and the TFLite path) write the fixed /tmp/optimized_tf.pb: one such build at a time
        lock = toolkit_tf_lock(settings.lock_dir) if spec.format in TF_FORMATS else contextlib.nullcontext()
        with lock:
            with toolkit_progress(raw_log, lambda f: progress("load", f), 0.1, 0.3, LOAD_PHASES):
                _load(rknn, spec, raw_log, tf_graph)
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
        progress("verify", 0.9)
        verification = _verify(rknn, spec, quantize, tf_graph, spec.format == "tflite" and prequantized)
        if verification is not None:
            print(f"verification {platform}: {verification}")
        if verification and verification.get("status") == "below_threshold" and o.verify_strict:
            final.unlink(missing_ok=True)
            raise ConversionError(
                f"verification failed on {platform}: cosine "
                f"{', '.join(str(r['cosine']) for r in verification['outputs'])} is below verify_min_cosine "
                f"{verification['min_cosine']} (verify_strict)", "see conversion.log; set verify_strict = false to "
                "deliver such models with a warning")
        progress("export", 1.0)
        return ({"platform": platform, "ok": True, "file": out_name, "size": final.stat().st_size,
                 "sha256": sha256_file(final)}, verification)
    finally:
        try:
            rknn.release()
        except Exception:  # noqa: BLE001 - release of a failed session
            pass


def describe_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()

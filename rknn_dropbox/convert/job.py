"""One job's conversion in the worker process: inspect the bundle, decide quantization, build every target
(or reuse the cache), the toolkit's output captured into the job's log.  Orchestration only: the formats know
their models, target.py one platform's build, toolkit_log.py the toolkit's output."""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rknn_dropbox import __version__
from rknn_dropbox.convert.bundle import ModelSpec, inspect_bundle
from rknn_dropbox.convert.calibration import read_dataset_lines
from rknn_dropbox.convert.repair import delivered_quantization
from rknn_dropbox.convert.cache import ResultCache, cache_key
from rknn_dropbox.convert.faults import inject_fault, injected_toolkit_crash
from rknn_dropbox.options import ConvertOptions, OptionsError, check_fp16_platforms, effective_quantization
from rknn_dropbox.convert.accuracy import TargetAccuracy
from rknn_dropbox.convert.attempts import AttemptJournal, RepairCrash
from rknn_dropbox.convert.simulator import bound_heap_growth, peak_rss_mb, reset_peak_rss
from rknn_dropbox.convert.target import (
    TargetBuild, build_target, shape_references, target_error, target_name,
)
from rknn_dropbox.convert.toolkit_log import (  # noqa: F401 (re-exported: the worker and the CLI import them here)
    ConversionError, captured_output, working_directory,
)
from rknn_dropbox.filehash import sha256_file
from rknn_dropbox.formats import FormatError
from rknn_dropbox.intake.workarea import JobDir
from rknn_dropbox.joblog import finish_log

ProgressFn = Callable[[str, float], None]


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
    default_toolkit: str | None = None  # the first of [toolkits] versions
    toolkit: str | None = None  # build with exactly this version (the daemon's handover, or a fallback)
    crashed: tuple[dict[str, str], ...] = ()  # the fallback's reason: [{"toolkit": "2.5.0", "error": "..."}]
    repair_crash: RepairCrash | None = None  # the previous run's worker died in this accuracy-repair candidate

    @classmethod
    def from_order(cls, order: dict[str, Any]) -> "JobSettings":
        cache_dir = order.get("cache_dir")
        lock_dir = order.get("lock_dir")
        return cls(Path(cache_dir) if cache_dir else None, int(order.get("cache_max_bytes") or 0),
                   Path(lock_dir) if lock_dir else None, order.get("default_toolkit"), order.get("toolkit"),
                   tuple(order.get("crashed") or ()), RepairCrash.from_order(order.get("repair_crash")))


@dataclass(frozen=True)
class Quantization:
    """Whether this job quantizes, and why; whether the model came quantized."""
    quantize: bool
    prequantized: bool
    why: str


def file_entry(path: Path, root: Path, unpacked_root: Path | None = None) -> dict[str, Any]:
    if path.is_relative_to(root) or unpacked_root is None:
        name = str(path.relative_to(root))
    else:
        name = f"(unpacked) {path.relative_to(unpacked_root)}"
    return {"name": name, "size": path.stat().st_size, "sha256": sha256_file(path)}


@contextlib.contextmanager
def _as_conversion_error() -> Iterator[None]:
    """A bundle, format or option problem found in the worker becomes the job's ConversionError."""
    try:
        yield
    except FormatError as exc:
        raise ConversionError(exc.error, exc.hint) from None
    except OptionsError as exc:
        raise ConversionError(str(exc)) from None


def _toolkit_for(spec: ModelSpec, settings: JobSettings) -> tuple[Any, str]:
    """Import the toolkit this job builds with; ToolkitMismatch when this process holds another version."""
    from rknn_dropbox.toolkits import ToolkitError, ToolkitMismatch, job_toolkit, load_toolkit
    try:
        toolkit = job_toolkit(spec.options.toolkit_version, spec.options.runtime_version, settings.toolkit,
                              settings.default_toolkit)
    except ToolkitError as exc:
        raise ConversionError(str(exc), "see `rknn-dropbox toolkits` for the installed versions") from None
    try:
        return load_toolkit(toolkit)
    except ToolkitMismatch as exc:
        print(f"this process has rknn-toolkit2 {exc.loaded}; the job needs {toolkit.version}: handing it over to "
              f"a process of that version")
        raise


def _decide_quantization(spec: ModelSpec) -> Quantization:
    if spec.fmt.needs_tensorflow:
        from rknn_dropbox.formats.tensorflow import require_tensorflow
        require_tensorflow(spec.fmt.display)
    prequantized = spec.fmt.is_prequantized(spec)
    quantize, why = effective_quantization(spec.options, spec.dataset is not None, prequantized)
    if len(spec.options.target_platform) == 1:
        check_fp16_platforms(spec.options, quantize)
    return Quantization(quantize, prequantized, why)


def _new_result(spec: ModelSpec, q: Quantization, job: JobDir, toolkit_version: str) -> ConversionResult:
    o = spec.options
    result = ConversionResult(format=spec.format, toolkit_version=toolkit_version, options=o.to_public_json())
    unpacked = spec.root if spec.root and not spec.root.is_relative_to(job.input) else None
    result.inputs = [file_entry(f, job.input, unpacked) for f in spec.files]
    result.quantization = {"quantized": q.quantize, "dtype": o.quantized_dtype if q.quantize else
                           ("prequantized" if q.prequantized else "float16"),
                           "dataset_size": spec.dataset_size if q.quantize else 0, "reason": q.why}
    if not q.quantize and "no calibration dataset" in q.why:
        result.warnings.append(q.why)
    return result


def _cache_key(spec: ModelSpec, q: Quantization, toolkit_version: str) -> str:
    config = {**spec.options.to_json(), "format": spec.format, "quantize": q.quantize}
    config.pop("dataset", None)  # a path; the samples' bytes go into the key instead
    config.pop("callback_url", None)  # where to report, not how to convert
    config.pop("callback_hosts", None)
    config.pop("verify_dataset", None)  # a path: its samples' bytes decide what repair delivers, so they go in
    for how_chosen in ("toolkit_version", "runtime_version"):  # the toolkit used is in the key itself
        config.pop(how_chosen, None)
    roles = [(spec.fmt.cache_role(f, spec.model), f) for f in spec.model_files]
    held_out = [p for line in read_dataset_lines(spec.verify_dataset) for p in line] if spec.verify_dataset else []
    return cache_key(roles, config, toolkit_version, (spec.dataset_samples if q.quantize else []) + held_out)


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
            out_name = target_name(name, platforms, entry["platform"])
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
    result.warnings.extend(w for w in meta.get("warnings", []) if w not in result.warnings)
    if meta.get("workarounds"):
        result.extra["workarounds"] = meta["workarounds"]
    result.extra.update({"cached": True, "cache_of": meta.get("job_id"), "cache_key": key})
    stored = meta.get("quantization")  # what was delivered (a repair may have changed it); older entries: rebuilt
    result.quantization = stored if isinstance(stored, dict) else delivered_quantization(result.quantization, targets)
    if meta.get("verification") is not None:
        result.extra["verification"] = meta["verification"]
    if meta.get("accuracy") is not None:  # the per-layer report stays with the job that wrote it: not named here
        result.extra["accuracy"] = {p: {k: v for k, v in block.items() if k != "report"} if isinstance(block, dict)
                                    else block for p, block in meta["accuracy"].items()}
    if meta.get("outputs_layout") is not None:  # a YOLO head's delivered layout (prepare does not run on a hit)
        result.extra["outputs_layout"] = meta["outputs_layout"]
    print(f"cache hit {key[:16]}: outputs of job {meta.get('job_id')} ({meta.get('name')}) reused")
    return True


@dataclass
class TargetsOutcome:
    """What the targets' builds add to result.json beside their entries."""
    verification: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)   # build, verify, analysis, repair (summed)

    def add(self, platform: str, acc: TargetAccuracy, result: ConversionResult) -> None:
        if acc.verification is not None:
            self.verification[platform] = acc.verification
        if acc.accuracy:
            self.accuracy[platform] = acc.accuracy
        for k, v in acc.seconds.items():
            self.seconds[k] = round(self.seconds.get(k, 0.0) + v, 3)
        v = acc.verification or {}
        if v.get("status") == "below_threshold":
            verdict = v.get("verdict") or {}
            result.warnings.append(f"{platform}: the model fails its task check: {verdict.get('summary')} "
                                   f"({verdict.get('metric')} below its threshold; see verification.{platform})")
        result.warnings.extend(acc.warnings)


def _record_workaround(result: ConversionResult, workaround: dict[str, Any], warning: str) -> None:
    """result.json "workarounds" (once per distinct workaround, however many targets needed it) and its warning."""
    applied = result.extra.setdefault("workarounds", [])
    if workaround not in applied:
        applied.append(workaround)
        result.warnings.append(warning)


def _build_targets(RKNN: Any, build: TargetBuild, name: str, result: ConversionResult,
                   progress: ProgressFn) -> TargetsOutcome:
    """Every target platform in turn; with several, one that fails is recorded and the others still build."""
    platforms = build.spec.options.target_platform
    share = 90.0 / len(platforms)
    outcome = TargetsOutcome()
    for i, platform in enumerate(platforms):
        base = 5.0 + i * share
        try:
            reason = target_error(build.spec, platform, build.quantize)
            if reason:
                raise ConversionError(reason, "drop this platform from target_platform or change quantized_dtype")
            target, acc, workaround = build_target(
                RKNN, build, platform, target_name(name, platforms, platform),
                lambda stage, frac: progress(stage, base + frac * share))
            result.targets.append(target)
            if workaround is not None:
                _record_workaround(result, workaround.to_json(), workaround.warning())
            outcome.add(platform, acc, result)
        except ConversionError as exc:
            if len(platforms) == 1:
                raise
            result.targets.append({"platform": platform, "ok": False, "error": exc.error, "hint": exc.hint,
                                   "toolkit_crash": exc.crash is not None})
            result.warnings.append(f"{platform}: {exc.error}")
    if not any(t.get("ok") for t in result.targets):
        errors = "; ".join(f"{t['platform']}: {t['error']}" for t in result.targets)
        crashed = all(t.get("toolkit_crash") for t in result.targets)  # another version may build them all
        raise ConversionError(f"every target failed: {errors}", crash={"error": errors} if crashed else None)
    return outcome


def _convert(job: JobDir, name: str, defaults: ConvertOptions, progress: ProgressFn,
             settings: JobSettings) -> ConversionResult:
    scratch = job.root / "tmp"
    progress("analyze", 2.0)
    with _as_conversion_error():
        spec = inspect_bundle(job.input, name, defaults, scratch)
    RKNN, toolkit_version = _toolkit_for(spec, settings)  # imported in workers, never in the daemon
    print(f"rknn-toolkit2 {toolkit_version}")
    with _as_conversion_error():
        inject_fault(name)
        q = _decide_quantization(spec)
    if injected_toolkit_crash(name, toolkit_version):
        raise ConversionError("building failed: IndexError: list index out of range (injected)",
                              crash={"error": "building failed: IndexError (injected)", "toolkit": toolkit_version,
                                     "toolkit_version": spec.options.toolkit_version,
                                     "runtime_version": spec.options.runtime_version})
    print(f"model: {spec.fmt.display} {spec.model.name}; quantization: {q.why}")
    result = _new_result(spec, q, job, toolkit_version)
    if settings.crashed:
        from rknn_dropbox.toolkits import fallback_warning
        result.warnings.append(fallback_warning(toolkit_version, list(settings.crashed)))
        result.extra["toolkit_fallback"] = {"built_with": toolkit_version, "crashed": list(settings.crashed)}
    cache = ResultCache(settings.cache_dir, settings.cache_max_bytes) if settings.cache_dir else None
    key = _cache_key(spec, q, toolkit_version) if cache is not None else None
    if cache is not None and key and _from_cache(cache, key, name, spec.options.target_platform, job, result):
        _write_predict_script(job, spec, result)
        progress("export", 97.0)
        return result
    result.extra["cached"] = False
    with _as_conversion_error():
        prepared = spec.fmt.prepare(spec, scratch, q.quantize)
    result.warnings.extend(spec.fmt.warnings(spec, prepared, q.quantize))
    layout = getattr(prepared, "yolo_layout", None)
    if layout is not None:
        result.extra["outputs_layout"] = layout.to_json()
    # the samples, shared by the targets; the source runtime runs on them when verification asks, after the build
    references = shape_references(spec, prepared, spec.verify_dataset) if spec.options.verify else []
    reference = references[0][1] if references else None
    build = TargetBuild(spec, q.quantize, q.prequantized, prepared, job.output, job.job_id,
                        job.root / "conversion.raw", settings.lock_dir, reference, references,
                        AttemptJournal.open(job.root, settings.repair_crash), name)
    try:
        outcome = _build_targets(RKNN, build, name, result, progress)
    except ConversionError as exc:
        if exc.crash is not None:  # what the fallback needs to pick the next version (toolkits.next_fallback)
            exc.crash.update(toolkit=toolkit_version, toolkit_version=spec.options.toolkit_version,
                             runtime_version=spec.options.runtime_version)
        raise
    _record_accuracy(result, outcome, references)
    if cache is not None and key:
        _store_in_cache(cache, key, job, name, result, outcome)
    _write_predict_script(job, spec, result)
    progress("export", 97.0)
    return result


def _write_predict_script(job: JobDir, spec: ModelSpec, result: ConversionResult) -> None:
    """predict.py beside the delivered models: the board's RKNNLite, this build's input and outputs decoded."""
    from rknn_dropbox.convert.predict_script import predict_config, write_predict_script
    built = [t for t in result.targets if t.get("ok") and isinstance(t.get("rknn"), dict)]
    if not built or not built[0]["rknn"].get("inputs"):
        return
    rknn = built[0]["rknn"]
    config = predict_config(result.targets, rknn["inputs"][0]["shape"], result.extra.get("outputs_layout"),
                            [o["shape"] for o in rknn.get("outputs") or []], spec.options.quant_img_RGB2BGR)
    write_predict_script(job.output, config)


def _record_accuracy(result: ConversionResult, outcome: TargetsOutcome,
                     references: list[tuple[Any, Any]]) -> None:
    """The targets' verification, accuracy step and timings into the result (quantization as delivered)."""
    if outcome.verification:
        result.extra["verification"] = outcome.verification
    if outcome.accuracy:
        result.extra["accuracy"] = outcome.accuracy
        result.quantization = delivered_quantization(result.quantization, result.targets)
    if references:
        outcome.seconds["reference"] = round(sum(ref.seconds for _, ref in references), 3)
    result.extra["timings"] = outcome.seconds


def _store_in_cache(cache: ResultCache, key: str, job: JobDir, name: str, result: ConversionResult,
                    outcome: TargetsOutcome) -> None:
    """A job whose every target built and verified is reused by the next identical drop."""
    verifications = outcome.verification
    if not all(t.get("ok") for t in result.targets) or any(
            v.get("status") in ("below_threshold", "error") for v in verifications.values()):
        return
    files = {t["platform"]: job.output / t["file"] for t in result.targets}
    cache.store(key, {"job_id": job.job_id, "name": name, "targets": result.targets,
                      "warnings": result.warnings, "verification": verifications or None,
                      "quantization": result.quantization,
                      "accuracy": outcome.accuracy or None, "workarounds": result.extra.get("workarounds"),
                      "outputs_layout": result.extra.get("outputs_layout")}, files)


def convert_job(job: JobDir, name: str, defaults: ConvertOptions, progress: ProgressFn,
                settings: JobSettings = JobSettings()) -> ConversionResult:
    """Convert the claimed bundle in `job` into job.output; raises ConversionError, or ToolkitMismatch when the
    job needs another toolkit version than this process has loaded."""
    job.output.mkdir(parents=True, exist_ok=True)
    try:
        with captured_output(job.root / "conversion.raw"), working_directory(job.root / "tmp"):
            print(f"rknn-dropbox {__version__}: job {job.job_id} ({name})")
            bound_heap_growth()  # freed tensors go back to the system (see convert/simulator.py)
            reset_peak_rss()  # the worker lives on: this job's own high-water mark
            started = time.monotonic()
            result = _convert(job, name, defaults, progress, settings)
            result.extra.setdefault("timings", {})["total"] = round(time.monotonic() - started, 3)
            peak = peak_rss_mb()
            if peak is not None:
                result.extra["peak_rss_mb"] = peak
            return result
    finally:
        finish_log(job)


def describe_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()

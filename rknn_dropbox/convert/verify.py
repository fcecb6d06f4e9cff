"""Verified conversions: the toolkit's simulator against the source framework's runtime, as cosine per output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INT8_MIN_COSINE = 0.98
FP16_MIN_COSINE = 0.999
SEED = 20240601


@dataclass
class Verification:
    """What result.json records under "verification" for one target."""
    status: str                                   # passed | below_threshold | skipped | error
    reference: str | None = None                  # onnxruntime | torch | tensorflow
    input: str | None = None                      # the calibration sample used, or "seeded random"
    min_cosine: float | None = None               # the threshold applied
    outputs: list[dict[str, Any]] = field(default_factory=list)  # {"name", "shape", "cosine"}
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != []}


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


def threshold(configured: float | None, quantized: bool) -> float:
    if configured is not None:
        return configured
    return INT8_MIN_COSINE if quantized else FP16_MIN_COSINE


def _per_input(values: list[list[float]] | None, i: int, channels: int, axis_last: bool) -> np.ndarray | None:
    if not values:
        return None
    row = values[i] if i < len(values) else values[-1]
    arr = np.asarray(row, dtype=np.float32)
    if arr.size == 1:
        return arr.reshape(())
    if arr.size != channels:
        return None
    return arr.reshape((1, 1, 1, channels) if axis_last else (1, channels, 1, 1))


def make_inputs(shapes: list[list[int]], mean: list[list[float]] | None, std: list[list[float]] | None,
                channels_last: bool, dataset: Path | None) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Raw inputs (what the .rknn takes: before mean/std) and normalized ones (what the source model takes)."""
    raw: list[np.ndarray] = []
    source = "seeded random"
    first_line: list[str] = []
    if dataset is not None:
        try:
            lines = [ln.split() for ln in dataset.read_text(encoding="utf-8").splitlines() if ln.strip()]
            first_line = lines[0] if lines else []
        except OSError:
            first_line = []
    rng = np.random.default_rng(SEED)
    for i, shape in enumerate(shapes):
        x = None
        if i < len(first_line) and first_line[i].endswith(".npy"):
            try:
                arr = np.load(first_line[i]).astype(np.float32)
                if arr.size == int(np.prod(shape)):
                    x = arr.reshape(shape)
                    source = f"calibration sample {Path(first_line[i]).name}"
            except (OSError, ValueError):
                x = None
        if x is None:
            scale = 255.0 if std and max(max(r) for r in std) > 1.5 else 1.0
            x = (rng.random(tuple(shape), dtype=np.float32) * scale).astype(np.float32)
        raw.append(x)
    norm = []
    for i, x in enumerate(raw):
        y = x.astype(np.float32)
        if x.ndim == 4:
            channels = x.shape[-1] if channels_last else x.shape[1]
            m = _per_input(mean, i, channels, channels_last)
            s = _per_input(std, i, channels, channels_last)
            if m is not None:
                y = y - m
            if s is not None:
                y = y / s
        norm.append(y.astype(np.float32))
    return raw, norm, source


def compare(rknn_outputs: list[np.ndarray], ref_outputs: list[np.ndarray], names: list[str] | None,
            min_cos: float) -> tuple[list[dict[str, Any]], bool]:
    rows = []
    ok = True
    for i, (got, want) in enumerate(zip(rknn_outputs, ref_outputs)):
        got = np.asarray(got)
        want = np.asarray(want)
        if got.size == want.size and got.shape != want.shape and got.ndim == 4 and want.ndim == 4:
            # the toolkit may hand back NHWC for an NCHW model or the reverse
            if got.transpose(0, 3, 1, 2).shape == want.shape:
                alt = got.transpose(0, 3, 1, 2)
            else:
                alt = got.transpose(0, 2, 3, 1)
            c = max(cosine(got, want), cosine(alt, want))
        else:
            c = cosine(got, want)
        rows.append({"name": names[i] if names and i < len(names) else f"output{i}", "shape": list(want.shape),
                     "cosine": round(c, 6)})
        if not c >= min_cos:
            ok = False
    if len(rknn_outputs) != len(ref_outputs):
        ok = False
    return rows, ok


def _error_reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1][:200] if text else ''}"


def verify_target(rknn: Any, spec: Any, prepared: Any, quantize: bool, prequantized: bool) -> dict[str, Any] | None:
    """Run the simulator on one input and compare with the format's reference runtime; None when verify is off."""
    o, fmt = spec.options, spec.fmt
    if not o.verify:
        return None
    min_cos = threshold(o.verify_min_cosine, quantize or (prequantized and fmt.int8_threshold_when_prequantized))
    skipped = fmt.skip_verification()
    if skipped:
        return Verification("skipped", reason=skipped).to_json()
    try:
        shapes, names = fmt.verify_io(spec, prepared)
        if not shapes or any(not d or any(x <= 0 for x in d) for d in shapes):
            return Verification("skipped", reason="the input shapes are not fixed").to_json()
        raw, norm, source = make_inputs(shapes, o.mean_values, o.std_values, fmt.channels_last,
                                        spec.dataset if quantize else None)
        ref_name = fmt.reference_name
        if rknn.init_runtime() != 0:
            return Verification("error", ref_name, reason="init_runtime() of the simulator failed").to_json()
        sim_inputs, convert_outputs = fmt.simulator_io(spec, raw, norm)
        got = rknn.inference(inputs=sim_inputs, data_format="nhwc" if fmt.channels_last else "nchw")
        if got is None:
            return Verification("error", ref_name, reason="the simulator returned no outputs").to_json()
        if convert_outputs is not None:
            got = convert_outputs(got)
        rows, ok = compare(got, fmt.reference(spec, prepared, norm), names, min_cos)
        return Verification("passed" if ok else "below_threshold", ref_name, source, min_cos, rows).to_json()
    except Exception as exc:  # noqa: BLE001 - a verification problem must not lose a good .rknn
        return Verification("error", reason=_error_reason(exc)).to_json()

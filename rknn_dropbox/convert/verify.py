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


def reference_onnx(model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


def reference_torch(model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch
    m = torch.jit.load(str(model), map_location="cpu").eval()
    with torch.no_grad():
        out = m(*[torch.from_numpy(x) for x in inputs])
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [o.detach().numpy() for o in outs]


def _tflite_quantize(detail: dict[str, Any], x: np.ndarray) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _tflite_dequantize(detail: dict[str, Any], y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if detail["dtype"] in (np.int8, np.uint8) and np.issubdtype(y.dtype, np.integer):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y


def reference_tflite(model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import tensorflow as tf
    interp = tf.lite.Interpreter(model_path=str(model))
    interp.allocate_tensors()
    for detail, x in zip(interp.get_input_details(), inputs):
        interp.set_tensor(detail["index"], _tflite_quantize(detail, x))
    interp.invoke()
    return [_tflite_dequantize(d, interp.get_tensor(d["index"])) for d in interp.get_output_details()]


def tflite_simulator_io(model: Path, raw: list[np.ndarray], norm: list[np.ndarray]
                        ) -> tuple[list[np.ndarray], Any]:
    """For a TFLite model with int8/uint8 inputs/outputs (full-integer, pre-quantized) the .rknn keeps those
    dtypes: the simulator wants the quantized integers (the model's own input scale/zero point, not floats)
    and hands back raw integers.  Returns the simulator inputs and a function dequantizing its outputs."""
    import tensorflow as tf
    interp = tf.lite.Interpreter(model_path=str(model))
    ins, outs = interp.get_input_details(), interp.get_output_details()
    sim = [_tflite_quantize(d, n) if d["dtype"] in (np.int8, np.uint8) else r
           for d, r, n in zip(ins, raw, norm)] + list(raw[len(ins):])

    def dequantize(got: list[np.ndarray]) -> list[np.ndarray]:
        return [_tflite_dequantize(outs[i], y) if i < len(outs) else y for i, y in enumerate(got)]
    return sim, dequantize


def reference_tf_graph(pb: Path, input_names: list[str], output_names: list[str],
                       inputs: list[np.ndarray]) -> list[np.ndarray]:
    import tensorflow as tf
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(pb.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(gd, name="")
    def tensor(n: str) -> str:
        return n if ":" in n else f"{n}:0"
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run([tensor(n) for n in output_names],
                        {tensor(n): x for n, x in zip(input_names, inputs)})


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

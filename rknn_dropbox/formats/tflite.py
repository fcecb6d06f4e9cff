"""TFLite: recognising a TFL3 flatbuffer under any name, prequantized (int8) models, loading, tf.lite reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ContextManager

from rknn_dropbox.formats.base import Format, FormatError, ToolkitCall


def _interpreter(model: Path) -> Any:
    import tensorflow as tf
    return tf.lite.Interpreter(model_path=str(model))


def _quantize(detail: dict[str, Any], x: Any) -> Any:
    import numpy as np
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _dequantize(detail: dict[str, Any], y: Any) -> Any:
    import numpy as np
    y = np.asarray(y)
    if detail["dtype"] in (np.int8, np.uint8) and np.issubdtype(y.dtype, np.integer):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y


class TFLite(Format):
    name, display, family = "tflite", "TFLite", "tflite"
    extensions = (".tflite",)
    toolkit_ext = ".tflite"
    channels_last = True
    needs_tensorflow = True
    reference_name = "tensorflow (tf.lite)"
    int8_threshold_when_prequantized = True

    def sniff(self, head: bytes, text: str, path: Path) -> bool:
        return len(head) >= 8 and head[4:8] == b"TFL3"

    def check(self, model: Path, weights: Path | None) -> Any:
        with open(model, "rb") as fh:
            head = fh.read(8)
        if not self.sniff(head, "", model):
            raise FormatError(f"{model.name} is not a TFLite model (no TFL3 flatbuffer identifier)",
                              "the file may be truncated or of another format: export or copy it again")
        return None

    def is_prequantized(self, spec: Any) -> bool:
        import numpy as np
        try:
            interp = _interpreter(spec.model)
        except ImportError:
            return False
        return any(d["dtype"] in (np.int8, np.uint8) for d in interp.get_tensor_details()
                   if d["name"] and d["quantization"][0])

    def toolkit_lock(self, lock_dir: Path | None) -> ContextManager[None]:
        from rknn_dropbox.formats.tensorflow import toolkit_tf_lock
        return toolkit_tf_lock(lock_dir)

    def load(self, rknn: Any, spec: Any, call: ToolkitCall, model: str, prepared: Any) -> None:
        call("loading", rknn.load_tflite, model=model)

    def verify_io(self, spec: Any, prepared: Any) -> tuple[list[list[int]], list[str] | None]:
        interp = _interpreter(spec.model)
        return ([list(map(int, d["shape"])) for d in interp.get_input_details()],
                [d["name"] for d in interp.get_output_details()])

    def simulator_io(self, spec: Any, raw: list[Any], norm: list[Any]) -> tuple[list[Any], Any]:
        """With int8/uint8 inputs/outputs (full-integer, pre-quantized) the .rknn keeps those dtypes: the
        simulator wants the quantized integers (the model's own scale/zero point) and hands back integers."""
        import numpy as np
        interp = _interpreter(spec.model)
        ins, outs = interp.get_input_details(), interp.get_output_details()
        sim = [_quantize(d, n) if d["dtype"] in (np.int8, np.uint8) else r
               for d, r, n in zip(ins, raw, norm)] + list(raw[len(ins):])

        def dequantize(got: list[Any]) -> list[Any]:
            return [_dequantize(outs[i], y) if i < len(outs) else y for i, y in enumerate(got)]
        return sim, dequantize

    def reference(self, spec: Any, prepared: Any, inputs: list[Any]) -> list[Any]:
        interp = _interpreter(spec.model)
        interp.allocate_tensors()
        for detail, x in zip(interp.get_input_details(), inputs):
            interp.set_tensor(detail["index"], _quantize(detail, x))
        interp.invoke()
        return [_dequantize(d, interp.get_tensor(d["index"])) for d in interp.get_output_details()]


FORMAT = TFLite()

"""ONNX: recognising a ModelProto, reading its graph once (shapes, outputs, QDQ nodes), loading, onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rknn_dropbox.formats.base import Format, FormatError, ToolkitCall

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul")


@dataclass
class OnnxFacts:
    """What the converter needs to know of an ONNX graph, read once when the file is checked."""
    input_shapes: list[list[int]]     # graph inputs that are not initializers
    output_names: list[str]
    prequantized: bool                # QuantizeLinear/DequantizeLinear/QLinear* nodes


class Onnx(Format):
    name, display, family = "onnx", "ONNX", "onnx"
    extensions = (".onnx",)
    toolkit_ext = ".onnx"
    reference_name = "onnxruntime"

    def sniff(self, head: bytes, text: str, path: Path) -> bool:
        return head[:1] == b"\x08" and b"\x12" in head[:64]  # ModelProto: field 1 (ir_version) varint first

    def check(self, model: Path, weights: Path | None) -> OnnxFacts:
        import onnx  # the worker has onnx (a toolkit dependency); the daemon never calls this
        hint = "the file may be truncated or not ONNX at all: export or copy it again"
        try:
            m = onnx.load(str(model), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any decode failure means "not a valid ONNX file"
            raise FormatError(f"{model.name} is not a valid ONNX model ({type(exc).__name__}: "
                              f"{str(exc)[:200] or 'cannot parse'})", hint) from None
        if not m.graph.node:
            raise FormatError(f"{model.name} is not a valid ONNX model: its graph has no nodes", hint)
        initializers = {i.name for i in m.graph.initializer}
        return OnnxFacts(
            input_shapes=[[d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input
                          if i.name not in initializers],
            output_names=[o.name for o in m.graph.output],
            prequantized=any(n.op_type in _QDQ_OPS for n in m.graph.node))

    def is_prequantized(self, spec: Any) -> bool:
        return spec.facts is not None and spec.facts.prequantized

    def load(self, rknn: Any, spec: Any, call: ToolkitCall, model: str, prepared: Any) -> None:
        o = spec.options
        call("loading", rknn.load_onnx, model=model, inputs=o.inputs, outputs=o.outputs,
             input_size_list=o.input_size_list)

    def verify_io(self, spec: Any, prepared: Any) -> tuple[list[list[int]], list[str] | None]:
        return spec.options.input_size_list or spec.facts.input_shapes, spec.facts.output_names

    def reference(self, spec: Any, prepared: Any, inputs: list[Any]) -> list[Any]:
        return self.references(spec, prepared, [inputs])[0]

    def references(self, spec: Any, prepared: Any, samples: list[list[Any]]) -> list[list[Any]]:
        import onnxruntime as ort
        options = ort.SessionOptions()  # basic graph rewrites only: a reference, created once per job (2-3x faster)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        sess = ort.InferenceSession(str(spec.model), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return [list(sess.run(None, dict(zip(names, inputs)))) for inputs in samples]


FORMAT = Onnx()

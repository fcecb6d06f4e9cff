"""ONNX: recognising a ModelProto, reading its graph once (shapes, outputs, QDQ nodes, traits), loading, onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rknn_dropbox.formats.base import Format, FormatError, OutputFacts, ToolkitCall
from rknn_dropbox.formats.graphtraits import GraphTraits, data_dependent_error, graph_traits
from rknn_dropbox.formats.onnx_outputs import GraphOutput, graph_outputs
from rknn_dropbox.formats.onnx_shapes import ShapeError, ShapePlan, plan_input_shapes

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul")


@dataclass
class OnnxFacts:
    """What the converter needs to know of an ONNX graph, read once when the file is checked."""
    input_shapes: list[list[int]]     # graph inputs that are not initializers
    output_names: list[str]
    prequantized: bool                # QuantizeLinear/DequantizeLinear/QLinear* nodes
    traits: GraphTraits | None = None  # symbolic input dims, data-dependent shapes, a YOLO head
    graph_outputs: list[GraphOutput] | None = None  # what makes each output (for the task checks)
    head: Any = None                   # convert/yolo's UltralyticsHead when the graph ends in one


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
        traits = graph_traits(m)
        return OnnxFacts(
            input_shapes=[[d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input
                          if i.name not in initializers],
            output_names=[o.name for o in m.graph.output],
            prequantized=any(n.op_type in _QDQ_OPS for n in m.graph.node), traits=traits,
            graph_outputs=graph_outputs(m), head=_ultralytics_head(m))

    def is_prequantized(self, spec: Any) -> bool:
        return spec.facts is not None and spec.facts.prequantized

    def prepare(self, spec: Any, scratch: Path, quantize: bool = False) -> ShapePlan:
        """The input shapes, and an Ultralytics head's output layout (an edited graph in `scratch`)."""
        plan = self._plan_shapes(spec)
        if spec.facts.head is not None:
            plan.yolo_layout = _yolo_layout(spec, plan, scratch, quantize)
        return plan

    def _plan_shapes(self, spec: Any) -> ShapePlan:
        """Refuse a graph whose output shapes depend on its data; decide the input shapes (a symbolic batch: 1)."""
        o, traits = spec.options, spec.facts.traits
        if traits.data_dependent and not o.outputs:  # `outputs:` may cut the graph before them
            raise FormatError(*data_dependent_error(traits.data_dependent))
        if o.inputs:  # the user names the inputs (a cut graph): their shapes as given
            return ShapePlan(o.input_size_list, o.inputs, o.dynamic_input,
                             list(o.dynamic_input or ([o.input_size_list] if o.input_size_list else [])))
        try:
            return plan_input_shapes(traits.inputs, o.input_size_list, o.dynamic_input)
        except ShapeError as exc:
            raise FormatError(exc.error, exc.hint) from None

    def warnings(self, spec: Any, prepared: Any, quantize: bool) -> list[str]:
        layout = getattr(prepared, "yolo_layout", None)
        if layout is None:
            return list(prepared.warnings)
        from rknn_dropbox.convert.yolo.notes import layout_notes
        return list(prepared.warnings) + layout_notes(spec.facts.head, layout, quantize,
                                                      spec.options.yolo_outputs is not None)

    def load(self, rknn: Any, spec: Any, call: ToolkitCall, model: str, prepared: ShapePlan) -> None:
        call("loading", rknn.load_onnx, model=str(_edited(prepared) or model), inputs=prepared.inputs,
             outputs=spec.options.outputs, input_size_list=prepared.input_size_list)

    def output_facts(self, spec: Any, prepared: Any) -> OutputFacts:
        """The graph's outputs (matched by name: an edited head's new outputs have none), the stock head's
        concatenated output when it is kept, the layout delivered."""
        head, edited = spec.facts.head, _edited(prepared)
        return OutputFacts(spec.facts.graph_outputs, [head.output] if head is not None and not edited else [],
                           getattr(prepared, "yolo_layout", None))

    def verify_io(self, spec: Any, prepared: ShapePlan) -> tuple[list[list[int]], list[str] | None]:
        shapes = prepared.verify_shapes[0] if prepared.verify_shapes else spec.facts.input_shapes
        layout = getattr(prepared, "yolo_layout", None)
        return shapes, layout.outputs if _edited(prepared) else spec.facts.output_names

    def reference(self, spec: Any, prepared: Any, inputs: list[Any]) -> list[Any]:
        return self.reference_runner(spec, prepared)(inputs)

    def reference_runner(self, spec: Any, prepared: Any) -> Callable[[list[Any]], list[Any]]:
        import onnxruntime as ort
        options = ort.SessionOptions()  # basic graph rewrites only: a reference, created once per job (2-3x faster)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # an edited YOLO head: the reference runs the same graph the toolkit loaded (like compared with like)
        sess = ort.InferenceSession(str(_edited(prepared) or spec.model), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return lambda inputs: list(sess.run(None, dict(zip(names, inputs))))


def _edited(prepared: Any) -> Path | None:
    """The edited graph a YOLO layout wrote (None: the dropped model as it is)."""
    layout = getattr(prepared, "yolo_layout", None)
    return layout.model if layout is not None else None


def _ultralytics_head(model: Any) -> Any:
    from rknn_dropbox.convert.yolo.head import recognise_head  # worker side only (check runs in the worker)
    return recognise_head(model)


def _yolo_layout(spec: Any, plan: ShapePlan, scratch: Path, quantize: bool) -> Any:
    """The head's layout for this build, its edited graph written to `scratch` (FormatError when it cannot be)."""
    import onnx
    from rknn_dropbox.convert.yolo.layouts import LayoutError, head_layout, planned_layout
    shapes = plan.input_size_list or (plan.verify_shapes[0] if plan.verify_shapes else None)
    try:
        choice = planned_layout(spec.options, spec.facts.head, quantize, shapes, bool(plan.dynamic_input))
    except LayoutError as exc:
        raise FormatError(exc.error, exc.hint) from None
    if spec.options.outputs:
        return None  # the user cut the graph: its outputs are theirs
    try:
        return head_layout(choice, onnx.load(str(spec.model)), spec.facts.head, shapes, scratch,
                           spec.model.stem)
    except LayoutError as exc:
        raise FormatError(exc.error, exc.hint) from None
    except Exception as exc:  # noqa: BLE001 - an edit this graph does not take: said, with the way around it
        raise FormatError(f"the {spec.facts.head.family} head could not be rewritten for yolo_outputs: {choice} "
                          f"({type(exc).__name__}: {str(exc)[:200]})",
                          "set yolo_outputs: keep in the sidecar to build the export as it is") from None


FORMAT = Onnx()

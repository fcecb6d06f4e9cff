"""What each ONNX graph output is: the op that makes it, the activation it ends in, the Concat parts it joins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS_THROUGH = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast")
ACTIVATIONS = ("Softmax", "Sigmoid", "LogSoftmax")


@dataclass(frozen=True)
class GraphOutput:
    name: str
    shape: list[int]                   # 0 where the graph leaves a dim symbolic
    producer: str | None = None        # the op making it, looking through PASS_THROUGH ops
    activation: str | None = None      # the last of ACTIVATIONS on that path, if it ends in one
    concat_axis: int | None = None     # a Concat makes it: along this axis
    concat_sizes: list[int] = field(default_factory=list)  # each input's size along that axis (0: unknown)


def _dims(value_info: Any) -> list[int]:
    return [int(d.dim_value) if d.HasField("dim_value") else 0 for d in value_info.type.tensor_type.shape.dim]


def _inferred_shapes(model: Any) -> dict[str, list[int]]:
    """Every value's shape as onnx's shape inference knows it (empty when inference fails)."""
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model))
    except Exception:  # noqa: BLE001 - shapes are a help for the checks, never a reason to fail
        return {}
    g = inferred.graph
    return {v.name: _dims(v) for v in [*g.value_info, *g.output, *g.input]}


WEIGHT_ELEMENTS = 1024  # initializers larger than this are weights: shape inference needs their dims, not their data


def _without_weights(model: Any) -> Any:
    """A copy whose large initializers keep their dims and type but not their data (10x faster shape inference on
    resnet18; the small ones, Reshape targets and the like, stay whole)."""
    import onnx
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for init in light.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        if count > WEIGHT_ELEMENTS:
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                init.ClearField(field)
    return light


def graph_outputs(model: Any) -> list[GraphOutput]:
    """One GraphOutput per graph output, in order."""
    producer = {o: n for n in model.graph.node for o in n.output}
    shapes = _inferred_shapes(model)
    out = []
    for o in model.graph.output:
        node, activation = producer.get(o.name), None
        while node is not None and node.op_type in PASS_THROUGH + ACTIVATIONS:
            if node.op_type in ACTIVATIONS and activation is None:
                activation = node.op_type
            if node.op_type in ACTIVATIONS or not node.input:
                break
            node = producer.get(node.input[0])
        op = node.op_type if node is not None else None
        axis, sizes = None, []
        if op == "Concat" and activation is None:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            sizes = [_size(shapes.get(i), axis) for i in node.input]
        out.append(GraphOutput(o.name, shapes.get(o.name) or _dims(o), op, activation, axis, sizes))
    return out


def _size(shape: list[int] | None, axis: int) -> int:
    if not shape or not -len(shape) <= axis < len(shape):
        return 0
    return shape[axis]

"""Input shapes for an ONNX build: a symbolic batch becomes 1, other symbolic dims need the user's shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rknn_dropbox.formats.graphtraits import GraphInput

SIDE_EXAMPLE = 640


class ShapeError(ValueError):
    """Shapes the build cannot go ahead with; error and hint are sentences for error.json."""

    def __init__(self, error: str, hint: str) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


@dataclass
class ShapePlan:
    """What load_onnx / config get, and the shape sets verification runs at."""
    input_size_list: list[list[int]] | None = None   # for load_onnx (None: the graph's own fixed shapes)
    inputs: list[str] | None = None                   # load_onnx needs the input names with input_size_list
    dynamic_input: list[list[list[int]]] | None = None  # for rknn.config (the user's shape sets)
    verify_shapes: list[list[list[int]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    yolo_layout: Any = None  # convert/yolo's YoloLayout for an Ultralytics head (its edited model, if any)


def _example(inp: GraphInput) -> list[int]:
    dims = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else SIDE_EXAMPLE) for i, d in enumerate(inp.dims)]
    if len(dims) == 4 and not (isinstance(inp.dims[1], int) and inp.dims[1] > 0):
        dims[1] = 3
    return dims


def _check_set(inputs: list[GraphInput], shapes: list[list[int]], key: str) -> None:
    if len(shapes) != len(inputs):
        raise ShapeError(f"{key} gives {len(shapes)} shape(s) per set but the model has {len(inputs)} input(s): "
                         f"{', '.join(i.describe() for i in inputs)}", f"give one shape per input in every {key} set")
    for inp, shape in zip(inputs, shapes):
        fixed_ok = len(shape) == len(inp.dims) and all(
            not (isinstance(d, int) and d > 0) or d == s for d, s in zip(inp.dims, shape))
        if not fixed_ok:
            raise ShapeError(f"{key} shape {shape} does not fit input {inp.describe()}",
                             "keep the input's rank and its fixed sizes; only its symbolic dims may change")


def plan_input_shapes(inputs: list[GraphInput], input_size_list: list[list[int]] | None,
                      dynamic_input: list[list[list[int]]] | None) -> ShapePlan:
    """Decide the shapes of an ONNX build (ShapeError when a symbolic dim other than the batch is left open)."""
    if dynamic_input:
        for shapes in dynamic_input:
            _check_set(inputs, shapes, "dynamic_input")
        # the toolkit takes symbolic dims from dynamic_input itself; load_onnx gets no input_size_list then
        return ShapePlan(dynamic_input=dynamic_input, verify_shapes=list(dynamic_input))
    names = [i.name for i in inputs]
    if input_size_list:
        _check_set(inputs, input_size_list, "input_size_list")
        return ShapePlan(input_size_list=input_size_list, inputs=names, verify_shapes=[input_size_list])
    open_dims = [i for i in inputs if [p for p in i.symbolic if p != 0] or (i.symbolic and len(i.dims) < 2)]
    if open_dims:
        named = "; ".join(f"input {i.describe()} has symbolic dims "
                          f"{', '.join(str(i.dims[p]) for p in i.symbolic)}" for i in open_dims)
        example = [_example(i) for i in inputs]
        raise ShapeError(f"{named}: the NPU needs fixed input shapes",
                         f"add `input_size_list: {example}` to the sidecar (one shape per input), or "
                         f"`dynamic_input: [{example}, ...]` for several sizes (each set is verified)")
    batch = [i for i in inputs if i.symbolic == [0]]
    shapes = [_example(i) for i in inputs]
    plan = ShapePlan(input_size_list=shapes if batch else None, inputs=names if batch else None,
                     verify_shapes=[shapes])
    for i in batch:
        plan.warnings.append(f"input {i.describe()} has a symbolic batch dimension ({i.dims[0]}): built for batch 1 "
                             "(the NPU runs one fixed shape; give input_size_list for another batch size)")
    return plan

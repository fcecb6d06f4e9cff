"""Which check each output gets, from the graph (producer, activation, Concat parts) and the output's shape."""

from __future__ import annotations

from typing import Any, Sequence

from rknn_dropbox.convert.checks.base import Check, ConcatPart, OutputInfo
from rknn_dropbox.convert.checks.classes import ClassScoresCheck
from rknn_dropbox.convert.checks.detection import DetectionCheck
from rknn_dropbox.convert.checks.pixelmap import PixelClassesCheck, ProbabilityMapCheck
from rknn_dropbox.convert.checks.sequence import SequenceCheck
from rknn_dropbox.convert.checks.tensor import TensorCheck


def output_infos(names: Sequence[str], shapes: Sequence[Sequence[int]], graph: Sequence[Any] | None,
                 steps: Sequence[float | None] | None) -> list[OutputInfo]:
    """OutputInfo per output: the reference's actual shape, what the graph says (formats/onnx_outputs.GraphOutput,
    matched by name), and the delivered .rknn's int8 step."""
    by_name = {g.name: g for g in graph or []}
    infos = []
    for i, (name, shape) in enumerate(zip(names, shapes)):
        g = by_name.get(name)
        step = steps[i] if steps and i < len(steps) else None
        parts: list[ConcatPart] = []
        if g is not None and g.concat_axis is not None and g.concat_sizes and all(g.concat_sizes) \
                and len(g.concat_sizes) > 1:
            start = 0
            for size in g.concat_sizes:
                parts.append(ConcatPart(g.concat_axis, start, start + size))
                start += size
            if start != shape[g.concat_axis]:
                parts = []
        infos.append(OutputInfo(name, list(shape), g.producer if g else None, g.activation if g else None, parts,
                                step))
    return infos


def _head_traits(layout: Any) -> dict[str, Any]:
    """The task and keypoint shape a YoloLayout says (a stock head without one: a detect head)."""
    if layout is None:
        return {}
    kpt = getattr(layout, "keypoints_shape", None)
    return {"task": getattr(layout, "task", "detect"), **({"keypoints_shape": tuple(kpt)} if kpt else {})}


def _yolo_check(infos: list[OutputInfo], layout: Any, concat_names: Sequence[str], input_hw: tuple[int, int]
                ) -> DetectionCheck | None:
    """The detection head: a yolo_layout the format made (split / rknn_model_zoo), or a stock Concat output."""
    names = [i.name for i in infos]
    traits = _head_traits(layout)
    if layout is not None and getattr(layout, "layout", "keep") != "keep":
        wanted = list(layout.outputs)
        if layout.layout == "split":  # boxes, scores (+ keypoints / angle); mask coefficients, protos: tensors
            wanted = wanted[:3] if layout.task in ("pose", "obb") else wanted[:2]
        if not all(n in names for n in wanted):
            return None
        return DetectionCheck([names.index(n) for n in wanted], layout.layout, int(layout.num_classes), input_hw,
                              **traits)
    for name in concat_names:
        if name in names:
            info = infos[names.index(name)]
            classes = info.parts[1].stop - info.parts[1].start if len(info.parts) > 1 else \
                int(getattr(layout, "num_classes", 0) or info.shape[-2] - 4)
            if len(info.shape) == 3 and info.parts and info.parts[0].stop == 4 and classes >= 1:
                return DetectionCheck([names.index(name)], "keep", classes, input_hw, **traits)
    return None


def check_for(i: int, info: OutputInfo, input_hw: tuple[int, int]) -> Check:
    """The check one output gets by its shape and activation (anything else: the range-relative error)."""
    shape = [d for d in info.shape]
    size = 1
    for d in shape:
        size *= max(d, 1)
    if info.parts:
        return TensorCheck([i])
    if len(shape) == 2 and shape[0] == 1 and shape[1] >= 2:
        return ClassScoresCheck([i])
    if len(shape) == 3 and shape[0] == 1 and shape[1] >= 2 and shape[2] >= 2 and \
            info.activation in ("Softmax", "LogSoftmax"):
        return SequenceCheck([i])
    if len(shape) == 4 and shape[0] == 1:
        if shape[1] == 1 and info.activation == "Sigmoid" and size >= 64:
            return ProbabilityMapCheck([i])
        if 2 <= shape[1] <= 1000 and tuple(shape[2:]) == tuple(input_hw):
            return PixelClassesCheck([i])
    return TensorCheck([i])


def plan_checks(infos: list[OutputInfo], input_hw: tuple[int, int], yolo_layout: Any = None,
                yolo_concat: Sequence[str] = ()) -> list[Check]:
    """One check per output (a detection head: one check over its outputs), in output order."""
    head = _yolo_check(infos, yolo_layout, yolo_concat, input_hw)
    covered = set(head.outputs) if head else set()
    checks: list[Check] = [head] if head else []
    checks += [check_for(i, info, input_hw) for i, info in enumerate(infos) if i not in covered]
    return sorted(checks, key=lambda c: c.outputs[0])

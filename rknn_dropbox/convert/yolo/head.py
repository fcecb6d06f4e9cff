"""Recognising an Ultralytics head in an ONNX graph: the final Concat's parts, the per-scale box/class convs, task."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rknn_dropbox.convert.yolo.onnxedit import producers

# the last conv of each scale's branch: /model.22/cv2.0/cv2.0.2/Conv (v8), /model.23/... (11), one2one_ (v10)
_BRANCH_CONV = re.compile(r"^/model\.(\d+)/(one2one_)?cv([234])\.(\d+)/(?:one2one_)?cv\3\.\4\.2/Conv$")
FAMILY_BY_LAYER = {22: "YOLOv8", 23: "YOLO11", 24: "YOLOv5u"}  # when the metadata does not say
_FAMILY_IN_DESCRIPTION = re.compile(r"\bYOLO(v?)(\d+)[nsmlxbc]?(u?)")  # "Ultralytics YOLOv8n-seg model"
TASK_PART_ROLE = {"segment": "mask_coefficients", "pose": "keypoints", "obb": "angle"}


@dataclass(frozen=True)
class ScaleConvs:
    """One scale's last convs: box (DFL logits, 4 x 16 channels), class logits, mask coefficients (segment)."""
    box: str            # the conv's output tensor name
    cls: str
    mask: str | None = None


@dataclass(frozen=True)
class UltralyticsHead:
    """An Ultralytics head as the graph shows it."""
    task: str                       # detect | segment | pose | obb
    family: str                     # YOLOv8 | YOLO11 | YOLOv5u | YOLOv10 | "Ultralytics" (layer index unknown)
    version: str                    # the exporting Ultralytics version ("" when the metadata has none)
    output: str                     # the graph output the final Concat produces
    axis: int                       # the final Concat's axis
    parts: list[str]                # its inputs (nested Concats on the same axis flattened), in order
    roles: list[str]                # boxes, scores, then mask_coefficients / keypoints / angle / labels
    other_outputs: list[str] = field(default_factory=list)  # graph outputs beside it (a segment head's protos)
    scales: list[ScaleConvs] = field(default_factory=list)   # empty: the zoo layout cannot be cut from this graph
    end_to_end: bool = False        # an end-to-end export (YOLOv10's one2one head): rows after its own top-k
    keypoints_shape: tuple[int, int] | None = None  # a pose head's (keypoints, values per keypoint): (17, 3)


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _flatten(name: str, axis: int, made_by: dict[str, Any]) -> list[str]:
    node = made_by.get(name)
    if node is None or node.op_type != "Concat" or _axis(node) != axis:
        return [name]
    return [p for i in node.input for p in _flatten(i, axis, made_by)]


def _scales(model: Any) -> tuple[list[ScaleConvs], int | None, bool]:
    """The per-scale last convs of the highest-numbered detect layer; its index; whether they are v10's one2one."""
    found: dict[tuple[int, bool], dict[tuple[str, int], str]] = {}
    for n in model.graph.node:
        m = _BRANCH_CONV.match(n.name) if n.op_type == "Conv" else None
        if m:
            found.setdefault((int(m.group(1)), bool(m.group(2))), {})[(m.group(3), int(m.group(4)))] = n.output[0]
    if not found:
        return [], None, False
    layer, one2one = max(found, key=lambda k: (k[0], k[1]))
    convs = found[(layer, one2one)]
    n_scales = len({i for (_, i) in convs})
    if any(("2", i) not in convs or ("3", i) not in convs for i in range(n_scales)):
        return [], layer, one2one
    return [ScaleConvs(convs[("2", i)], convs[("3", i)], convs.get(("4", i))) for i in range(n_scales)], layer, one2one


def _roles(task: str, n_parts: int, end_to_end: bool) -> list[str]:
    if end_to_end:
        return ["boxes", "scores", "labels"][:n_parts] + [f"part{i}" for i in range(3, n_parts)]
    roles = ["boxes", "scores"]
    if task in TASK_PART_ROLE:
        roles.append(TASK_PART_ROLE[task])
    return roles[:n_parts] + [f"part{i}" for i in range(len(roles), n_parts)]


def recognise_head(model: Any) -> UltralyticsHead | None:
    """The head of an Ultralytics export (onnx.ModelProto), or None: a graph output produced by a Concat of 2+ parts,
    and either Ultralytics metadata or the head's conv names."""
    made_by = producers(model)
    meta = {p.key: p.value for p in model.metadata_props}
    scales, layer, one2one = _scales(model)
    if meta.get("author") != "Ultralytics" and layer is None:
        return None
    concat = next((o.name for o in model.graph.output
                   if made_by.get(o.name) is not None and made_by[o.name].op_type == "Concat"), None)
    if concat is None:
        return None
    axis = _axis(made_by[concat])
    parts = _flatten(concat, axis, made_by)
    if len(parts) < 2:
        return None
    task = meta.get("task") or ("segment" if scales and scales[0].mask else "detect")
    one2one = one2one or meta.get("end2end") == "True"
    named = _FAMILY_IN_DESCRIPTION.search(meta.get("description", ""))
    family = f"YOLO{named.group(1)}{named.group(2)}{named.group(3)}" if named else \
        "YOLOv10" if one2one else FAMILY_BY_LAYER.get(layer or -1, "Ultralytics")
    others = [o.name for o in model.graph.output if o.name != concat]
    return UltralyticsHead(task, family, meta.get("version", ""), concat, axis, parts,
                           _roles(task, len(parts), one2one), others, scales, one2one,
                           _keypoints_shape(meta.get("kpt_shape", "")) if task == "pose" else None)


def _keypoints_shape(raw: str) -> tuple[int, int]:
    """Ultralytics' metadata kpt_shape ("[17, 3]"); COCO's 17 x 3 when it says nothing readable."""
    numbers = re.findall(r"\d+", raw)
    return (int(numbers[0]), int(numbers[1])) if len(numbers) == 2 and int(numbers[1]) in (2, 3) else (17, 3)


def class_count(model: Any, head: UltralyticsHead) -> int | None:
    """The number of classes: the class conv's output channels (its weight's first dim)."""
    if not head.scales:
        return None
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    conv = producers(model).get(head.scales[0].cls)
    dims = weights.get(conv.input[1]) if conv is not None and len(conv.input) > 1 else None
    return int(dims[0]) if dims else None

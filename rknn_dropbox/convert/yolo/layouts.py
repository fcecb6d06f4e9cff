"""NPU-friendly output layouts of an Ultralytics head, written as edited ONNX graphs in the job's scratch folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rknn_dropbox.options import YOLO_LAYOUTS as LAYOUTS  # noqa: F401 (the layouts' names, said once)
from rknn_dropbox.convert.yolo.equivalence import beyond_tolerance, decoded_differences
from rknn_dropbox.convert.yolo.head import UltralyticsHead, class_count
from rknn_dropbox.convert.yolo.onnxedit import (
    angle_sigmoid, fixed_inputs, input_hw, keypoint_branches, keypoints_tensor, opset, output_shapes, prune, rename,
    save_graph, set_outputs, value_shapes)


class LayoutError(ValueError):
    """The layout asked for cannot be cut from this graph; `error` and `hint` are sentences."""

    def __init__(self, error: str, hint: str) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


@dataclass
class YoloLayout:
    """How a YOLO head's outputs are delivered (result.json `outputs_layout`; read by the detection check)."""
    layout: str                       # keep | split | rknn_model_zoo
    task: str                         # detect | segment | pose | obb
    outputs: list[str]                # the delivered output names, in order
    num_classes: int
    shapes: list[list[int]] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)      # boxes, scores, box_dfl, score_sum, protos, ...
    original: dict[str, Any] = field(default_factory=dict)  # {"name": "output0", "shape": [1, 84, 8400]}
    reassemble: str = ""              # how to get the original tensor back, in words
    input_hw: tuple[int, int] = (640, 640)
    family: str = ""
    model: Path | None = None         # the edited ONNX the build and the reference both use (None: keep)
    class_names: list[str] = field(default_factory=list)  # the export's metadata `names`, in class order
    sources: list[str] = field(default_factory=list)  # split: each output's tensor in the stock graph ("" if new)
    keypoints_shape: list[int] = field(default_factory=list)  # a pose head's [keypoints, values each]: [17, 3]
    # [start tensor, end tensor] ranges an int8 build keeps in float16 (the toolkit's custom_hybrid): a pose head's
    # keypoint branch, whose pixel coordinates and 0-1 visibility would share one int8 scale (the model zoo's way)
    float_ranges: list[tuple[str, str]] = field(default_factory=list)
    equivalence: dict[str, Any] = field(default_factory=dict)  # the edit decoded against the stock head (largest diffs)

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout, "task": self.task, "family": self.family, "num_classes": self.num_classes,
                "input_hw": list(self.input_hw), "original": self.original, "reassemble": self.reassemble,
                "outputs": [{"name": n, "shape": s, "role": r, **({"source": src} if src else {})}
                            for n, s, r, src in zip(self.outputs, self.shapes, self.roles,
                                                    self.sources or [""] * len(self.outputs))],
                "class_names": self.class_names,
                **({"keypoints_shape": self.keypoints_shape} if self.keypoints_shape else {}),
                **({"float_ranges": [list(r) for r in self.float_ranges]} if self.float_ranges else {}),
                **({"equivalence": self.equivalence} if self.equivalence else {})}


def split_layout(model: Any, head: UltralyticsHead, input_shapes: list[list[int]] | None, scratch: Path,
                 stem: str) -> YoloLayout:
    """The final Concat's parts as outputs (boxes [1,4,N], scores [1,C,N], ...), then the head's other outputs."""
    m = fixed_inputs(model, input_shapes)
    shapes = value_shapes(m)
    names = []
    for part, role in zip(head.parts, head.roles):
        rename(m, part, role)
        shapes[role] = shapes.get(part, [])
        names.append(role)
    out_names = names + head.other_outputs
    out_shapes = [shapes.get(n, []) for n in out_names]
    set_outputs(m, out_names, out_shapes)
    prune(m)
    out_shapes = output_shapes(m)
    set_outputs(m, out_names, out_shapes)
    original = [*out_shapes[0][:head.axis], sum(s[head.axis] for s in out_shapes[:len(names)]),
                *out_shapes[0][head.axis + 1:]]
    layout = YoloLayout("split", head.task, out_names, int(out_shapes[1][head.axis]) if len(out_shapes) > 1 else 0,
                        out_shapes, list(head.roles) + ["protos" if head.task == "segment" else "other"]
                        * len(head.other_outputs),
                        {"name": head.output, "shape": original},
                        f"concatenate {', '.join(names)} along axis {head.axis} to get {head.output} "
                        f"{original}", input_hw(m), head.family)
    layout.sources = list(head.parts) + list(head.other_outputs)  # load_onnx(outputs=sources) builds the same
    if head.task == "pose":
        layout.float_ranges = keypoint_branches(m, head, "keypoints")
    layout.model = save_graph(m, scratch, stem, "split")
    return layout


def _score_nodes(model: Any, cls: str, i: int) -> tuple[str, str]:
    """sigmoid(class logits) and clamp(sum over classes, 0, 1), added to the graph; their tensor names."""
    import numpy as np
    import onnx
    h, g = onnx.helper, model.graph
    score, total, score_sum = f"score{i}", f"score_total{i}", f"score_sum{i}"
    g.node.append(h.make_node("Sigmoid", [cls], [score], name=f"/rknn_dropbox/Sigmoid_{i}"))
    if opset(model) >= 13:
        g.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), f"/rknn_dropbox/axes_{i}"))
        g.node.append(h.make_node("ReduceSum", [score, f"/rknn_dropbox/axes_{i}"], [total], keepdims=1,
                                  name=f"/rknn_dropbox/ReduceSum_{i}"))
    else:
        g.node.append(h.make_node("ReduceSum", [score], [total], axes=[1], keepdims=1,
                                  name=f"/rknn_dropbox/ReduceSum_{i}"))
    lo, hi = f"/rknn_dropbox/zero_{i}", f"/rknn_dropbox/one_{i}"
    g.initializer.extend([onnx.numpy_helper.from_array(np.array(0.0, np.float32), lo),
                          onnx.numpy_helper.from_array(np.array(1.0, np.float32), hi)])
    g.node.append(h.make_node("Clip", [total, lo, hi], [score_sum], name=f"/rknn_dropbox/Clip_{i}"))
    return score, score_sum


def zoo_layout(model: Any, head: UltralyticsHead, input_shapes: list[list[int]] | None, scratch: Path,
               stem: str) -> YoloLayout:
    """The Rockchip model zoo's layout: per scale the box DFL logits [1,64,H,W], sigmoid(class logits) [1,C,H,W],
    their clamped sum [1,1,H,W] (and a segment head's mask coefficients [1,32,H,W]); a segment head's protos last."""
    if not head.scales or (head.task in ("pose", "obb") and (len(head.parts) < 3 or not head.scales[0].mask)):
        what = f"this {head.task} head (no cv4 branch)" if head.scales else \
            "this graph (no /model.N/cv2.i/cv2.i.2/Conv)"
        raise LayoutError(f"yolo_outputs: rknn_model_zoo cannot be cut from {what}",
                          "use yolo_outputs: split (the head's parts as outputs), or export with the Rockchip "
                          "model zoo's fork (airockchip/ultralytics_yolov8)")
    if opset(model) < 11:
        raise LayoutError(f"yolo_outputs: rknn_model_zoo needs opset 11 or later (the model has {opset(model)})",
                          "export again with opset=12")
    if head.task in ("pose", "obb"):
        return _zoo_pose_obb_layout(model, head, input_shapes, scratch, stem)
    m = fixed_inputs(model, input_shapes)
    shapes = value_shapes(m)
    names, roles, out_shapes = [], [], []
    num_classes = class_count(m, head) or 0
    for i, scale in enumerate(head.scales):
        box = f"box{i}"
        rename(m, scale.box, box)
        score, score_sum = _score_nodes(m, scale.cls, i)
        hw = shapes.get(scale.box, [1, 64, 0, 0])[2:]
        names += [box, score, score_sum]
        roles += ["box_dfl", "scores", "score_sum"]
        out_shapes += [[1, shapes.get(scale.box, [0, 64])[1], *hw], [1, num_classes, *hw], [1, 1, *hw]]
        if head.task == "segment" and scale.mask:
            rename(m, scale.mask, f"mask{i}")
            names.append(f"mask{i}")
            roles.append("mask_coefficients")
            out_shapes.append(shapes.get(scale.mask, []))
    for other in head.other_outputs:
        names.append(other)
        roles.append("protos" if head.task == "segment" else "other")
        out_shapes.append(shapes.get(other, []))
    set_outputs(m, names, out_shapes)
    prune(m)
    out_shapes = output_shapes(m)
    set_outputs(m, names, out_shapes)
    original = [1, out_shapes[0][1] // 16 + num_classes + sum(s[1] for s, r in zip(out_shapes, roles)
                                                              if r == "mask_coefficients") // 3,
                sum(s[2] * s[3] for s, r in zip(out_shapes, roles) if r == "box_dfl")]
    layout = YoloLayout("rknn_model_zoo", head.task, names, num_classes, out_shapes, roles,
                        {"name": head.output, "shape": original},
                        f"per scale: DFL over box{{i}} (4 x 16 bins, softmax, expectation) and the anchor grid give "
                        f"the boxes, score{{i}} the class scores; flatten each scale (H x W) and concatenate them in "
                        f"order to get {head.output} {original}", input_hw(m), head.family)
    layout.model = save_graph(m, scratch, stem, "rknn_model_zoo")
    return layout


def _zoo_pose_obb_layout(model: Any, head: UltralyticsHead, input_shapes: list[list[int]] | None, scratch: Path,
                         stem: str) -> YoloLayout:
    """The model zoo's pose / OBB layout: per scale the box DFL logits and class logits in one tensor
    [1, 64+C, H, W]; last the decoded keypoints [1, K, D, N] (pose) or the angles' sigmoid [1, 1, N] (OBB)."""
    import onnx
    m = fixed_inputs(model, input_shapes)
    shapes = value_shapes(m)
    num_classes = class_count(m, head) or 0
    names, roles = [], []
    for i, scale in enumerate(head.scales):
        m.graph.node.append(onnx.helper.make_node("Concat", [scale.box, scale.cls], [f"box_cls{i}"], axis=1,
                                                  name=f"/rknn_dropbox/Concat_box_cls{i}"))
        names.append(f"box_cls{i}")
        roles.append("box_dfl+class_logits")
    kpt = head.keypoints_shape or (17, 3)
    if head.task == "pose":
        last = keypoints_tensor(m, head.parts[2], kpt, shapes)
        rename(m, last, "keypoints")
        names.append("keypoints")
        roles.append("keypoints")
    else:
        rename(m, angle_sigmoid(m, head.parts[2]), "angle")
        names.append("angle")
        roles.append("angle_sigmoid")
    set_outputs(m, names, [[] for _ in names])
    prune(m)
    out_shapes = output_shapes(m)
    set_outputs(m, names, out_shapes)
    extra = kpt[0] * kpt[1] if head.task == "pose" else 1
    original = [1, 4 + num_classes + extra, sum(s[2] * s[3] for s in out_shapes[:-1])]
    how = "the keypoints (x, y in input pixels, visibility) as they are" if head.task == "pose" else \
        "(angle - 0.25) x pi the rotation in radians"
    layout = YoloLayout("rknn_model_zoo", head.task, names, num_classes, out_shapes, roles,
                        {"name": head.output, "shape": original},
                        f"per scale: the first 64 channels of box_cls{{i}} are the DFL box logits (4 x 16 bins, "
                        f"softmax, expectation, with the anchor grid), the rest the class logits (sigmoid); {how}; "
                        f"flatten each scale (H x W) and concatenate them in order to get {head.output} {original}",
                        input_hw(m), head.family)
    if head.task == "pose":
        layout.keypoints_shape = list(kpt)
        layout.float_ranges = keypoint_branches(m, head, "keypoints")
    layout.model = save_graph(m, scratch, stem, "rknn_model_zoo")
    return layout


def keep_layout(model: Any, head: UltralyticsHead, input_shapes: list[list[int]] | None) -> YoloLayout:
    """The stock export as it is (one concatenated output); nothing is written."""
    m = fixed_inputs(model, input_shapes)
    names = [o.name for o in m.graph.output]
    shapes = output_shapes(m)
    main = shapes[names.index(head.output)]
    num_classes = class_count(m, head) or (main[head.axis] - 4)
    return YoloLayout("keep", head.task, names, num_classes, shapes,
                      ["boxes+scores" if n == head.output else "protos" if head.task == "segment" else "other"
                       for n in names], {"name": head.output, "shape": main}, "as exported", input_hw(m),
                      head.family)


def head_layout(layout: str, model: Any, head: UltralyticsHead, input_shapes: list[list[int]] | None,
                scratch: Path, stem: str) -> YoloLayout:
    """The layout asked for (a keep layout writes nothing), with the export's class names."""
    if layout == "split":
        chosen = split_layout(model, head, input_shapes, scratch, stem)
    elif layout == "rknn_model_zoo":
        chosen = zoo_layout(model, head, input_shapes, scratch, stem)
    else:
        chosen = keep_layout(model, head, input_shapes)
    chosen.class_names = class_names(model)
    if head.task == "pose" and not chosen.keypoints_shape:
        chosen.keypoints_shape = list(head.keypoints_shape or (17, 3))
    if chosen.model is not None:
        prove_equivalent(chosen, head, model, input_shapes)
    return chosen


def prove_equivalent(layout: YoloLayout, head: UltralyticsHead, stock: Any, input_shapes: list[list[int]] | None
                     ) -> None:
    """layout.equivalence: the edited graph (layout.model) decoded against the stock one; a LayoutError when a
    difference is beyond float rounding."""
    keep = {**keep_layout(stock, head, input_shapes).to_json(), "keypoints_shape": layout.keypoints_shape}
    layout.equivalence = decoded_differences(layout.to_json(), keep, stock, layout.model, input_shapes)
    off = beyond_tolerance(layout.equivalence)
    if off:
        raise LayoutError(f"the {layout.layout} layout cut from this head does not give the stock output back "
                          f"({', '.join(off)})",
                          "set yolo_outputs: keep in the sidecar to build the export as it is, and report the model")


def class_names(model: Any) -> list[str]:
    """Ultralytics' metadata `names` ("{0: 'person', 1: 'bicycle'}"), in class order; [] without it."""
    import ast
    raw = next((p.value for p in model.metadata_props if p.key == "names"), "")
    try:
        names = ast.literal_eval(raw) if raw else {}
    except (ValueError, SyntaxError):
        return []
    return [str(names[k]) for k in sorted(names)] if isinstance(names, dict) else []


def planned_layout(options: Any, head: UltralyticsHead, quantize: bool, input_shapes: list[list[int]] | None,
                   dynamic: bool) -> str:
    """The layout this build gets: the sidecar's yolo_outputs, else split for int8 and keep for fp16; keep when the
    user cut the graph (`outputs:`) or builds several shapes (dynamic_input)."""
    if options.outputs or dynamic:
        if options.yolo_outputs not in (None, "keep"):
            raise LayoutError(f"yolo_outputs: {options.yolo_outputs} cannot be combined with "
                              f"{'outputs' if options.outputs else 'dynamic_input'}",
                              "drop one of the two keys from the sidecar")
        return "keep"
    if head.end_to_end and options.yolo_outputs == "split":
        raise LayoutError("yolo_outputs: split needs the head's raw boxes and scores, but this export ends in its own "
                          "top-k (end2end)", "export with end2end=False, or use yolo_outputs: keep")
    if head.end_to_end:
        return options.yolo_outputs or "keep"
    return options.yolo_outputs or ("split" if quantize else "keep")

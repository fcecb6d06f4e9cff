"""YOLO pieces without a build: the sidecar keys, decoding (DFL, the zoo layout, NMS), an Ultralytics checkpoint
read without unpickling it, the job page's layout table, the generated predict.py."""

from __future__ import annotations

import pickle
import py_compile
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rknn_dropbox.options import OptionsError, parse_convert_options
from rknn_dropbox.convert.yolo import decode


def test_yolo_outputs_and_imgsz_are_validated_in_words() -> None:
    assert parse_convert_options({"yolo_outputs": "rknn_model_zoo"}, "m.yaml").yolo_outputs == "rknn_model_zoo"
    assert parse_convert_options({"imgsz": 640}, "m.yaml").imgsz == [640, 640]
    assert parse_convert_options({"imgsz": [384, 640]}, "m.yaml").imgsz == [384, 640]
    with pytest.raises(OptionsError, match="yolo_outputs: 'zoo' is not one of: split, keep, rknn_model_zoo"):
        parse_convert_options({"yolo_outputs": "zoo"}, "m.yaml")
    with pytest.raises(OptionsError, match="imgsz: expected a size in pixels \\(a multiple of 32"):
        parse_convert_options({"imgsz": 300}, "m.yaml")


def _one_hot_dfl(bins: list[int], h: int, w: int) -> np.ndarray:
    """DFL logits [1, 64, h, w] whose softmax puts (almost) all weight on bins[side] for every cell."""
    box = np.full((1, 4, 16, h, w), -30.0, np.float32)
    for side, b in enumerate(bins):
        box[0, side, b] = 30.0
    return box.reshape(1, 64, h, w)


def test_dfl_decodes_distances_from_each_cell_centre_in_pixels() -> None:
    boxes = decode.dfl_boxes(_one_hot_dfl([1, 2, 3, 4], 2, 2), stride=8.0)
    # cell (0, 0): centre (0.5, 0.5); x1 = 0.5-1, y1 = 0.5-2, x2 = 0.5+3, y2 = 0.5+4 -> cx 1.5, cy 1.5, w 4, h 6
    assert np.allclose(boxes[:, 0], np.array([1.5, 1.5, 4, 6]) * 8, atol=1e-3)
    assert np.allclose(boxes[:, 3], np.array([2.5, 2.5, 4, 6]) * 8, atol=1e-3)  # cell (1, 1), row-major


def test_the_zoo_layout_decodes_scale_by_scale_in_order() -> None:
    outputs = []
    for side in (4, 2, 1):
        score = np.zeros((1, 3, side, side), np.float32)
        score[0, 1, 0, 0] = 0.9
        outputs += [_one_hot_dfl([1, 1, 1, 1], side, side), score, score.sum(1, keepdims=True)]
    boxes, scores = decode.zoo_to_boxes_scores(outputs, 3, (32, 32))
    assert boxes.shape == (4, 16 + 4 + 1) and scores.shape == (3, 21)
    assert np.allclose(boxes[:, 16], [8, 8, 32, 32], atol=1e-2)   # the first cell at stride 16
    assert np.allclose(boxes[:, 20], [16, 16, 64, 64], atol=1e-2)  # the one cell at stride 32
    found = decode.detections(boxes, scores, conf=0.5)
    assert found[:, 5].tolist() == [1, 1, 1]  # one per scale: the big boxes overlap, but not by more than 0.45


def test_nms_keeps_the_best_of_overlapping_boxes_per_class() -> None:
    boxes = np.array([[50, 52, 200], [50, 50, 200], [20, 20, 20], [20, 20, 20]], np.float32)  # cx, cy, w, h
    scores = np.array([[0.9, 0.8, 0.0], [0.0, 0.0, 0.7]], np.float32)
    found = decode.detections(boxes, scores, conf=0.25)
    assert np.allclose(found[:, 4], [0.9, 0.7]) and found[:, 5].tolist() == [0, 1]
    matched, total, diff = decode.match_detections(found, found[::-1].copy())
    assert (matched, total, diff) == (2, 2, 0.0)


def _fake_checkpoint(path: Path) -> Path:
    """A torch-like zip whose pickle names ultralytics.nn.tasks.DetectionModel (its args say imgsz 640, the
    training's train_args 416), written without torch or ultralytics."""
    module = types.ModuleType("ultralytics.nn.tasks")

    class DetectionModel:
        def __init__(self) -> None:
            self.args = {"imgsz": 640, "task": "detect"}
    DetectionModel.__module__, DetectionModel.__qualname__ = "ultralytics.nn.tasks", "DetectionModel"
    module.DetectionModel = DetectionModel  # type: ignore[attr-defined]
    sys.modules["ultralytics.nn.tasks"] = module
    try:
        data = pickle.dumps({"model": DetectionModel(), "train_args": {"task": "detect", "imgsz": 416}}, protocol=2)
    finally:
        del sys.modules["ultralytics.nn.tasks"]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("best/data.pkl", data)
        zf.writestr("best/version", "3\n")
    return path


def test_an_ultralytics_checkpoint_is_told_from_torchscript_by_content(tmp_path: Path) -> None:
    from rknn_dropbox.formats import sniff
    from rknn_dropbox.formats.ultralytics import export_command, read_checkpoint
    best = _fake_checkpoint(tmp_path / "best.pt")
    assert sniff(best).name == "ultralytics"
    facts = read_checkpoint(best)
    assert facts.model_class == "DetectionModel" and facts.train_imgsz == [416, 416]  # train_args, not model.args
    assert export_command(best, [416, 416]) == "yolo export model=best.pt format=onnx imgsz=416 opset=12"


def test_the_job_page_shows_the_delivered_layout() -> None:
    from rknn_dropbox.status.jobpage import render_job
    from rknn_dropbox.status.jobview import JobView
    from rknn_dropbox.store import JobRecord
    doc = {"outputs_layout": {"layout": "split", "task": "detect", "family": "YOLOv8", "num_classes": 18,
                              "original": {"name": "output0", "shape": [1, 22, 2100]},
                              "reassemble": "concatenate boxes, scores along axis 1 to get output0 [1, 22, 2100]",
                              "outputs": [{"name": "boxes", "shape": [1, 4, 2100], "role": "boxes"},
                                          {"name": "scores", "shape": [1, 18, 2100], "role": "scores"}]}}
    page = render_job(JobView(JobRecord(id="j1", name="nudenet", status="completed"), doc), [], "", "0")
    assert "<h2>Output layout</h2>" in page and "split" in page and "18 classes" in page
    assert "<td>scores</td>" in page and "1, 18, 2100" in page and "concatenate boxes, scores" in page
    odd = render_job(JobView(JobRecord(id="j2", name="odd", status="completed"),
                             {"outputs_layout": {"outputs": [None, {"name": 3}], "float_ranges": [1, ["a"]],
                                                 "equivalence": "x"}}), [], "", "0")
    assert "Output layout" in odd and "float16" not in odd
    pose = {"layout": "rknn_model_zoo", "task": "pose", "outputs": [{"name": "keypoints", "shape": [1, 17, 3, 2100]}],
            "float_ranges": [["/model.22/cv4.0/cv4.0.0/act/Mul_output_0", "keypoints"]],
            "equivalence": {"inputs": 2, "boxes_px": 3.1e-05, "keypoints_px": 0.0}}
    page = render_job(JobView(JobRecord(id="j3", name="pose", status="completed"), {"outputs_layout": pose}), [],
                      "", "0")
    assert "kept in float16: /model.22/cv4.0/cv4.0.0/act/Mul_output_0 &rarr; keypoints" in page
    assert "decoded against the stock head on 2 inputs: largest differences boxes_px 3.1e-05" in page


@pytest.mark.parametrize("kind", ["yolo", "class_scores", "raw"])
def test_predict_py_is_a_standalone_script_for_each_kind(kind: str, tmp_path: Path) -> None:
    from rknn_dropbox.convert.predict_script import predict_config, write_predict_script
    layout = {"layout": "split", "num_classes": 2, "input_hw": [64, 64], "class_names": ["a", "b"]}
    targets = [{"ok": True, "file": "m.rknn", "platform": "rk3588"}]
    outputs = {"yolo": [[1, 4, 84], [1, 2, 84]], "class_scores": [[1, 1000]], "raw": [[1, 8, 8, 8]]}[kind]
    config = predict_config(targets, [1, 3, 64, 64], layout if kind == "yolo" else None, outputs, False)
    assert config["kind"] == kind and config["input"]["hw"] == [64, 64] and config["input"]["image"]
    script = write_predict_script(tmp_path, config)
    py_compile.compile(str(script), doraise=True)
    text = script.read_text()
    assert "from rknnlite.api import RKNNLite" in text and "rknn_dropbox" not in text.split('"""', 2)[2]


def _tiny_head():
    """A one-scale Ultralytics-like detect head as an ONNX graph: boxes [1, 4, 64] and sigmoid scores [1, 2, 64]
    concatenated into output0 (the names recognise_head looks for)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from rknn_dropbox.convert.yolo.head import recognise_head
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (4, 3, 1, 1)).astype(np.float32), "box_w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "box_b"),
             numpy_helper.from_array(rng.normal(0, 1, (2, 3, 1, 1)).astype(np.float32), "cls_w"),
             numpy_helper.from_array(np.zeros(2, np.float32), "cls_b"),
             numpy_helper.from_array(np.array([1, 4, 64], np.int64), "box_shape"),
             numpy_helper.from_array(np.array([1, 2, 64], np.int64), "cls_shape"),
             numpy_helper.from_array(np.array(8.0, np.float32), "stride")]
    nodes = [helper.make_node("Conv", ["images", "box_w", "box_b"], ["box"], name="/model.22/cv2.0/cv2.0.2/Conv"),
             helper.make_node("Conv", ["images", "cls_w", "cls_b"], ["cls"], name="/model.22/cv3.0/cv3.0.2/Conv"),
             helper.make_node("Reshape", ["box", "box_shape"], ["box_flat"]),
             helper.make_node("Mul", ["box_flat", "stride"], ["boxes_px"]),
             helper.make_node("Reshape", ["cls", "cls_shape"], ["cls_flat"]),
             helper.make_node("Sigmoid", ["cls_flat"], ["scores"]),
             helper.make_node("Concat", ["boxes_px", "scores"], ["output0"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {"author": "Ultralytics", "task": "detect", "names": "{0: 'a', 1: 'b'}"})
    return model, recognise_head(model)


def test_an_edit_that_does_not_give_the_stock_output_back_is_refused_in_words(tmp_path) -> None:
    """prove_equivalent decodes the stock graph and the edited one; an edit that changed a value fails the job."""
    import onnx
    import pytest
    from rknn_dropbox.convert.yolo.layouts import LayoutError, prove_equivalent
    from rknn_dropbox.convert.yolo.layouts import head_layout
    stock, head = _tiny_head()
    layout = head_layout("split", stock, head, None, tmp_path, "tiny")
    assert set(layout.equivalence) == {"inputs", "boxes_px", "scores"} and layout.equivalence["scores"] == 0.0
    edited = onnx.load(str(layout.model))
    for init in edited.graph.initializer:      # a wrong edit: the class conv's bias moved
        if init.name == "cls_b":
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) + 1.0, init.name))
    onnx.save(edited, str(layout.model))
    with pytest.raises(LayoutError, match="does not give the stock output back .*scores differs by") as err:
        prove_equivalent(layout, head, stock, None)
    assert "yolo_outputs: keep" in err.value.hint

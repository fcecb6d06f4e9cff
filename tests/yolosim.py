"""YOLO detections on real photos, for the tests and bench/yolo.py: the float model's (onnxruntime on the stock
export, decoded by rknn_dropbox.convert.yolo.decode) and a toolkit simulator build's of a layout.

    ref = reference_detections(onnx_path, 320, photo_paths, conf=0.01)     # {photo name: [K, 6]}
    got = simulated_detections(onnx_path, "split", True, 320, calibration, photo_paths, tmp, conf=0.01)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def photo(path: Path, size: int) -> np.ndarray:
    """As the toolkit decodes a calibration image: RGB, resized to the input (HWC uint8)."""
    import cv2
    return cv2.resize(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), (size, size))


def to_boxes_scores(layout: Any, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Any layout's outputs as boxes [4, N] and scores [C, N] (an OBB head's: the upright boxes around its rotated
    ones, as the detection check matches them)."""
    from rknn_dropbox.convert.yolo import decode
    boxes, scores, extra = decode.head_outputs(outputs, layout.to_json())
    return (decode.envelope(boxes, extra["angle"]) if "angle" in extra else boxes), scores


def reference_detections(model: Path, size: int, photos: dict[str, Path], conf: float = 0.25
                         ) -> dict[str, np.ndarray]:
    """The stock export in onnxruntime on each photo (0-1 RGB NCHW), decoded: [K, 6] rows in input pixels."""
    import onnxruntime as ort
    from rknn_dropbox.convert.yolo import decode
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    import onnx
    from rknn_dropbox.convert.yolo.head import recognise_head
    from rknn_dropbox.convert.yolo.layouts import keep_layout
    stock = onnx.load(str(model))
    layout = keep_layout(stock, recognise_head(stock), [[1, 3, size, size]])
    out = {}
    for name, path in photos.items():
        x = photo(path, size).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        out[name] = decode.detections(*to_boxes_scores(layout, sess.run(None, {sess.get_inputs()[0].name: x})),
                                      conf=conf)
    return out


def simulated_build(model: Path, layout_name: str, quantize: bool, size: int, calibration: list[Path],
                    tmp: Path) -> tuple[Any, Any, float, Path]:
    """The layout written as the daemon writes it, built by the toolkit in this process; (live session, layout,
    build seconds, exported .rknn). Release the session when done."""
    import onnx
    from rknn.api import RKNN
    from rknn_dropbox.convert.yolo.head import recognise_head
    from rknn_dropbox.convert.yolo.layouts import head_layout
    stock = onnx.load(str(model))
    shapes = [[1, 3, size, size]]
    layout = head_layout(layout_name, stock, recognise_head(stock), shapes, tmp, model.stem)
    dataset = tmp / "dataset.txt"
    dataset.write_text("\n".join(str(p) for p in calibration) + "\n")
    started = time.monotonic()
    rknn = None
    # the rules 2.5.0 crashes in on newer exports (yolo11's attention block: the second one too)
    for disable_rules in ([], ["seperate_conv_rs_split"],
                          ["seperate_conv_rs_split", "fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa"]):
        rknn = RKNN(verbose=False)
        rknn.config(target_platform="rk3588", mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]],
                    disable_rules=disable_rules)
        rknn.load_onnx(str(layout.model or model), inputs=[stock.graph.input[0].name], input_size_list=shapes)
        try:
            if quantize and layout.float_ranges:  # a pose head's keypoint branch in float16, as the daemon builds it
                rknn = _hybrid_build(rknn, layout.float_ranges, dataset, tmp)
                break
            if rknn.build(do_quantization=quantize, dataset=str(dataset) if quantize else None) == 0:
                break
        except Exception:  # noqa: BLE001 - the toolkit raises its build errors: retried without the rule
            pass
        try:
            rknn.release()
        except Exception:  # noqa: BLE001 - a hybrid build released it already
            pass
        rknn = None
    if rknn is None:
        raise RuntimeError(f"the toolkit could not build {model.name} ({layout_name})")
    seconds = time.monotonic() - started
    exported = tmp / f"{model.stem}-{layout_name}-{'int8' if quantize else 'fp16'}.rknn"
    rknn.export_rknn(str(exported))
    rknn.init_runtime()
    return rknn, layout, seconds, exported


def _hybrid_build(rknn: Any, ranges: list[tuple[str, str]], dataset: Path, tmp: Path) -> Any:
    """The toolkit's two-step hybrid quantization with `ranges` in float16 (it writes its files into the cwd)."""
    import os
    from rknn.api import RKNN
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        if rknn.hybrid_quantization_step1(dataset=str(dataset), proposal=False,
                                          custom_hybrid=[list(r) for r in ranges]) != 0:
            raise RuntimeError("hybrid_quantization_step1 failed")
        stem = next(tmp.glob("*.quantization.cfg")).name[:-len(".quantization.cfg")]
        rknn.release()
        second = RKNN(verbose=False)
        if second.hybrid_quantization_step2(model_input=f"{stem}.model", data_input=f"{stem}.data",
                                            model_quantization_cfg=f"{stem}.quantization.cfg") != 0:
            second.release()
            raise RuntimeError("hybrid_quantization_step2 failed")
        return second
    finally:
        os.chdir(cwd)


def simulated_detections(rknn: Any, layout: Any, size: int, photos: dict[str, Path], conf: float = 0.25
                         ) -> dict[str, np.ndarray]:
    """The simulator's detections on each photo (the uint8 RGB NHWC image the board gets)."""
    from rknn_dropbox.convert.yolo import decode
    out = {}
    for name, path in photos.items():
        outputs = rknn.inference(inputs=[photo(path, size)[None]], data_format="nhwc")
        out[name] = decode.detections(*to_boxes_scores(layout, outputs), conf=conf)
    return out

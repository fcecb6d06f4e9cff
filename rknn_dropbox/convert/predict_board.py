"""The body of the board-side predict.py (convert/predict_script.py inlines it with the YOLO decoders and CONFIG)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from rknn_dropbox.convert.yolo.decode import corners, detections, envelope, head_outputs  # inlined

CONFIG: dict[str, Any] = {}  # inlined


def load_image(path: str, height: int, width: int, bgr: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """As the build's calibration images were read: RGB (BGR with quant_img_RGB2BGR), resized to the input (HWC
    uint8); and the photo's own (height, width)."""
    try:
        import cv2
        img = cv2.imread(path)
        if img is None:
            sys.exit(f"cannot read {path} as an image")
        size = img.shape[:2]
        img = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (width, height))
    except ImportError:  # Pillow: its bilinear resize differs from OpenCV's by a grey level here and there
        from PIL import Image
        pil = Image.open(path).convert("RGB")
        size = (pil.height, pil.width)
        img = np.asarray(pil.resize((width, height), Image.BILINEAR))
    return (img[:, :, ::-1] if bgr else img).copy(), size


def run_model(model: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """One inference with rknn-toolkit-lite2 on the board's NPU (inputs NHWC, as the runtime takes images)."""
    from rknnlite.api import RKNNLite
    rknn = RKNNLite()
    try:
        if rknn.load_rknn(model) != 0:
            sys.exit(f"RKNNLite cannot load {model}")
        if rknn.init_runtime() != 0:
            sys.exit("RKNNLite.init_runtime() failed: is this the board the model was built for "
                     f"({', '.join(CONFIG['platforms'])})?")
        outputs = rknn.inference(inputs=inputs, data_format=["nhwc"] * len(inputs))
        return [np.asarray(o, dtype=np.float32) for o in outputs]
    finally:
        rknn.release()


def yolo_result(outputs: list[np.ndarray], size: tuple[int, int], conf: float, iou: float) -> list[dict[str, Any]]:
    """Each detection after NMS: its box in the photo's pixels, score, class; a pose head's keypoints, an OBB
    head's rotated box (corners, angle; NMS on the upright boxes around them)."""
    layout = CONFIG["yolo"]
    boxes, scores, extra = head_outputs(outputs, layout)
    rotated = boxes
    if "angle" in extra:
        boxes = envelope(boxes, extra["angle"])
    sy, sx = size[0] / layout["input_hw"][0], size[1] / layout["input_hw"][1]
    names = layout.get("class_names") or []
    found = []
    for x1, y1, x2, y2, s, c, anchor in detections(boxes, scores, conf, iou):
        d: dict[str, Any] = {"box": [round(float(x1 * sx), 1), round(float(y1 * sy), 1), round(float(x2 * sx), 1),
                                     round(float(y2 * sy), 1)], "score": round(float(s), 4), "class": int(c),
                             "name": names[int(c)] if int(c) < len(names) else str(int(c))}
        a = int(anchor)
        if "keypoints" in extra:
            d["keypoints"] = [[round(float(k[0] * sx), 1), round(float(k[1] * sy), 1),
                               *([round(float(k[2]), 3)] if len(k) > 2 else [])] for k in extra["keypoints"][:, :, a]]
        if "angle" in extra:
            d["angle"] = round(float(extra["angle"][a]), 4)
            d["corners"] = [[round(float(x * sx), 1), round(float(y * sy), 1)]
                            for x, y in corners(rotated[:, a], float(extra["angle"][a]))]
        found.append(d)
    return found


def top5(output: np.ndarray) -> list[dict[str, Any]]:
    scores = output.reshape(-1)
    return [{"class": int(i), "score": round(float(scores[i]), 5)} for i in np.argsort(-scores)[:5]]


def model_inputs(args: argparse.Namespace) -> tuple[list[np.ndarray], tuple[int, int]]:
    shape = CONFIG["input"]["shape"]
    if CONFIG["input"]["image"]:
        h, w = CONFIG["input"]["hw"]
        img, size = load_image(args.input, h, w, CONFIG["input"]["bgr"])
        return [img[None]], size
    return [np.load(args.input)], (0, 0)  # not an image: an .npy of shape `shape`, as the model takes it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=f"run {CONFIG['models'][0]} on the NPU and print what it found")
    ap.add_argument("input", help="a photo (or an .npy for a model whose input is not an image)")
    ap.add_argument("--model", default=CONFIG["models"][0], help=f"one of: {', '.join(CONFIG['models'])}")
    ap.add_argument("--conf", type=float, default=0.25, help="YOLO: the lowest score kept")
    ap.add_argument("--iou", type=float, default=0.45, help="YOLO: NMS overlap")
    args = ap.parse_args(argv)
    inputs, size = model_inputs(args)
    outputs = run_model(args.model, inputs)
    if CONFIG.get("yolo"):
        print(json.dumps({"detections": yolo_result(outputs, size, args.conf, args.iou)}))
    elif CONFIG["kind"] == "class_scores":
        print(json.dumps({"top5": top5(outputs[0])}))
    else:
        print(json.dumps({"outputs": [{"shape": list(o.shape), "values": o.reshape(-1)[:16].round(5).tolist()}
                                      for o in outputs]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

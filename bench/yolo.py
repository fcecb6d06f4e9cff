"""YOLO on the NPU: per model, output layout (keep / split / rknn_model_zoo) and dtype (int8 / fp16), how well the
toolkit's simulator's detections agree with the float model's on held-out real photos, the build's seconds and the
model's size.

The layouts are the ones the daemon builds (rknn_dropbox.convert.yolo.layouts, written to a temp folder); each build
runs in this process with rknn-toolkit2 (calibration: 8 real photos; held out: 8 others, tests/trained.py). The
reference is onnxruntime on the stock export, decoded as the detection check decodes (top-10 detections per photo,
matched by class and IoU >= 0.5). Random-weight models (the corpus's yolov8n) give no detections at conf 0.25; they
are compared at conf 0.0001 (their scores sit near 1e-4).

Usage: .venv/bin/python bench/yolo.py [--cache DIR] [--models nudenet,yolov8n] [--layouts keep,split,rknn_model_zoo]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
CALIBRATION = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "china", "flower", "grace_hopper")
HELD_OUT = ("bus", "zidane", "motorcycle_right", "retina", "ihc", "color", "horse", "logo")


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: Path
    size: int
    conf: float


def photo(path: Path, size: int) -> np.ndarray:
    """As the toolkit decodes a calibration image: RGB, resized to the input (HWC uint8)."""
    import cv2
    return cv2.resize(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), (size, size))


def to_boxes_scores(layout: Any, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    from rknn_dropbox.convert.yolo import decode
    if layout.layout == "split":
        return decode.split_to_boxes_scores(outputs)
    if layout.layout == "rknn_model_zoo":
        return decode.zoo_to_boxes_scores(outputs, layout.num_classes, layout.input_hw)
    return decode.keep_to_boxes_scores(outputs[0], layout.num_classes)


def reference_detections(model: BenchModel, photos: dict[str, Path]) -> dict[str, np.ndarray]:
    import onnxruntime as ort
    from rknn_dropbox.convert.yolo import decode
    sess = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    out = {}
    for name in HELD_OUT:
        x = photo(photos[name], model.size).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        [y, *_] = sess.run(None, {sess.get_inputs()[0].name: x})
        num_classes = y.shape[1] - 4 if len(sess.get_outputs()) == 1 else y.shape[1] - 4 - 32
        out[name] = decode.detections(*decode.keep_to_boxes_scores(y, num_classes), conf=model.conf)
    return out


def build_and_compare(model: BenchModel, layout_name: str, quantize: bool, photos: dict[str, Path],
                      reference: dict[str, np.ndarray], tmp: Path) -> dict[str, Any]:
    """One toolkit build of the layout; its simulator's detections against the reference on the held-out photos."""
    import onnx
    from rknn.api import RKNN
    from rknn_dropbox.convert.yolo import decode
    from rknn_dropbox.convert.yolo.head import recognise_head
    from rknn_dropbox.convert.yolo.layouts import head_layout
    stock = onnx.load(str(model.path))
    shapes = [[1, 3, model.size, model.size]]
    layout = head_layout(layout_name, stock, recognise_head(stock), shapes, tmp, model.name)
    dataset = tmp / "dataset.txt"
    dataset.write_text("\n".join(str(photos[n]) for n in CALIBRATION) + "\n")
    rknn = RKNN(verbose=False)
    try:
        rknn.config(target_platform="rk3588", mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]])
        started = time.monotonic()
        rknn.load_onnx(str(layout.model or model.path), inputs=[stock.graph.input[0].name], input_size_list=shapes)
        if rknn.build(do_quantization=quantize, dataset=str(dataset) if quantize else None) != 0:
            return {"error": "build failed"}
        seconds = time.monotonic() - started
        out_file = tmp / f"{model.name}-{layout_name}-{quantize}.rknn"
        rknn.export_rknn(str(out_file))
        rknn.init_runtime()
        matched = total = 0
        diff = 0.0
        for name in HELD_OUT:
            outputs = rknn.inference(inputs=[photo(photos[name], model.size)[None]], data_format="nhwc")
            got = decode.detections(*to_boxes_scores(layout, outputs), conf=model.conf)
            m, t, d = decode.match_detections(reference[name], got)
            matched, total, diff = matched + m, total + t, max(diff, d)
        return {"matched": matched, "total": total, "score_diff": round(diff, 3), "seconds": round(seconds, 1),
                "size_mb": round(out_file.stat().st_size / 1e6, 2), "outputs": len(layout.outputs)}
    finally:
        rknn.release()


def bench_models(cache: Path, names: list[str]) -> list[BenchModel]:
    from trained import trained_models
    found = []
    if "nudenet" in names:
        found.append(BenchModel("nudenet", trained_models(cache)["nudenet"].path, 320, 0.25))
    if "yolov8n" in names:
        import zoo
        found.append(BenchModel("yolov8n", zoo.build_corpus(cache / "zoo", ["yolov8n-640"])["yolov8n-640"].path,
                                640, 0.0001))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(REPO / ".pytest_cache" / "d" / "trained"))
    ap.add_argument("--models", default="nudenet")
    ap.add_argument("--layouts", default="keep,split,rknn_model_zoo")
    ap.add_argument("--dtypes", default="int8,fp16")
    ap.add_argument("--conf", type=float, default=None, help="score threshold (default: 0.25, random weights 1e-4)")
    args = ap.parse_args()
    from trained import real_photos
    cache = Path(args.cache)
    photos = real_photos(cache)
    print("| model | layout | dtype | detections agree (top-10, IoU 0.5) | max score diff | build s | size MB |")
    print("|---|---|---|---|---|---|---|")
    for model in bench_models(cache, args.models.split(",")):
        model = BenchModel(model.name, model.path, model.size, args.conf or model.conf)
        reference = reference_detections(model, photos)
        for layout in args.layouts.split(","):
            for dtype in args.dtypes.split(","):
                with tempfile.TemporaryDirectory(prefix="bench-yolo-") as tmp:
                    r = build_and_compare(model, layout, dtype == "int8", photos, reference, Path(tmp))
                if "error" in r:
                    print(f"| {model.name} | {layout} | {dtype} | {r['error']} | | | |", flush=True)
                    continue
                print(f"| {model.name} | {layout} | {dtype} | {r['matched']}/{r['total']} | {r['score_diff']} | "
                      f"{r['seconds']} | {r['size_mb']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

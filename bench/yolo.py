"""YOLO on the NPU: per model, output layout (keep / split / rknn_model_zoo) and dtype (int8 / fp16), how well the
toolkit's simulator's detections agree with the float model's on held-out real photos, the build's seconds and the
model's size.

The layouts are the ones the daemon builds (rknn_dropbox.convert.yolo.layouts, written to a temp folder); each build
runs in this process with rknn-toolkit2 (tests/yolosim.py; calibration: 8 real photos, held out: bus and zidane,
tests/trained.py). The reference is onnxruntime on the stock export, decoded as the detection check decodes (top-10
detections per photo after NMS, matched by class and IoU >= 0.5; an OBB head's by the upright boxes around its rotated
ones). nudenet is compared at conf 0.01 (at 0.25 it finds 1-2 things per photo); random-weight models (the corpus's
yolov8n) at conf 0.0001 (their scores sit near 1e-4); the corpus's -spread heads (random weights, trained-like class
scores: tests/zoo.py) at 0.25 on the four held-out photos none of them saturates on (test_yolo_corpus.py). A pose
head's int8 builds keep its keypoint branch in float16, as the daemon builds them.

Usage: .venv/bin/python bench/yolo.py [--cache DIR] [--zoo-cache DIR]
       [--models nudenet,yolov8n,yolov8n-spread,yolo11n-spread,yolov8n-seg-spread,yolov8n-pose-spread,
                 yolov8n-obb-spread] [--layouts keep,split,rknn_model_zoo] [--dtypes int8,fp16] [--conf C]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import yolosim  # noqa: E402
CALIBRATION = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "china", "flower", "grace_hopper")
# the photos nudenet finds 10 things in at conf 0.01 (people); the others give it 0-5 noise-level boxes
HELD_OUT = ("bus", "zidane")
SPREAD_HELD_OUT = ("retina", "hubble_deep_field", "gravel", "ihc")
SPREAD_CALIBRATION = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "china", "flower", "horse")


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: Path
    size: int
    conf: float
    held_out: tuple[str, ...] = HELD_OUT
    calibration: tuple[str, ...] = CALIBRATION


def build_and_compare(model: BenchModel, layout_name: str, quantize: bool, photos: dict[str, Path],
                      reference: dict[str, np.ndarray], tmp: Path) -> dict[str, Any]:
    """One toolkit build of the layout; its simulator's detections against the reference on the held-out photos."""
    from rknn_dropbox.convert.yolo import decode
    try:
        rknn, layout, seconds, exported = yolosim.simulated_build(
            model.path, layout_name, quantize, model.size, [photos[n] for n in model.calibration], tmp)
    except RuntimeError as exc:
        return {"error": str(exc)}
    try:
        got = yolosim.simulated_detections(rknn, layout, model.size, {n: photos[n] for n in model.held_out},
                                           model.conf)
    finally:
        rknn.release()
    matched = total = 0
    diff = 0.0
    for name in model.held_out:
        m, t, d = decode.match_detections(reference[name], got[name])
        matched, total, diff = matched + m, total + t, max(diff, d)
    return {"matched": matched, "total": total, "score_diff": round(diff, 3), "seconds": round(seconds, 1),
            "size_mb": round(exported.stat().st_size / 1e6, 2), "outputs": len(layout.outputs)}


def bench_models(cache: Path, names: list[str], zoo_cache: Path) -> list[BenchModel]:
    from trained import real_photos, trained_models
    found = []
    spread = [n for n in names if n.endswith("-spread")]
    if spread:
        import zoo
        photos = real_photos(cache)
        built = zoo.build_corpus(zoo_cache, spread, photos=[photos[n] for n in SPREAD_CALIBRATION])
        found += [BenchModel(n, built[n].path, built[n].input_shape[-1], 0.25, SPREAD_HELD_OUT, SPREAD_CALIBRATION)
                  for n in spread]
    if "nudenet" in names:
        found.append(BenchModel("nudenet", trained_models(cache)["nudenet"].path, 320, 0.01))
    if "yolov8n" in names:
        import zoo
        found.append(BenchModel("yolov8n", zoo.build_corpus(zoo_cache, ["yolov8n-640"])["yolov8n-640"].path,
                                640, 0.0001))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(REPO / ".pytest_cache" / "d" / "trained"))
    ap.add_argument("--zoo-cache", default=str(REPO / ".pytest_cache" / "d" / "zoo"))
    ap.add_argument("--models", default="nudenet")
    ap.add_argument("--layouts", default="keep,split,rknn_model_zoo")
    ap.add_argument("--dtypes", default="int8,fp16")
    ap.add_argument("--conf", type=float, default=None, help="score threshold (default: 0.25, random weights 1e-4)")
    args = ap.parse_args()
    from trained import real_photos
    cache = Path(args.cache).resolve()
    photos = real_photos(cache)
    print("| model | layout | dtype | detections agree (top-10, IoU 0.5) | max score diff | build s | size MB |")
    print("|---|---|---|---|---|---|---|")
    for model in bench_models(cache, args.models.split(","), Path(args.zoo_cache).resolve()):
        model = BenchModel(model.name, model.path, model.size, args.conf or model.conf, model.held_out,
                           model.calibration)
        reference = yolosim.reference_detections(model.path, model.size, {n: photos[n] for n in model.held_out},
                                                 model.conf)
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

"""The accuracy bench's own held-out-photo check, independent of the product's: rebuild a delivered job's settings with
rknn-toolkit2, run the simulator and onnxruntime on photos the job never saw, and compare them by task.

Task metrics (decoders written here, not the product's checks): YOLO heads [1,4+C(+extra),N] decoded with NMS, top-10
detections matched by class at IoU >= 0.5; classifiers top-1; the CTC recogniser's greedy decode equality; the text
detector's probability map as a mask at 0.3 (IoU); per-pixel class maps' argmax agreement; anything else the max
error over the reference's range. `python bench/heldout.py SPEC.json` runs one check in a child process (a toolkit
crash is a row, not the bench's end) and prints its JSON on the last line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TOP_K, MATCH_IOU, NMS_IOU, CONF, LOW_CONF = 10, 0.5, 0.45, 0.25, 0.05  # got's side: half the conf
MASK_AT = 0.3
GOOD = {"detection": 0.7, "top1": 0.75, "ctc": 0.75, "mask_iou": 0.85, "argmax": 0.9, "range_error": 0.05}
EXTRA_ROWS = {"yolo-detect": 0, "yolo-seg": 32, "yolo-pose": 51}  # rows after the class scores in output0
BUILD_FLAGS = ("do_quantization", "auto_hybrid", "custom_hybrid")


@dataclass
class CheckSpec:
    """One build to check: the source model, its preprocessing, the toolkit settings, the photos."""
    model: str
    kind: str
    shape: list[int]
    mean: list[float]
    std: list[float]
    platform: str
    config: dict[str, Any]          # rknn.config() keys (quantized_dtype, ..., disable_rules)
    settings: dict[str, Any]        # do_quantization / auto_hybrid / custom_hybrid / config overrides
    outputs: list[str] | None       # load_onnx(outputs=...) when the delivered .rknn ends elsewhere than the ONNX
    dataset: str | None
    photos: list[str] = field(default_factory=list)
    note: str = ""                  # what the rebuild could not reproduce of the delivered build


@dataclass
class HeldOut:
    """The check's answer: truly good or broken, by which metric, in words."""
    good: bool | None
    metric: str
    value: float | None
    summary: str
    seconds: float = 0.0
    error: str | None = None


# ---- task decoders and metrics ------------------------------------------------------------------------------------
def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a [4] (x1, y1, x2, y2) against boxes b [K, 4]."""
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:4], b[:, 2:4])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda x: np.prod(np.clip(x[..., 2:4] - x[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def yolo_detections(head: np.ndarray, classes: int, conf: float) -> np.ndarray:
    """[4+C+extra, N] (cx, cy, w, h in pixels, class scores) -> [K, 6] (x1, y1, x2, y2, score, class) after
    class-wise greedy NMS, best first, at most TOP_K * 3."""
    scores = head[4:4 + classes]
    cls, best = scores.argmax(0), scores.max(0)
    keep = np.flatnonzero(best >= conf)
    keep = keep[np.argsort(-best[keep])][:1000]
    cx, cy, w, h = head[0, keep], head[1, keep], head[2, keep], head[3, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, best[keep], cls[keep]], axis=1)
    chosen: list[np.ndarray] = []
    for box in boxes:
        same = [c for c in chosen if c[5] == box[5]]
        if not same or _iou(box, np.array(same)).max() < NMS_IOU:
            chosen.append(box)
        if len(chosen) >= TOP_K * 3:
            break
    return np.array(chosen).reshape(-1, 6)


def match(ref: np.ndarray, got: np.ndarray) -> tuple[int, int]:
    """How many of ref's top-10 detections a same-class detection of got overlaps at IoU >= 0.5 (each used once;
    got's side is decoded at half the confidence, so a score a hair under the threshold is no miss)."""
    used = np.zeros(len(got), bool)
    matched = 0
    for box in ref[:TOP_K]:
        cands = np.flatnonzero((got[:, 5] == box[5]) & ~used) if len(got) else np.array([], int)
        if len(cands):
            ious = _iou(box, got[cands])
            if ious.max() >= MATCH_IOU:
                used[cands[ious.argmax()]] = True
                matched += 1
    return matched, min(len(ref), TOP_K)


def detection_metric(refs: list[np.ndarray], gots: list[np.ndarray], kind: str) -> tuple[float, str]:
    matched = total = 0
    for ref, got in zip(refs, gots):
        classes = ref.shape[0] - 4 - EXTRA_ROWS.get(kind, 0)
        conf = CONF if yolo_detections(ref, classes, CONF).shape[0] >= 3 else LOW_CONF  # few objects: weaker ones
        m, t = match(yolo_detections(ref, classes, conf), yolo_detections(got, classes, conf / 2))
        matched, total = matched + m, total + t
    return (matched / total if total else 1.0), f"detections agree {matched}/{total}"


def ctc_text(steps: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC decode of [T, C]: argmax per step, repeats collapsed, the blank (0) dropped, and the spaces at the
    line's ends trimmed as a reader of the text does (PP-OCR's last class is the space)."""
    best = steps.argmax(-1)
    tokens = [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]
    space = steps.shape[-1] - 1
    while tokens and tokens[0] == space:
        tokens.pop(0)
    while tokens and tokens[-1] == space:
        tokens.pop()
    return tuple(tokens)


def task_metric(kind: str, refs: list[np.ndarray], gots: list[np.ndarray]) -> tuple[str, float, str]:
    """(metric, value, summary) of the simulator's first outputs `gots` against onnxruntime's `refs`, by task."""
    n = len(refs)
    if kind in EXTRA_ROWS:
        value, words = detection_metric([r[0] for r in refs], [g[0] for g in gots], kind)
        return "detection", value, words
    if kind in ("classification", "direction"):
        agree = sum(int(r.argmax() == g.argmax()) for r, g in zip(refs, gots))
        return "top1", agree / n, f"top-1 agrees {agree}/{n}"
    if kind == "text-recognise":
        same = sum(int(ctc_text(r[0]) == ctc_text(g[0])) for r, g in zip(refs, gots))
        return "ctc", same / n, f"text equal {same}/{n} (spaces at the ends trimmed)"
    if kind == "text-detect":
        ious = []
        for r, g in zip(refs, gots):
            a, b = r > MASK_AT, g > MASK_AT
            union = np.logical_or(a, b).sum()
            ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
        return "mask_iou", float(np.mean(ious)), f"mask IoU {np.mean(ious):.3f} (worst {min(ious):.3f})"
    if kind == "segmentation":
        agree = float(np.mean([(r.argmax(1) == g.argmax(1)).mean() for r, g in zip(refs, gots)]))
        return "argmax", agree, f"pixel classes agree {100 * agree:.1f} %"
    errs = [float(np.abs(r - g).max() / max(float(r.max() - r.min()), 1e-9)) for r, g in zip(refs, gots)]
    return "range_error", 1.0 - max(errs), f"max error {100 * max(errs):.1f} % of the range"


def judge(kind: str, refs: list[np.ndarray], gots: list[np.ndarray]) -> HeldOut:
    metric, value, words = task_metric(kind, refs, gots)
    good = value >= (1.0 - GOOD[metric] if metric == "range_error" else GOOD[metric])
    return HeldOut(good, metric, round(value, 4), words)


# ---- the rebuild, the simulator and onnxruntime --------------------------------------------------------------------
def load_photo(path: str, shape: list[int]) -> np.ndarray:
    """An RGB photo at the input size, NCHW float32 in 0..255 (what the simulator takes with mean/std applied)."""
    import cv2
    img = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (shape[3], shape[2]))
    return img.astype(np.float32).transpose(2, 0, 1)[None]


def reference_outputs(spec: CheckSpec, photos: list[np.ndarray]) -> list[list[np.ndarray]]:
    import onnxruntime as ort
    sess = ort.InferenceSession(spec.model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    mean = np.array(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.array(spec.std, np.float32).reshape(1, -1, 1, 1)
    return [sess.run(None, {name: (p - mean) / std}) for p in photos]


def _build(rknn: Any, RKNN: Any, spec: CheckSpec) -> Any:
    """Configure, load and build `spec` as delivered (a custom hybrid through the toolkit's two steps)."""
    overrides = {k: v for k, v in spec.settings.items() if k not in BUILD_FLAGS}
    assert rknn.config(target_platform=spec.platform, mean_values=[spec.mean], std_values=[spec.std],
                       **{**spec.config, **overrides}) == 0, "config() failed"
    import onnx
    graph_in = onnx.load(spec.model, load_external_data=False).graph.input[0].name
    assert rknn.load_onnx(model=spec.model, inputs=[graph_in], input_size_list=[spec.shape],
                          outputs=spec.outputs) == 0, "load_onnx() failed"
    quantize = bool(spec.settings.get("do_quantization"))
    if spec.settings.get("custom_hybrid"):
        assert rknn.hybrid_quantization_step1(dataset=spec.dataset, proposal=False,
                                              custom_hybrid=spec.settings["custom_hybrid"]) == 0, "hybrid step 1"
        stem = next(Path.cwd().glob("*.quantization.cfg")).name[: -len(".quantization.cfg")]
        rknn.release()
        rknn = RKNN(verbose=False)
        assert rknn.hybrid_quantization_step2(model_input=f"{stem}.model", data_input=f"{stem}.data",
                                              model_quantization_cfg=f"{stem}.quantization.cfg") == 0, "hybrid 2"
        return rknn
    hybrid = {"auto_hybrid": True} if spec.settings.get("auto_hybrid") else {}
    with_data = quantize or bool(hybrid)
    assert rknn.build(do_quantization=quantize, dataset=spec.dataset if with_data else None, **hybrid) == 0, \
        "build() failed"
    return rknn


def assembled(got: list[np.ndarray], want: list[np.ndarray]) -> list[np.ndarray]:
    """The simulator's outputs in the ONNX's layout: a head delivered split along axis 1 (boxes, scores, ...) joined
    back when its pieces add up to the ONNX output's rows."""
    if len(got) == len(want) and all(g.shape == w.shape for g, w in zip(got, want)):
        return got
    first = want[0]
    rows, pieces = 0, []
    for g in got:
        if g.ndim == 3 and g.shape[2] == first.shape[2] and rows < first.shape[1]:
            pieces.append(g)
            rows += g.shape[1]
    if rows == first.shape[1]:
        return [np.concatenate(pieces, axis=1)] + got[len(pieces):]
    return [g.reshape(w.shape) if g.size == w.size else g for g, w in zip(got, want)]


def run_check(spec: CheckSpec) -> HeldOut:
    started = time.monotonic()
    from rknn.api import RKNN
    photos = [load_photo(p, spec.shape) for p in spec.photos]
    refs = reference_outputs(spec, photos)
    rknn = RKNN(verbose=False)
    with tempfile.TemporaryDirectory(prefix="rknn-heldout-") as work:
        os.chdir(work)
        try:
            rknn = _build(rknn, RKNN, spec)
            assert rknn.init_runtime() == 0, "init_runtime() failed"
            gots = [assembled([np.asarray(o) for o in rknn.inference(inputs=[p], data_format="nchw")], r)
                    for p, r in zip(photos, refs)]
        finally:
            rknn.release()
    out = judge(spec.kind, [r[0] for r in refs], [g[0] for g in gots])
    out.seconds = round(time.monotonic() - started, 1)
    return out


def main(argv: list[str]) -> int:
    spec = CheckSpec(**json.loads(Path(argv[1]).read_text()))
    try:
        out = run_check(spec)
    except Exception as exc:  # noqa: BLE001 - reported as the row's error
        out = HeldOut(None, "-", None, "", error=f"{type(exc).__name__}: {exc}"[:300])
    print("\n" + json.dumps(asdict(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

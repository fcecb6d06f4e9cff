"""YOLO-style detection heads (Ultralytics' [1, 4+C, N] as exported, its split parts, the Rockchip model zoo's
per-scale layout): decode both runtimes' outputs, match the reference's top detections by class and IoU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rknn_dropbox.convert.checks.base import CheckResult, OutputInfo
from rknn_dropbox.thresholds import threshold_for
from rknn_dropbox.convert.checks.tensor import TensorCheck, measure_part, stack

CONF = 0.25       # a detection the reference makes on a sample (below it on every sample: judged by the error)
NMS_IOU = 0.45
MATCH_IOU = 0.5
TOP_K = 10


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [K, 4] with every box in b [M, 4] (x1, y1, x2, y2)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: np.clip(r[:, 2] - r[:, 0], 0, None) * np.clip(r[:, 3] - r[:, 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = list(np.argsort(-scores))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(i)
        if order:
            ious = iou_matrix(boxes[i:i + 1], boxes[order])[0]
            order = [j for j, v in zip(order, ious) if v <= iou]
    return keep


def decode_xywh(boxes: np.ndarray, scores: np.ndarray, conf: float = CONF, iou: float = NMS_IOU,
                max_det: int = 100) -> np.ndarray:
    """Ultralytics' post-processing: boxes [4, N] (cx, cy, w, h in pixels), class scores [C, N] -> [K, 6] rows of
    (x1, y1, x2, y2, score, class) after class-aware NMS, best first."""
    boxes = np.nan_to_num(np.asarray(boxes, dtype=np.float32).reshape(4, -1))
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float32).reshape(-1, boxes.shape[1]))
    cls = np.argmax(scores, 0)
    best = scores[cls, np.arange(scores.shape[1])]
    keep = np.nonzero(best >= conf)[0]
    if keep.size > 30 * max_det:
        keep = keep[np.argsort(-best[keep])[: 30 * max_det]]
    cx, cy, w, h = boxes[:, keep]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    offset = xyxy + cls[keep, None] * 4096.0          # class-aware NMS in one pass
    chosen = nms(offset, best[keep], iou)[:max_det]
    return np.concatenate([xyxy[chosen], best[keep][chosen, None], cls[keep][chosen, None]], 1) \
        if chosen else np.zeros((0, 6), np.float32)


def match_detections(ref: np.ndarray, got: np.ndarray, top_k: int = TOP_K, iou: float = MATCH_IOU
                     ) -> tuple[int, int, float]:
    """How many of the reference's top_k detections the other side found (same class, IoU >= iou), of how many,
    and the largest score difference among the matched."""
    ref = ref[:top_k]
    if len(ref) == 0:
        return 0, 0, 0.0
    same = ref[:, None, 5] == got[None, :, 5] if len(got) else np.zeros((len(ref), 0), bool)
    ious = np.where(same, iou_matrix(ref[:, :4], got[:, :4]), 0.0)
    matched, diffs, used = 0, [0.0], set()
    for r in range(len(ref)):
        for c in np.argsort(-ious[r]):
            if ious[r, c] < iou:
                break
            if c not in used:
                used.add(c)
                matched += 1
                diffs.append(abs(float(ref[r, 4] - got[c, 4])))
                break
    return matched, len(ref), max(diffs)


def boxes_and_scores(outputs: list[np.ndarray], layout: str, num_classes: int, input_hw: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One sample's head outputs as (boxes [4, N] cx cy w h, scores [C, N]) whatever the layout."""
    if layout == "rknn_model_zoo":
        from rknn_dropbox.convert.yolo.decode import zoo_to_boxes_scores
        return zoo_to_boxes_scores(outputs, num_classes, input_hw)
    if layout == "split":
        return outputs[0].reshape(4, -1), outputs[1].reshape(num_classes, -1)
    flat = outputs[0].reshape(outputs[0].shape[-2], -1)
    return flat[:4], flat[4:4 + num_classes]


@dataclass
class DetectionCheck:
    outputs: list[int]
    layout: str                     # keep | split | rknn_model_zoo
    num_classes: int
    input_hw: tuple[int, int]
    kind: str = "detection"

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        matched = total = 0
        diff = 0.0
        for ref, sim in zip(refs, sims):
            want = boxes_and_scores([np.asarray(ref[i]) for i in self.outputs], self.layout, self.num_classes,
                                    self.input_hw)
            got = boxes_and_scores([np.asarray(sim[i]) for i in self.outputs], self.layout, self.num_classes,
                                   self.input_hw)
            m, t, d = match_detections(decode_xywh(*want, conf=CONF), decode_xywh(*got, conf=CONF * 0.5))
            matched, total, diff = matched + m, total + t, max(diff, d)
        if total == 0:  # no sample shows an object: matching proves nothing (an untrained net, empty photos)
            return self._by_error(refs, sims, quantized, thresholds, infos)
        limit = threshold_for("detection_agreement", quantized, thresholds)
        value = matched / total if total else 1.0
        summary = f"detections agree {matched}/{total}"
        details: dict[str, Any] = {"matched": matched, "total": total, "max_score_diff": round(diff, 4),
                                   "layout": self.layout, "top_k": TOP_K, "match_iou": MATCH_IOU}
        lost = self._lost_parts(refs, sims, infos, details)
        if lost:
            summary += f"; scores lost: {lost}"
        return CheckResult(self.kind, [infos[i].name for i in self.outputs], "detection_agreement", value, limit,
                           value >= limit and not lost, summary, details)

    def _by_error(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                  thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        """The head's outputs by their range-relative error (parts included), the worst one deciding."""
        results = [TensorCheck([i]).measure(refs, sims, quantized, thresholds, infos) for i in self.outputs]
        worst = min(results, key=lambda r: (r.passed, r.margin))
        return CheckResult(self.kind, [infos[i].name for i in self.outputs], worst.metric, worst.value,
                           worst.threshold, all(r.passed for r in results),
                           f"no detection above {CONF} on any sample: {worst.summary}",
                           {"layout": self.layout, "per_output": [r.details for r in results]})

    def _lost_parts(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], infos: list[OutputInfo],
                    details: dict[str, Any]) -> str:
        """The Concat parts of a kept head measured against the int8 step; the first lost one in words."""
        info = infos[self.outputs[0]]
        if self.layout != "keep" or not info.parts:
            return ""
        i = self.outputs[0]
        want, got = stack(refs, i), stack(sims, i)
        parts = [measure_part(want, got, p, info.step, float("inf")) for p in info.parts]
        details["parts"] = parts
        lost = [p for p in parts if not p["passed"]]
        return lost[0]["summary"] if lost else ""

"""Decoding YOLO outputs on the CPU with numpy: every layout to boxes + scores (DFL included), then NMS.

Only numpy, no other import: the board-side predict.py carries a copy of these functions."""

from __future__ import annotations

import numpy as np

DFL_BINS = 16


def dfl_boxes(box: np.ndarray, stride: float) -> np.ndarray:
    """One scale's DFL logits [1, 4*16, H, W] -> boxes [4, H*W] (cx, cy, w, h in input pixels)."""
    _, channels, h, w = box.shape
    bins = channels // 4
    logits = box.reshape(4, bins, h * w).astype(np.float32)
    logits = np.exp(logits - logits.max(axis=1, keepdims=True))
    dist = (logits / logits.sum(axis=1, keepdims=True) * np.arange(bins, dtype=np.float32)[None, :, None]).sum(1)
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
    ax, ay = gx.ravel(), gy.ravel()
    x1, y1, x2, y2 = ax - dist[0], ay - dist[1], ax + dist[2], ay + dist[3]
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) * stride


def zoo_to_boxes_scores(outputs: list[np.ndarray], num_classes: int, input_hw: tuple[int, int]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The Rockchip model zoo's outputs (per scale: DFL logits, class scores, score sum[, mask coefficients]; a
    segment head's protos last) -> boxes [4, N] cx,cy,w,h pixels and scores [C, N], scales in order."""
    per_scale = len(outputs) // 3  # 3 scales: 9 outputs (detect), 13 (segment: + mask coefficients, protos last)
    boxes, scores = [], []
    for i in range(3):
        box, score = np.asarray(outputs[per_scale * i]), np.asarray(outputs[per_scale * i + 1])
        if box.ndim == 4 and box.shape[1] != 4 * DFL_BINS and box.shape[3] == 4 * DFL_BINS:  # NHWC from a runtime
            box, score = box.transpose(0, 3, 1, 2), score.transpose(0, 3, 1, 2)
        boxes.append(dfl_boxes(box, input_hw[0] / box.shape[2]))
        scores.append(score.reshape(score.shape[1], -1)[:num_classes])
    return np.concatenate(boxes, axis=1), np.concatenate(scores, axis=1).astype(np.float32)


def split_to_boxes_scores(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The split layout: boxes [1, 4, N] and scores [1, C, N] first."""
    return np.asarray(outputs[0])[0].astype(np.float32), np.asarray(outputs[1])[0].astype(np.float32)


def keep_to_boxes_scores(output: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The stock output [1, 4 + C (+ more), N]."""
    out = np.asarray(output)[0].astype(np.float32)
    return out[:4], out[4:4 + num_classes]


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    x2, y2 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def detections(boxes: np.ndarray, scores: np.ndarray, conf: float = 0.25, iou: float = 0.45,
               max_det: int = 100) -> np.ndarray:
    """boxes [4, N] cx,cy,w,h and scores [C, N] -> [K, 6] rows (x1, y1, x2, y2, score, class) by score, after a
    per-class NMS (Ultralytics' rule: each box's best class)."""
    cls = scores.argmax(axis=0)
    best = scores[cls, np.arange(scores.shape[1])]
    keep = np.nonzero(best > conf)[0]
    keep = keep[np.argsort(-best[keep], kind="stable")]
    xyxy = np.stack([boxes[0] - boxes[2] / 2, boxes[1] - boxes[3] / 2,
                     boxes[0] + boxes[2] / 2, boxes[1] + boxes[3] / 2], axis=1)
    chosen: list[int] = []
    for idx in keep:
        same = [j for j in chosen if cls[j] == cls[idx]]
        if not same or _iou(xyxy[idx], xyxy[same]).max() <= iou:
            chosen.append(int(idx))
        if len(chosen) >= max_det:
            break
    if not chosen:
        return np.zeros((0, 6), np.float32)
    sel = np.array(chosen)
    return np.concatenate([xyxy[sel], best[sel, None], cls[sel, None].astype(np.float32)], axis=1).astype(np.float32)


def match_detections(ref: np.ndarray, got: np.ndarray, top_k: int = 10, iou: float = 0.5
                     ) -> tuple[int, int, float]:
    """How many of ref's top-k detections `got` finds (same class, IoU >= iou); of how many; the largest score
    difference among the matched ones."""
    ref, got = ref[:top_k], got[:top_k]
    used: set[int] = set()
    matched, diff = 0, 0.0
    for row in ref:
        same = [j for j in range(len(got)) if j not in used and got[j, 5] == row[5]]
        if not same:
            continue
        overlaps = _iou(row[:4], got[same, :4])
        k = int(overlaps.argmax())
        if overlaps[k] >= iou:
            used.add(same[k])
            matched += 1
            diff = max(diff, abs(float(got[same[k], 4] - row[4])))
    return matched, len(ref), diff

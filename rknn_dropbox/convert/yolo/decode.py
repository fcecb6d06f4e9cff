"""Decoding YOLO outputs on the CPU with numpy: every layout to boxes + scores (DFL included), then NMS.

Only numpy, no other import: the board-side predict.py carries a copy of these functions."""

from __future__ import annotations

import numpy as np

DFL_BINS = 16


def dfl_distances(box: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scale's DFL logits [1, 4*16, H, W] -> distances [4, H*W] (left, top, right, bottom, in grid cells) and
    the anchor centres x, y [H*W]."""
    _, channels, h, w = box.shape
    bins = channels // 4
    logits = box.reshape(4, bins, h * w).astype(np.float32)
    logits = np.exp(logits - logits.max(axis=1, keepdims=True))
    dist = (logits / logits.sum(axis=1, keepdims=True) * np.arange(bins, dtype=np.float32)[None, :, None]).sum(1)
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
    return dist, gx.ravel(), gy.ravel()


def dfl_boxes(box: np.ndarray, stride: float) -> np.ndarray:
    """One scale's DFL logits [1, 4*16, H, W] -> boxes [4, H*W] (cx, cy, w, h in input pixels)."""
    dist, ax, ay = dfl_distances(box)
    x1, y1, x2, y2 = ax - dist[0], ay - dist[1], ax + dist[2], ay + dist[3]
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) * stride


def rotated_boxes(box: np.ndarray, angle: np.ndarray, stride: float) -> np.ndarray:
    """One scale's DFL logits and its angles (radians) [H*W] -> rotated boxes [4, H*W] (cx, cy, w, h in input
    pixels; Ultralytics' dist2rbox)."""
    dist, ax, ay = dfl_distances(box)
    cos, sin = np.cos(angle), np.sin(angle)
    xf, yf = (dist[2] - dist[0]) / 2, (dist[3] - dist[1]) / 2
    return np.stack([xf * cos - yf * sin + ax, xf * sin + yf * cos + ay,
                     dist[0] + dist[2], dist[1] + dist[3]]) * stride


def envelope(boxes: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotated boxes [4, N] (cx, cy, w, h) with their angles [N] -> the upright boxes around them [4, N]."""
    cos, sin = np.abs(np.cos(angle)), np.abs(np.sin(angle))
    return np.stack([boxes[0], boxes[1], boxes[2] * cos + boxes[3] * sin, boxes[2] * sin + boxes[3] * cos])


def corners(box: np.ndarray, angle: float) -> np.ndarray:
    """One rotated box (cx, cy, w, h) -> its 4 corners [4, 2]."""
    cos, sin = np.cos(angle), np.sin(angle)
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * np.array([box[2], box[3]]) / 2
    return np.stack([half[:, 0] * cos - half[:, 1] * sin + box[0], half[:, 0] * sin + half[:, 1] * cos + box[1]], 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _nchw(t: np.ndarray, channels: int) -> np.ndarray:
    """A per-scale output as NCHW (a runtime may hand it over NHWC)."""
    t = np.asarray(t)
    return t.transpose(0, 3, 1, 2) if t.ndim == 4 and t.shape[1] != channels and t.shape[3] == channels else t


def zoo_pose_obb(outputs: list[np.ndarray], task: str, num_classes: int, input_hw: tuple[int, int],
                 kpt_shape: tuple[int, int] = (17, 3)) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The model zoo's pose / OBB outputs (per scale the DFL logits and class logits in one tensor
    [1, 64+C, H, W]; last the decoded keypoints [1, K, D, N] or the angles' sigmoid [1, 1, N]) -> boxes [4, N],
    scores [C, N] and the keypoints [K, D, N] or the angles in radians [N]."""
    scales, last = outputs[:-1], np.asarray(outputs[-1], dtype=np.float32)
    angle = (last.reshape(-1) - 0.25) * np.pi if task == "obb" else None
    boxes, scores, start = [], [], 0
    for out in scales:
        t = _nchw(out, 4 * DFL_BINS + num_classes).astype(np.float32)
        box, stride, cells = t[:, :4 * DFL_BINS], input_hw[0] / t.shape[2], t.shape[2] * t.shape[3]
        if angle is not None:
            boxes.append(rotated_boxes(box, angle[start:start + cells], stride))
        else:
            boxes.append(dfl_boxes(box, stride))
        scores.append(_sigmoid(t[0, 4 * DFL_BINS:4 * DFL_BINS + num_classes].reshape(num_classes, -1)))
        start += cells
    extra = {"angle": angle} if angle is not None else {"keypoints": last.reshape(*kpt_shape, -1)}
    return np.concatenate(boxes, axis=1), np.concatenate(scores, axis=1), extra


def head_outputs(outputs: list[np.ndarray], layout: dict) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Any layout's outputs (`layout`: result.json's outputs_layout) -> boxes [4, N] (cx, cy, w, h; rotated ones
    for OBB), class scores [C, N], and a pose head's keypoints [K, D, N] (x, y in pixels, visibility) or an OBB
    head's angles [N] (radians)."""
    task, kind, nc = layout.get("task", "detect"), layout["layout"], int(layout["num_classes"])
    kpt = tuple(layout.get("keypoints_shape") or (17, 3))
    if kind == "rknn_model_zoo" and task in ("pose", "obb"):
        return zoo_pose_obb(outputs, task, nc, tuple(layout["input_hw"]), kpt)
    if kind == "rknn_model_zoo":
        return (*zoo_to_boxes_scores(outputs, nc, tuple(layout["input_hw"])), {})
    if kind == "split":
        boxes, scores = split_to_boxes_scores(outputs)
        rest = np.asarray(outputs[2], dtype=np.float32)[0] if len(outputs) > 2 else None
    else:
        boxes, scores = keep_to_boxes_scores(outputs[0], nc)
        rest = np.asarray(outputs[0], dtype=np.float32)[0][4 + nc:]
    if task == "pose" and rest is not None:
        return boxes, scores, {"keypoints": rest.reshape(*kpt, -1)}
    if task == "obb" and rest is not None:
        return boxes, scores, {"angle": rest.reshape(-1)}
    return boxes, scores, {}


def zoo_to_boxes_scores(outputs: list[np.ndarray], num_classes: int, input_hw: tuple[int, int]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The Rockchip model zoo's outputs (per scale: DFL logits, class scores, score sum[, mask coefficients]; a
    segment head's protos last) -> boxes [4, N] cx,cy,w,h pixels and scores [C, N], scales in order."""
    per_scale = len(outputs) // 3  # 3 scales: 9 outputs (detect), 13 (segment: + mask coefficients, protos last)
    boxes, scores = [], []
    for i in range(3):
        box, score = np.asarray(outputs[per_scale * i]), np.asarray(outputs[per_scale * i + 1])
        box, score = _nchw(box, 4 * DFL_BINS), _nchw(score, num_classes)
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
    """boxes [4, N] cx,cy,w,h and scores [C, N] -> [K, 7] rows (x1, y1, x2, y2, score, class, anchor) by score,
    after a per-class NMS (Ultralytics' rule: each box's best class); `anchor` indexes N (keypoints, angles)."""
    cls = scores.argmax(axis=0)
    best = scores[cls, np.arange(scores.shape[1])]
    keep = np.nonzero(best > conf)[0]
    keep = keep[np.argsort(-best[keep], kind="stable")][:30 * max_det]
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
        return np.zeros((0, 7), np.float32)
    sel = np.array(chosen)
    return np.concatenate([xyxy[sel], best[sel, None], cls[sel, None].astype(np.float32),
                           sel[:, None].astype(np.float32)], axis=1).astype(np.float32)


def matched_pairs(ref: np.ndarray, got: np.ndarray, iou: float = 0.5) -> list[tuple[int, int]]:
    """Each of ref's detections paired, in order, with the unused detection of `got` of its class that overlaps it
    most, when that IoU is at least `iou`: (ref row, got row) pairs."""
    used: set[int] = set()
    pairs = []
    for r, row in enumerate(ref):
        same = [j for j in range(len(got)) if j not in used and got[j, 5] == row[5]]
        if not same:
            continue
        overlaps = _iou(row[:4], got[same, :4])
        k = int(overlaps.argmax())
        if overlaps[k] >= iou:
            used.add(same[k])
            pairs.append((r, same[k]))
    return pairs


def match_detections(ref: np.ndarray, got: np.ndarray, top_k: int = 10, iou: float = 0.5
                     ) -> tuple[int, int, float]:
    """How many of ref's top-k detections `got`'s top-k finds (same class, IoU >= iou); of how many; the largest
    score difference among the matched ones."""
    ref, got = ref[:top_k], got[:top_k]
    pairs = matched_pairs(ref, got, iou)
    return len(pairs), len(ref), max([abs(float(got[c, 4] - ref[r, 4])) for r, c in pairs], default=0.0)

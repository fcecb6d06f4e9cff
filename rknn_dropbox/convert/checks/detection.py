"""YOLO-style detection heads (Ultralytics' [1, 4+C, N] as exported, its split parts, the Rockchip model zoo's
per-scale layout; detect, segment, pose, OBB): decode both runtimes' outputs, match the reference's top detections
by class and IoU, and a pose head's keypoints on the matched ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rknn_dropbox.convert.checks.base import CheckResult, OutputInfo, stack
from rknn_dropbox.convert.checks.tensor import TensorCheck, measure_part
from rknn_dropbox.convert.yolo.decode import detections, envelope, head_outputs, matched_pairs
from rknn_dropbox.thresholds import threshold_for

CONF = 0.25       # a detection the reference makes on a sample (below it on every sample: judged by the error)
NMS_IOU = 0.45
MATCH_IOU = 0.5
TOP_K = 10
KEYPOINT_TOLERANCE = 0.1   # a keypoint this far off (times the box's size) is misplaced
VISIBILITY_TOLERANCE = 0.1  # a pose whose keypoint visibility scores differ by more (mean) is not the same pose


def head_detections(outputs: list[np.ndarray], layout: dict[str, Any], conf: float
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One sample's head outputs decoded: [K, 7] detections (an OBB head's by the upright box around each rotated
    one) and the keypoints / angles they index."""
    boxes, scores, extra = head_outputs([np.nan_to_num(np.asarray(o, dtype=np.float32)) for o in outputs], layout)
    if "angle" in extra:
        boxes = envelope(boxes, extra["angle"])
    return detections(boxes, scores, conf, NMS_IOU), extra


def keypoints_agree(ref: np.ndarray, got: np.ndarray, box: np.ndarray) -> bool:
    """One matched pose: the keypoints [K, D] the reference sees (visibility above 0.5, or all without one) within
    KEYPOINT_TOLERANCE of the box's size (median), and their visibility scores within VISIBILITY_TOLERANCE (mean)."""
    size = max(float(np.sqrt(max(box[2] - box[0], 1e-3) * max(box[3] - box[1], 1e-3))), 1e-3)
    seen = ref[:, 2] > 0.5 if ref.shape[1] > 2 else np.ones(len(ref), bool)
    if seen.any():
        dist = np.hypot(*(ref[seen, :2] - got[seen, :2]).T) / size
        if float(np.median(dist)) > KEYPOINT_TOLERANCE:
            return False
    return ref.shape[1] < 3 or float(np.mean(np.abs(ref[:, 2] - got[:, 2]))) <= VISIBILITY_TOLERANCE


@dataclass
class Agreement:
    """The reference's top detections matched over the samples, and a pose head's keypoints on the matched ones."""
    matched: int = 0
    total: int = 0
    score_diff: float = 0.0
    poses: int = 0
    poses_agreed: int = 0

    def add(self, reference: tuple[np.ndarray, dict[str, np.ndarray]],
            build: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
        """One sample: (detections, extras) of the reference and of the build."""
        (want, want_extra), (got, got_extra) = reference, build
        want = want[:TOP_K]
        pairs = matched_pairs(want, got, MATCH_IOU)
        self.matched, self.total = self.matched + len(pairs), self.total + len(want)
        self.score_diff = max([self.score_diff, *(abs(float(want[r, 4] - got[c, 4])) for r, c in pairs)])
        if "keypoints" in want_extra:
            # at the reference detection's own anchor on both sides: which of an object's anchors NMS keeps is the
            # detections' business (matched above); the keypoints the head predicts there are this one's
            self.poses += len(pairs)
            self.poses_agreed += sum(keypoints_agree(want_extra["keypoints"][..., int(want[r, 6])],
                                                     got_extra["keypoints"][..., int(want[r, 6])], want[r, :4])
                                     for r, _ in pairs)


@dataclass
class DetectionCheck:
    outputs: list[int]
    layout: str                     # keep | split | rknn_model_zoo
    num_classes: int
    input_hw: tuple[int, int]
    task: str = "detect"            # detect | segment | pose | obb
    keypoints_shape: tuple[int, int] = (17, 3)
    kind: str = "detection"

    def _layout(self) -> dict[str, Any]:
        return {"layout": self.layout, "task": self.task, "num_classes": self.num_classes,
                "input_hw": list(self.input_hw), "keypoints_shape": list(self.keypoints_shape)}

    def measure(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        tally = Agreement()
        for ref, sim in zip(refs, sims):
            tally.add(head_detections([ref[i] for i in self.outputs], self._layout(), CONF),
                      head_detections([sim[i] for i in self.outputs], self._layout(), CONF * 0.5))
        if tally.total == 0:  # no sample shows an object: matching proves nothing (an untrained net, empty photos)
            return self._by_error(refs, sims, quantized, thresholds, infos)
        limit = threshold_for("detection_agreement", quantized, thresholds)
        value, summary = tally.matched / tally.total, f"detections agree {tally.matched}/{tally.total}"
        details: dict[str, Any] = {"matched": tally.matched, "total": tally.total,
                                   "max_score_diff": round(tally.score_diff, 4), "layout": self.layout,
                                   "task": self.task, "top_k": TOP_K, "match_iou": MATCH_IOU}
        if self.task == "pose":
            details.update(keypoints_agreed=tally.poses_agreed, keypoints_compared=tally.poses,
                           keypoint_tolerance=KEYPOINT_TOLERANCE, visibility_tolerance=VISIBILITY_TOLERANCE)
            summary += f"; keypoints agree {tally.poses_agreed}/{tally.poses}"
            value = min(value, tally.poses_agreed / tally.poses if tally.poses else 0.0)
        lost = self._lost_parts(refs, sims, infos, details)
        if lost:
            summary += f"; scores lost: {lost}"
        return CheckResult(self.kind, [infos[i].name for i in self.outputs], "detection_agreement", value, limit,
                           value >= limit and not lost, summary, details)

    def _by_error(self, refs: list[list[np.ndarray]], sims: list[list[np.ndarray]], quantized: bool,
                  thresholds: dict[str, float] | None, infos: list[OutputInfo]) -> CheckResult:
        """The head's outputs by their range-relative error (parts included), the worst one deciding; class scores
        against at least their 0..1 (scores that all read ~1e-4 are "no object" to any threshold, and int8 gives a
        sigmoid's output a step of ~0.002), and the build must find no detection either."""
        scores = self._score_positions()
        results = [TensorCheck([i], floor=1.0 if k in scores else 0.0).measure(refs, sims, quantized, thresholds,
                                                                                infos)
                   for k, i in enumerate(self.outputs)]
        worst = min(results, key=lambda r: (r.passed, r.margin))
        found = self._found_anyway(sims)
        summary = f"no detection above {CONF} on any sample: {worst.summary}"
        if found:
            summary = f"no detection above {CONF} on any sample of the source model, but the build finds {found}"
        return CheckResult(self.kind, [infos[i].name for i in self.outputs], worst.metric, worst.value,
                           worst.threshold, all(r.passed for r in results) and not found, summary,
                           {"layout": self.layout, "per_output": [r.details for r in results],
                            "build_detections": found})

    def _score_positions(self) -> set[int]:
        """Which of self.outputs hold class scores (0..1): split's second; the zoo's score and score sum per scale
        (a zoo pose / OBB head's per-scale tensors join DFL and class logits: none)."""
        if self.layout == "split":
            return {1}
        if self.layout == "rknn_model_zoo" and self.task in ("detect", "segment"):
            per_scale = len(self.outputs) // 3
            return {per_scale * s + k for s in range(3) for k in (1, 2)}
        return set()

    def _found_anyway(self, sims: list[list[np.ndarray]]) -> int:
        """How many detections above CONF the build makes over the samples (the source made none)."""
        return sum(len(head_detections([sim[i] for i in self.outputs], self._layout(), CONF)[0]) for sim in sims)

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

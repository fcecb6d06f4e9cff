"""The task checks on outputs whose failure a cosine hides: a 1-element logit, a collapsed score part, a classifier
whose top-1 flips, a CTC line that decodes differently, a text mask that shrinks."""

from __future__ import annotations

import numpy as np

from rknn_dropbox.convert.checks.base import ConcatPart, OutputInfo
from rknn_dropbox.convert.checks.recognise import check_for, output_infos, plan_checks
from rknn_dropbox.convert.checks.verdict import judge
from rknn_dropbox.formats.onnx_outputs import GraphOutput


def _judge(infos, refs, sims, quantized=True):
    return judge(plan_checks(infos, (320, 320), None, [i.name for i in infos if i.parts]), refs, sims, quantized,
                 None, infos, synthetic=False)


def test_a_one_element_output_is_judged_by_its_error_not_its_cosine() -> None:
    infos = [OutputInfo("presence", [1, 1])]
    refs = [[np.array([[v]], np.float32)] for v in (3.1, 0.0, 2.9, 3.3)]
    sims = [[np.array([[v + 0.02]], np.float32)] for v in (3.1, 0.0, 2.9, 3.3)]   # cosine of sample 2: 0.0
    verdict = _judge(infos, refs, sims)
    assert verdict.passed and verdict.deciding.metric == "relative_error", verdict.to_json()
    worse = [[np.array([[v + 1.0]], np.float32)] for v in (3.1, 0.0, 2.9, 3.3)]
    assert not _judge(infos, refs, worse).passed


def _yolo_like(rng: np.random.Generator, n: int = 2100, classes: int = 18) -> np.ndarray:
    boxes = rng.uniform(0, 320, (4, n))
    boxes[2:] = rng.uniform(10, 60, (2, n))
    scores = np.zeros((classes, n))
    hot = rng.choice(n, 6, replace=False)
    scores[rng.integers(0, classes, 6), hot] = rng.uniform(0.4, 0.7, 6)
    return np.concatenate([boxes, scores])[None].astype(np.float32)


def test_a_detection_head_whose_scores_collapse_fails_naming_the_part_despite_its_cosine() -> None:
    rng = np.random.default_rng(1)
    graph = [GraphOutput("output0", [0, 22, 0], "Concat", None, 1, [4, 18])]
    refs = [[_yolo_like(rng)] for _ in range(3)]
    step = 1.259
    collapsed = [[np.round(r[0] / step) * step] for r in refs]           # one int8 scale for boxes and scores
    infos = output_infos(["output0"], [[1, 22, 2100]], graph, [step])
    assert infos[0].parts == [ConcatPart(1, 0, 4), ConcatPart(1, 4, 22)]
    cos = float(np.dot(refs[0][0].ravel(), collapsed[0][0].ravel()) /
                (np.linalg.norm(refs[0][0]) * np.linalg.norm(collapsed[0][0])))
    assert cos > 0.999                                                   # what the old check looked at
    verdict = _judge(infos, refs, collapsed)
    d = verdict.deciding
    assert not verdict.passed and d.kind == "detection" and d.metric == "detection_agreement", verdict.to_json()
    assert "rows 4–21 span 0–0.7" in d.summary and "int8 step is 1.26" in d.summary, d.summary
    assert [(p["axis"], p["start"], p["stop"]) for p in d.details["parts"]] == [(1, 0, 4), (1, 4, 22)]
    fine = [[r[0] + rng.normal(0, 0.002, r[0].shape).astype(np.float32)] for r in refs]
    good = _judge(output_infos(["output0"], [[1, 22, 2100]], graph, [0.004]), refs, fine)
    assert good.passed and "detections agree" in good.deciding.summary, good.to_json()


def test_class_scores_count_top1_agreement_and_forgive_near_ties() -> None:
    infos = [OutputInfo("prob", [1, 2], "Softmax", "Softmax")]
    assert check_for(0, infos[0], (48, 192)).kind == "class_scores"
    refs = [[np.array([[0.9, 0.1]], np.float32)], [np.array([[0.2, 0.8]], np.float32)],
            [np.array([[0.502, 0.498]], np.float32)]]
    sims = [[np.array([[0.88, 0.12]], np.float32)], [np.array([[0.25, 0.75]], np.float32)],
            [np.array([[0.497, 0.503]], np.float32)]]                    # a near-tie flipped: still agrees
    v = _judge(infos, refs, sims)
    assert v.passed and v.deciding.summary.startswith("top-1 agrees 3/3"), v.to_json()
    flipped = [[np.array([[0.1, 0.9]], np.float32)], sims[1], sims[2]]
    assert not _judge(infos, refs, flipped).passed


def test_a_ctc_line_that_decodes_differently_fails() -> None:
    info = OutputInfo("softmax", [1, 6, 5], "Softmax", "Softmax")
    steps = np.eye(5, dtype=np.float32)[[0, 2, 2, 0, 3, 4]][None]        # decodes to [2, 3, 4]
    other = np.eye(5, dtype=np.float32)[[0, 2, 0, 1, 3, 4]][None]        # decodes to [2, 1, 3, 4]
    edge = np.eye(5, dtype=np.float32)[[1, 2, 2, 0, 3, 4]][None]         # [1, 2, 3, 4]: a space at the edge
    assert _judge([info], [[steps]] * 2, [[edge]] * 2).passed
    assert check_for(0, info, (48, 320)).kind == "sequence"
    assert _judge([info], [[steps]] * 2, [[steps * 0.98]] * 2).passed
    v = _judge([info], [[steps]] * 2, [[other]] * 2)
    assert not v.passed and "decoded text agrees on 0/2 lines" in v.deciding.summary


def test_a_text_probability_map_is_judged_by_mask_iou() -> None:
    info = OutputInfo("prob", [1, 1, 32, 32], "Sigmoid", "Sigmoid")
    want = np.zeros((1, 1, 32, 32), np.float32)
    want[..., 8:24, 4:28] = 0.9
    shrunk = np.zeros_like(want)
    shrunk[..., 10:22, 8:24] = 0.9
    assert check_for(0, info, (32, 32)).kind == "probability_map"
    assert _judge([info], [[want]], [[want * 0.95]]).passed
    v = _judge([info], [[want]], [[shrunk]])
    assert not v.passed and v.deciding.metric == "mask_iou"


def _pose_split(rng: np.random.Generator, n: int = 2100) -> list[np.ndarray]:
    """A pose head's split outputs: boxes [1, 4, N], one class [1, 1, N], keypoints [1, 51, N] (x, y, visibility)."""
    boxes = np.concatenate([rng.uniform(40, 280, (2, n)), rng.uniform(30, 80, (2, n))])
    scores = np.zeros((1, n))
    scores[0, rng.choice(n, 5, replace=False)] = rng.uniform(0.5, 0.9, 5)
    kpt = np.empty((17, 3, n))
    kpt[:, :2] = boxes[None, :2] + rng.uniform(-20, 20, (17, 2, n))
    kpt[:, 2] = rng.uniform(0, 1, (17, n))
    return [boxes[None].astype(np.float32), scores[None].astype(np.float32), kpt.reshape(1, 51, n).astype(np.float32)]


class _PoseLayout:
    layout, task, num_classes, outputs, keypoints_shape = "split", "pose", 1, ["boxes", "scores", "keypoints"], [17, 3]


def test_a_pose_head_whose_keypoints_lose_their_visibility_fails_although_its_boxes_agree() -> None:
    rng = np.random.default_rng(3)
    infos = [OutputInfo("boxes", [1, 4, 2100]), OutputInfo("scores", [1, 1, 2100]),
             OutputInfo("keypoints", [1, 51, 2100])]
    refs = [_pose_split(rng) for _ in range(3)]
    plan = plan_checks(infos, (320, 320), _PoseLayout(), [])
    assert [c.kind for c in plan] == ["detection"] and plan[0].outputs == [0, 1, 2]
    step = 1.25                                          # the keypoints' one int8 scale: 0-320 pixels and 0-1 flags
    collapsed = [[r[0], r[1], np.round(r[2] / step) * step] for r in refs]
    bad = judge(plan, refs, collapsed, True, None, infos, synthetic=False)
    assert not bad.passed and "keypoints agree 0/" in bad.deciding.summary, bad.to_json()
    assert bad.deciding.details["matched"] == bad.deciding.details["total"] > 0  # the boxes themselves agree
    fine = [[r[0], r[1], r[2] + rng.normal(0, 0.01, r[2].shape).astype(np.float32)] for r in refs]
    good = judge(plan, refs, fine, True, None, infos, synthetic=False)
    assert good.passed and "keypoints agree" in good.deciding.summary, good.to_json()


def _untrained_head(rng: np.random.Generator, n: int = 2100, classes: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A random-weight YOLO head's split outputs: boxes in pixels, every class score near 1e-4 (Ultralytics'
    bias_init), so no sample shows an object."""
    boxes = rng.uniform(0, 320, (1, 4, n)).astype(np.float32)
    return boxes, rng.uniform(1e-5, 1.6e-4, (1, classes, n)).astype(np.float32)


def _split_judge(refs, sims):
    from types import SimpleNamespace
    layout = SimpleNamespace(layout="split", task="detect", outputs=["boxes", "scores"], num_classes=80)
    infos = [OutputInfo("boxes", [1, 4, 2100]), OutputInfo("scores", [1, 80, 2100])]
    return judge(plan_checks(infos, (320, 320), layout, []), refs, sims, True, None, infos, synthetic=False)


def test_an_untrained_split_head_whose_tiny_scores_int8_reads_as_zero_still_passes() -> None:
    rng = np.random.default_rng(2)
    refs = [list(_untrained_head(rng)) for _ in range(3)]
    # int8 gives the sigmoid output a step of ~0.002 (the toolkit's scale for it): 1e-4 reads 0, as for any model
    zeros = [[np.round(b / 1.88) * 1.88, np.zeros_like(s)] for b, s in refs]
    verdict = _split_judge(refs, zeros)
    d = verdict.deciding
    assert verdict.passed and d.kind == "detection", verdict.to_json()
    assert "no detection above 0.25 on any sample" in d.summary, d.summary
    scores = d.details["per_output"][1]["error"]
    assert scores["range"] == [1e-05, 0.00016] and scores["mean_rel"] < 1e-3, d.details  # of 0..1, not of 1.5e-4
    # a build that makes objects up where the source sees none fails, however small its mean error
    spurious = [[b, s.copy()] for b, s in zeros]
    spurious[1][1][0, 3, 17] = 0.6
    bad = _split_judge(refs, spurious)
    assert not bad.passed and "but the build finds 1" in bad.deciding.summary, bad.to_json()


def test_an_untrained_kept_head_whose_scores_share_the_boxes_int8_step_still_fails() -> None:
    rng = np.random.default_rng(3)
    refs = [[np.concatenate(_untrained_head(rng), axis=1)] for _ in range(3)]
    step = 2.638                                            # output0 of yolov8n's int8 build: one scale for both
    infos = output_infos(["output0"], [[1, 84, 2100]], [GraphOutput("output0", [0, 84, 0], "Concat", None, 1,
                                                                    [4, 80])], [step])
    verdict = _judge(infos, refs, [[np.round(r[0] / step) * step] for r in refs])
    assert not verdict.passed and "int8 step is 2.64" in verdict.deciding.summary, verdict.to_json()

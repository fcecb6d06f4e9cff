"""Issue 17, in-process: the pages show the task checks' verdict ("detections agree 0/10", "top-1 agrees 4/4"),
coloured by it (passed green, below threshold red, synthetic-sample shortfall amber), not a cosine that hides a broken
model; the job page lists each check and each output part's step against its range; old result.json files keep
showing their cosine; the task JSON carries the verdict."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from browser import Rendered, find_chromium, Browser
from rknn_dropbox.status.server import StatusServer
from rknn_dropbox.store import JobStore
from test_status_page_fields import deliver, result_json
from test_status_server import request, start_server

DETECTOR, CLASSIFIER, SYNTHETIC, LEGACY = ("20261202-100000-aaaaaa", "20261202-100001-bbbbbb",
                                           "20261202-100002-cccccc", "20261202-100003-dddddd")
SCORES_LOST = "rows 4–21 span 0–0.7 but the int8 step is 1.26"
DETECTOR_CHECK = {"kind": "detection", "outputs": ["output0"], "metric": "detection_agreement", "value": 0.0,
                  "threshold": 0.8, "passed": False, "summary": "detections agree 0/10",
                  "details": {"matched": 0, "total": 10, "max_score_diff": 1.0}}
DETECTOR_PARTS = [
    {"axis": 1, "start": 0, "stop": 4, "range": [0.0, 320.0], "step": 1.259, "mean_rel": 0.001, "max_rel": 0.004,
     "passed": True, "summary": "rows 0–3: mean error 0.10% of their range"},
    {"axis": 1, "start": 4, "stop": 22, "range": [0.0, 0.7], "step": 1.259, "mean_rel": 0.3, "max_rel": 0.9,
     "passed": False, "summary": SCORES_LOST}]

REPAIRED_TO_16BIT = {"attempts": [
    {"label": "first build", "settings": {"do_quantization": True}, "build_seconds": 2.0, "passed": False,
     "verdict": "scores lost", "score": 0.2, "size": 1000},
    {"label": "w16a16i_dfp", "settings": {"do_quantization": True, "quantized_dtype": "w16a16i_dfp"},
     "build_seconds": 3.0, "passed": True, "verdict": "top-1 agrees 4/4", "score": 1.3, "size": 2000}],
    "delivered": 1, "delivered_label": "w16a16i_dfp", "passed": True,
    "delivered_because": "w16a16i_dfp is the first candidate, cheapest for the NPU, that passes its check",
    "npu_cost": "16-bit activations: 2.0x the int8 model's size, slower on the NPU"}


def with_checks(doc: dict[str, Any], status: str, verdict: dict[str, Any], checks: list[dict[str, Any]],
                parts: list[dict[str, Any]] | None = None, synthetic: bool = False) -> dict[str, Any]:
    """The result.json of VERDICT_SCHEMA.md: the old per-output cosines plus the status, verdict, checks, parts."""
    block = doc["verification"]["rk3588"]
    block.update(status=status, verdict={**verdict, "synthetic": synthetic}, checks=checks,
                 **({"synthetic": True} if synthetic else {}))
    for out in block["outputs"]:
        out["error"] = {"max_rel": 0.9 if parts else 0.01, "mean_rel": 0.2, "snr_db": 4.5, "range": [0.0, 320.0]}
        out["parts"] = parts or []
    return doc


@pytest.fixture
def served(tmp_path: Path) -> Iterator[StatusServer]:
    store = JobStore(tmp_path / "jobs.sqlite3")
    deliver(store, tmp_path, DETECTOR, "nudenet", with_checks(  # a high cosine over collapsed class scores
        result_json("nudenet", {"output0": [0.9995, 0.9999]}, 0.98), "below_threshold",
        {"passed": False, "metric": "detection_agreement", "summary": "detections agree 0/10",
         "decided_by": "detection"}, [DETECTOR_CHECK], DETECTOR_PARTS), 1000.0)
    deliver(store, tmp_path, CLASSIFIER, "dircls", with_checks(  # a low cosine, yet every label agrees
        result_json("dircls", {"softmax_0.tmp_0": [0.964, 0.99]}, 0.98, accuracy={"rk3588": REPAIRED_TO_16BIT}),
        "passed",
        {"passed": True, "metric": "top1_agreement", "summary": "top-1 agrees 4/4", "decided_by": "class_scores"},
        [{"kind": "class_scores", "outputs": ["softmax_0.tmp_0"], "metric": "top1_agreement", "value": 1.0,
          "threshold": 0.75, "passed": True, "summary": "top-1 agrees 4/4, top-5 overlap 1.00"}]), 1001.0)
    deliver(store, tmp_path, SYNTHETIC, "effnet", with_checks(  # fp16 without samples: a warning, amber
        result_json("effnet", {"logits": [0.93, 0.96]}, 0.98), "warning",
        {"passed": False, "metric": "top1_agreement", "summary": "top-1 agrees 2/4", "decided_by": "class_scores"},
        [{"kind": "class_scores", "outputs": ["logits"], "metric": "top1_agreement", "value": 0.5,
          "threshold": 0.75, "passed": False, "summary": "top-1 agrees 2/4, top-5 overlap 0.80"}], synthetic=True),
        1002.0)
    deliver(store, tmp_path, LEGACY, "legacy", result_json("legacy", {"logits": [0.9931, 0.9957]}, 0.98), 1003.0)
    server = start_server(store, {"workers_alive": 1, "workers": 1, "published_at": time.monotonic()})
    yield server
    server.stop()


def list_row(dom: str, name: str) -> str:
    """The list's table row of one job."""
    return next(row for row in dom.split("<tr>") if f'">{name}</a>' in row)


def test_the_list_says_the_verdict_coloured_by_it_and_old_results_keep_their_cosine(served: StatusServer) -> None:
    dom = request(served.port, "/")[2].decode()
    detector, classifier, synthetic, legacy = (list_row(dom, n) for n in ("nudenet", "dircls", "effnet", "legacy"))
    assert "detections agree 0/10" in detector and 'class="cos bad"' in detector
    assert "0.9995" not in detector and 'class="cos ok"' not in detector  # no green cosine over a broken model
    assert SCORES_LOST in detector  # in the chip's tooltip
    assert "top-1 agrees 4/4" in classifier and 'class="cos ok"' in classifier and "0.9640" not in classifier
    assert "top-1 agrees 2/4 (synthetic samples)" in synthetic and 'class="cos warn"' in synthetic
    assert "0.9931" in legacy and 'class="cos ok"' in legacy  # a result.json from before the checks
    assert "<th>verification</th>" in dom


def test_the_job_page_lists_each_check_and_each_part_with_its_step_against_its_range(served: StatusServer,
                                                                                    tmp_path: Path) -> None:
    dom = request(served.port, f"/tasks/{DETECTOR}")[2].decode()
    page = Rendered(dom)
    assert "verdict: detections agree 0/10 · decided by detection_agreement (detection)" in page.text
    assert "verification below the threshold" in page.text
    assert "detection output0 detection_agreement 0 0.8 lost detections agree 0/10" in page.text
    assert f"output0 axis 1: 4–21 0 – 0.7 1.259 30.00% / 90.00% lost {SCORES_LOST}" in page.text
    assert "output0 axis 1: 0–3 0 – 320 1.259 0.10% / 0.40% passed" in page.text
    assert "SNR 4.5 dB" in page.text
    assert 'fill="#32d583"' not in dom and 'fill="#f97066"' not in dom  # the cosine bars are no verdict here
    assert "the task checks decide" in page.text

    repaired = Rendered(request(served.port, f"/tasks/{CLASSIFIER}")[2].decode())
    assert "delivered_because w16a16i_dfp is the first candidate, cheapest for the NPU" in repaired.text
    assert "npu_cost 16-bit activations: 2.0x the int8 model's size" in repaired.text

    warned = Rendered(request(served.port, f"/tasks/{SYNTHETIC}")[2].decode())
    assert "fell short on synthetic samples (a warning: never repaired)" in warned.text
    assert "verified on synthetic samples" in warned.text and "top-1 agrees 2/4 (synthetic samples)" in warned.text

    legacy = request(served.port, f"/tasks/{LEGACY}")[2].decode()
    assert "Task checks" not in legacy and 'fill="#32d583"' in legacy and "0.9931" in legacy

    chromium = find_chromium()
    if chromium:  # what a person sees: the screenshot is kept for a look
        Browser(chromium).screenshot(f"http://127.0.0.1:{served.port}/tasks/{DETECTOR}", tmp_path / "verdict.png")
        print(f"screenshot: {tmp_path / 'verdict.png'}")


def test_the_task_json_carries_each_targets_verdict(served: StatusServer) -> None:
    task = json.loads(request(served.port, f"/api/tasks/{DETECTOR}")[2])
    assert task["verdict"] == {"rk3588": {"status": "below_threshold", "passed": False,
                                          "metric": "detection_agreement", "summary": "detections agree 0/10",
                                          "synthetic": False}}
    assert json.loads(request(served.port, f"/api/tasks/{SYNTHETIC}")[2])["verdict"]["rk3588"]["synthetic"] is True
    assert "verdict" not in json.loads(request(served.port, f"/api/tasks/{LEGACY}")[2])

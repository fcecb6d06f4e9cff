"""Issue 17: a repair candidate that kills the worker never loses the job (a real daemon, real toolkit builds)."""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import accuracygen as gen
from calibimages import make_calibration_set
from conftest import DaemonProcess, all_files

pytestmark = pytest.mark.slow

FAULTS = {"RKNN_DROPBOX_FAULT_INJECTION": "1",
          "RKNN_DROPBOX_FAULTS": "crashrepair=repair_candidate,crashfirst=segfault"}


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("repaircrash") / "box", "bundle_timeout_seconds = 8.0\n", dict(FAULTS))
    d.start()
    yield d
    d.stop(timeout=60)


def _needs_repair(folder: Path) -> Path:
    """An int8 drop whose first build falls below the threshold (an outlier channel), on natural images."""
    gen.write_outlier_channel_net(folder / "net.onnx")
    gen.write_dataset(folder / "dataset.txt", gen.write_natural_images(folder / "images", n=4))
    (folder / "config.yaml").write_text("mean_values: [0, 0, 0]\nstd_values: [255, 255, 255]\n")
    return folder


def test_a_repair_candidate_that_kills_the_worker_delivers_the_first_build(box: DaemonProcess,
                                                                           tmp_path: Path) -> None:
    source = _needs_repair(tmp_path / "crashrepair")
    shutil.copytree(source, box.inbox / source.name)
    result = box.wait_completed("crashrepair", timeout=400)
    acc = result["accuracy"]["rk3588"]
    crashed = acc["repair_crashed"]
    assert "SIGSEGV" in crashed["cause"] and "signal 11" in crashed["cause"], crashed
    first, crash = acc["attempts"][0], acc["attempts"][1]
    assert acc["delivered"] == 0 and acc["delivered_label"] == "as configured", acc
    assert first["min_cosine"] < 0.98 and not first["passed"], first  # it needed repair: the first build
    assert crash["label"] == crashed["candidate"] and crash["crashed"] and not crash["passed"], crash
    assert len(acc["attempts"]) == 2, acc  # nothing tried after the crash
    assert acc["worst_layers"] and acc["report"] == "accuracy/error_analysis.txt", acc  # the step's findings kept
    assert any(crashed["candidate"] in w and "killed the worker" in w for w in result["warnings"]), result["warnings"]
    v = result["verification"]["rk3588"]
    assert v["status"] == "below_threshold" and v["outputs"][0]["cosine"] == first["min_cosine"], v
    assert result["quantization"]["dtype"] == "w8a8" and "build_settings" not in result["targets"][0]
    delivered = box.outbox / "crashrepair"
    rknn = delivered / "crashrepair.rknn"
    assert hashlib.sha256(rknn.read_bytes()).hexdigest() == result["targets"][0]["sha256"]
    files = all_files(delivered)
    assert {f"input/{source.name}/{f}" for f in all_files(source)} <= set(files), files  # no input lost
    assert {"crashrepair.rknn", "result.json", "conversion.log", "accuracy/error_analysis.txt"} <= set(files)
    assert not [f for f in files if ".attempt" in f or f.endswith(".part")], files
    log = (delivered / "conversion.log").read_text(errors="replace")
    assert "delivered from the attempt journal" in log
    task = next(t for t in box.get("/api/tasks")["tasks"] if t["name"] == "crashrepair")
    assert task["status"] == "completed" and task["attempts"] == 1, task
    with urllib.request.urlopen(f"http://127.0.0.1:{box.port}/tasks/{task['task_id']}", timeout=10) as resp:
        page = resp.read().decode()
    assert "repair_crashed" in page and crashed["candidate"] in page, page[-3000:]  # the job page names it
    assert not (box.failed / "crashrepair").exists()


def test_a_repair_candidate_that_runs_past_the_timeout_delivers_the_first_build(tmp_path: Path) -> None:
    faults = {"RKNN_DROPBOX_FAULT_INJECTION": "1", "RKNN_DROPBOX_FAULTS": "hangrepair=repair_hang"}
    d = DaemonProcess(tmp_path / "box", "timeout_seconds = 40.0\n", faults)
    d.start()
    try:
        source = _needs_repair(tmp_path / "hangrepair")
        shutil.copytree(source, d.inbox / source.name)
        result = d.wait_completed("hangrepair", timeout=300)
    finally:
        d.stop(timeout=60)
    acc = result["accuracy"]["rk3588"]
    assert "ran past timeout_seconds (40 s)" in acc["repair_crashed"]["cause"], acc
    assert acc["delivered"] == 0 and acc["delivered_label"] == "as configured", acc
    assert any("ran past timeout_seconds" in w for w in result["warnings"]), result["warnings"]
    assert (d.outbox / "hangrepair" / "hangrepair.rknn").stat().st_size > 0
    assert not (d.failed / "hangrepair").exists()


def test_a_death_in_the_first_build_still_fails_the_job(box: DaemonProcess, tmp_path: Path) -> None:
    source = _needs_repair(tmp_path / "crashfirst")
    shutil.copytree(source, box.inbox / source.name)
    error = box.wait_failed("crashfirst", timeout=300)
    assert error["error"].startswith("worker crashed with signal 11 (SIGSEGV)"), error
    assert "attempt_causes" not in error, error  # not retried: no repair had started
    assert {f"input/{source.name}/{f}" for f in all_files(source)} <= set(all_files(box.failed / "crashfirst"))
    assert not (box.outbox / "crashfirst").exists()


@pytest.fixture(scope="module")
def small_yolo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> object:
    """yolov8n at 160x160 (random weights, exported once and cached like the zoo corpus)."""
    from zoo import build_corpus, corpus_available
    why = corpus_available()
    if why:
        pytest.fail(f"the model corpus cannot be built: {why}")
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("zoo")) if cache is not None else tmp_path_factory.mktemp("zoo")
    return build_corpus(folder, ["yolov8n-160"])["yolov8n-160"]


def test_a_real_toolkit_crash_in_a_repair_candidate_delivers_the_best_build_before_it(
        box: DaemonProcess, small_yolo: object, tmp_path: Path) -> None:
    """rknn-toolkit2 2.5.0 kills the worker with SIGILL building yolov8n as w16a16i_dfp ("Meet unsupported tensor
    dtype in Sub" in the DFL head). Random weights give class scores of ~1e-4, below int8's output step, so every int8
    candidate fails the check and the search reaches the 16-bit one (last): the stock layout is kept, so the scores
    share the boxes' int8 step; the budget lets it get there, and the rule the toolkit trips on is disabled up front
    (a build that needed it is delivered only if it passes)."""
    source = tmp_path / "yolocrash"
    source.mkdir()
    shutil.copy(small_yolo.path, source / "yolov8n.onnx")
    (source / "config.yaml").write_text(f"mean_values: {small_yolo.mean}\nstd_values: {small_yolo.std}\n"
                                        "repair_budget_seconds: 1200\ndisable_rules: [seperate_conv_rs_split]\n"
                                        "yolo_outputs: keep\n")
    make_calibration_set(source, small_yolo.input_shape, 4)
    shutil.copytree(source, box.inbox / source.name)
    result = box.wait_completed("yolocrash", timeout=600)
    acc = result["accuracy"]["rk3588"]
    assert acc["repair_crashed"]["candidate"] == "w16a16i_dfp", acc
    assert "signal 4 (SIGILL)" in acc["repair_crashed"]["cause"], acc
    crashed = next(i for i, a in enumerate(acc["attempts"]) if a.get("crashed"))
    assert acc["attempts"][crashed]["label"] == "w16a16i_dfp" and crashed == len(acc["attempts"]) - 1, acc
    assert acc["delivered"] < crashed and acc["attempts"][acc["delivered"]].get("verdict"), acc  # built before it
    assert any("w16a16i_dfp killed the worker" in w for w in result["warnings"]), result["warnings"]
    delivered = box.outbox / "yolocrash"
    assert (delivered / "yolocrash.rknn").stat().st_size == result["targets"][0]["size"]
    assert {f"input/{source.name}/{f}" for f in all_files(source)} <= set(all_files(delivered))

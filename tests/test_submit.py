"""Issue 13: `rknn-dropbox submit` as a CI pipeline runs it: atomic drops under unique names, --wait, exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

import modelgen
from conftest import DaemonProcess
from rknn_dropbox.client.dropper import Drop, drop_into_inbox, plan_drops
from rknn_dropbox.intake.scanner import is_ignored


def submit(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rknn_dropbox", "submit", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


@pytest.mark.slow
def test_wait_for_a_good_model_downloads_outputs_identical_to_the_outbox(shared_daemon: DaemonProcess,
                                                                          tmp_path: Path) -> None:
    d = shared_daemon
    model = modelgen.write_onnx_variant(tmp_path / "model.onnx", seed=41)
    # no --url: the client follows the daemon named in <state_dir>/daemon.json of the daemon's config
    done = submit(str(model), "--config", str(d.config_path), "--target", "rk3588,rk3566", "--wait", "-o",
                  str(tmp_path / "out"), "--json", "--timeout", "120", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert task["status"] == "completed" and task["name"].startswith("model-")
    delivered = d.outbox / task["output_dir"]
    assert sorted(task["outputs"]) == sorted(p.name for p in delivered.glob("*.rknn")) and len(task["outputs"]) == 2
    for name in task["outputs"]:
        assert (tmp_path / "out" / name).read_bytes() == (delivered / name).read_bytes()
    assert "rk3566: verification passed" in done.stderr and "synthetic samples)" in done.stderr, done.stderr
    assert yaml.safe_load((delivered / "input" / f"{task['name']}.yaml").read_text()) == {
        "target_platform": ["rk3588", "rk3566"]}


@pytest.mark.slow
def test_wait_for_a_failing_model_exits_1_with_the_error_and_hint(shared_daemon: DaemonProcess,
                                                                   tmp_path: Path) -> None:
    model = modelgen.write_onnx_unsupported(tmp_path / "dropout.onnx")
    done = submit(str(model), "--inbox", str(shared_daemon.inbox), "--url", f"http://127.0.0.1:{shared_daemon.port}",
                  "--wait", "--timeout", "120", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "failed: building failed: the toolkit does not support operator Dropout at opset 9" in done.stderr
    assert "hint: re-export the model with a newer opset" in done.stderr
    assert list(tmp_path.glob("*.rknn")) == []


@pytest.mark.slow
def test_a_timeout_exits_2_and_the_job_still_completes(shared_daemon: DaemonProcess, tmp_path: Path) -> None:
    model = modelgen.write_onnx_variant(tmp_path / "slowpoke.onnx", seed=42)
    done = submit(str(model), "--inbox", str(shared_daemon.inbox), "--url", f"http://127.0.0.1:{shared_daemon.port}",
                  "--wait", "--timeout", "0.3", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    name = done.stdout.split()[0]
    assert name.startswith("slowpoke-")
    assert "when the timeout ran out" in done.stderr or "did not pick it up in time" in done.stderr
    shared_daemon.wait_completed(name)


@pytest.mark.slow
def test_two_pipelines_submitting_the_same_file_name_get_two_jobs(shared_daemon: DaemonProcess,
                                                                   tmp_path: Path) -> None:
    def run(i: int) -> subprocess.CompletedProcess[str]:
        folder = tmp_path / f"pipeline{i}"
        model = modelgen.write_onnx_variant(folder / "model.onnx", seed=50 + i)
        return submit(str(model), "--inbox", str(shared_daemon.inbox), "--url",
                      f"http://127.0.0.1:{shared_daemon.port}", "--wait", "--json", "-o", str(folder / "out"),
                      "--timeout", "120", cwd=folder)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(run, range(2)))
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    tasks = [json.loads(r.stdout) for r in runs]
    assert tasks[0]["name"] != tasks[1]["name"] and tasks[0]["task_id"] != tasks[1]["task_id"]
    for i, task in enumerate(tasks):
        got = (tmp_path / f"pipeline{i}" / "out" / task["outputs"][0]).read_bytes()
        assert got == (shared_daemon.outbox / task["output_dir"] / task["outputs"][0]).read_bytes()
    first, second = ((shared_daemon.outbox / t["output_dir"] / "input" / f"{t['name']}.onnx").read_bytes()
                     for t in tasks)
    assert first != second  # each job converted its own pipeline's model


def test_an_unreachable_endpoint_exits_2_saying_so(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    (tmp_path / "inbox").mkdir()
    model = modelgen.write_onnx_conv(tmp_path / "net.onnx")
    done = submit(str(model), "--inbox", str(tmp_path / "inbox"), "--url", f"http://127.0.0.1:{port}", "--wait",
                  "--timeout", "1", cwd=tmp_path)
    assert done.returncode == 2 and f"cannot reach http://127.0.0.1:{port}" in done.stderr
    assert [p.name for p in (tmp_path / "inbox").iterdir()] == [done.stdout.strip() + ".onnx"]


def test_drops_are_renamed_into_place_whole_under_unique_names(tmp_path: Path, monkeypatch) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    src = tmp_path / "src"
    modelgen.write_darknet(src / "yolo.cfg", src / "yolo.weights")
    modelgen.write_int8_folder(src / "folder", 2, "mean_values: [0, 0, 0]\n")
    sidecar = src / "opts.yml"
    sidecar.write_text("mean_values: [0, 0, 0]\nstd_values: [255, 255, 255]\n")
    seen: list[list[str]] = []
    real_rename = os.rename

    def watching_rename(a: str, b: str) -> None:  # what the scanner could see at each step
        seen.append(sorted(n for n in os.listdir(inbox) if not is_ignored(n)))
        real_rename(a, b)
    monkeypatch.setattr(os, "rename", watching_rename)
    drops = plan_drops([src / "yolo.cfg", src / "yolo.weights", src / "folder"])
    assert [len(d.sources) for d in drops] == [2, 1] and len({d.name for d in drops}) == 2
    drop_into_inbox(inbox, drops[0], sidecar, "rk3566")
    drop_into_inbox(inbox, drops[1], None, "rk3588,rv1106")
    pair, folder = drops
    assert pair.entries == [f"{pair.name}.yaml", f"{pair.name}.cfg", f"{pair.name}.weights"]  # sidecar first
    assert yaml.safe_load((inbox / f"{pair.name}.yaml").read_text()) == {
        "mean_values": [0, 0, 0], "std_values": [255, 255, 255], "target_platform": "rk3566"}
    assert (inbox / f"{pair.name}.weights").read_bytes() == (src / "yolo.weights").read_bytes()
    assert yaml.safe_load((inbox / folder.name / "config.yaml").read_text()) == {
        "mean_values": [0, 0, 0], "target_platform": ["rk3588", "rv1106"]}
    assert sorted(p.name for p in (inbox / folder.name / "calib").iterdir()) == ["calib_000.npy", "calib_001.npy"]
    assert seen[-1] == sorted([*pair.entries])  # the folder appeared in one rename, never partly
    assert [p.name for p in inbox.iterdir() if is_ignored(p.name)] == []  # no temporary left behind
    again = plan_drops([src / "yolo.cfg"])[0]
    assert again.name != pair.name and isinstance(again, Drop)


def test_nothing_is_dropped_when_the_job_could_not_be_followed(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    model = modelgen.write_onnx_conv(tmp_path / "net.onnx")
    done = submit(str(model), "--inbox", str(tmp_path / "inbox"), "--state-dir", str(tmp_path / "state"), "--wait",
                  cwd=tmp_path)
    assert done.returncode == 2 and "no --url given and no" in done.stderr and "daemon.json" in done.stderr
    missing = submit(str(tmp_path / "nope.onnx"), "--inbox", str(tmp_path / "inbox"), cwd=tmp_path)
    assert missing.returncode == 2 and "nope.onnx: no such file or folder" in missing.stderr
    assert list((tmp_path / "inbox").iterdir()) == []

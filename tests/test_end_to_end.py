"""Issue 2: real rknn-toolkit2 conversions through a running daemon, and its failure paths."""

from __future__ import annotations

import json
import os
import signal
import shutil
import time
from pathlib import Path

import pytest

from conftest import DaemonProcess, all_files, wait_for
import modelgen

pytestmark = pytest.mark.slow

FAULTS = {"RKNN_DROPBOX_FAULT_INJECTION": "1"}


def test_onnx_fp16_without_dataset(daemon: DaemonProcess, tmp_path: Path) -> None:
    src = modelgen.write_onnx_conv(tmp_path / "src" / "mynet.onnx")
    shutil.copy(src, daemon.inbox / "mynet.onnx")
    result = daemon.wait_completed("mynet")
    out = daemon.outbox / "mynet"
    assert (out / "mynet.rknn").stat().st_size > 1000
    assert (out / "input" / "mynet.onnx").read_bytes() == src.read_bytes()
    assert "rknn building done" in (out / "conversion.log").read_text()
    assert "\x1b[" not in (out / "conversion.log").read_text()
    assert result["quantized"] is False and result["quantization"]["dtype"] == "float16"
    assert any("no calibration dataset" in w for w in result["warnings"])
    assert result["target_platform"] == ["rk3588"]
    assert result["outputs"][0]["name"] == "mynet.rknn"
    assert result["inputs"][0]["sha256"] and result["toolkit_version"] == "2.5.0"
    # the .rknn records who made it
    assert result["task_id"].encode() in (out / "mynet.rknn").read_bytes()
    assert not list(daemon.inbox.glob("mynet*"))
    task = daemon.get(f"/api/tasks/{result['task_id']}")
    assert task["status"] == "completed" and task["progress"] == 100
    # the conversion ran in a worker: the daemon process itself never loaded torch or the toolkit
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "/rknn/" not in maps


def test_onnx_int8_with_folder_calibration_set(daemon: DaemonProcess, tmp_path: Path) -> None:
    folder = modelgen.write_int8_folder(tmp_path / "src" / "calnet", 2,
                                        "target_platform: rk3566\nmean_values: [0, 0, 0]\nstd_values: [1, 1, 1]\n")
    shutil.copytree(folder, daemon.inbox / "calnet")
    result = daemon.wait_completed("calnet")
    assert result["quantized"] is True
    assert result["quantization"]["dtype"] == "w8a8" and result["quantization"]["dataset_size"] == 2
    assert result["target_platform"] == ["rk3566"]
    assert (daemon.outbox / "calnet" / "calnet.rknn").is_file()
    assert (daemon.outbox / "calnet" / "input" / "calnet" / "model.onnx").is_file()


def test_torchscript_with_sidecar_input_size_list(daemon: DaemonProcess, tmp_path: Path) -> None:
    src = modelgen.write_torchscript(tmp_path / "src" / "tnet.pt")
    (tmp_path / "src" / "tnet.yaml").write_text("input_size_list: [[1, 3, 16, 16]]\n")
    shutil.copy(tmp_path / "src" / "tnet.yaml", daemon.inbox / "tnet.yaml")
    shutil.copy(src, daemon.inbox / "tnet.pt")
    result = daemon.wait_completed("tnet")
    assert result["format"] == "pytorch"
    assert result["config"]["input_size_list"] == [[1, 3, 16, 16]]
    assert sorted(p.name for p in (daemon.outbox / "tnet" / "input").iterdir()) == ["tnet.pt", "tnet.yaml"]


def test_torchscript_without_input_size_list_says_what_to_add(daemon: DaemonProcess, tmp_path: Path) -> None:
    shutil.copy(modelgen.write_torchscript(tmp_path / "t.pt"), daemon.inbox / "noshape.pt")
    err = daemon.wait_failed("noshape")
    assert "input shapes" in err["error"] and "input_size_list" in err["hint"]


def test_unsupported_operator_fails_readably(daemon: DaemonProcess, tmp_path: Path) -> None:
    shutil.copy(modelgen.write_onnx_unsupported(tmp_path / "u.onnx"), daemon.inbox / "dropnet.onnx")
    err = daemon.wait_failed("dropnet")
    assert "does not support operator Dropout at opset 9" in err["error"]
    assert err["hint"] and "opset" in err["hint"]
    folder = daemon.failed / "dropnet"
    assert (folder / "input" / "dropnet.onnx").is_file()
    assert "Not support 'Dropout'" in (folder / "conversion.log").read_text()


def test_broken_files_fail_and_the_daemon_keeps_converting(daemon: DaemonProcess, tmp_path: Path) -> None:
    good = modelgen.write_onnx_conv(tmp_path / "good.onnx")
    (daemon.inbox / "empty.onnx").write_bytes(b"")
    modelgen.write_truncated(good, daemon.inbox / "trunc.onnx", 0.5)
    modelgen.write_random_bytes(daemon.inbox / "noise.onnx", 4096)
    (daemon.inbox / "notes.txt").write_text("not a model")
    assert "empty" in daemon.wait_failed("empty")["error"]
    assert "not a valid ONNX model" in daemon.wait_failed("trunc")["error"]
    assert "not a valid ONNX model" in daemon.wait_failed("noise")["error"]
    assert daemon.wait_failed("notes.txt")["error"] == "notes.txt is not a model file"
    shutil.copy(good, daemon.inbox / "after.onnx")
    daemon.wait_completed("after")
    assert daemon.proc.poll() is None


def test_slow_copy_is_not_claimed_before_it_is_complete(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = modelgen.write_onnx_conv(tmp_path / "slow.onnx").read_bytes()
    target = daemon.inbox / "slow.onnx"
    stable = 1.0  # the daemon fixture's stable_seconds
    chunks = 30
    chunk = len(data) // chunks + 1
    started = time.monotonic()
    with open(target, "wb") as fh:
        for i in range(0, len(data), chunk):
            fh.write(data[i:i + chunk])
            fh.flush()
            time.sleep(stable / 10)  # the copy's pace: it never pauses anywhere near stable_seconds
            assert target.exists(), "claimed while still being written"
            assert not [t for t in daemon.get("/api/tasks")["tasks"] if t["name"] == "slow"], "claimed mid-copy"
    assert time.monotonic() - started > 2 * stable  # the copy outlasted the stability window
    result = daemon.wait_completed("slow")
    assert result["inputs"][0]["size"] == len(data)
    assert (daemon.outbox / "slow" / "input" / "slow.onnx").read_bytes() == data


def test_kill_9_during_conversion_then_restart_completes(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(env={**FAULTS, "RKNN_DROPBOX_FAULTS": "killme=slow",
                                 "RKNN_DROPBOX_FAULT_SLOW_SECONDS": "4"}).start()
    shutil.copy(modelgen.write_onnx_conv(tmp_path / "k.onnx"), d.inbox / "killme.onnx")
    (d.inbox / "killme.yaml").write_text("verify: true\n")
    wait_for(lambda: any(t["status"] == "processing" for t in d.get("/api/tasks")["tasks"]), 30,
             what="job processing")
    d.kill9()
    # nothing lost: the bundle sits in the work area
    assert sorted(p.name for p in d.inbox.glob(".rknn-dropbox/*/*/input/*")) == ["killme.onnx", "killme.yaml"]
    d.start()
    result = d.wait_completed("killme", timeout=90)
    assert (d.outbox / "killme" / "killme.rknn").is_file()
    assert not (d.failed / "killme").exists()
    assert not (d.outbox / "killme-2").exists()
    tasks = d.get("/api/tasks")["tasks"]
    assert [t["status"] for t in tasks] == ["completed"] and tasks[0]["task_id"] == result["task_id"]


def test_worker_killed_fails_only_its_job(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(env={**FAULTS, "RKNN_DROPBOX_FAULTS": "victim=slow",
                                 "RKNN_DROPBOX_FAULT_SLOW_SECONDS": "30"}).start()
    shutil.copy(modelgen.write_onnx_conv(tmp_path / "v.onnx"), d.inbox / "victim.onnx")
    (d.inbox / "victim.yaml").write_text("verify: true\n")
    task = wait_for(lambda: next((t for t in d.get("/api/tasks")["tasks"]
                                  if t["status"] == "processing" and t["worker_pid"]), None), 30, what="processing")
    shutil.copy(modelgen.write_onnx_conv(tmp_path / "b.onnx", seed=1), d.inbox / "bystander.onnx")
    os.kill(task["worker_pid"], signal.SIGKILL)
    err = d.wait_failed("victim")
    assert err["error"].startswith("worker killed by signal 9 (SIGKILL): most likely the machine ran out of memory")
    assert (d.failed / "victim" / "input" / "victim.onnx").is_file()
    d.wait_completed("bystander")
    shutil.copy(modelgen.write_onnx_conv(tmp_path / "a.onnx", seed=2), d.inbox / "afterwards.onnx")
    d.wait_completed("afterwards")  # the dead worker was replaced


def test_sigterm_leaves_a_clean_tree_and_exits_zero(daemon: DaemonProcess, tmp_path: Path) -> None:
    shutil.copy(modelgen.write_onnx_conv(tmp_path / "x.onnx"), daemon.inbox / "x.onnx")
    daemon.wait_completed("x")
    assert daemon.stop() == 0
    assert not [f for f in all_files(daemon.outbox) if ".part" in f or "partial" in f]
    assert json.loads((daemon.outbox / "x" / "result.json").read_text())["status"] == "completed"


def test_pytorch_files_that_are_not_traced_models_say_how_to_trace(daemon: DaemonProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copy(modelgen.write_torchscript_scripted(src / "s.pt"), daemon.inbox / "scripted.pt")
    (daemon.inbox / "scripted.yaml").write_text("input_size_list: [[1, 3, 16, 16]]\n")
    shutil.copy(modelgen.write_state_dict(src / "w.pth"), daemon.inbox / "weights.pth")
    modelgen.write_random_bytes(daemon.inbox / "noise.pt", 3000)
    scripted = daemon.wait_failed("scripted")
    assert "torch.jit.script" in scripted["error"] and "torch.jit.trace" in scripted["hint"]
    weights = daemon.wait_failed("weights")
    assert "not a TorchScript model" in weights["error"] and "torch.jit.trace" in weights["hint"]
    assert "not a TorchScript archive" in daemon.wait_failed("noise")["error"]


def test_an_onnx_model_under_another_extension_converts_as_onnx(daemon: DaemonProcess, tmp_path: Path) -> None:
    shutil.copy(modelgen.write_onnx_conv(tmp_path / "m.onnx"), daemon.inbox / "mislabeled.tflite")
    result = daemon.wait_completed("mislabeled")
    assert result["format"] == "onnx" and (daemon.outbox / "mislabeled" / "mislabeled.rknn").is_file()


def test_prequantized_onnx_is_never_quantized_again(daemon: DaemonProcess, tmp_path: Path) -> None:
    folder = tmp_path / "src" / "qdq"
    modelgen.write_onnx_prequantized(folder / "model.onnx")
    modelgen.write_calibration_npy(folder / "calib", n=1)  # a dataset alone would make "auto" quantize
    shutil.copytree(folder, daemon.inbox / "qdq")
    result = daemon.wait_completed("qdq")
    assert result["quantization"]["dtype"] == "prequantized" and result["quantized"] is False
    assert "already quantized" in result["quantization"]["reason"]

"""Nothing a user puts on the share ends the daemon's loop (a real daemon): a folder nested 1100 deep, a sidecar
nested thousands deep, a config that is not UTF-8 on SIGHUP; the daemon stays up, says why in words, keeps going."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

import modelgen
from conftest import DaemonProcess, module_daemon, wait_for
from relhelpers import drop


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    yield from module_daemon(tmp_path_factory, "loop-survives", "rescan_seconds = 2\n")


def _alive(box: DaemonProcess) -> None:
    assert box.proc is not None and box.proc.poll() is None, box.log()[-3000:]
    assert box.get("/health")["status"] in ("healthy", "degraded")


def test_a_folder_nested_1100_deep_is_rejected_in_words(box: DaemonProcess, tmp_path: Path) -> None:
    deep = str(tmp_path / "deep")
    path = deep
    os.mkdir(path)
    for _ in range(1100):  # made one level at a time: os.makedirs and copytree recurse themselves
        path += "/d"
        os.mkdir(path)
    Path(path, "net.onnx").write_bytes(b"model")
    os.rename(deep, box.inbox / "deep")
    try:
        error = box.wait_failed("deep", timeout=60)
    finally:  # pytest's own clean-up recurses (shutil.rmtree) and would fail on it
        subprocess.run(["rm", "-rf", *(str(p / "deep") for p in (box.inbox, box.failed))], check=False)
    assert error["error"] == "folder deep is nested more than 64 folders deep", error
    _alive(box)
    # watchdog's inotify reader dies on it (its own os.walk recurses): the daemon restarts the watcher
    wait_for(lambda: box.get("/health")["status"] == "healthy", 60, what="the watcher restarted")
    assert "the watcher thread is not running; restarting it" in box.log()


@pytest.mark.slow  # a real worker reads the sidecar
def test_a_sidecar_nested_thousands_deep_fails_its_job_not_the_daemon(box: DaemonProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "nest.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    drop(src / "nest.yaml", box.inbox / "nest.yaml")
    drop(modelgen.write_onnx_conv(src / "nest.onnx"), box.inbox / "nest.onnx")
    error = box.wait_failed("nest", timeout=120)
    assert error["error"] == "nest.yaml: not valid YAML: nested too deeply", error
    assert sorted(os.listdir(box.failed / "nest" / "input")) == ["nest.onnx", "nest.yaml"]
    _alive(box)


@pytest.mark.parametrize("config", [b"workers = 2\n\xff\xfe not utf-8 \x80\n", b"workers = [unclosed\n"])
def test_sighup_with_a_config_that_cannot_be_read_keeps_the_old_one(box: DaemonProcess, config: bytes) -> None:
    good = box.config_path.read_bytes()
    refused = box.log().count("reload refused")
    try:
        box.config_path.write_bytes(config)
        box.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: box.log().count("reload refused") > refused or box.proc.poll() is not None, 30,
                 what="the reload refused")
        time.sleep(0.5)
        _alive(box)
        tail = box.log().splitlines()[-20:]
        assert any("reload refused, keeping the running config" in line and
                   ("not UTF-8 text" in line or "not valid TOML" in line) for line in tail), tail
    finally:
        box.config_path.write_bytes(good)


def test_a_file_name_with_a_newline_forges_no_log_line(box: DaemonProcess) -> None:
    name = "evil\nCRITICAL forged: every job deleted.txt"
    (box.inbox / name).write_text("not a model\n")
    box.wait_failed(name, timeout=60)
    lines = box.log().splitlines()
    assert not [line for line in lines if line.startswith("CRITICAL forged")], "a dropped name forged a log line"
    assert any("evil\\nCRITICAL forged: every job deleted.txt" in line for line in lines)

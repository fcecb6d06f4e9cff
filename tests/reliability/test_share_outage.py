"""The share goes away under a running daemon (a real FUSE mount, bindfs, unmounted and mounted again): the daemon
stays up, says so (/health degraded, a metric, one log line each way), converts and fails nothing meanwhile, and
once the share is back delivers every job exactly once."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import modelgen
from conftest import wait_for
from relhelpers import FAULTS, assert_conserved, box_factory, drop  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def _bindfs_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse in this machine (a container without FUSE)"
    if shutil.which("bindfs") is None:
        return "bindfs is not installed (scripts/setup-venv.sh --test installs it as root: apt-get install bindfs)"
    if os.geteuid() != 0:
        return "mounting needs root"
    return None


@pytest.fixture
def share(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(the file server's folder, its FUSE mount the daemon uses)."""
    why = _bindfs_missing()
    if why:
        pytest.skip(why)
    server, mnt = tmp_path / "server", tmp_path / "mnt"
    for folder in ("inbox", "outbox", "failed"):
        (server / folder).mkdir(parents=True)
    mnt.mkdir()
    subprocess.run(["bindfs", str(server), str(mnt)], check=True)
    yield server, mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _metric(port: int, name: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return next(line.split()[-1] for line in lines if line.startswith(name + " "))


def test_an_unmounted_share_is_waited_for_and_every_job_delivered_once(box_factory, share, tmp_path: Path) -> None:
    server, mnt = share
    box = box_factory("box", workers=1, shared=mnt, env={**FAULTS, "RKNN_DROPBOX_FAULTS": "first=slow",
                                                        "RKNN_DROPBOX_FAULT_SLOW_SECONDS": "6"},
                      settings={"host_id": "a", "rescan_seconds": 2}).start()
    src = tmp_path / "src"
    drop(modelgen.write_onnx_conv(src / "first.onnx"), mnt / "inbox" / "first.onnx")
    wait_for(lambda: any(t["status"] == "processing" for t in box.tasks()), 60, what="first converting")
    subprocess.run(["umount", "-l", str(mnt)], check=True)  # the share goes away mid-conversion
    wait_for(lambda: any(p.startswith("share unavailable: inbox") for p in box.get("/health").get("problems", [])),
             30, what="/health degraded: the share unavailable")
    assert _metric(box.port, "rknn_dropbox_share_available") == "0"
    # meanwhile another client of the file server drops a model: nothing new is converted while the share is away
    drop(modelgen.write_onnx_conv(src / "second.onnx", seed=1), server / "inbox" / "second.onnx")
    time.sleep(8)  # the slow conversion's worker ends while the share is away
    assert box.proc.poll() is None, box.log()[-3000:]
    assert [t["status"] for t in box.tasks()] != ["failed"], box.tasks()
    assert all(t["status"] != "failed" for t in box.tasks()), box.tasks()
    assert os.listdir(server / "outbox") == [] and os.listdir(server / "failed") == []
    subprocess.run(["bindfs", str(server), str(mnt)], check=True)  # back
    for name in ("first", "second"):
        wait_for(lambda: (server / "outbox" / name / "result.json").is_file() or
                 os.listdir(server / "failed"), 180, what=f"{name} delivered")
    assert os.listdir(server / "failed") == [], box.log()[-3000:]
    assert sorted(os.listdir(server / "outbox")) == ["first", "second"]  # exactly once each
    wait_for(lambda: {t["status"] for t in box.tasks()} == {"completed"}, 30, what="both recorded completed")
    assert box.get("/health")["status"] == "healthy"
    assert _metric(box.port, "rknn_dropbox_share_outages_total") == "1"
    log = box.log()
    assert log.count("the share is unavailable") == 1 and log.count("the share is back") == 1, log[-3000:]
    assert_conserved(server / "inbox", server / "outbox", server / "failed", ["first.onnx", "second.onnx"])

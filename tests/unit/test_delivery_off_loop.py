"""A delivery to another filesystem (failed/ on tmpfs here, a slow share in production) is copied off the loop's
thread: the loop keeps stepping (status, WATCHDOG=1) while the copy runs, and the job is delivered once."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import fakeworkers
import pytest

from conftest import wait_for
from rknn_dropbox.config import config_from_mapping
from rknn_dropbox.intake import delivery
from rknn_dropbox.service.daemon import Daemon, prepare_folders
from rknn_dropbox.store import FAILED


def test_a_cross_filesystem_delivery_does_not_hold_the_loop(tmp_path: Path, started: list[Daemon],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) beside the test's tmp folder")
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        cfg = config_from_mapping({"inbox": "inbox", "outbox": "outbox", "failed": str(other / "failed"),
                                   "state_dir": "state", "workers": 1, "stable_seconds": 0.1,
                                   "http": {"enabled": False}}, tmp_path)
        prepare_folders(cfg)
        copying, release, waited_out = threading.Event(), threading.Event(), []
        real_copy = delivery._copy_entry

        def slow_copy(src: str, dst: str) -> None:  # a big bundle on a slow share
            copying.set()
            waited_out.append(not release.wait(10))
            real_copy(src, dst)

        monkeypatch.setattr(delivery, "_copy_entry", slow_copy)
        d = fakeworkers.start_daemon(cfg, started, ("net",), target=fakeworkers.fails_fast)
        wait_for(lambda: (d.step(0.05), copying.is_set())[1], 30, what="the copy under way")
        before = d.published_snapshot["published_at"]
        for _ in range(3):
            d.step(0.05)  # today: the first turn blocks inside the copy
        assert d.published_snapshot["published_at"] > before
        release.set()
        wait_for(lambda: (d.step(0.05), d.store.list()[0].status == FAILED)[1], 30, what="the job delivered")
        assert waited_out and not any(waited_out), "the copy ran on the loop's thread (it waited out its 10 s)"
        assert (other / "failed" / "net" / "input" / "net.onnx").read_bytes() == b"model"
        assert [n for n in os.listdir(cfg.claim_dir) if not n.startswith(".")] == []  # nothing left behind
    finally:
        shutil.rmtree(other, ignore_errors=True)

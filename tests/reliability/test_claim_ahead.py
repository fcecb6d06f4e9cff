"""claim_ahead: a host claims only what its workers can start soon; the rest waits, complete, in inbox (for other
hosts on a shared inbox) and is claimed when a worker frees up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelgen
from conftest import wait_for
from relhelpers import FAULTS, assert_conserved, box_factory, drop  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_one_worker_claims_one_ahead_and_leaves_the_rest_in_inbox(box_factory, tmp_path: Path) -> None:
    box = box_factory(workers=1, settings={"claim_ahead": 1},
                      env={**FAULTS, "RKNN_DROPBOX_FAULTS": "slow=slow",
                           "RKNN_DROPBOX_FAULT_SLOW_SECONDS": "600"}).start()
    src = tmp_path / "src"
    drop(modelgen.write_onnx_conv(src / "slow.onnx"), box.inbox / "slow.onnx")  # the fault: RKNN_DROPBOX_FAULTS
    slow = wait_for(lambda: next((t for t in box.tasks() if t["name"] == "slow" and t["status"] == "processing"),
                                 None), 60, what="the slow job running")
    for name, seed in (("a", 1), ("b", 2)):
        drop(modelgen.write_onnx_conv(src / f"{name}.onnx", seed=seed), box.inbox / f"{name}.onnx")
    (box.inbox / "notes.txt").write_text("not a model")  # stable no sooner than a and b: its rejection shows
    box.wait_failed("notes.txt")                          # the daemon has scanned them complete since
    left = sorted(e for e in os.listdir(box.inbox) if not e.startswith("."))
    assert len(left) == 1 and left[0] in ("a.onnx", "b.onnx"), left
    statuses = sorted(t["status"] for t in box.tasks() if t["name"] in ("slow", "a", "b"))
    assert statuses == ["processing", "queued"]  # the running job plus claim_ahead = 1
    subprocess.run([sys.executable, "-m", "rknn_dropbox", "cancel", slow["task_id"], "--config", str(box.config_path)],
                   check=True, capture_output=True, timeout=60)  # the worker frees up: the queued job starts and
    box.wait_failed("slow")                                       # the one left in inbox is claimed
    box.wait_completed("a")
    box.wait_completed("b")
    entries = ["slow.onnx", "a.onnx", "b.onnx", "notes.txt"]
    assert_conserved(box.inbox, box.outbox, box.failed, entries)

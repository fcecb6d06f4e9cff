"""Workers that are SIGKILLed, segfault, hang past the timeout or allocate past the memory limit: only their own job
fails, with a named cause, and the daemon keeps converting."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import modelgen
from conftest import wait_for
from relhelpers import FAULTS, assert_conserved, box_factory, drop  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_each_worker_death_fails_only_its_job_with_a_named_cause(box_factory, tmp_path: Path) -> None:
    box = box_factory(workers=2, env={**FAULTS, "RKNN_DROPBOX_FAULT_SLOW_SECONDS": "60",
                                            "RKNN_DROPBOX_FAULTS": "victim=slow,segv=segfault,hang=hang,hog=oom"},
                      settings={"timeout_seconds": 8, "worker_memory_limit_mb": 1000}).start()
    src = tmp_path / "src"
    model = modelgen.write_onnx_conv(src / "m.onnx")

    def faulty(name: str, fault: str) -> None:
        (src / f"{name}.yaml").write_text("verify: true\n")  # the fault: RKNN_DROPBOX_FAULTS
        drop(src / f"{name}.yaml", box.inbox / f"{name}.yaml")
        drop(model, box.inbox / f"{name}.onnx")

    faulty("victim", "slow")
    task = wait_for(lambda: next((t for t in box.tasks() if t["status"] == "processing" and t["worker_pid"]), None),
                    30, what="victim processing")
    os.kill(task["worker_pid"], signal.SIGKILL)  # alone: a kill beside other jobs is retried (test_poison_...)
    faulty("segv", "segfault")
    faulty("hang", "hang")
    faulty("hog", "oom")
    drop(modelgen.write_onnx_conv(src / "b.onnx", seed=1), box.inbox / "bystander.onnx")

    victim = box.wait_failed("victim")
    assert victim["error"].startswith("worker killed by signal 9 (SIGKILL): most likely the machine ran out of memory")
    assert "smaller input size" in victim["hint"]
    assert "signal 11 (SIGSEGV)" in box.wait_failed("segv", timeout=60)["error"]
    err = box.wait_failed("hog", timeout=60)
    assert "over worker_memory_limit_mb (1000 MB)" in err["error"] and "worker_memory_limit_mb" in err["hint"]
    err = box.wait_failed("hang", timeout=60)
    assert err["error"] == "timed out after 8 s (timeout_seconds)"
    box.wait_completed("bystander", timeout=60)
    for name in ("victim", "segv", "hang", "hog"):
        assert (box.failed / name / "conversion.log").is_file()
    drop(modelgen.write_onnx_conv(src / "a.onnx", seed=2), box.inbox / "afterwards.onnx")
    box.wait_completed("afterwards", timeout=60)  # the dead workers were replaced
    entries = [f"{n}.{e}" for n in ("victim", "segv", "hang", "hog") for e in ("onnx", "yaml")]
    assert_conserved(box.inbox, box.outbox, box.failed, entries + ["bystander.onnx", "afterwards.onnx"])
    assert box.proc.poll() is None

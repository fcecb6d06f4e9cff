"""A full outbox (a small tmpfs): the job stays whole and retryable, the error says so, and it delivers once there
is room again."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import modelgen
from conftest import wait_for
from relhelpers import assert_conserved, box_factory, drop, fill_filesystem  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
def small_outbox(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small-outbox"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the filesystem to the last byte."""
    return fill_filesystem(folder / "filler")


def test_full_outbox_keeps_the_job_and_delivers_when_there_is_room(box_factory, small_outbox: Path,
                                                                    tmp_path: Path) -> None:
    outbox = small_outbox / "outbox"
    outbox.mkdir()
    box = box_factory(workers=1, settings={"outbox": str(outbox)}).start()
    filler = _fill(small_outbox)
    drop(modelgen.write_onnx_conv(tmp_path / "src" / "big.onnx", size=32), box.inbox / "full.onnx")
    task = wait_for(lambda: next((t for t in box.tasks() if t["name"] == "full" and t["stage"] == "delivery"),
                                 None), 60, what="a delivery that failed for lack of space")
    assert task["error"].startswith("no space left on outbox (") and task["error"].endswith("(will retry)")
    assert task["status"] == "processing"  # not final: it will be retried
    assert "no space left on outbox" in box.log()
    # nothing lost, nothing half-written: the job is whole in the work area, no partial folder in outbox
    where = assert_conserved(box.inbox, box.outbox, box.failed, ["full.onnx"])
    assert where["full.onnx"].startswith("work:")
    assert sorted(os.listdir(outbox)) == []
    built = next(box.inbox.glob(".rknn-dropbox/*/*/out/full.rknn")).read_bytes()
    assert len(built) > 1000
    # room again; a reload retries pending deliveries at once instead of in 30 s
    filler.unlink()
    box.proc.send_signal(signal.SIGHUP)
    result = box.wait_completed("full", timeout=30)
    assert (outbox / "full" / "full.rknn").read_bytes() == built
    assert result["status"] == "completed"
    assert_conserved(box.inbox, box.outbox, box.failed, ["full.onnx"])
    drop(modelgen.write_onnx_conv(tmp_path / "src" / "next.onnx", seed=3), box.inbox / "next.onnx")
    box.wait_completed("next")
    assert box.proc.poll() is None

"""A state disk that fills up under a running daemon (a real tmpfs, filled to the last byte): sqlite says "database
or disk is full"; the daemon stays up, says so on /health, keeps the claimed bundle, and finishes it once there is
room again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import wait_for
from relhelpers import box_factory, fill_filesystem  # noqa: F401 (fixture)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "box" / "state"  # the box's own state_dir
    path.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write zeros until the filesystem refuses one more byte."""
    return fill_filesystem(folder / "filler")


def test_a_full_state_disk_loses_no_claim(box_factory, small_disk: Path) -> None:
    box = box_factory("box", workers=1, settings={"stale_claim_seconds": 4, "cache": False})
    assert box.state == small_disk
    box.start()
    filler = _fill(small_disk)
    try:
        (box.inbox / "notes.txt").write_text("not a model\n")  # rejected: claimed, recorded, delivered to failed/
        wait_for(lambda: any("step failing" in p for p in box.get("/health").get("problems", [])), 30,
                 what="/health naming the failing step")
        assert box.proc.poll() is None
        assert "database or disk is full" in box.log()
    finally:
        filler.unlink()
    error = box.wait_failed("notes.txt", timeout=60)
    assert error["error"] == "notes.txt is not a model file"
    wait_for(lambda: box.get("/health")["status"] == "healthy", 60, what="healthy again")
    assert "the loop's inbox scan step works again" in box.log()

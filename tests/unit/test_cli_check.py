"""`rknn-dropbox check` and start-up refuse a work area on another filesystem than inbox, naming both mounts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rknn_dropbox.intake.workarea import mount_point


def _other_filesystem(tmp_path: Path) -> Path | None:
    for candidate in ("/dev/shm", "/run", "/sys/fs/cgroup"):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK) and \
                os.stat(candidate).st_dev != os.stat(tmp_path).st_dev:
            return Path(tempfile.mkdtemp(dir=candidate))
    return None


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rknn_dropbox", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_check_passes_on_a_sound_setup(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('inbox = "in"\noutbox = "out"\nfailed = "bad"\nstate_dir = "st"\n')
    proc = _run(["check", "--config", "c.toml"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rknn-toolkit2 2.5.0 imports fine" in proc.stdout


def test_work_area_on_another_filesystem_is_refused(tmp_path: Path) -> None:
    other = _other_filesystem(tmp_path)
    if other is None:
        pytest.skip("no second writable filesystem on this machine")
    try:
        (tmp_path / "c.toml").write_text(f'inbox = "in"\nstate_dir = "st"\nwork_dir = "{other}"\n')
        proc = _run(["check", "--config", "c.toml"], tmp_path)
        assert proc.returncode == 1
        assert "not on inbox's filesystem" in proc.stderr
        assert f"mount {mount_point(other)}" in proc.stderr and f"mount {mount_point(tmp_path)}" in proc.stderr
        run = _run(["run", "--config", "c.toml", "--port", "0"], tmp_path)
        assert run.returncode == 1 and "not on inbox's filesystem" in run.stderr
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_invalid_config_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('inbox = "in"\nworkers = 0\n')
    run = _run(["run", "--config", "c.toml"], tmp_path)
    assert run.returncode == 2 and "workers: must be at least 1" in run.stderr

"""The shipped unit passes `systemd-analyze verify` silently and scores in the "OK" band of `systemd-analyze security`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

UNIT = REPO / "systemd" / "rknn-dropbox.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's interpreter (verify checks that the binary exists)."""
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable} -m rknn_dropbox", UNIT.read_text(), flags=re.M)
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def test_unit_has_the_required_settings() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["KillMode"] == ["mixed"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key in ("User", "StateDirectory", "WatchdogSec", "TimeoutStopSec", "MemoryHigh", "Nice", "ReadWritePaths"):
        assert s.get(key), f"{key}= missing"
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["true"]
    assert s["PrivateTmp"] == ["true"] and s["NoNewPrivileges"] == ["true"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["ExecStart"][0].endswith("rknn-dropbox run --config /etc/rknn-dropbox/config.toml")
    # the daemon's default drain must fit in the stop timeout
    from rknn_dropbox.config import Config
    assert int(s["TimeoutStopSec"][0]) >= Config().drain_seconds + 15


@needs_analyze
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    proc = subprocess.run([ANALYZE, "verify", str(installed_copy(tmp_path))], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr


@needs_analyze
def test_systemd_analyze_security_is_ok(tmp_path: Path) -> None:
    proc = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(installed_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    score, band = float(m.group(1)), m.group(2)
    assert band in ("OK", "SAFE", "PERFECT") and score < 5.0, proc.stdout[-3000:]

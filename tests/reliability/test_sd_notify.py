"""The daemon speaks the sd_notify protocol: READY=1 once scanned and bound, STATUS=, WATCHDOG=1 at WatchdogSec/2,
STOPPING=1 on SIGTERM."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from relhelpers import box_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_ready_status_watchdog_stopping(box_factory, tmp_path: Path) -> None:
    addr = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(addr))
    sock.settimeout(0.2)
    box = box_factory(workers=1, env={"NOTIFY_SOCKET": str(addr), "WATCHDOG_USEC": "2000000"},
                      settings={"worker_memory_limit_mb": 4000})
    box.start()
    got: list[tuple[float, str]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4.0:
        try:
            for line in sock.recv(4096).decode().splitlines():
                got.append((time.monotonic() - t0, line))
        except socket.timeout:
            pass
    assert box.stop() == 0
    try:
        while True:
            got += [(99.0, line) for line in sock.recv(4096).decode().splitlines()]
    except socket.timeout:
        pass
    sock.close()
    lines = [line for _, line in got]
    # READY=1 is the first thing said, with a STATUS= line; that it comes only after recovery and once the status
    # server answers is shown in process by tests/unit/test_startup.py
    assert lines[0] == "READY=1" and lines[1].startswith("STATUS=") and "workers" in lines[1]
    pings = [t for t, line in got if line == "WATCHDOG=1" and t < 99]
    # WatchdogSec=2 -> a ping every second: about 4 in 4 s, not one per loop turn
    assert 2 <= len(pings) <= 6, pings
    assert lines[-1] == "STOPPING=1" or "STOPPING=1" in lines

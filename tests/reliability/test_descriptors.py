"""Descriptor exhaustion: with the daemon's soft NOFILE at 1024 (systemd's default) and 1100 idle connections held
open against its status port (reopened as the server drops them), the daemon still claims and converts, and
/health answers once they are gone."""

from __future__ import annotations

import os
import resource
import selectors
import shutil
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

import modelgen
from conftest import wait_for

pytestmark = pytest.mark.slow
IDLE = 1100


class IdleFlood:
    """Keeps IDLE connections open to a port, never sending a byte; one the server closes is opened again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()  # epoll: more than FD_SETSIZE sockets
        self.stop = threading.Event()
        self.reopened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        self.selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        for _ in range(IDLE):
            self._open()
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.2):
                sock = key.fileobj
                try:
                    gone = sock.recv(1) == b""  # type: ignore[union-attr]
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    self.selector.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
                    self.reopened += 1
                    self._open()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_do_not_starve_the_daemon(daemon_factory, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + 200:
        if hard != resource.RLIM_INFINITY and hard < IDLE + 200:
            pytest.skip(f"this test needs {IDLE + 200} descriptors (hard limit {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (IDLE + 200, hard))
    d = daemon_factory(workers=1, nofile=1024).start()
    flood = IdleFlood(d.port)
    flood.thread.start()
    try:
        wait_for(lambda: flood.reopened >= 100, 60, what="the server dropping idle connections")
        peak = _open_descriptors(d.proc.pid)
        for name, seed in (("first", 1), ("second", 2)):
            shutil.copy(modelgen.write_onnx_conv(tmp_path / f"{name}.onnx", seed=seed), d.inbox / f"{name}.onnx")
        for name in ("first", "second"):
            result = d.wait_completed(name, timeout=300)
            assert result["status"] == "completed"
            peak = max(peak, _open_descriptors(d.proc.pid))
        assert d.proc.poll() is None
        assert peak < 1024 // 2, f"the daemon held {peak} of its 1024 descriptors"
    finally:
        flood.stop.set()
        flood.thread.join(30)
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/health", timeout=30) as resp:
        assert resp.status == 200
    assert "Too many open files" not in d.log()

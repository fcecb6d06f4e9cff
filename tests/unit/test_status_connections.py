"""Hostile connections to the status server: its sockets fit well below the descriptor limit, a client that reads a
download a trickle at a time is cut at the response deadline, and request handlers never hash dropped files."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import wait_for
from rknn_dropbox.status.gate import GateLimits
from rknn_dropbox.status.server import StatusServer
from rknn_dropbox.store import JobRecord, JobStore

TASK = "20240101-120000-abcdef"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def _server(store: JobStore, limits: GateLimits | None = None) -> StatusServer:
    snap = {"workers_alive": 1, "workers": 1, "watcher_alive": True, "published_at": time.monotonic()}
    server = StatusServer("127.0.0.1", 0, store, lambda: snap, limits)
    server.start()
    return server


@pytest.mark.parametrize("soft", [256, 1024, 4096])
def test_the_gate_holds_a_quarter_of_the_descriptor_limit_at_most(soft: int) -> None:
    limits = GateLimits.for_descriptors(soft)
    assert 8 < limits.max_connections <= soft // 4
    assert limits.max_pending > limits.ready_queue > 0


def test_the_default_gate_follows_this_processes_limit(store: JobStore) -> None:
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    server = _server(store)
    try:
        assert server.limits.max_connections <= max(soft // 4, GateLimits().max_connections)
        assert server.limits.max_connections <= soft // 4 or soft == resource.RLIM_INFINITY
    finally:
        server.stop()


@pytest.mark.parametrize("outputs", [1, 2])  # one file: sendfile; two: a zip stream
def test_a_download_read_a_trickle_at_a_time_is_cut_at_the_deadline(store: JobStore, tmp_path: Path,
                                                                      outputs: int) -> None:
    out = tmp_path / "outbox" / "net"
    out.mkdir(parents=True)
    names = [f"net.{i}.rknn" for i in range(outputs)]
    for name in names:
        with open(out / name, "wb") as fh:
            fh.truncate(64 * 1024 * 1024)  # sparse: 64 MB that take no disk
    store.add(JobRecord(id=TASK, name="net", status="completed", output_dir=str(out), outputs=names))
    server = _server(store, GateLimits(response_timeout=2.0, io_timeout=60.0))
    client = socket.create_connection(("127.0.0.1", server.port))
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(f"GET /api/download/{TASK} HTTP/1.0\r\n\r\n".encode())
        client.settimeout(5)
        received, ended = 0, False
        started = time.monotonic()
        while time.monotonic() - started < 30:  # a reader that takes 4 KB a quarter second: 64 MB in over an hour
            try:
                chunk = client.recv(4096)
            except ConnectionResetError:
                ended = True
                break
            if not chunk:
                ended = True
                break
            received += len(chunk)
            time.sleep(0.25)
        assert ended, f"still streaming after 30 s ({received} bytes)"
        assert received < 64 * 1024 * 1024
    finally:
        client.close()
        server.stop()


def test_a_failed_jobs_dropped_files_are_listed_without_hashing_them(store: JobStore, tmp_path: Path) -> None:
    folder = tmp_path / "failed" / "net"
    (folder / "input").mkdir(parents=True)
    (folder / "input" / "net.onnx").write_bytes(os.urandom(4096))
    digest = hashlib.sha256((folder / "input" / "net.onnx").read_bytes()).hexdigest()
    (folder / "error.json").write_text('{"error": "no", "hint": "h"}')
    store.add(JobRecord(id=TASK, name="net", status="failed", output_dir=str(folder), error="no"))
    server = _server(store)
    try:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/tasks/{TASK}", timeout=10) as resp:
            page = resp.read().decode()
        assert "net.onnx" in page and digest not in page
    finally:
        server.stop()


def test_health_answers_while_the_gate_is_full_of_idle_connections(store: JobStore) -> None:
    server = _server(store, GateLimits.for_descriptors(256))
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
    try:
        wait_for(lambda: len(server.gate.pending) <= server.limits.max_pending, 5, what="the gate trims")
        assert len(server.gate.pending) <= server.limits.max_pending
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10) as resp:
            assert resp.status == 200
    finally:
        for s in idle:
            s.close()
        server.stop()

"""Start-up, in process (fake workers, no toolkit): READY=1 only once recovery ran and the status server answers;
callbacks a previous run left pending are sent at start."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Iterator

import fakeworkers
import pytest

from conftest import wait_for
from rknn_dropbox.config import Config, config_from_mapping
from rknn_dropbox.intake.claims import claim_bundle
from rknn_dropbox.service import daemon as daemon_module
from rknn_dropbox.service.daemon import Daemon, prepare_folders
from rknn_dropbox.store import COMPLETED, PROCESSING, JobRecord, JobStore


def _config(tmp_path: Path) -> Config:
    cfg = config_from_mapping({"inbox": "inbox", "outbox": "outbox", "failed": "failed", "state_dir": "state",
                               "workers": 1, "http": {"host": "127.0.0.1", "port": 0}}, tmp_path)
    prepare_folders(cfg)
    return cfg


@pytest.fixture
def started() -> Iterator[list[Daemon]]:
    daemons: list[Daemon] = []
    yield daemons
    for d in daemons:
        d.shutdown()


def _start(cfg: Config, started: list[Daemon]) -> Daemon:
    d = Daemon(cfg)
    d.pool.target = fakeworkers.well_behaved
    started.append(d)
    d.start()
    return d


def _http(cfg: Config, path: str) -> tuple[int | None, Any]:
    """(HTTP status, JSON body) of the daemon's status server; (None, None) while it does not listen yet."""
    if not (cfg.state_dir / "daemon.json").exists():
        return None, None
    port = json.loads((cfg.state_dir / "daemon.json").read_text())["port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_ready_is_sent_after_recovery_and_once_the_status_server_answers(
        tmp_path: Path, started: list[Daemon], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    (cfg.inbox / "net.onnx").write_bytes(b"model")  # a previous run claimed this and died converting it
    job = claim_bundle(cfg.inbox, cfg.claim_dir, "net", ["net.onnx"], "file")
    assert job is not None
    store = JobStore(cfg.store_path)
    store.add(JobRecord(id=job.job_id, name="net", status=PROCESSING, work_path=str(job.root)))
    store.close()
    seen_at_ready: list[tuple[int | None, Any, int]] = []
    real_notify = daemon_module.notify

    def spy(*lines: str) -> None:
        if "READY=1" in lines:  # what a client sees the moment systemd is told "ready"
            seen_at_ready.append((_http(cfg, "/readyz")[0], _http(cfg, f"/api/tasks/{job.job_id}")[1],
                                  len(started[0].queue)))
        real_notify(*lines)

    monkeypatch.setattr(daemon_module, "notify", spy)
    _start(cfg, started)
    assert len(seen_at_ready) == 1
    readyz, task, queued = seen_at_ready[0]
    assert readyz == 200
    assert task["status"] == "queued" and task["attempts"] == 1 and queued == 1  # recovered before READY


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []
    got = threading.Event()

    def do_POST(self) -> None:  # noqa: N802
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()
        self.got.set()

    def log_message(self, *args: Any) -> None:
        pass


def test_callbacks_left_pending_by_the_last_run_are_sent_at_start(tmp_path: Path, started: list[Daemon]) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = _config(tmp_path)
        store = JobStore(cfg.store_path)
        store.add(JobRecord(id="20240101-000000-abcdef", name="net", status=COMPLETED, progress=100.0,
                            callback_url=f"http://127.0.0.1:{server.server_port}/hook",
                            callback_status="pending: attempt 1 failed: connection refused"))
        store.add(JobRecord(id="20240101-000001-abcdef", name="other", status=COMPLETED, progress=100.0,
                            callback_url=f"http://127.0.0.1:{server.server_port}/hook",
                            callback_status="delivered (HTTP 200)"))
        d = _start(cfg, started)
        assert _Receiver.got.wait(10), "the pending callback was not sent"
        wait_for(lambda: d.store.get("20240101-000000-abcdef").callback_status == "delivered (HTTP 200)", 10,
                 what="callback recorded as delivered")
        assert [(b["task_id"], b["status"]) for b in _Receiver.bodies] == [("20240101-000000-abcdef", COMPLETED)]
        assert "callback_url" not in _Receiver.bodies[0]
    finally:
        server.shutdown()

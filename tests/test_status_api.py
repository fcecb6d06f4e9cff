"""Issue 4, end to end: the status API, cancel and callbacks against a running daemon with real conversions."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import modelgen
from conftest import DaemonProcess, wait_for
from test_status_server import Hook

pytestmark = pytest.mark.slow

FAULTS = {"RKNN_DROPBOX_FAULT_INJECTION": "1"}
FINAL = ("completed", "failed", "cancelled")


def raw_request(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def task_named(d: DaemonProcess, name: str) -> dict[str, Any] | None:
    return next((t for t in d.get("/api/tasks")["tasks"] if t["name"] == name), None)


def poll_until_final(d: DaemonProcess, task_id: str, timeout: float = 120) -> list[dict[str, Any]]:
    """The older design's client: GET /api/tasks/{id} until the status is final."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = d.get(f"/api/tasks/{task_id}")
        seen.append(task)
        if task["status"] in FINAL:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{task_id} not final after {timeout} s: {seen[-1]}")


def cli(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rknn_dropbox", *args, "--config", str(d.config_path)],
                          capture_output=True, text=True, timeout=90, cwd=d.root)


def test_polling_client_download_metrics_and_read_only_api(daemon: DaemonProcess, tmp_path: Path) -> None:
    # calibration data makes the toolkit draw its quantization bars, which progress follows
    folder = modelgen.write_int8_folder(tmp_path / "src" / "polled", 4, "mean_values: [0, 0, 0]\nstd_values: [1, 1, 1]\n")
    shutil.copytree(folder, daemon.inbox / "polled")
    task = wait_for(lambda: task_named(daemon, "polled"), 30, what="task listed")
    seen = poll_until_final(daemon, task["task_id"])
    final = seen[-1]
    assert final["status"] == "completed" and final["progress"] == 100.0
    progress = [t["progress"] for t in seen]
    assert progress == sorted(progress), "progress went down"
    assert all(isinstance(p, float) and 0 <= p <= 100 for p in progress)

    code, headers, body = raw_request(daemon.port, f"/api/download/{final['task_id']}")
    assert code == 200 and body == (daemon.outbox / "polled" / "polled.rknn").read_bytes()
    assert headers["content-disposition"].startswith('attachment; filename="polled.rknn"')
    code, _, log = raw_request(daemon.port, f"/api/tasks/{final['task_id']}/logs?tail=5")
    assert code == 200 and len(log.decode().splitlines()) == 5
    assert log.decode() in (daemon.outbox / "polled" / "conversion.log").read_text() + "\n"

    for method in ("POST", "PUT", "DELETE"):
        assert raw_request(daemon.port, f"/api/tasks/{final['task_id']}", method)[0] == 405
    for path in ("/api/tasks/../../etc/passwd", "/api/tasks/..%2F..%2Fetc%2Fpasswd",
                 "/api/download/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/tasks/" + "9" * 10240):
        code, _, body = raw_request(daemon.port, path)
        assert code in (400, 404) and b"root:" not in body
    assert daemon.get(f"/api/tasks/{final['task_id']}") == final  # nothing changed behind our back

    code, headers, body = raw_request(daemon.port, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {s.labels["status"]: s.value for s in families["rknn_dropbox_jobs"].samples}["completed"] == 1
    count = [s.value for s in families["rknn_dropbox_conversion_seconds"].samples
             if s.name.endswith("_count")]
    assert count == [1]
    assert families["rknn_dropbox_workers_alive"].samples[0].value == 2
    assert final["task_id"] not in body.decode()
    assert raw_request(daemon.port, "/readyz")[0] == 200 and raw_request(daemon.port, "/livez")[0] == 200
    page = raw_request(daemon.port, "/")[2].decode()
    assert "polled" in page and f"/api/download/{final['task_id']}" in page


def test_stalled_clients_do_not_block_a_normal_request(daemon: DaemonProcess) -> None:
    stalled = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(200)]
    try:
        for s in stalled[::2]:
            s.sendall(b"GET /api/tasks HTTP/1.1\r\n")  # half a request head, then silence
        started = time.monotonic()
        health = daemon.get("/health")
        assert health["status"] == "healthy" and health["version"] and health["timestamp"]
        assert time.monotonic() - started < 2.0
    finally:
        for s in stalled:
            s.close()


def test_cancel_a_queued_and_a_running_job(daemon_factory, tmp_path: Path) -> None:
    hook = Hook([200])
    d = daemon_factory(workers=1, env={**FAULTS, "RKNN_DROPBOX_FAULTS": "runner=slow",
                                            "RKNN_DROPBOX_FAULT_SLOW_SECONDS": "60"}).start()
    try:
        shutil.copy(modelgen.write_onnx_conv(tmp_path / "r.onnx"), d.inbox / "runner.onnx")
        (d.inbox / "runner.yaml").write_text(f"callback_url: {hook.url}\n")
        running = wait_for(lambda: (t := task_named(d, "runner")) and t["status"] == "processing" and t, 30,
                           what="runner processing")
        shutil.copy(modelgen.write_onnx_conv(tmp_path / "w.onnx", seed=1), d.inbox / "waiter.onnx")
        queued = wait_for(lambda: task_named(d, "waiter"), 30, what="waiter claimed")
        assert queued["status"] == "queued"  # the only worker is busy

        done = cli(d, "cancel", queued["task_id"], "--wait", "--timeout", "20")
        assert done.returncode == 0, done.stderr
        assert d.get(f"/api/tasks/{queued['task_id']}")["status"] == "cancelled"
        err = json.loads((d.failed / "waiter" / "error.json").read_text())
        assert err["status"] == "cancelled" and err["error"] == "cancelled"
        assert (d.failed / "waiter" / "input" / "waiter.onnx").is_file()
        assert d.get(f"/api/tasks/{running['task_id']}")["status"] == "processing"

        started = time.monotonic()
        done = cli(d, "cancel", running["task_id"], "--wait", "--timeout", "20")
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 20  # far less than the 60 s the job would have slept
        task = d.get(f"/api/tasks/{running['task_id']}")
        assert task["status"] == "cancelled" and task["error"] == "cancelled"
        assert (d.failed / "runner" / "input" / "runner.onnx").is_file()
        assert json.loads((d.failed / "runner" / "error.json").read_text())["status"] == "cancelled"
        wait_for(lambda: hook.bodies, 10, what="callback for the cancelled job")
        assert hook.bodies[0]["task_id"] == running["task_id"] and hook.bodies[0]["status"] == "cancelled"
        assert "callback_url" not in hook.bodies[0]
        wait_for(lambda: d.get(f"/api/tasks/{running['task_id']}")["callback_status"] == "delivered (HTTP 200)",
                 10, what="callback_status")

        again = cli(d, "cancel", running["task_id"])
        assert again.returncode == 1 and "already cancelled" in again.stderr
        table = cli(d, "status")
        assert table.returncode == 0 and "cancelled" in table.stdout and "runner" in table.stdout
        listed = json.loads(cli(d, "status", "--json", "--status", "cancelled").stdout)
        assert sorted(t["name"] for t in listed) == ["runner", "waiter"]

        shutil.copy(modelgen.write_onnx_conv(tmp_path / "a.onnx", seed=2), d.inbox / "afterwards.onnx")
        d.wait_completed("afterwards")  # the killed worker was replaced
    finally:
        hook.close()


def test_callbacks_deliver_final_json_and_a_dead_url_does_not_slow_conversions(daemon_factory,
                                                                              tmp_path: Path) -> None:
    hook = Hook([200])
    blackhole = socket.socket()  # accepts connections (kernel backlog) and never answers: each POST times out
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    dead_url = f"http://127.0.0.1:{blackhole.getsockname()[1]}/hook"
    d = daemon_factory(workers=1, extra_config=f'[convert]\ncallback_url = "{dead_url}"\n').start()
    try:
        shutil.copy(modelgen.write_onnx_conv(tmp_path / "a.onnx"), d.inbox / "first.onnx")
        d.wait_completed("first")
        dropped = time.monotonic()
        (d.inbox / "second.yaml").write_text(f"callback_url: {hook.url}?token=s3cret\n")
        shutil.copy(modelgen.write_onnx_conv(tmp_path / "b.onnx", seed=1), d.inbox / "second.onnx")
        result = d.wait_completed("second")
        took = time.monotonic() - dropped
        # the first job's callback is still hanging on the dead URL (5 s per attempt, 4 attempts), yet the
        # second job was claimed, converted and delivered without waiting for it
        assert task_named(d, "first")["callback_status"].startswith("pending")
        assert took < 15, f"second job took {took:.1f} s"
        wait_for(lambda: hook.bodies, 10, what="callback received")
        body = hook.bodies[0]
        assert body["task_id"] == result["task_id"] and body["status"] == "completed" and body["progress"] == 100
        assert body["outputs"] == ["second.rknn"]
        result_text = (d.outbox / "second" / "result.json").read_text()
        assert "s3cret" not in result_text and hook.url in result_text  # the token never lands in the outbox
        wait_for(lambda: "timed out" in (task_named(d, "first")["callback_status"] or ""), 15,
                 what="the dead callback's failure shows in the task")
    finally:
        hook.close()
        blackhole.close()

"""Issue 4, in-process: the status server's routing, id validation, connection gate, metrics, callbacks, progress."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for
from rknn_dropbox.intake.claims import callback_url_for
from rknn_dropbox.service.callbacks import CallbackPolicy, CallbackSender
from rknn_dropbox.status.gate import GateLimits
from rknn_dropbox.status.server import StatusServer, content_disposition
from rknn_dropbox.store import JobRecord, JobStore
from rknn_dropbox.convert.toolkit_log import BUILD_PHASES_INT8, toolkit_progress

TASK = "20240101-120000-abcdef"


class RecordingStore(JobStore):
    """A real store that remembers which ids the server asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked: list[str] = []

    def get(self, job_id: str) -> JobRecord | None:
        self.asked.append(job_id)
        return super().get(job_id)


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(tmp_path / "jobs.sqlite3")


def start_server(store: JobStore, snapshot: dict[str, Any] | None = None,
                 limits: GateLimits | None = None) -> StatusServer:
    snap = snapshot if snapshot is not None else {"workers_alive": 2, "workers": 2, "watcher_alive": True,
                                                  "published_at": time.monotonic()}
    server = StatusServer("127.0.0.1", 0, store, lambda: snap, limits)
    server.start()
    return server


@pytest.fixture
def server(store: RecordingStore) -> Iterator[StatusServer]:
    s = start_server(store)
    yield s
    s.stop()


def request(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)  # putrequest sends the path exactly as given
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_hostile_task_ids_are_refused_before_the_store_is_asked(server: StatusServer,
                                                                store: RecordingStore) -> None:
    hostile = [
        "/api/tasks/../../etc/passwd", "/api/tasks/..%2F..%2Fetc%2Fpasswd", "/api/tasks/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/tasks/%252e%252e%252fetc%252fpasswd", "/api/download/..%2f..%2fetc%2fpasswd",
        "/api/download/../../../../etc/passwd", "/api/tasks/..", "/api/tasks/%00", "/api/tasks/" + "a" * 10240,
        "/api/tasks/" + TASK + "%2f..%2f..%2fetc%2fpasswd", "/api/tasks/" + TASK + "/../../../etc/passwd",
        "/api/tasks/" + TASK + "/logs/../../../etc/passwd", "/api/tasks/" + TASK.upper(),
    ]
    for path in hostile:
        code, headers, body = request(server.port, path)
        assert code in (400, 404), (path, code)
        assert headers["content-type"] == "application/json"
        assert "error" in json.loads(body) and b"root:" not in body
    assert store.asked == []
    code, _, body = request(server.port, f"/api/tasks/{TASK}")
    assert code == 404 and json.loads(body) == {"error": f"unknown task {TASK}"}
    assert store.asked == [TASK]


def test_only_get_and_head_are_allowed(server: StatusServer, store: RecordingStore) -> None:
    store.add(JobRecord(id=TASK, name="net"))
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "TRACE"):
        code, headers, _ = request(server.port, f"/api/tasks/{TASK}", method)
        assert code == 405 and headers["allow"] == "GET, HEAD", method
    code, headers, body = request(server.port, f"/api/tasks/{TASK}", "HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 0
    assert store.get(TASK).status == "queued"  # nothing changed


def test_task_json_list_filters_and_etag(server: StatusServer, store: RecordingStore) -> None:
    for i, status in enumerate(["completed", "failed", "queued"]):
        store.add(JobRecord(id=f"20240101-12000{i}-abcdef", name=f"n{i}", status=status, created_at=1000 + i))
    code, _, body = request(server.port, "/api/tasks")
    tasks = json.loads(body)["tasks"]
    assert [t["name"] for t in tasks] == ["n2", "n1", "n0"]  # newest first
    assert {"task_id", "status", "progress"} <= set(tasks[0]) and isinstance(tasks[0]["progress"], float)
    assert "callback_url" not in tasks[0]
    assert [t["name"] for t in json.loads(request(server.port, "/api/tasks?status=failed")[2])["tasks"]] == ["n1"]
    assert json.loads(request(server.port, "/api/tasks?limit=1")[2])["count"] == 1
    assert request(server.port, "/api/tasks?status=bogus")[0] == 400
    for _ in range(20):  # every handler thread has the list cached now; a write must still show at once
        request(server.port, "/api/tasks")
    store.update("20240101-120002-abcdef", status="processing")
    assert json.loads(request(server.port, "/api/tasks")[2])["tasks"][0]["status"] == "processing"
    assert request(server.port, "/api/tasks?limit=-1")[0] == 400
    path = "/api/tasks/20240101-120002-abcdef"
    code, headers, _ = request(server.port, path)
    etag = headers["etag"]
    code, headers, body = request(server.port, path, headers={"If-None-Match": etag})
    assert code == 304 and body == b"" and headers["etag"] == etag
    store.raise_progress("20240101-120002-abcdef", 40.0, "build")
    code, headers, body = request(server.port, path, headers={"If-None-Match": etag})
    assert code == 200 and headers["etag"] != etag and json.loads(body)["progress"] == 40.0


def test_logs_tail_and_download_of_several_targets_is_a_zip(server: StatusServer, store: RecordingStore,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "outbox" / "net"
    out.mkdir(parents=True)
    (out / "conversion.log").write_text("".join(f"line {i}\n" for i in range(50)))
    (out / "net.rk3588.rknn").write_bytes(b"A" * 3000)
    (out / "net.rk3566.rknn").write_bytes(b"B" * 2000)
    store.add(JobRecord(id=TASK, name="na\"me ü", status="completed", output_dir=str(out),
                        outputs=["net.rk3588.rknn", "net.rk3566.rknn"]))
    code, _, body = request(server.port, f"/api/tasks/{TASK}/logs?tail=3")
    assert code == 200 and body.decode() == "line 47\nline 48\nline 49\n"
    assert request(server.port, f"/api/tasks/{TASK}/logs?tail=x")[0] == 400
    code, headers, body = request(server.port, f"/api/download/{TASK}")
    assert code == 200 and headers["content-type"] == "application/zip"
    assert headers["content-disposition"] == content_disposition("na\"me ü.zip")
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert sorted(zf.namelist()) == ["net.rk3566.rknn", "net.rk3588.rknn"]
        assert zf.read("net.rk3588.rknn") == b"A" * 3000
    queued = "20240101-120001-abcdef"
    store.add(JobRecord(id=queued, name="later"))
    code, _, body = request(server.port, f"/api/download/{queued}")
    assert code == 409 and "queued" in json.loads(body)["error"]


def test_content_disposition_quotes_and_encodes() -> None:
    assert content_disposition("net.rknn") == "attachment; filename=\"net.rknn\"; filename*=UTF-8''net.rknn"
    header = content_disposition('a"b\r\n;ü.rknn')
    assert header.startswith('attachment; filename="a_b___') and "\r" not in header and "\n" not in header
    assert header.endswith("filename*=UTF-8''a%22b%0D%0A%3B%C3%BC.rknn")


def test_stalled_connections_cost_no_threads_and_are_dropped(store: RecordingStore) -> None:
    server = start_server(store, limits=GateLimits(handler_threads=4, head_timeout=1.5, max_pending=250))
    try:
        threads_before = threading.active_count()
        stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        for s in stalled[:50]:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # half a request head, then nothing
        code, _, body = request(server.port, "/health")
        assert code == 200 and json.loads(body)["status"] == "healthy"
        # answered while the stalled clients still hold their sockets: it waited for none of their timeouts
        assert not _closed(stalled[-1])
        assert threading.active_count() <= threads_before  # no thread per connection
        wait_for(lambda: _closed(stalled[0]), 1, what="oldest dropped")  # beyond max_pending: dropped at once
        assert not _closed(stalled[-1])
        wait_for(lambda: all(_closed(s) for s in stalled[50:]), 6, what="stalled clients dropped")
        assert request(server.port, "/health")[0] == 200
    finally:
        for s in stalled:
            s.close()
        server.stop()


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(10) == b""
    except (TimeoutError, socket.timeout):
        return False
    except OSError:
        return True


def test_probes_follow_the_snapshot(store: RecordingStore) -> None:
    snap: dict[str, Any] = {"workers_alive": 2, "watcher_alive": True, "published_at": time.monotonic()}
    server = start_server(store, snap)
    try:
        assert request(server.port, "/readyz")[0] == 200 and request(server.port, "/livez")[0] == 200
        snap["watcher_alive"] = False
        code, _, body = request(server.port, "/readyz")
        assert code == 503 and json.loads(body)["checks"]["watcher_running"] is False
        assert request(server.port, "/livez")[0] == 200
        snap.update(watcher_alive=True, unwritable_folders=["/srv/outbox"])
        assert request(server.port, "/readyz")[0] == 503
        snap.update(unwritable_folders=[], workers_alive=0)
        assert request(server.port, "/readyz")[0] == 503
        snap.update(workers_alive=1, published_at=time.monotonic() - 3600)  # the daemon loop is stuck
        assert request(server.port, "/livez")[0] == 503
    finally:
        server.stop()


def test_metrics_parse_and_carry_no_job_ids(server: StatusServer, store: RecordingStore) -> None:
    store.add(JobRecord(id=TASK, name="a", status="completed", started_at=100.0, finished_at=103.0))
    store.add(JobRecord(id="20240101-120001-abcdef", name="b", status="failed"))
    code, headers, body = request(server.port, "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    jobs = {s.labels["status"]: s.value for s in families["rknn_dropbox_jobs"].samples}
    assert jobs == {"completed": 1, "failed": 1, "cancelled": 0}
    hist = {(s.name, s.labels.get("le")): s.value for s in families["rknn_dropbox_conversion_seconds"].samples}
    assert hist[("rknn_dropbox_conversion_seconds_bucket", "2.5")] == 0
    assert hist[("rknn_dropbox_conversion_seconds_bucket", "5.0")] == 1
    assert hist[("rknn_dropbox_conversion_seconds_count", None)] == 1
    assert families["rknn_dropbox_workers_alive"].samples[0].value == 2
    assert TASK not in body.decode()


def test_html_page_escapes_names(server: StatusServer, store: RecordingStore) -> None:
    store.add(JobRecord(id=TASK, name="<script>x</script>", status="processing", progress=42.0))
    code, headers, body = request(server.port, "/")
    page = body.decode()
    assert code == 200 and headers["content-type"].startswith("text/html")
    assert "<script>x" not in page and "&lt;script&gt;x" in page
    assert 'http-equiv="refresh"' in page and 'value="42"' in page and f"/api/tasks/{TASK}/logs" in page


class Hook:
    """A loopback HTTP server that records POSTed JSON and answers with the given status codes in turn."""

    def __init__(self, codes: list[int]) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(codes[min(len(hook.bodies), len(codes)) - 1])
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_callbacks_retry_then_deliver_and_give_up_on_dead_urls(store: RecordingStore) -> None:
    hook = Hook([500, 503, 200])
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/hook"
    dead.close()  # nothing listens there: connection refused
    sender = CallbackSender(store, CallbackPolicy(timeout_seconds=2, retries=3, backoff_seconds=0.05))
    sender.start()
    try:
        for job_id in (TASK, "20240101-120001-abcdef"):
            store.add(JobRecord(id=job_id, name="n", status="completed", progress=100.0))
        started = time.monotonic()
        sender.submit("20240101-120001-abcdef", dead_url, store.get("20240101-120001-abcdef").to_task())
        sender.submit(TASK, hook.url, store.get(TASK).to_task())
        assert time.monotonic() - started < 0.2  # submit never waits for the network
        wait_for(lambda: (store.get(TASK).callback_status or "").startswith("delivered"), 10, what="delivered")
        assert store.get(TASK).callback_status == "delivered (HTTP 200)"
        assert len(hook.bodies) == 3 and hook.bodies[-1]["task_id"] == TASK
        assert hook.bodies[-1]["status"] == "completed" and hook.bodies[-1]["progress"] == 100.0
        wait_for(lambda: (store.get("20240101-120001-abcdef").callback_status or "").startswith("failed"), 10,
                 what="gave up")
        assert store.get("20240101-120001-abcdef").callback_status.startswith("failed after 4 attempt(s)")
    finally:
        sender.stop()
        hook.close()


def test_callback_url_comes_from_the_sidecar_before_the_toml(tmp_path: Path) -> None:
    job_input = tmp_path / "input"
    (job_input / "folder").mkdir(parents=True)
    assert callback_url_for(job_input, "http://toml/") == "http://toml/"
    (job_input / "folder" / "config.yaml").write_text("callback_url: http://folder/\n")
    assert callback_url_for(job_input, "http://toml/") == "http://folder/"
    (job_input / "net.yaml").write_text("callback_url: http://sidecar/\n")
    assert callback_url_for(job_input, None) == "http://sidecar/"
    (job_input / "net.yaml").write_text("callback_url: file:///etc/passwd\n")
    assert callback_url_for(job_input, None) == "http://folder/"


def test_toolkit_bars_raise_progress_within_the_window(tmp_path: Path) -> None:
    raw = tmp_path / "conversion.raw"
    raw.write_text("I earlier output\r I Quantizating : 100%|####|\n")  # before the block: ignored
    reports: list[float] = []
    with toolkit_progress(raw, reports.append, 30.0, 85.0, BUILD_PHASES_INT8, interval=0.02):
        with open(raw, "a") as fh:
            for text in ("\rI OpFusing 0:   0%|  |", "\rI OpFusing 0: 100%|##|\n", "\rI Quantizating :  50%|#",
                         "\rI Quantizating : 100%|##|\n", "I rknn building ...\n"):
                fh.write(text)
                fh.flush()
                wait_for(lambda n=len(reports): len(reports) > n or text.endswith("0%|  |"), 3, interval=0.01)
    assert reports == sorted(reports) and len(reports) >= 3
    assert 30.0 < reports[0] and reports[-1] == pytest.approx(30 + 55 * 0.75)
    assert all(r < 85.0 for r in reports)

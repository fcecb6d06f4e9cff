"""The status server: read-only HTTP over the job store (task API, logs, downloads, metrics, health, HTML page)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import threading
import time
import zipfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

from rknn_dropbox import __version__
from rknn_dropbox.status.delivered import DeliveredFiles
from rknn_dropbox.status.gate import ConnectionGate, GateLimits
from rknn_dropbox.status.jobpage import LOG_LINES, render_job
from rknn_dropbox.status.jobview import JobView
from rknn_dropbox.status.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, render_metrics
from rknn_dropbox.status.page import PAGE_SIZE, ListRequest, render_list
from rknn_dropbox.store import COMPLETED, STATUSES, JobRecord, JobStore

TASK_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_NAME_CHARS = 1024
LOOP_STALE_SECONDS = 60.0  # the daemon loop publishes a snapshot every step (~0.5 s); older than this = stuck
Snapshot = Callable[[], dict[str, Any]]


class BadRequest(Exception):
    """A request the server refuses with 400; the message goes into {"error": ...}."""


def health_checks(snapshot: dict[str, Any]) -> dict[str, bool]:
    """Readiness checks from the daemon's last published snapshot."""
    published = snapshot.get("published_at")
    return {
        "loop_responsive": published is None or time.monotonic() - published < LOOP_STALE_SECONDS,
        "watcher_running": bool(snapshot.get("watcher_alive")),
        "folders_writable": not snapshot.get("unwritable_folders"),
        "workers_alive": int(snapshot.get("workers_alive") or 0) >= 1,
        "accepting_jobs": not snapshot.get("stopping"),
        "threads_running": all((snapshot.get("threads_alive") or {}).values()),
        "loop_steps_ok": not snapshot.get("failing_steps"),
        "share_available": not snapshot.get("share_missing"),
    }


def health_body(snapshot: dict[str, Any]) -> dict[str, Any]:
    """/health: "healthy", or "degraded" naming what is wrong (a failing loop step, a dead thread, a share away)."""
    problems = [f"{step} step failing: {error}" for step, error in (snapshot.get("failing_steps") or {}).items()]
    problems += [f"{name} thread not running" for name, alive in (snapshot.get("threads_alive") or {}).items()
                 if not alive]
    problems += [f"share unavailable: {what}" for what in snapshot.get("share_missing") or []]
    body: dict[str, Any] = {"status": "degraded" if problems else "healthy", "timestamp": time.time(),
                            "version": __version__}
    if problems:
        body["problems"] = problems
    return body


def content_disposition(filename: str) -> str:
    """attachment; an ASCII fallback name and the exact name in RFC 5987 encoding."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename).lstrip(".") or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _status_param(query: dict[str, list[str]]) -> str | None:
    status = query.get("status", [None])[-1] or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    return status


def _int_param(query: dict[str, list[str]], name: str, default: int | None, low: int, high: int) -> int | None:
    if name not in query:
        return default
    raw = query[name][-1]
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise BadRequest(f"{name} must be a whole number")
    return max(low, min(high, int(raw)))


class StatusServer:
    """Listens on host:port; a ConnectionGate reads requests, StatusHandler answers them from the store."""

    def __init__(self, host: str, port: int, store: JobStore, snapshot: Snapshot,
                 limits: GateLimits | None = None) -> None:
        self.store = store
        self.snapshot = snapshot
        self.limits = limits or GateLimits.for_descriptors()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, port), family=family, backlog=self.limits.request_queue_size)
        self.port = self.listener.getsockname()[1]
        self.gate = ConnectionGate(self.listener, self._handle, self.limits)
        self.list_cache = threading.local()  # per handler thread: its sqlite connection's data_version is its own
        self.delivered = DeliveredFiles()

    def view(self, job: JobRecord) -> JobView:
        return JobView(job, self.delivered.doc(job))

    def memory_mb(self) -> float | None:
        """Memory in use by the daemon and its workers: the snapshot's figure, else read from /proc."""
        published = self.snapshot().get("memory_mb")
        if isinstance(published, (int, float)):
            return float(published)
        try:
            from rknn_dropbox.service.memory import tree_rss_mb
            return tree_rss_mb(os.getpid()) or None
        except (ImportError, OSError):
            return None

    def task_list_body(self, status: str | None, limit: int | None, name: str | None = None) -> bytes:
        """The /api/tasks JSON, rebuilt only when the store changed (or, with unfinished tasks, once a second,
        because their durations move)."""
        version = self.store.data_version()
        second = int(time.time())
        cache: dict[tuple[str | None, int | None, str | None], tuple[int, int | None, bytes]] = \
            self.list_cache.__dict__.setdefault("entries", {})
        hit = cache.get((status, limit, name))
        if hit is not None and hit[0] == version and hit[1] in (None, second):
            return hit[2]
        jobs = self.store.list(status=status, limit=limit) if name is None else \
            [j for j in self.store.list_named(name, limit) if status is None or j.status == status]
        tasks = [j.to_task() for j in jobs]
        body = json.dumps({"tasks": tasks, "count": len(tasks)}, default=str).encode()
        if len(cache) > 64:
            cache.clear()
        cache[(status, limit, name)] = (version, second if any(j.finished_at is None for j in jobs) else None, body)
        return body

    def start(self) -> None:
        self.gate.start()

    def stop(self) -> None:
        self.gate.stop()
        self.listener.close()

    def _handle(self, sock: socket.socket, address: tuple, head: bytes) -> None:
        StatusHandler((sock, head), address, self)  # type: ignore[arg-type]


class StatusHandler(BaseHTTPRequestHandler):
    """One request; GET and HEAD only, everything else 405."""

    server: StatusServer  # type: ignore[assignment]
    server_version = f"rknn-dropbox/{__version__}"
    protocol_version = "HTTP/1.0"  # one request per connection: an idle keep-alive never holds a thread

    def setup(self) -> None:
        sock, head = self.request  # type: ignore[misc]
        self.connection = sock
        self.rfile = io.BytesIO(head)
        self.wfile = sock.makefile("wb")

    def finish(self) -> None:
        try:
            self.wfile.flush()
        except OSError:
            pass
        self.wfile.close()
        self.rfile.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # any other method (PUT, DELETE, PROPFIND, ...) -> 405, not 501
            return self._not_allowed
        raise AttributeError(name)

    # ---- responses ------------------------------------------------------------------------------------------------
    def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        body = data if isinstance(data, bytes) else json.dumps(data, default=str).encode()
        if code != 200:
            return self._send(code, body, "application/json")
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        wanted = [t.strip().removeprefix("W/") for t in self.headers.get("If-None-Match", "").split(",")]
        if etag in wanted or "*" in wanted:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", etag)
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            return
        self._send(200, body, "application/json", {"ETag": etag})

    def _error(self, code: int, message: str) -> None:
        self._json(code, {"error": message})

    def _not_allowed(self) -> None:
        body = json.dumps({"error": f"{self.command} is not allowed: this server is read-only (GET, HEAD)"}).encode()
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, body, "application/json", {"Allow": "GET, HEAD"})

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    # ---- routing -----------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query, max_num_fields=20)
            parts = [p for p in url.path.split("/") if p]  # never unquoted, never joined to a folder
            self._route(parts, query)
        except BadRequest as exc:
            self._error(400, str(exc))
        except ValueError:
            self._error(400, "malformed query string")

    def _route(self, parts: list[str], query: dict[str, list[str]]) -> None:
        if not parts:
            return self._page(query)
        if len(parts) == 2 and parts[0] == "tasks":
            job = self._job(parts[1])
            if job is not None:
                self._job_page(job)
            return None
        if parts == ["health"]:
            return self._json(200, health_body(self.server.snapshot()))
        if parts in (["livez"], ["readyz"]):
            return self._probe(parts[0])
        if parts == ["metrics"]:
            body = render_metrics(self.server.store, self.server.snapshot()).encode()
            return self._send(200, body, METRICS_CONTENT_TYPE)
        if parts == ["api", "tasks"]:
            return self._list(query)
        if parts[:2] in (["api", "tasks"], ["api", "download"]) and len(parts) >= 3:
            return self._api_task(parts[1], parts[2], parts[3:], query)
        return self._error(404, "not found")

    def _job(self, task_id: str) -> JobRecord | None:
        """The job with this id; None after answering 400 (not an id) or 404 (unknown)."""
        if len(task_id) > 64 or not TASK_ID_RE.fullmatch(task_id):
            self._error(400, "bad task id: expected YYYYMMDD-HHMMSS-xxxxxx")
            return None
        job = self.server.store.get(task_id)
        if job is None:
            self._error(404, f"unknown task {task_id}")
        return job

    def _api_task(self, kind: str, task_id: str, rest: list[str], query: dict[str, list[str]]) -> None:
        known = (kind == "tasks" and rest in ([], ["logs"], ["result"])) or (kind == "download" and len(rest) <= 1)
        if len(task_id) <= 64 and TASK_ID_RE.fullmatch(task_id) and not known:
            return self._error(404, "not found")
        job = self._job(task_id)
        if job is None:
            return None
        if kind == "download":
            return self._download(job, unquote(rest[0]) if rest else None)
        if rest == ["logs"]:
            return self._logs(job, query)
        if rest == ["result"]:
            doc = self.server.delivered.doc(job)
            return self._json(200, doc) if doc else self._error(409, f"task {job.id} is {job.status}: no "
                                                                      "result.json or error.json yet")
        verdicts = self.server.view(job).verdicts  # the task checks' verdict, read from result.json
        return self._json(200, {**job.to_task(), **({"verdict": verdicts} if verdicts else {})})

    def _list(self, query: dict[str, list[str]]) -> None:
        status = _status_param(query)
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        name = query.get("name", [None])[-1]
        if name is not None and (not name or len(name) > MAX_NAME_CHARS):
            raise BadRequest(f"name must be 1 to {MAX_NAME_CHARS} characters")
        self._json(200, self.server.task_list_body(status, limit, name))

    def _page(self, query: dict[str, list[str]]) -> None:
        store = self.server.store
        req = ListRequest(_status_param(query), _int_param(query, "page", 1, 1, 1_000_000) or 1, store.counts())
        req.page = min(req.page, req.pages)
        offset = (req.page - 1) * PAGE_SIZE
        jobs = store.list(status=req.status, limit=offset + PAGE_SIZE)[offset:]
        views = [self.server.view(j) for j in jobs]
        body = render_list(views, self.server.snapshot(), __version__, req, self.server.memory_mb()).encode()
        self._send(200, body, "text/html; charset=utf-8")

    def _job_page(self, job: JobRecord) -> None:
        view = self.server.view(job)
        dropped = self.server.delivered.dropped_files(job, view.doc)
        log_text = self.server.delivered.log_text(job, LOG_LINES)
        self._send(200, render_job(view, dropped, log_text, __version__).encode(), "text/html; charset=utf-8")

    def _probe(self, kind: str) -> None:
        checks = health_checks(self.server.snapshot())
        relevant = {"loop_responsive": checks["loop_responsive"]} if kind == "livez" else checks
        ok = all(relevant.values())
        body = json.dumps({"status": "ok" if ok else "unavailable", "checks": relevant}).encode()
        self._send(200 if ok else 503, body, "application/json")

    def _logs(self, job: JobRecord, query: dict[str, list[str]]) -> None:
        tail = _int_param(query, "tail", None, 0, 1_000_000)
        text = self.server.delivered.log_text(job, tail)
        self._send(200, text.encode(), "text/plain; charset=utf-8")

    def _download(self, job: JobRecord, wanted: str | None = None) -> None:
        """All outputs (one file, or a zip of several), or the one output named `wanted`."""
        if job.status != COMPLETED or not job.output_dir or not job.outputs:
            return self._error(409, f"task {job.id} is {job.status}: nothing to download")
        folder = Path(job.output_dir)
        names = [Path(name).name for name in job.outputs]  # names the converter wrote, not the URL
        if wanted is not None:
            if wanted not in names:
                return self._error(404, f"task {job.id} has no output named {wanted[:200]}")
            names = [wanted]
        files = [folder / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            return self._error(404, f"no longer in outbox: {', '.join(missing)}")
        if len(files) == 1:
            return self._send_file(files[0])
        self._send_zip(f"{job.name}.zip", files)

    def _send_file(self, path: Path) -> None:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition", content_disposition(path.name))
            self.end_headers()
            if self.command == "HEAD":
                return
            self.wfile.flush()
            self.connection.sendfile(fh)

    def _send_zip(self, name: str, files: list[Path]) -> None:
        """Streamed (no Content-Length: HTTP/1.0 ends the body by closing the connection)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Disposition", content_disposition(name))
        self.end_headers()
        if self.command == "HEAD":
            return
        with zipfile.ZipFile(self.wfile, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for path in files:
                zf.write(path, arcname=path.name)

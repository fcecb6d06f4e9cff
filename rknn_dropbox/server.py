"""The status server: a read-only stdlib http.server over the job store (the older design's task API)."""

from __future__ import annotations

import json
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from . import __version__
from .store import COMPLETED, STATUSES, JobStore

TASK_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


class StatusServer:
    """Runs a ThreadingHTTPServer in a background thread; handlers only read the store."""

    def __init__(self, host: str, port: int, store: JobStore, snapshot: Callable[[], dict[str, Any]]) -> None:
        handler = type("Handler", (StatusHandler,), {"store": store, "snapshot": staticmethod(snapshot)})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="status-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class StatusHandler(BaseHTTPRequestHandler):
    store: JobStore
    snapshot: Callable[[], dict[str, Any]]
    server_version = f"rknn-dropbox/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _json(self, code: int, data: Any) -> None:
        body = json.dumps(data, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: int, message: str) -> None:
        self._json(code, {"error": message})

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _not_allowed(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = url.path.strip("/").split("/") if url.path.strip("/") else []
        if parts == ["health"]:
            return self._json(200, {"status": "healthy", "timestamp": time.time(), "version": __version__})
        if parts == ["api", "tasks"]:
            status = query.get("status", [None])[0]
            if status is not None and status not in STATUSES:
                return self._error(400, f"status must be one of {', '.join(STATUSES)}")
            try:
                limit = int(query.get("limit", ["100"])[0])
            except ValueError:
                return self._error(400, "limit must be a whole number")
            tasks = [j.to_task() for j in self.store.list(status=status, limit=max(0, min(limit, 10000)))]
            return self._json(200, {"tasks": tasks, "count": len(tasks)})
        if len(parts) in (3, 4) and parts[:2] == ["api", "tasks"] or len(parts) == 3 and parts[:2] == ["api",
                                                                                                       "download"]:
            task_id = parts[2]
            if not TASK_ID_RE.match(task_id):
                return self._error(400, "bad task id")
            job = self.store.get(task_id)
            if job is None:
                return self._error(404, f"unknown task {task_id}")
            if parts[1] == "download":
                return self._download(job)
            if len(parts) == 3:
                return self._json(200, job.to_task())
            if parts[3] == "logs":
                return self._logs(job, query)
        return self._error(404, "not found")

    def _logs(self, job: Any, query: dict[str, list[str]]) -> None:
        candidates = []
        if job.output_dir:
            candidates.append(Path(job.output_dir) / "conversion.log")
        if job.work_path:
            candidates += [Path(job.work_path) / "out" / "conversion.log", Path(job.work_path) / "conversion.raw"]
        for path in candidates:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
                break
            except OSError:
                continue
        else:
            text = ""
        if "tail" in query:
            try:
                text = "\n".join(text.splitlines()[-int(query["tail"][0]):])
            except ValueError:
                return self._error(400, "tail must be a whole number")
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _download(self, job: Any) -> None:
        if job.status != COMPLETED or not job.output_dir or not job.outputs:
            return self._error(409, f"task {job.id} is {job.status}, nothing to download yet")
        path = Path(job.output_dir) / Path(job.outputs[0]).name
        try:
            fh = open(path, "rb")
        except OSError:
            return self._error(404, "the output file is gone from outbox")
        with fh:
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition", f'attachment; filename="{path.name}"')
            self.end_headers()
            if self.command != "HEAD":
                while chunk := fh.read(1 << 16):
                    self.wfile.write(chunk)

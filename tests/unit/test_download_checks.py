"""`submit --wait` never saves a truncated or different .rknn: each download is checked against its Content-Length
and the sha256 result.json records (a real HTTP server that cuts the body short or serves other bytes)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rknn_dropbox.client.follow import HttpApi, Unreachable, download_outputs

TASK = {"task_id": "20240101-120000-abcdef", "name": "net", "status": "completed", "outputs": ["net.rknn"]}
DELIVERED = bytes(range(256)) * 40


class FakeStatus:
    """/api/tasks/<id>/result and /api/download/<id>/<file>, the download served as `mode` says."""

    def __init__(self, mode: str) -> None:
        srv = self
        self.mode = mode
        self.downloads = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path.endswith("/result"):
                    body = json.dumps({"outputs": [{"name": "net.rknn", "size": len(DELIVERED),
                                                    "sha256": hashlib.sha256(DELIVERED).hexdigest()}]}).encode()
                    self._answer(body, len(body))
                    return
                srv.downloads += 1
                if srv.mode == "truncated":  # announces every byte, sends a third, closes
                    self._answer(DELIVERED[:len(DELIVERED) // 3], len(DELIVERED))
                elif srv.mode == "different":
                    self._answer(bytes(len(DELIVERED)), len(DELIVERED))
                else:
                    self._answer(DELIVERED, len(DELIVERED))

            def _answer(self, body: bytes, length: int) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("mode", ["truncated", "different"])
def test_a_bad_download_is_retried_then_refused_and_never_saved(tmp_path: Path, mode: str) -> None:
    server = FakeStatus(mode)
    try:
        api = HttpApi(server.url, patience=1.0)
        with pytest.raises(Unreachable, match="cut short" if mode == "truncated" else "sha256"):
            download_outputs(api, TASK, tmp_path / "out", time.monotonic() + 30)
        assert server.downloads >= 2  # fetched again before giving up
        assert list((tmp_path / "out").iterdir()) == []  # neither net.rknn nor a partial file
    finally:
        server.close()


def test_a_whole_download_is_saved(tmp_path: Path) -> None:
    server = FakeStatus("whole")
    try:
        saved = download_outputs(HttpApi(server.url, patience=1.0), TASK, tmp_path / "out", time.monotonic() + 30)
        assert [p.read_bytes() for p in saved] == [DELIVERED]
    finally:
        server.close()

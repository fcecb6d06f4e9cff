"""A sidecar's callback_url is untrusted: no redirect is followed, `[convert] callback_hosts` limits where it may
point, logs carry no query string, a host that drips forever is cut at the deadline, and a few hosts that never
answer do not hold up another job's callback. Real HTTP servers on loopback, a real job store."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from rknn_dropbox.config import config_from_mapping
from rknn_dropbox.options import OptionsError, parse_convert_options
from rknn_dropbox.service.callbacks import CallbackPolicy, CallbackSender
from rknn_dropbox.store import JobRecord, JobStore
from conftest import wait_for


class Server:
    """A loopback HTTP server: `answer` is the status it gives a POST, `location` a redirect's target;
    `hold` makes it keep the connection without answering until released."""

    def __init__(self, answer: int = 200, location: str | None = None, hold: bool = False) -> None:
        self.hits: list[str] = []
        self.release = threading.Event()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                srv.hits.append(self.command)
                if hold:
                    srv.release.wait(120)
                    return
                self.send_response(answer)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _any  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    s = JobStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


def _send(store: JobStore, sender: CallbackSender, job_id: str, url: str) -> None:
    store.add(JobRecord(id=job_id, name=job_id, status="completed", progress=100.0))
    sender.submit(job_id, url, store.get(job_id).to_task())


def _final(store: JobStore, job_id: str) -> str:
    wait_for(lambda: not (store.get(job_id).callback_status or "pending").startswith("pending"), 30,
             what=f"{job_id}'s callback outcome")
    return store.get(job_id).callback_status


def _sender(store: JobStore, **policy: Any) -> CallbackSender:
    sender = CallbackSender(store, CallbackPolicy(**{"retries": 0, "backoff_seconds": 0.05, **policy}))
    sender.start()
    return sender


def test_a_redirect_is_not_followed(store: JobStore) -> None:
    internal = Server()
    redirect = Server(302, location=internal.url)
    sender = _sender(store)
    try:
        _send(store, sender, "20240101-120000-aaaaaa", redirect.url)
        status = _final(store, "20240101-120000-aaaaaa")
        assert "redirect" in status and "not followed" in status
        assert redirect.hits == ["POST"] and internal.hits == []
    finally:
        sender.stop()
        internal.close()
        redirect.close()


def test_callback_hosts_refuses_other_hosts_without_calling_them(store: JobStore) -> None:
    internal = Server()
    sender = _sender(store, allowed_hosts=("ci.example.com",))
    try:
        _send(store, sender, "20240101-120000-aaaaaa", internal.url)
        assert "callback_hosts" in _final(store, "20240101-120000-aaaaaa")
        assert internal.hits == []
    finally:
        sender.stop()
        internal.close()


def test_callback_hosts_lets_listed_hosts_and_the_tomls_own_url_through(store: JobStore) -> None:
    listed, toml_hook = Server(), Server()
    sender = _sender(store, allowed_hosts=(f"127.0.0.1:{listed.httpd.server_address[1]}",),
                     trusted_url=toml_hook.url)
    try:
        _send(store, sender, "20240101-120000-aaaaaa", listed.url)
        _send(store, sender, "20240101-120000-bbbbbb", toml_hook.url)
        assert _final(store, "20240101-120000-aaaaaa") == "delivered (HTTP 200)"
        assert _final(store, "20240101-120000-bbbbbb") == "delivered (HTTP 200)"
    finally:
        sender.stop()
        listed.close()
        toml_hook.close()


def test_logs_never_carry_the_query_string(store: JobStore) -> None:
    hook = Server(404)
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG")
    sender = _sender(store)
    try:
        _send(store, sender, "20240101-120000-aaaaaa", f"{hook.url}?token=s3cret")
        assert _final(store, "20240101-120000-aaaaaa").endswith("HTTP 404")
        assert any(hook.url in line for line in lines) and not any("s3cret" in line for line in lines)
    finally:
        logger.remove(sink)
        sender.stop()
        hook.close()


def test_a_host_that_drips_forever_is_cut_at_the_deadline(store: JobStore) -> None:
    drip = socket.socket()
    drip.bind(("127.0.0.1", 0))
    drip.listen(4)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = drip.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.wait(0.3):  # a header byte every 0.3 s: no single read ever times out
            try:
                conn.sendall(b"X")
            except OSError:
                return
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    sender = _sender(store, timeout_seconds=2)
    try:
        _send(store, sender, "20240101-120000-aaaaaa", f"http://127.0.0.1:{drip.getsockname()[1]}/hook")
        assert _final(store, "20240101-120000-aaaaaa").startswith("failed after 1 attempt(s)")
    finally:
        stop.set()
        sender.stop()
        drip.close()


def test_hosts_that_never_answer_do_not_hold_up_another_jobs_callback(store: JobStore) -> None:
    silent = [Server(hold=True) for _ in range(4)]
    hook = Server()
    sender = _sender(store, timeout_seconds=120)
    try:
        for n, server in enumerate(silent):
            for k in range(3):
                _send(store, sender, f"20240101-12000{n}-silen{k}", server.url)
        wait_for(lambda: sum(len(s.hits) for s in silent) >= 4, 10, what="the silent hosts are being called")
        _send(store, sender, "20240101-120009-health", hook.url)
        assert _final(store, "20240101-120009-health") == "delivered (HTTP 200)"
        assert all(store.get(f"20240101-12000{n}-silen0").callback_status == "pending" for n in range(4))
    finally:
        for server in silent:
            server.close()
        sender.stop(flush_seconds=0)
        hook.close()


def test_callback_hosts_is_a_toml_key_only(tmp_path: Path) -> None:
    cfg = config_from_mapping({"convert": {"callback_hosts": ["ci.example.com", ".corp.example"],
                                           "callback_url": "http://toml.example/hook"}}, tmp_path)
    assert cfg.convert.callback_hosts == ("ci.example.com", ".corp.example")
    policy = CallbackPolicy.for_convert(cfg.convert)
    assert policy.allows("https://ci.example.com/x?t=1") and policy.allows("http://a.corp.example:8080/")
    assert policy.allows("http://toml.example/hook") and not policy.allows("http://10.0.0.1/")
    assert not policy.allows("http://corp.example.evil.com/") and not policy.allows("http://xcorp.example/")
    with pytest.raises(OptionsError, match="daemon's TOML"):
        parse_convert_options({"callback_hosts": ["evil.example"]}, "net.yaml")

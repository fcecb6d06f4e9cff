"""Completion callbacks: POST a job's final task JSON to its callback_url from background threads, with retries.

A sidecar's URL is untrusted: redirects are never followed, `[convert] callback_hosts` limits where it may point,
every attempt has an overall deadline, a few hosts that never answer hold at most `per_host` threads each, logs
name the URL without its query, and the published outcome does not tell a refused port from a silent one."""

from __future__ import annotations

import heapq
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from loguru import logger

from rknn_dropbox import __version__
from rknn_dropbox.callback_urls import host_allowed, public_url
from rknn_dropbox.store import JobStore

PENDING = "pending"


@dataclass(frozen=True)
class CallbackPolicy:
    """How hard the daemon tries: one POST plus `retries`, waiting backoff, 2×backoff, 4×backoff between them;
    each attempt ends after `timeout_seconds` in all. `allowed_hosts`: `[convert] callback_hosts` (empty: any);
    `trusted_url`: the TOML's own callback_url, allowed whatever the list says."""
    timeout_seconds: float = 5.0
    retries: int = 3
    backoff_seconds: float = 1.0
    threads: int = 16
    per_host: int = 2
    max_pending: int = 1000
    allowed_hosts: tuple[str, ...] = ()
    trusted_url: str | None = None

    def allows(self, url: str) -> bool:
        return url == self.trusted_url or host_allowed(url, self.allowed_hosts)

    @classmethod
    def for_convert(cls, convert: Any) -> "CallbackPolicy":
        """The policy the daemon's TOML [convert] sets (`callback_hosts`, its own `callback_url`)."""
        return cls(allowed_hosts=tuple(getattr(convert, "callback_hosts", None) or ()),
                   trusted_url=getattr(convert, "callback_url", None))


def _host_of(url: str) -> str:
    try:
        return urlsplit(url).netloc.rpartition("@")[2].lower()
    except ValueError:
        return ""


@dataclass(order=True)
class CallbackDelivery:
    due: float
    job_id: str = field(compare=False)
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(default=0, compare=False)


class CallbackSender:
    """A due-time heap served by a few daemon threads: a dead URL delays nothing but its own retries."""

    def __init__(self, store: JobStore, policy: CallbackPolicy | None = None) -> None:
        self.store = store
        self.policy = policy or CallbackPolicy()
        self._heap: list[CallbackDelivery] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._in_flight = 0
        self._busy_hosts: dict[str, int] = {}
        self._threads = [threading.Thread(target=self._run, name=f"callbacks-{i}", daemon=True)
                         for i in range(self.policy.threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, flush_seconds: float = 2.0) -> None:
        """Give due deliveries a moment; what is left stays "pending" in the store and is sent on the next start."""
        deadline = time.monotonic() + flush_seconds
        with self._cond:
            while (self._in_flight or any(d.due <= time.monotonic() for d in self._heap)) \
                    and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._stopping = True
            self._cond.notify_all()
        join_until = time.monotonic() + self.policy.timeout_seconds + 1
        for t in self._threads:
            if t.is_alive():  # never started when start-up failed before the sender
                t.join(max(0.0, join_until - time.monotonic()))

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._heap) + self._in_flight

    def submit(self, job_id: str, url: str, task: dict[str, Any]) -> None:
        """Queue the POST (never blocks); the store's callback_status says how it went."""
        body = json.dumps(task, default=str).encode()
        with self._cond:
            if len(self._heap) >= self.policy.max_pending:
                logger.error("job {}: {} callbacks already waiting; dropping this one", job_id, len(self._heap))
                self.store.set_callback_status(job_id, "dropped: too many callbacks waiting")
                return
            self.store.set_callback_status(job_id, PENDING)  # before a thread can record the outcome
            heapq.heappush(self._heap, CallbackDelivery(time.monotonic(), job_id, url, body))
            self._cond.notify()

    def _next(self) -> CallbackDelivery | None:
        """The earliest due delivery whose host has fewer than `per_host` attempts in flight."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                ready = [d for d in self._heap if d.due <= now and
                         self._busy_hosts.get(_host_of(d.url), 0) < self.policy.per_host]
                if ready:
                    chosen = min(ready)
                    del self._heap[next(i for i, d in enumerate(self._heap) if d is chosen)]  # not ==: by due
                    heapq.heapify(self._heap)
                    self._in_flight += 1
                    host = _host_of(chosen.url)
                    self._busy_hosts[host] = self._busy_hosts.get(host, 0) + 1
                    return chosen
                later = [d.due - now for d in self._heap if d.due > now]
                self._cond.wait(min(later) if later else None)
            return None

    def _run(self) -> None:
        while (delivery := self._next()) is not None:
            try:
                self._attempt(delivery)
            except Exception as exc:  # noqa: BLE001 - the sender thread must survive anything
                logger.exception("callback for job {} crashed: {}", delivery.job_id, exc)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    host = _host_of(delivery.url)
                    self._busy_hosts[host] -= 1
                    if not self._busy_hosts[host]:
                        del self._busy_hosts[host]
                    self._cond.notify_all()

    def _attempt(self, d: CallbackDelivery) -> None:
        shown = public_url(d.url)
        if not self.policy.allows(d.url):
            logger.warning("job {}: callback to {} refused: its host is not in [convert] callback_hosts", d.job_id,
                           shown)
            self.store.set_callback_status(d.job_id, "refused: the URL's host is not in [convert] callback_hosts")
            return
        try:
            code = post_once(d.url, d.body, self.policy.timeout_seconds)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            logger.info("job {}: callback to {}: {}", d.job_id, shown, str(exc) or type(exc).__name__)
            code, problem, retryable = None, "no HTTP answer (connection failed or timed out)", True
        else:
            problem = f"HTTP {code}"
            retryable = code >= 500 or code in (408, 429)
            if 300 <= code < 400:
                problem, retryable = f"HTTP {code}: a redirect, which is not followed", False
        if code is not None and 200 <= code < 300:
            logger.info("job {}: callback delivered to {} (HTTP {})", d.job_id, shown, code)
            self.store.set_callback_status(d.job_id, f"delivered (HTTP {code})")
            return
        self._failed(d, shown, problem, retryable)

    def _failed(self, d: CallbackDelivery, shown: str, problem: str, retryable: bool) -> None:
        attempts = d.attempt + 1
        if retryable and d.attempt < self.policy.retries:
            wait = self.policy.backoff_seconds * 2 ** d.attempt
            logger.warning("job {}: callback to {} failed ({}); retry {} of {} in {:.0f} s", d.job_id, shown,
                           problem, attempts, self.policy.retries, wait)
            self.store.set_callback_status(d.job_id, f"{PENDING}: attempt {attempts} failed: {problem}")
            with self._cond:
                heapq.heappush(self._heap, CallbackDelivery(time.monotonic() + wait, d.job_id, d.url, d.body,
                                                            attempts))
                self._cond.notify()
            return
        logger.error("job {}: callback to {} failed after {} attempt(s): {}", d.job_id, shown, attempts, problem)
        self.store.set_callback_status(d.job_id, f"failed after {attempts} attempt(s): {problem}")


def post_once(url: str, body: bytes, deadline_seconds: float) -> int:
    """POST `body` and return the status code; no redirect is followed, and the whole exchange (connect, send,
    the answer's head) ends after `deadline_seconds`, however slowly the other end drips."""
    u = urlsplit(url)
    if u.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            u.hostname or "", u.port, timeout=deadline_seconds, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=deadline_seconds)
    end = time.monotonic() + deadline_seconds
    conn.connect()
    remaining = end - time.monotonic()
    if remaining <= 0:
        conn.close()
        raise TimeoutError("connecting took the whole deadline")
    cut = threading.Event()
    timer = threading.Timer(remaining, _cut, (conn, cut))
    timer.daemon = True
    timer.start()
    try:
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                        "User-Agent": f"rknn-dropbox/{__version__}"})
        status = conn.getresponse().status
    finally:
        timer.cancel()
        conn.close()
    if cut.is_set():  # what was read before the cut is no answer
        raise TimeoutError(f"no complete answer within {deadline_seconds:.0f} s")
    return status


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    """The deadline: shut the socket, which wakes the thread blocked on it."""
    cut.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

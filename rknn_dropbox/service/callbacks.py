"""Completion callbacks: POST a job's final task JSON to its callback_url from background threads, with retries."""

from __future__ import annotations

import heapq
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from rknn_dropbox import __version__
from rknn_dropbox.store import JobStore

PENDING = "pending"


@dataclass(frozen=True)
class CallbackPolicy:
    """How hard the daemon tries: one POST plus `retries`, waiting backoff, 2×backoff, 4×backoff between them."""
    timeout_seconds: float = 5.0
    retries: int = 3
    backoff_seconds: float = 1.0
    threads: int = 2
    max_pending: int = 1000


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
        for t in self._threads:
            if t.is_alive():  # never started when start-up failed before the sender
                t.join(self.policy.timeout_seconds + 1)

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
            heapq.heappush(self._heap, CallbackDelivery(time.monotonic(), job_id, url, body))
            self._cond.notify()
        self.store.set_callback_status(job_id, PENDING)

    def _next(self) -> CallbackDelivery | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._heap and self._heap[0].due <= now:
                    self._in_flight += 1
                    return heapq.heappop(self._heap)
                self._cond.wait(self._heap[0].due - now if self._heap else None)
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
                    self._cond.notify_all()

    def _attempt(self, d: CallbackDelivery) -> None:
        retryable = True
        try:
            request = urllib.request.Request(d.url, data=d.body, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": f"rknn-dropbox/{__version__}"})
            with urllib.request.urlopen(request, timeout=self.policy.timeout_seconds) as resp:  # noqa: S310
                code = resp.status
            logger.info("job {}: callback delivered to {} (HTTP {})", d.job_id, d.url, code)
            self.store.set_callback_status(d.job_id, f"delivered (HTTP {code})")
            return
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
            retryable = exc.code >= 500 or exc.code in (408, 429)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            problem = str(reason) or type(exc).__name__
        attempts = d.attempt + 1
        if retryable and d.attempt < self.policy.retries:
            wait = self.policy.backoff_seconds * 2 ** d.attempt
            logger.warning("job {}: callback to {} failed ({}); retry {} of {} in {:.0f} s", d.job_id, d.url,
                           problem, attempts, self.policy.retries, wait)
            self.store.set_callback_status(d.job_id, f"{PENDING}: attempt {attempts} failed: {problem}")
            with self._cond:
                heapq.heappush(self._heap, CallbackDelivery(time.monotonic() + wait, d.job_id, d.url, d.body,
                                                            attempts))
                self._cond.notify()
            return
        logger.error("job {}: callback to {} failed after {} attempt(s): {}", d.job_id, d.url, attempts, problem)
        self.store.set_callback_status(d.job_id, f"failed after {attempts} attempt(s): {problem}")

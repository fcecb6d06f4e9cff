"""A connection gate for the status server: one I/O thread reads request heads, a few threads answer them.

It holds far fewer sockets than the process may open (derived from RLIMIT_NOFILE), so idle clients never take the
descriptors the daemon's loop, claims and workers need; every answer has an overall deadline."""

from __future__ import annotations

import queue
import resource
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from loguru import logger

HEAD_END = (b"\r\n\r\n", b"\n\n")
BUSY_RESPONSE = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 26\r\n"
                 b"Retry-After: 1\r\nConnection: close\r\n\r\n{\"error\": \"server busy\"}\n\n")
TOO_LARGE_RESPONSE = (b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 36\r\nConnection: close\r\n\r\n{\"error\": \"request head too large\"}\n")


DESCRIPTOR_SHARE = 4  # the status server holds at most 1/4 of the process's soft RLIMIT_NOFILE in sockets


@dataclass(frozen=True)
class GateLimits:
    """How much the server lets clients hold; stalled clients cost a socket, never a thread."""
    handler_threads: int = 8          # requests answered at the same time
    max_pending: int = 192            # connections still sending their request head; the oldest is dropped
    ready_queue: int = 56             # complete requests waiting for a handler thread; beyond: 503
    head_timeout: float = 10.0        # seconds from accept until the whole request head must have arrived
    io_timeout: float = 10.0          # per send/recv once a handler thread owns the connection
    response_timeout: float = 600.0   # seconds a handler thread may spend on one answer, a download included
    max_head_bytes: int = 128 * 1024  # request line + headers
    request_queue_size: int = 128     # listen() backlog (socketserver's default is 5); held by the kernel

    @property
    def max_connections(self) -> int:
        return self.max_pending + self.ready_queue + self.handler_threads

    @classmethod
    def for_descriptors(cls, soft_limit: int | None = None) -> "GateLimits":
        """Limits whose sockets fit in 1/DESCRIPTOR_SHARE of the soft NOFILE limit (at most the defaults')."""
        if soft_limit is None:
            soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        base = cls()
        if soft_limit == resource.RLIM_INFINITY or soft_limit // DESCRIPTOR_SHARE >= base.max_connections:
            return base
        budget = max(8, soft_limit // DESCRIPTOR_SHARE - base.handler_threads)
        ready = max(2, budget // 4)
        return cls(max_pending=max(4, budget - ready), ready_queue=ready)


@dataclass
class PendingConnection:
    sock: socket.socket
    address: tuple
    deadline: float
    head: bytearray = field(default_factory=bytearray)


Handle = Callable[[socket.socket, tuple, bytes], None]


class ConnectionGate:
    """Accepts on `listener`; hands (socket, address, request head) to `handle` on a bounded thread pool."""

    def __init__(self, listener: socket.socket, handle: Handle, limits: GateLimits) -> None:
        self.listener = listener
        self.handle = handle
        self.limits = limits
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.pending: OrderedDict[socket.socket, PendingConnection] = OrderedDict()
        self.ready: queue.Queue[tuple[socket.socket, tuple, bytes] | None] = queue.Queue(limits.ready_queue)
        self.answering: dict[socket.socket, float] = {}  # sockets the handler threads hold -> their deadline
        self.answering_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self.io_thread = threading.Thread(target=self._io_loop, name="status-http-io", daemon=True)
        self.handlers = [threading.Thread(target=self._handler_loop, name=f"status-http-{i}", daemon=True)
                         for i in range(limits.handler_threads)]

    def start(self) -> None:
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.io_thread.start()
        for t in self.handlers:
            t.start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self.io_thread.join(5)
        for _ in self.handlers:
            try:
                self.ready.put(None, timeout=1)
            except queue.Full:
                break
        for t in self.handlers:
            t.join(2)
        for conn in list(self.pending.values()):
            self._close(conn)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # ---- the I/O thread -----------------------------------------------------------------------------------------
    def _io_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                events = self.selector.select(timeout=0.5)
            except OSError:  # pragma: no cover - a closed selector during stop
                return
            for key, _ in events:
                if key.data == "listener":
                    self._accept()
                elif key.data == "wake":
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass
                else:
                    self._read(key.data)
            now = time.monotonic()
            self._expire(now)
            self._cut_overdue(now)

    def _accept(self) -> None:
        for _ in range(64):  # bounded: let the loop also serve reads and expiries
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                logger.warning("status server cannot accept: {}", exc)
                time.sleep(0.05)
                return
            sock.setblocking(False)
            if len(self.pending) >= self.limits.max_pending:
                _, oldest = self.pending.popitem(last=False)
                self._close(oldest, registered=True)
            conn = PendingConnection(sock, address, time.monotonic() + self.limits.head_timeout)
            self.pending[sock] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: PendingConnection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before finishing its request
            self._drop(conn)
            return
        conn.head += data
        if any(end in conn.head for end in HEAD_END):
            self._unwatch(conn)
            conn.sock.settimeout(self.limits.io_timeout)
            try:
                self.ready.put_nowait((conn.sock, conn.address, bytes(conn.head)))
            except queue.Full:
                self._reply_and_close(conn.sock, BUSY_RESPONSE)
        elif len(conn.head) > self.limits.max_head_bytes:
            self._unwatch(conn)
            self._reply_and_close(conn.sock, TOO_LARGE_RESPONSE)

    def _expire(self, now: float) -> None:
        while self.pending:
            conn = next(iter(self.pending.values()))
            if conn.deadline > now:
                return  # pending is ordered by accept time, so by deadline
            self._drop(conn)

    def _cut_overdue(self, now: float) -> None:
        """Answers past their deadline (a client reading a download a byte at a time): shut their sockets, which
        ends the handler thread's send (sendfile and zip streams included)."""
        with self.answering_lock:
            overdue = [sock for sock, deadline in self.answering.items() if deadline <= now]
            for sock in overdue:
                del self.answering[sock]
        for sock in overdue:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST, the
                sock.shutdown(socket.SHUT_RDWR)  # bytes still queued are dropped rather than trickled out
            except OSError:
                pass

    def _unwatch(self, conn: PendingConnection) -> None:
        self.pending.pop(conn.sock, None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn: PendingConnection) -> None:
        self._unwatch(conn)
        conn.sock.close()

    def _close(self, conn: PendingConnection, registered: bool = True) -> None:
        if registered:
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()

    @staticmethod
    def _reply_and_close(sock: socket.socket, response: bytes) -> None:
        try:
            sock.setblocking(False)
            sock.send(response)
        except OSError:
            pass
        sock.close()

    # ---- handler threads ----------------------------------------------------------------------------------------
    def _handler_loop(self) -> None:
        while True:
            item = self.ready.get()
            if item is None:
                return
            sock, address, head = item
            with self.answering_lock:
                self.answering[sock] = time.monotonic() + self.limits.response_timeout
            try:
                self.handle(sock, address, head)
            except Exception as exc:  # noqa: BLE001 - one bad request must not kill a handler thread
                logger.debug("status request from {} failed: {}", address, exc)
            finally:
                with self.answering_lock:
                    self.answering.pop(sock, None)
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                sock.close()

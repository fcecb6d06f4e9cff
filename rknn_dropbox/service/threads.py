"""The daemon's helper threads (heartbeat, inbox watcher): one that died is restarted, with back-off, and shown."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from loguru import logger

from rknn_dropbox.service.guard import describe

MAX_RESTART_SECONDS = 60.0


@dataclass
class KeptThread:
    """A thread the loop keeps alive: how to tell it runs, how to start it again, how often it had to."""
    name: str
    alive: Callable[[], bool]
    restart: Callable[[], None]
    restarts: int = 0
    next_try: float = 0.0


class ThreadKeeper:
    """Checked every loop turn: a dead thread is logged and restarted (a failed restart is tried again later)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.kept: list[KeptThread] = []

    def keep(self, name: str, alive: Callable[[], bool], restart: Callable[[], None]) -> None:
        self.kept.append(KeptThread(name, alive, restart))

    def check(self) -> None:
        now = self.clock()
        for thread in self.kept:
            if now < thread.next_try or thread.alive():
                continue
            thread.restarts += 1
            thread.next_try = now + min(MAX_RESTART_SECONDS, 2.0 ** min(thread.restarts, 6))
            logger.error("the {} thread is not running; restarting it (restart {})", thread.name, thread.restarts)
            try:
                thread.restart()
            except Exception as exc:  # noqa: BLE001 - tried again at the next check
                logger.error("cannot restart the {} thread yet: {}", thread.name, describe(exc))

    def alive(self) -> dict[str, bool]:
        return {thread.name: bool(thread.alive()) for thread in self.kept}

    def restarts(self) -> dict[str, int]:
        return {thread.name: thread.restarts for thread in self.kept}

"""The loop's guard: a step that fails is logged once per change, counted for /metrics and retried with back-off."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from loguru import logger

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0


@dataclass
class StepHealth:
    """One loop step's record: failures since the start, whether it fails now, when it is tried again."""
    failures: int = 0
    failing: bool = False
    delay: float = 0.0
    next_try: float = 0.0
    last_error: str = ""


def describe(exc: BaseException) -> str:
    """An exception as a short sentence for the log (errno names included: ESTALE, EIO, EMFILE ...)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{type(exc).__name__}: {exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class StepGuard:
    """Runs the loop's steps so that none of them ends the daemon (a share that fails, a full state disk)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.steps: dict[str, StepHealth] = {}

    def due(self, name: str) -> bool:
        health = self.steps.get(name)
        return health is None or not health.failing or self.clock() >= health.next_try

    def run(self, name: str, action: Callable[[], object]) -> bool:
        """Run one step unless it is backing off; True when it ran and returned."""
        if not self.due(name):
            return False
        health = self.steps.setdefault(name, StepHealth())
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - the loop survives any one step's failure, by design
            self._failed(name, health, exc)
            return False
        if health.failing:
            logger.info("the loop's {} step works again (after {} failures)", name, health.failures)
            health.failing, health.delay = False, 0.0
        return True

    def _failed(self, name: str, health: StepHealth, exc: Exception) -> None:
        health.failures += 1
        health.delay = min(MAX_RETRY_SECONDS, max(FIRST_RETRY_SECONDS, health.delay * 2))
        health.next_try = self.clock() + health.delay
        text = describe(exc)
        if not health.failing or text != health.last_error:
            trace = None if isinstance(exc, OSError) else exc  # an errno says it all; anything else: its traceback
            logger.opt(exception=trace).error("the loop's {} step failed: {}; retrying in {:.0f} s, and every file "
                                            "stays where it is", name, text, health.delay)
        health.failing, health.last_error = True, text

    def failures(self) -> dict[str, int]:
        return {name: h.failures for name, h in self.steps.items() if h.failures}

    def failing(self) -> dict[str, str]:
        return {name: h.last_error for name, h in self.steps.items() if h.failing}

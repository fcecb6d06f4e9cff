"""Cross-filesystem deliveries: copied by one background thread, so the loop (and WatchdogSec) goes on meanwhile."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class Copy:
    """One delivery being copied: what it delivers, and the future of its final folder."""
    job_id: str
    success: bool
    payload: dict[str, Any]
    future: Future[Path]


class DeliveryCopier:
    """Runs `deliver()` for jobs whose destination is on another filesystem; the loop collects what finished."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self.running: dict[str, Copy] = {}

    def busy(self, job_id: str) -> bool:
        return job_id in self.running

    def start(self, job_id: str, success: bool, payload: dict[str, Any], action: Callable[[], Path]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delivery-copy")
        self.running[job_id] = Copy(job_id, success, payload, self._executor.submit(action))

    def finished(self) -> list[Copy]:
        done = [c for c in self.running.values() if c.future.done()]
        for copy in done:
            del self.running[copy.job_id]
        return done

    def stop(self) -> None:
        """Let the copies under way finish (a copy cut short is undone at the next start, the job kept whole)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)

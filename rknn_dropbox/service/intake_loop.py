"""The loop's intake verbs: when to scan the inbox, claiming what there is room for, rejecting, unclaimable bundles."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

from loguru import logger

from rknn_dropbox.config import Config
from rknn_dropbox.intake.claims import ClaimError, callback_url_for, claim_bundle, claim_problem, claim_room, new_job_id
from rknn_dropbox.intake.parked import ParkedEntries
from rknn_dropbox.intake.scanner import InboxScanner, Rejection
from rknn_dropbox.intake.workarea import JobDir
from rknn_dropbox.service.results import Finisher
from rknn_dropbox.store import JobRecord, JobStore


class InboxIntake:
    """Scans the inbox when it may have changed, claims complete bundles into the queue, rejects the rest."""

    def __init__(self, scanner: InboxScanner, parked: ParkedEntries, store: JobStore, finisher: Finisher,
                 queue: deque[str], config: Callable[[], Config], running: Callable[[], int]) -> None:
        self.scanner, self.parked, self.store, self.finisher, self.queue = scanner, parked, store, finisher, queue
        self.config, self.running = config, running
        self.scanner.skip = parked.holds
        self.last_scan = self.last_full_scan = 0.0
        self.waiting = 0  # entries in inbox not yet complete, plus complete bundles left there (claim_ahead)
        self.next_scan: float | None = None  # monotonic time when a waiting entry may have become stable
        self.unclaimed = 0  # complete bundles left in inbox because the workers were busy (claim_ahead)

    def wait_at_most(self, timeout: float) -> float:
        """How long the loop may sleep: no longer than until a waiting entry may have become stable."""
        if self.next_scan is None:
            return timeout
        return max(0.0, min(timeout, self.next_scan - time.monotonic()))

    def needs_scan(self, woke: bool) -> bool:
        """The watcher saw a change, an entry may have become stable, room for an unclaimed bundle, or rescan time."""
        now = time.monotonic()
        return woke or (self.next_scan is not None and now >= self.next_scan) or \
            (self.waiting > 0 and now - self.last_scan >= 0.5) or \
            (self.unclaimed > 0 and self.claim_room() > 0) or \
            now - self.last_full_scan >= self.config().rescan_seconds

    def scan_inbox(self) -> None:
        """Claim the complete bundles there is room for, leave the rest in inbox, reject what cannot convert."""
        now = time.monotonic()
        self.last_scan = self.last_full_scan = now
        result = self.scanner.scan()
        self.next_scan = now + result.next_check + 0.01 if result.next_check is not None else None
        self.unclaimed = 0
        for bundle in result.ready:
            if self.claim_room() <= 0:
                self.unclaimed += 1  # stays in inbox, complete; claimed when a worker frees up
                continue
            job = self.claim(bundle.name, bundle.entries, bundle.kind)
            if job is not None:
                self.queue.append(job.job_id)
        self.waiting = result.waiting + self.unclaimed
        for rejection in result.rejected:
            self.reject(rejection)

    def claim_room(self) -> int:
        cfg = self.config()
        return claim_room(cfg.workers, cfg.claim_ahead, len(self.queue), self.running())

    def claim(self, name: str, entries: list[str], kind: str,
              rejection: dict[str, Any] | None = None) -> JobDir | None:
        cfg = self.config()
        try:
            job = claim_bundle(cfg.inbox, cfg.claim_dir, name, entries, kind, rejection=rejection)
        except ClaimError as exc:
            self.scanner.forget(entries)
            self.report_unclaimable(name, entries, exc)
            return None
        self.scanner.forget(entries)
        if job is None:
            return None
        self.store.add(JobRecord(id=job.job_id, name=name, work_path=str(job.root),
                                 target=",".join(cfg.convert.target_platform),
                                 callback_url=callback_url_for(job.input, cfg.convert.callback_url)))
        logger.info("claimed {} as job {} ({})", name, job.job_id, ", ".join(entries))
        return job

    def report_unclaimable(self, name: str, entries: list[str], exc: ClaimError, job_id: str | None = None) -> None:
        """A bundle that cannot be claimed is its own failure: error.json in failed/, its entries left in inbox
        and not tried again until they change; the loop goes on."""
        cfg = self.config()
        self.parked.park(entries)
        error, hint = claim_problem(cfg.inbox, exc)
        record = self.store.get(job_id) if job_id else None
        self.finisher.report_unclaimable(record or JobRecord(id=job_id or new_job_id(), name=name,
                                                             target=",".join(cfg.convert.target_platform),
                                                             callback_url=cfg.convert.callback_url),
                                         entries, error, hint)

    def reject(self, rejection: Rejection) -> None:
        job = self.claim(rejection.name, rejection.entries, "rejected",
                         {"error": rejection.error, "hint": rejection.hint})
        if job is None:
            return
        logger.warning("rejecting {}: {}", ", ".join(rejection.entries), rejection.error)
        self.finisher.fail(job.job_id, rejection.error, rejection.hint, stage="analyze")

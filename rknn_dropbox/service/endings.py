"""How jobs leave the workers: what a worker reports (progress, done, died, timed out) becomes a store update, a
retry or a delivery; and the cancellations `rknn-dropbox cancel` flagged in the store."""

from __future__ import annotations

import shutil
from collections import deque
from pathlib import Path
from typing import Any, Callable

from loguru import logger

from rknn_dropbox.config import Config
from rknn_dropbox.intake.workarea import JobDir, note_in_manifest, unfinished_repair
from rknn_dropbox.joblog import finish_log
from rknn_dropbox.service.admission import MemoryGate
from rknn_dropbox.service.messages import EventKind, JobDone, JobProgress, JobTimeout, PoolEvent, WorkerDeath
from rknn_dropbox.service.pool import WorkerPool
from rknn_dropbox.service.results import Finisher
from rknn_dropbox.service.routing import ToolkitRouter
from rknn_dropbox.store import JobStore


class JobEndings:
    """The daemon's side of the pool's events and of cancellations (it owns none of the parts it is given)."""

    def __init__(self, store: JobStore, queue: deque[str], pool: WorkerPool, memory: MemoryGate,
                 router: ToolkitRouter, finisher: Finisher, config: Callable[[], Config]) -> None:
        self.store = store
        self.queue = queue
        self.pool = pool
        self.memory = memory
        self.router = router
        self.finisher = finisher
        self.config = config
        self.repair_crashes: dict[str, dict[str, str]] = {}  # job id -> the repair candidate its worker died in

    def record_peak(self, job_id: str, result: dict[str, Any] | None) -> None:
        """A job ended: its peak memory into the store and its result, and the admission's history."""
        peak = self.memory.job_peak(job_id, result)
        if peak:
            self.store.record_peak_rss(job_id, peak)

    def handle_event(self, event: PoolEvent) -> None:
        detail = event.detail
        if event.kind is EventKind.PROGRESS and isinstance(detail, JobProgress):
            self.store.raise_progress(event.job_id, min(99.0, detail.progress), detail.stage)
        elif event.kind is EventKind.DONE and isinstance(detail, JobDone):
            self.record_peak(event.job_id, detail.result if detail.ok else None)
            retry = self.router.retry(event.job_id, detail)  # another toolkit version: back to the queue's front
            if retry is None:
                self.repair_crashes.pop(event.job_id, None)
            if retry is not None:
                logger.warning("job {}: {}", event.job_id, retry.reason)
                self._clear_scratch(event.job_id)  # an archive unpacked there is unpacked afresh by the next try
                self.store.mark_queued(event.job_id)
                self.queue.appendleft(event.job_id)
            elif detail.ok and detail.result is not None:
                self.router.forget(event.job_id)
                self.finisher.complete(event.job_id, detail.result)
            else:
                self.finisher.fail(event.job_id, self.router.final_error(event.job_id, detail), detail.hint)
        elif event.kind is EventKind.DIED and isinstance(detail, WorkerDeath):
            self.record_peak(event.job_id, None)
            self._finish_log(event.job_id)
            if not self.retry_alone(event.job_id, detail) and \
                    not self.retry_repair_crash(event.job_id, detail.cause):
                self.repair_crashes.pop(event.job_id, None)
                self.finisher.fail(event.job_id, self.death_error(event.job_id, detail), detail.hint or
                                   "the toolkit ended the worker process; see conversion.log for its last words")
        elif event.kind is EventKind.TIMEOUT and isinstance(detail, JobTimeout):
            self.repair_crashes.pop(event.job_id, None)
            self._finish_log(event.job_id)
            # a repair candidate (or the analysis) that ran past the job's time: the build before it is delivered
            if self.retry_repair_crash(event.job_id, f"the job ran past timeout_seconds ({detail.seconds:.0f} s), "
                                                     "so the daemon stopped the worker"):
                return
            self.finisher.fail(event.job_id, f"timed out after {detail.seconds:.0f} s (timeout_seconds)",
                               "raise timeout_seconds for very large models")

    @staticmethod
    def failed_for_the_outage(event: PoolEvent) -> bool:
        """A job that ended without an outcome (failed, died, timed out) while the share was away."""
        if event.kind is EventKind.DONE and isinstance(event.detail, JobDone):
            return not event.detail.ok
        return event.kind in (EventKind.DIED, EventKind.TIMEOUT)

    def retry_after_outage(self, event: PoolEvent) -> None:
        """Its files were out of reach, not wrong: back to the queue's front, not counted as an attempt."""
        self.record_peak(event.job_id, None)
        self._clear_scratch(event.job_id)
        logger.warning("job {} ended while the share was away; converting it again", event.job_id)
        self.store.mark_queued(event.job_id)
        self.queue.appendleft(event.job_id)

    def retry_alone(self, job_id: str, death: WorkerDeath) -> bool:
        """A worker the kernel killed while other jobs ran (an OOM kill, most likely): the job goes back to the
        queue's front, counted as an attempt, and starts only when no other job runs. Deaths that repeat on the
        same input (a native crash, a kill while alone, the memory limit) fail at once. True if requeued."""
        record = self.store.get(job_id)
        if record is None or not death.kernel_kill_beside_others or record.attempts + 1 >= self.config().max_attempts:
            return False
        causes = self.store.record_interrupted_attempt(record, death.cause)
        job = self.job_dir(job_id)
        if job:
            note_in_manifest(job, attempt_causes=causes)
        logger.warning("job {}: {} while other jobs ran: retrying it alone", job_id, death.cause)
        self.store.mark_queued(job_id)
        self.queue.appendleft(job_id)
        self.memory.run_alone(job_id)
        return True

    def retry_repair_crash(self, job_id: str, cause: str) -> bool:
        """A worker that died (or was stopped for its time) building an accuracy-repair candidate (the job's attempt
        journal shows it started and unfinished): the job goes back to the queue's front, counted as an attempt, and
        its next worker delivers the best build made before it, naming the cause (`repair_crash` in the order).
        True if requeued."""
        job, record = self.job_dir(job_id), self.store.get(job_id)
        crashed = unfinished_repair(job) if job is not None else None
        if record is None or crashed is None or record.attempts + 1 >= self.config().max_attempts:
            return False
        platform, candidate = crashed
        self.store.record_interrupted_attempt(record, f"{cause} (accuracy-repair candidate {candidate})")
        self.repair_crashes[job_id] = {"platform": platform, "candidate": candidate, "cause": cause}
        logger.warning("job {}: {} building the accuracy-repair candidate {} for {}: delivering the best build "
                       "made before it", job_id, cause, candidate, platform)
        self.store.mark_queued(job_id)
        self.queue.appendleft(job_id)
        return True

    def death_error(self, job_id: str, death: WorkerDeath) -> str:
        """error.json's sentence for a job whose worker died: with the earlier attempts' causes when it had some."""
        record = self.store.get(job_id)
        if record is None or not record.attempt_causes:
            return death.cause
        return (f"{death.cause} (attempt {record.attempts + 1}; earlier: " + "; ".join(record.attempt_causes) + ")")

    def job_dir(self, job_id: str) -> JobDir | None:
        record = self.store.get(job_id)
        return JobDir(Path(record.work_path)) if record and record.work_path else None

    def _finish_log(self, job_id: str) -> None:
        job = self.job_dir(job_id)
        if job:
            try:
                finish_log(job)
            except OSError as exc:  # a full disk: the job still fails and delivers, with the raw log
                logger.warning("job {}: cannot finish conversion.log: {}", job_id, exc.strerror)

    def apply_cancellations(self) -> None:
        """Cancel what `rknn-dropbox cancel` flagged in the store: a queued job leaves the queue, a running one
        loses its worker; either way its inputs go to failed/ and the task reads "cancelled"."""
        for job_id in self.store.cancel_requested_ids():
            if job_id in self.finisher.pending or self.finisher.copier.busy(job_id):
                continue  # it finished already; only its delivery is pending
            if job_id in self.queue:
                self.queue.remove(job_id)
                self.finisher.cancel(job_id, "queued")
            elif self.pool.kill_job(job_id, "cancel"):
                self._discard_partial_work(job_id)
                self.finisher.cancel(job_id, "running")
            # else: not held by this daemon

    def _clear_scratch(self, job_id: str) -> None:
        job = self.job_dir(job_id)
        if job:
            shutil.rmtree(job.root / "tmp", ignore_errors=True)

    def _discard_partial_work(self, job_id: str) -> None:
        """A killed conversion's half-written outputs and scratch files; its log is kept."""
        job = self.job_dir(job_id)
        if job:
            finish_log(job)
            for part in job.output.glob(".*.part"):
                part.unlink(missing_ok=True)
            shutil.rmtree(job.root / "tmp", ignore_errors=True)

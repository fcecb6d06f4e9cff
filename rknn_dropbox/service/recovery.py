"""Start-up recovery: re-queue what a previous run or a dead host left claimed; record deliveries a crash cut short."""

from __future__ import annotations

import shutil
from collections import deque
from pathlib import Path

from loguru import logger

from rknn_dropbox.config import Config
from rknn_dropbox.intake.claims import finish_claim
from rknn_dropbox.intake.delivery import find_delivered, repair_interrupted_delivery
from rknn_dropbox.intake.hosts import take_over_stale_claims
from rknn_dropbox.intake.workarea import MANIFEST, JobDir
from rknn_dropbox.joblog import finish_log
from rknn_dropbox.service.results import ERROR_FILE, RESULT_FILE, Finisher
from rknn_dropbox.store import FINAL_STATUSES, PROCESSING, JobRecord, JobStore

LOST_ERROR = ("its files were no longer in the work area (another host takes over the claims of a host silent for "
              "stale_claim_seconds)")


class Recovery:
    """Turns job folders found in our claim folder back into queued jobs (or finished ones)."""

    def __init__(self, store: JobStore, finisher: Finisher, queue: deque[str]) -> None:
        self.store = store
        self.finisher = finisher
        self.queue = queue

    def recover(self, cfg: Config) -> None:
        """Re-queue whatever a previous run left claimed; finish deliveries a crash interrupted."""
        on_disk = {p.name: JobDir(p) for p in cfg.claim_dir.iterdir() if p.is_dir()} \
            if cfg.claim_dir.exists() else {}
        for job_id, job in sorted(on_disk.items()):
            try:
                self.resume_claim(cfg, job, "the previous run")
            except FileNotFoundError:
                logger.warning("job {} vanished from the work area while resuming it (taken over by another host?)",
                               job_id)
        for record in self.store.iter_unfinished():
            if record.id in on_disk:
                continue
            delivered = find_delivered([cfg.outbox, cfg.failed], record.id)
            if delivered:
                self.finisher.record_found_delivery(record.id, *delivered)
            else:
                self.store.mark_failed(record.id, LOST_ERROR, hint=None, stage=None)

    def take_over_stale_claims(self, cfg: Config) -> None:
        """Resume the claims of hosts that stopped beating (a shared inbox only)."""
        if cfg.work_dir is not None:
            return  # a private work area is not shared with other hosts
        for taken in take_over_stale_claims(cfg.claim_dir, cfg.stale_claim_seconds):
            try:
                self.resume_claim(cfg, JobDir(taken.root), f"host {taken.host}, which stopped beating")
            except FileNotFoundError:
                continue

    def resume_claim(self, cfg: Config, job: JobDir, left_by: str) -> None:
        """Queue a job folder found in our claim folder (left by a crash, or taken over from a dead host)."""
        if not (job.root / MANIFEST).exists():
            shutil.rmtree(job.root, ignore_errors=True)  # died before the claim began
            return
        manifest = job.manifest()
        finish_claim(cfg.inbox, job)
        record = self._record_for(cfg, job, manifest["name"])
        if record.status in FINAL_STATUSES:
            shutil.rmtree(job.root, ignore_errors=True)
            return
        if self._finish_interrupted_delivery(cfg, job, record.name):
            return
        if manifest.get("rejection"):  # claimed only to be rejected: reject again rather than convert
            rejected = manifest["rejection"]
            self.finisher.fail(job.job_id, rejected["error"], rejected.get("hint"), stage="analyze")
            return
        shutil.rmtree(job.root / "tmp", ignore_errors=True)
        if record.status == PROCESSING and job.output.exists():
            finish_log(job)
        self.store.mark_queued(job.job_id, attempts=record.attempts + 1)
        self.queue.append(job.job_id)
        logger.info("resuming job {} ({}) left by {}", job.job_id, record.name, left_by)

    def _record_for(self, cfg: Config, job: JobDir, name: str) -> JobRecord:
        """The job's store row, created when the store lost it (or never had it), pointing at the folder."""
        record = self.store.get(job.job_id)
        if record is None:
            record = JobRecord(id=job.job_id, name=name, work_path=str(job.root),
                               target=",".join(cfg.convert.target_platform))
            self.store.add(record)
        elif record.work_path != str(job.root):
            self.store.set_work_path(job.job_id, str(job.root))
        return record

    def _finish_interrupted_delivery(self, cfg: Config, job: JobDir, name: str) -> bool:
        """True when the job had in fact been delivered (now recorded and its folder removed)."""
        dests = [cfg.outbox, cfg.failed]
        finished = repair_interrupted_delivery(job, dests, name)
        delivered = find_delivered(dests, job.job_id)
        if not (finished or delivered):
            return False
        folder, fname = delivered or (finished, RESULT_FILE if finished.parent == cfg.outbox else ERROR_FILE)
        self.finisher.record_found_delivery(job.job_id, Path(folder), fname)
        shutil.rmtree(job.root, ignore_errors=True)
        return True

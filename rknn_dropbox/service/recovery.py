"""Start-up recovery: re-queue what a previous run or a dead host left claimed; record deliveries a crash cut short."""

from __future__ import annotations

import os
import shutil
from collections import deque
from pathlib import Path
from typing import Any, Callable

from loguru import logger

from rknn_dropbox.config import Config
from rknn_dropbox.intake.claims import ClaimError, callback_url_for, finish_claim, new_job_id
from rknn_dropbox.intake.delivery import find_delivered, repair_interrupted_delivery
from rknn_dropbox.intake.hosts import take_over_stale_claims
from rknn_dropbox.intake.scanner import split_name
from rknn_dropbox.intake.workarea import (
    INPUT_DIR, MANIFEST, JobDir, ManifestError, is_job_id, linked_parts, note_in_manifest,
)
from rknn_dropbox.joblog import finish_log
from rknn_dropbox.service.guard import describe
from rknn_dropbox.service.results import ERROR_FILE, RESULT_FILE, Finisher
from rknn_dropbox.service.routing import ToolkitRouter
from rknn_dropbox.store import FINAL_STATUSES, PROCESSING, JobRecord, JobStore

CLAIM_INTERRUPTED = "claim interrupted"
INTERRUPTED = "the daemon stopped while converting it (a crash, an OOM kill of the service, a power loss)"
PARKED_DIR = ".parked"  # in a host's claim folder: job folders set aside, never followed (dot: never taken over)
LOST_ERROR = ("its files were no longer in the work area (another host takes over the claims of a host silent for "
              "stale_claim_seconds)")


class Recovery:
    """Turns job folders found in our claim folder back into queued jobs (or finished ones)."""

    def __init__(self, store: JobStore, finisher: Finisher, queue: deque[str],
                 unclaimable: Callable[..., None], router: ToolkitRouter | None = None) -> None:
        self.store = store
        self.router = router  # told the toolkit plan a taken-over job carries
        self.finisher = finisher
        self.queue = queue
        self.unclaimable = unclaimable  # (name, entries, ClaimError, job_id): report a claim that cannot finish

    def recover(self, cfg: Config) -> None:
        """Re-queue whatever a previous run left claimed; finish deliveries a crash interrupted."""
        on_disk = {p.name: JobDir(p) for p in cfg.claim_dir.iterdir() if p.is_dir() and not p.name.startswith(".")} \
            if cfg.claim_dir.exists() else {}
        for job_id, job in sorted(on_disk.items()):
            try:
                self.resume_claim(cfg, job, "the previous run")
            except FileNotFoundError:
                logger.warning("job {} vanished from the work area while resuming it (taken over by another host?)",
                               job_id)
            except Exception as exc:  # noqa: BLE001 - one job's trouble never stops the start (nor loops it)
                logger.error("job {}: cannot resume it ({}); it stays in the work area {}", job_id, describe(exc),
                             job.root)
        for record in self.store.iter_unfinished():
            if record.id in on_disk:
                continue
            delivered = find_delivered([cfg.outbox, cfg.failed], record.id)
            if delivered:
                self.finisher.record_found_delivery(record.id, *delivered)
            else:
                self.store.mark_failed(record.id, LOST_ERROR, hint=None, stage=None)

    def adopt_unrecorded(self, cfg: Config) -> None:
        """Job folders in our claim folder without a store row (claimed, then writing the row failed: a full state
        disk, a locked database) are resumed, as after a restart: nothing claimed is left behind."""
        try:
            names = sorted(os.listdir(cfg.claim_dir))
        except OSError:
            return
        for name in names:
            if name.startswith(".") or self.store.get(name) is not None or not (cfg.claim_dir / name).is_dir():
                continue
            logger.warning("job {} is in the work area but not in the job store; resuming it", name)
            self.resume_claim(cfg, JobDir(cfg.claim_dir / name), "a claim whose job row could not be written")

    def take_over_stale_claims(self, cfg: Config) -> None:
        """Resume the claims of hosts that stopped beating (a shared inbox only)."""
        if cfg.work_dir is not None:
            return  # a private work area is not shared with other hosts
        for taken in take_over_stale_claims(cfg.claim_dir, cfg.stale_claim_seconds):
            try:
                self.resume_claim(cfg, JobDir(taken.root), f"host {taken.host}, which stopped beating")
            except Exception as exc:  # noqa: BLE001 - every host on the share would crash-loop on it
                logger.warning("job {} taken over from host {}: cannot resume it yet ({})", taken.job_id, taken.host,
                               describe(exc))

    def resume_claim(self, cfg: Config, job: JobDir, left_by: str) -> None:
        """Queue a job folder found in our claim folder (left by a crash, or taken over from a dead host)."""
        links = linked_parts(job)
        if links:
            self.park(cfg, job, f"its {' and '.join(links)} is a symbolic link")
            return
        if not os.path.lexists(job.root / MANIFEST):
            self._without_manifest(cfg, job)
            return
        try:
            manifest = job.manifest()
        except ManifestError as exc:
            self.park(cfg, job, str(exc))
            return
        try:
            finish_claim(cfg.inbox, job)
        except ClaimError as exc:
            self.unclaimable(manifest["name"], list(manifest["entries"]), exc, job.job_id)
            return
        record = self._record_for(cfg, job, manifest["name"], manifest)
        if record.status in FINAL_STATUSES and not self._came_back(cfg, job, record):
            return
        if self._finish_interrupted_delivery(cfg, job, record.name):
            return
        if self.finisher.resume_pending(job.job_id, job.root):
            return
        if manifest.get("rejection"):  # claimed only to be rejected: reject again rather than convert
            rejected = manifest["rejection"]
            self.finisher.fail(job.job_id, rejected["error"], rejected.get("hint"), stage="analyze")
            return
        shutil.rmtree(job.root / "tmp", ignore_errors=True)
        if record.status == PROCESSING:
            if job.output.exists():
                finish_log(job)
            if self._count_interrupted_attempt(cfg, record, left_by):
                return
        self.store.mark_queued(job.job_id)
        self.queue.append(job.job_id)
        logger.info("resuming job {} ({}) left by {}", job.job_id, record.name, left_by)

    def _came_back(self, cfg: Config, job: JobDir, record: JobRecord) -> bool:
        """A job folder whose row is final showed up again (a takeover taken back, a folder missing for a moment).
        Its folder is removed only when its inputs were delivered (or it holds none); else the job is reopened,
        to be converted again (True), and nothing the user dropped is deleted."""
        delivered = find_delivered([cfg.outbox, cfg.failed], job.job_id)
        holds_inputs = job.input.is_dir() and any(os.scandir(job.input))
        if not holds_inputs or (delivered is not None and (delivered[0] / INPUT_DIR).is_dir()):
            shutil.rmtree(job.root, ignore_errors=True)
            return False
        logger.warning("job {} ({}) is back in the work area with its inputs, which were never delivered (it was "
                       "recorded {}: {}); converting it again", job.job_id, record.name, record.status, record.error)
        self.store.reopen(job.job_id)
        return True

    def park(self, cfg: Config, job: JobDir, why: str) -> None:
        """A job folder the daemon will not follow (a hostile or broken job.json, a link): set aside in the work
        area's .parked/, reported in failed/ with an error, never converted, moved by entries or deleted."""
        parked_dir = cfg.claim_dir / PARKED_DIR
        parked_dir.mkdir(exist_ok=True)
        dest = parked_dir / job.root.name
        n = 2
        while os.path.lexists(dest):
            dest, n = parked_dir / f"{job.root.name}-{n}", n + 1
        os.rename(job.root, dest)
        record = self.store.get(job.job_id) if is_job_id(job.job_id) else None
        error = f"job folder {job.root.name} in the work area was not followed: {why}; it was set aside in {dest}"
        hint = (f"nothing in the work area should be written by hand; if the job is yours, drop its files again "
                f"(they are in {dest / INPUT_DIR}), then remove {dest}")
        logger.error("job folder {}: {}", job.root.name, error)
        self.finisher.report_unclaimable(record or JobRecord(id=new_job_id(), name=job.root.name,
                                                             target=",".join(cfg.convert.target_platform)),
                                         [], error, hint)

    def _count_interrupted_attempt(self, cfg: Config, record: JobRecord, left_by: str) -> bool:
        """A conversion the daemon died under counts as an attempt; at max_attempts the job fails, listing every
        attempt's cause (a model that takes the whole service down is not retried without end). True if it failed."""
        causes = self.store.record_interrupted_attempt(record, f"{INTERRUPTED} (left by {left_by})")
        note_in_manifest(JobDir(Path(record.work_path)), attempt_causes=causes)
        attempts = len(causes)
        if attempts < cfg.max_attempts:
            return False
        self.finisher.fail(record.id, f"gave up after {attempts} attempts (max_attempts): " + "; ".join(causes),
                           "converting this model seems to take the whole service down (memory?): try it alone with "
                           "`rknn-dropbox convert` and watch its memory, or raise max_attempts")
        return True

    def _without_manifest(self, cfg: Config, job: JobDir) -> None:
        """A job folder whose job.json is gone (a crash on NFS/SMB kept the renames, not the manifest): its inputs
        go back to inbox, to be claimed afresh; one whose name is taken there meanwhile goes to failed/. Nothing
        the user dropped is deleted."""
        entries = sorted(os.listdir(job.input)) if job.input.is_dir() else []
        for entry in entries:
            if not os.path.lexists(cfg.inbox / entry):
                os.rename(job.input / entry, cfg.inbox / entry)
        left = sorted(os.listdir(job.input)) if job.input.is_dir() else []
        record = self.store.get(job.job_id)
        if not left:
            if record is not None and record.status not in FINAL_STATUSES:
                self.store.mark_failed(job.job_id, CLAIM_INTERRUPTED + ": its files went back to inbox and are "
                                       "converted as a new job", stage="claim")
            shutil.rmtree(job.root, ignore_errors=True)
            if entries:
                logger.warning("job {}: job.json was lost; {} put back into inbox", job.job_id, ", ".join(entries))
            return
        self._record_for(cfg, job, split_name(left[0])[0] if len(left) == 1 else job.job_id)
        self.finisher.fail(job.job_id, CLAIM_INTERRUPTED + f": job.json was lost and {', '.join(left)} is taken "
                           "in inbox again", "drop it again under another name if it still needs converting",
                           stage="claim")

    def _record_for(self, cfg: Config, job: JobDir, name: str, manifest: dict[str, Any] | None = None) -> JobRecord:
        """The job's store row, created when the store lost it (or never had it: a takeover), pointing at the
        folder; a row made from a manifest carries what the claim knew (callback_url, attempts, toolkit plan)."""
        record = self.store.get(job.job_id)
        if record is None:
            causes = list((manifest or {}).get("attempt_causes", []))
            record = JobRecord(id=job.job_id, name=name, work_path=str(job.root),
                               target=",".join(cfg.convert.target_platform),
                               callback_url=callback_url_for(job.input, cfg.convert.callback_url),
                               attempts=len(causes), attempt_causes=causes,
                               toolkit_plan=(manifest or {}).get("toolkit_plan") or None)
            self.store.add(record)
            if record.toolkit_plan and self.router is not None:
                self.router.learn(job.job_id, record.toolkit_plan)
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

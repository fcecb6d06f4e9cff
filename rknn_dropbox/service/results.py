"""Finishing a job: the result.json/error.json schema (built only here), delivery and its retries, final state."""

from __future__ import annotations

import errno
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loguru import logger

from rknn_dropbox import __version__
from rknn_dropbox.intake.delivery import DeliveryError, deliver, deliver_report, find_delivered
from rknn_dropbox.intake.workarea import JobDir, folder_gone, same_filesystem, write_json_atomic
from rknn_dropbox.service.callbacks import PENDING, CallbackSender
from rknn_dropbox.service.copier import DeliveryCopier
from rknn_dropbox.status.metrics import new_job_costs, observe_job_costs
from rknn_dropbox.store import CANCELLED, COMPLETED, FAILED, FINAL_STATUSES, JobRecord, JobStore

DELIVERY_RETRY_SECONDS = 30.0
RESULT_FILE, ERROR_FILE = "result.json", "error.json"
TAKEN_OVER = "taken over by another host (this host looked dead to it)"
PENDING_DELIVERY = "delivery.json"  # in the job folder: the outcome of a finished job whose delivery waits


# ---- the schema ---------------------------------------------------------------------------------------------------
def result_payload(record: JobRecord, result: dict[str, Any], finished: float) -> dict[str, Any]:
    """result.json of a completed job, from the worker's ConversionResult (as a dict)."""
    ok_targets = [t for t in result["targets"] if t.get("ok")]
    return {
        "task_id": record.id, "name": record.name, "status": COMPLETED, "format": result["format"],
        "inputs": result["inputs"], "target_platform": [t["platform"] for t in result["targets"]],
        "targets": result["targets"], "quantization": result["quantization"],
        "quantized": result["quantization"].get("quantized"), "toolkit_version": result["toolkit_version"],
        "rknn_dropbox_version": __version__, "started_at": record.started_at, "finished_at": finished,
        "duration": round(finished - (record.started_at or finished), 3),
        "outputs": [{"name": t["file"], "size": t["size"], "sha256": t["sha256"]} for t in ok_targets],
        "warnings": result["warnings"], "config": result["options"],
        **result.get("extra", {}),  # cached / cache_of / verification (converter)
    }


def rknn_files(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each delivered .rknn as the converter read it back from the file (format, compiler, target, tensors)."""
    return [{"file": t["file"], "platform": t["platform"], **t["rknn"]} for t in result["targets"]
            if t.get("ok") and isinstance(t.get("rknn"), dict)]


def failure_payload(record: JobRecord, error: str, hint: str | None, stage: str | None) -> dict[str, Any]:
    """error.json of a failed (or rejected) job."""
    payload = {"task_id": record.id, "name": record.name, "status": FAILED, "error": error, "hint": hint,
               "stage": stage or record.stage, "format": record.format or None, "failed_at": time.time(),
               "log": "conversion.log", "rknn_dropbox_version": __version__}
    if record.attempt_causes:
        payload["attempt_causes"] = list(record.attempt_causes)  # earlier attempts the daemon died under
    return payload


def unclaimable_payload(record: JobRecord, entries: list[str], error: str, hint: str) -> dict[str, Any]:
    """error.json of a bundle that could not be claimed: its entries are still in inbox."""
    return {"task_id": record.id, "name": record.name, "status": FAILED, "error": error, "hint": hint,
            "stage": "claim", "format": None, "failed_at": time.time(), "left_in_inbox": entries,
            "rknn_dropbox_version": __version__}


def cancelled_payload(record: JobRecord, was: str) -> dict[str, Any]:
    """error.json of a job cancelled with `rknn-dropbox cancel` while `was` ("queued" or "running")."""
    return {"task_id": record.id, "name": record.name, "status": CANCELLED, "error": "cancelled",
            "hint": f"cancelled with `rknn-dropbox cancel` while {was}", "stage": record.stage,
            "format": record.format or None, "cancelled_at": time.time(), "log": "conversion.log",
            "rknn_dropbox_version": __version__}


@dataclass(frozen=True)
class DeliveredOutcome:
    """What a delivered folder's result.json / error.json says (read back by recovery)."""
    status: str
    outputs: list[str]
    error: str | None
    hint: str | None


def read_delivered(folder: Path, fname: str) -> DeliveredOutcome:
    """Read a delivered job's outcome back; an unreadable file still says completed (result) or failed (error)."""
    try:
        payload = json.loads((folder / fname).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        payload = {}
    status = payload.get("status") if payload.get("status") in FINAL_STATUSES else \
        (COMPLETED if fname == RESULT_FILE else FAILED)
    return DeliveredOutcome(status, [o["name"] for o in payload.get("outputs", []) if isinstance(o, dict)],
                            payload.get("error"), payload.get("hint"))


# ---- delivering and recording -----------------------------------------------------------------------------------
def _other_filesystem(job_root: Path, dest: Path) -> bool:
    try:
        return not same_filesystem(job_root, dest)
    except OSError:
        return False  # delivered inline: deliver() says what is wrong
@dataclass
class PendingDelivery:
    job_id: str
    success: bool
    payload: dict[str, Any]
    next_try: float


class Finisher:
    """Ends jobs: writes their result/error.json, delivers them, records the final status, sends the callback."""

    def __init__(self, store: JobStore, outbox: Path, failed: Path, callbacks: CallbackSender) -> None:
        self.store = store
        self.outbox, self.failed = outbox, failed
        self.callbacks = callbacks
        self.callbacks_running = False  # before start-up ends, callbacks are marked pending and sent at its end
        self.pending: dict[str, PendingDelivery] = {}
        self.copier = DeliveryCopier()
        self.share_available: Callable[[], bool] = lambda: True  # the daemon's ShareWatch
        self.job_costs = new_job_costs()  # verification/repair seconds and peak RSS of completed jobs (/metrics)

    def complete(self, job_id: str, result: dict[str, Any]) -> None:
        record = self._record(job_id)
        payload = result_payload(record, result, time.time())
        self.store.record_conversion(job_id, result["format"], [o["name"] for o in payload["outputs"]],
                                     result["warnings"], ",".join(payload["target_platform"]),
                                     result.get("toolkit_version"), rknn_files(result))
        observe_job_costs(self.job_costs, payload)
        self.deliver(job_id, True, payload)

    def fail(self, job_id: str, error: str, hint: str | None, stage: str | None = None) -> None:
        self.deliver(job_id, False, failure_payload(self._record(job_id), error, hint, stage))

    def cancel(self, job_id: str, was: str) -> None:
        record = self._record(job_id)
        logger.warning("job {} ({}) cancelled while {}", job_id, record.name, was)
        self.deliver(job_id, False, cancelled_payload(record, was))

    def deliver(self, job_id: str, success: bool, payload: dict[str, Any]) -> None:
        """Move the job whole into outbox/ or failed/ and record it; when that fails, retry later."""
        record = self._record(job_id)
        if folder_gone(Path(record.work_path)):
            if not self.share_available():  # momentarily missing with the share: tried again when it is back
                raise FileNotFoundError(errno.ENOENT, "the share is unavailable", record.work_path)
            found = find_delivered([self.outbox, self.failed], job_id)
            if found:  # delivered already; recording it was what failed (a full state disk, say)
                self.pending.pop(job_id, None)
                self.record_found_delivery(job_id, *found)
            else:
                self.drop_taken(job_id)
            return
        if self.copier.busy(job_id):
            return  # its copy to another filesystem is under way
        job, dest = JobDir(Path(record.work_path)), self.outbox if success else self.failed
        files = {RESULT_FILE if success else ERROR_FILE: payload}
        if _other_filesystem(job.root, dest):  # a copy, maybe long: off the loop's thread
            logger.info("job {}: copying it to {} (another filesystem) in the background", job_id, dest)
            self.copier.start(job_id, success, payload, lambda: deliver(job, dest, record.name, files))
            return
        try:
            folder = deliver(job, dest, record.name, files)
        except DeliveryError as exc:
            self._wait_to_retry(record, success, payload, exc)
            return
        self._record_delivery(record, success, payload, folder)

    def collect_copies(self) -> None:
        """Record the background copies that finished (or wait to retry those that failed)."""
        for copy in self.copier.finished():
            record = self._record(copy.job_id)
            try:
                folder = copy.future.result()
            except OSError as exc:
                self._wait_to_retry(record, copy.success, copy.payload,
                                    exc if isinstance(exc, DeliveryError) else DeliveryError(exc.errno, str(exc)))
                continue
            self._record_delivery(record, copy.success, copy.payload, folder)

    def _wait_to_retry(self, record: JobRecord, success: bool, payload: dict[str, Any], exc: DeliveryError) -> None:
        logger.error("job {}: {}; will retry in {:.0f} s", record.id, exc.strerror, DELIVERY_RETRY_SECONDS)
        self.pending[record.id] = PendingDelivery(record.id, success, payload,
                                                  time.monotonic() + DELIVERY_RETRY_SECONDS)
        self._persist_pending(record, success, payload)
        self.store.mark_delivery_pending(record.id, exc.strerror)

    def _record_delivery(self, record: JobRecord, success: bool, payload: dict[str, Any], folder: Path) -> None:
        job_id = record.id
        self.pending.pop(job_id, None)
        if success:
            self.store.mark_completed(job_id, str(folder))
            logger.success("job {} ({}) completed: {}", job_id, record.name, folder)
        elif payload.get("status") == CANCELLED:
            self.store.mark_cancelled(job_id, payload.get("error"), payload.get("hint"), str(folder))
        else:
            self.store.mark_failed(job_id, payload.get("error"), payload.get("hint"), str(folder))
        if not success:
            logger.warning("job {} ({}) failed: {} -> {}", job_id, record.name, payload.get("error"), folder)
        self.notify_callback(job_id)

    def drop_taken(self, job_id: str) -> None:
        """The job's folder left our work area (another host took the claim over): deliver nothing, record why."""
        self.pending.pop(job_id, None)
        logger.warning("job {}: its claim was taken over by another host; dropping this host's work on it", job_id)
        self.store.mark_failed(job_id, TAKEN_OVER, "it is converted and delivered by the host that took it over; if "
                               "this host was only busy, raise stale_claim_seconds", stage="taken over")

    def _persist_pending(self, record: JobRecord, success: bool, payload: dict[str, Any]) -> None:
        """Keep the outcome with the job while its delivery waits, so a restart delivers it instead of converting
        the job again."""
        if (Path(record.work_path) / PENDING_DELIVERY).exists():
            return
        try:
            write_json_atomic(Path(record.work_path) / PENDING_DELIVERY, {"success": success, "payload": payload})
        except OSError as exc:
            logger.warning("job {}: cannot keep its outcome on disk ({}); a restart would convert it again",
                           record.id, exc.strerror)

    def resume_pending(self, job_id: str, work_path: Path) -> bool:
        """Deliver an outcome a previous run kept while its delivery waited; False when there is none."""
        try:
            kept = json.loads((work_path / PENDING_DELIVERY).read_text(encoding="utf-8"))
            success, payload = bool(kept["success"]), dict(kept["payload"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if payload.get("task_id") != job_id:  # written by hand into the work area: not this job's outcome
            logger.warning("job {}: ignoring a delivery.json that is not this job's", job_id)
            return False
        logger.info("job {}: delivering the outcome kept from the previous run", job_id)
        self.deliver(job_id, success, payload)
        return True

    def report_unclaimable(self, record: JobRecord, entries: list[str], error: str, hint: str) -> None:
        """A bundle that could not be claimed: failed/<name>/error.json alone (its entries stay in inbox)."""
        if self.store.get(record.id) is None:
            self.store.add(record)
        try:
            folder = deliver_report(self.failed, record.name, record.id,
                                    {ERROR_FILE: unclaimable_payload(record, entries, error, hint)})
        except OSError as exc:
            logger.error("cannot write the error report of {} to {}: {}", record.name, self.failed, exc.strerror)
            self.store.mark_failed(record.id, error, hint, stage="claim")
            return
        self.store.mark_failed(record.id, error, hint, str(folder), stage="claim")
        logger.error("could not claim {} ({}): {}; left in inbox -> {}", record.name, ", ".join(entries), error,
                     folder)
        self.notify_callback(record.id)

    def record_found_delivery(self, job_id: str, folder: Path, fname: str) -> None:
        """A crash came between delivering the job's folder and recording it: record it now, from that folder."""
        found = read_delivered(folder, fname)
        if found.status == COMPLETED:
            self.store.mark_completed(job_id, str(folder), outputs=found.outputs, stage=None)
        elif found.status == CANCELLED:
            self.store.mark_cancelled(job_id, found.error, found.hint, str(folder), stage=None, progress=0.0,
                                     outputs=found.outputs)
        else:
            self.store.mark_failed(job_id, found.error, found.hint, str(folder), stage=None, progress=0.0,
                                  outputs=found.outputs)
        self.notify_callback(job_id)

    def retry_due(self, now: float) -> None:
        self.collect_copies()
        for pending in list(self.pending.values()):
            if pending.next_try <= now:
                self.deliver(pending.job_id, pending.success, pending.payload)

    def retry_all_soon(self) -> None:
        """A reload (after freeing space, say) retries deliveries now."""
        for pending in self.pending.values():
            pending.next_try = 0.0

    def notify_callback(self, job_id: str) -> None:
        """Queue the POST of a finished job's task JSON to its callback_url (background threads; never blocks).
        Before the sender runs (start-up recovery), mark it pending: resend_pending sends it when start-up ends."""
        record = self.store.get(job_id)
        if record is None or not record.callback_url or record.status not in FINAL_STATUSES:
            return
        if self.callbacks_running:
            self.callbacks.submit(job_id, record.callback_url, record.to_task())
        else:
            self.store.set_callback_status(job_id, PENDING)

    def resend_pending(self) -> None:
        """Start the sender and send what a previous run (or start-up recovery) left pending."""
        self.callbacks.start()
        self.callbacks_running = True
        for record in self.store.pending_callbacks():
            if record.callback_url:
                self.callbacks.submit(record.id, record.callback_url, record.to_task())

    def _record(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        assert record is not None, f"job {job_id} is not in the store"
        return record

"""The daemon: one loop that moves bundles watcher → analyzer → store → pool and delivers to outbox/ or failed/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loguru import logger

from rknn_dropbox import __version__
from rknn_dropbox.intake.scanner import InboxScanner, Rejection
from rknn_dropbox.service.callbacks import PENDING, CallbackSender, callback_url_for
from rknn_dropbox.intake.hosts import take_over_stale_claims, touch_heartbeat
from rknn_dropbox.config import Config, ConfigError, load_config
from rknn_dropbox.service.reload import apply_live, changed_keys
from rknn_dropbox.joblog import finish_log
from rknn_dropbox.logsetup import setup_logging
from rknn_dropbox.service.pool import PoolEvent, WorkerPool
from rknn_dropbox.store import CANCELLED, COMPLETED, FAILED, FINAL_STATUSES, PROCESSING, QUEUED, JobRecord, JobStore
from rknn_dropbox.service.systemd import notify, watchdog_interval
from rknn_dropbox.intake.watcher import InboxWatcher
from rknn_dropbox.intake.workarea import (
    DeliveryError, JobDir, claim_bundle, deliver, find_delivered, finish_claim, mount_point,
    repair_interrupted_delivery, write_json_atomic,
)

DELIVERY_RETRY_SECONDS = 30.0
STATUS_SECONDS = 10.0  # how often STATUS= goes to systemd


class StartupError(RuntimeError):
    """The daemon cannot start (folders, filesystems); the message says what to fix."""


def prepare_folders(cfg: Config) -> None:
    """Create the folders and refuse a work area that is not on inbox's filesystem (claims are renames)."""
    for p in (cfg.inbox, cfg.outbox, cfg.failed, cfg.state_dir, cfg.claim_dir):
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create {p}: {exc.strerror}") from None
        if not os.access(p, os.W_OK | os.X_OK):
            raise StartupError(f"{p} is not writable by this user")
    if os.stat(cfg.inbox).st_dev != os.stat(cfg.claim_dir).st_dev:
        raise StartupError(
            f"the work area {cfg.claim_dir} (mount {mount_point(cfg.claim_dir)}) is not on inbox's filesystem "
            f"{cfg.inbox} (mount {mount_point(cfg.inbox)}): claims are atomic renames, which only work within one "
            "filesystem; put work_dir on the same mount as inbox")


@dataclass
class PendingDelivery:
    job_id: str
    success: bool
    payload: dict[str, Any]
    next_try: float


class Daemon:
    """Owns the loop; the status server (if any) only reads the store."""

    def __init__(self, cfg: Config, reloader: Callable[[], Config] | None = None) -> None:
        self.cfg = cfg
        self.store = JobStore(cfg.store_path)
        self.scanner = InboxScanner(cfg.inbox, cfg.stable_seconds, cfg.bundle_timeout_seconds, cfg.max_file_size)
        self.pool = WorkerPool(cfg.workers, cfg.timeout_seconds, cfg.max_jobs_per_worker,
                               memory_limit_mb=cfg.worker_memory_limit_mb)
        self.reloader = reloader or (lambda: load_config(self.cfg.source))
        self._watchdog_every = watchdog_interval()
        self._last_watchdog = self._last_status = self._last_heartbeat = 0.0
        self.watcher: InboxWatcher | None = None
        self.queue: deque[str] = deque()
        self.deliveries: dict[str, PendingDelivery] = {}
        self.stopping = False
        self.reload_requested = False
        self._last_scan = 0.0
        self._last_full_scan = 0.0
        self._waiting = 0
        self._next_scan: float | None = None  # monotonic time when a waiting entry may have become stable
        self._unclaimed = 0  # complete bundles left in inbox because the workers were busy (claim_ahead)
        self.server: Any = None
        self.callbacks = CallbackSender(self.store)
        self._callbacks_running = False
        self.published_snapshot: dict[str, Any] = {}  # what the status server reads; replaced whole each step

    # ---- start-up -------------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Re-queue whatever a previous run left claimed; finish deliveries a crash interrupted."""
        dests = [self.cfg.outbox, self.cfg.failed]
        on_disk = {p.name: JobDir(p) for p in self.cfg.claim_dir.iterdir() if p.is_dir()} \
            if self.cfg.claim_dir.exists() else {}
        for job_id, job in sorted(on_disk.items()):
            try:
                self._resume_claim(job, "the previous run")
            except FileNotFoundError:
                logger.warning("job {} vanished from the work area while resuming it (taken over by another host?)",
                               job_id)
        for record in self.store.iter_unfinished():
            if record.id in on_disk:
                continue
            delivered = find_delivered(dests, record.id)
            if delivered:
                self._mark_delivered(record.id, delivered)
            else:
                self.store.update(record.id, status=FAILED, finished_at=time.time(),
                                  error="its files were no longer in the work area (another host takes over "
                                        "the claims of a host silent for stale_claim_seconds)")

    def _resume_claim(self, job: JobDir, left_by: str) -> None:
        """Queue a job folder found in our claim folder (left by a crash, or taken over from a dead host)."""
        job_id = job.job_id
        dests = [self.cfg.outbox, self.cfg.failed]
        if not (job.root / "job.json").exists():
            shutil.rmtree(job.root, ignore_errors=True)  # died before the claim began
            return
        record = self.store.get(job_id)
        manifest = job.manifest()
        finish_claim(self.cfg.inbox, job)
        if record is None:
            record = JobRecord(id=job_id, name=manifest["name"], work_path=str(job.root),
                               target=",".join(self.cfg.convert.target_platform))
            self.store.add(record)
        elif record.work_path != str(job.root):
            self.store.update(job_id, work_path=str(job.root))
        if record.status in FINAL_STATUSES:
            shutil.rmtree(job.root, ignore_errors=True)
            return
        finished = repair_interrupted_delivery(job, dests, record.name)
        delivered = find_delivered(dests, job_id)
        if finished or delivered:
            self._mark_delivered(job_id, delivered or (finished, "result.json" if finished.parent ==
                                                        self.cfg.outbox else "error.json"))
            shutil.rmtree(job.root, ignore_errors=True)
            return
        if manifest.get("rejection"):  # claimed only to be rejected: reject again rather than convert
            rejected = manifest["rejection"]
            self.fail_job(job_id, rejected["error"], rejected.get("hint"), stage="analyze")
            return
        shutil.rmtree(job.root / "tmp", ignore_errors=True)
        if record.status == PROCESSING and job.output.exists():
            finish_log(job)
        self.store.update(job_id, status=QUEUED, stage="queued", progress=0.0, attempts=record.attempts + 1)
        self.queue.append(job_id)
        logger.info("resuming job {} ({}) left by {}", job_id, record.name, left_by)

    def _mark_delivered(self, job_id: str, delivered: tuple[Path, str]) -> None:
        """A crash came between delivering the job's folder and recording it: record it now, from that folder."""
        folder, fname = delivered
        try:
            payload = json.loads((folder / fname).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            payload = {}
        status = payload.get("status") if payload.get("status") in FINAL_STATUSES else \
            (COMPLETED if fname == "result.json" else FAILED)
        self.store.update(job_id, status=status, output_dir=str(folder), finished_at=time.time(),
                          progress=100.0 if status == COMPLETED else 0.0,
                          outputs=[o["name"] for o in payload.get("outputs", []) if isinstance(o, dict)],
                          error=payload.get("error"), hint=payload.get("hint"))
        record = self.store.get(job_id)
        if record is not None and record.callback_url:
            if self._callbacks_running:
                self.notify_callback(job_id)
            else:
                self.store.update(job_id, callback_status=PENDING)  # sent by resend_pending_callbacks at start

    def start(self) -> None:
        prepare_folders(self.cfg)
        touch_heartbeat(self.cfg.claim_dir)
        self.recover()
        self.take_over_stale_claims()
        self.pool.start()
        self.watcher = InboxWatcher(self.cfg.inbox, self.cfg.claim_dir.parent if self.cfg.work_dir is None
                                    else self.cfg.claim_dir, self.cfg.poll, self.cfg.poll_interval_seconds)
        self.pool.extra_fds = [self.watcher.read_fd]
        self.watcher.start()
        self.scan_inbox()
        self.callbacks.start()
        self._callbacks_running = True
        self.resend_pending_callbacks()
        self.publish_snapshot()
        if self.cfg.http.enabled:
            from rknn_dropbox.status.server import StatusServer
            self.server = StatusServer(self.cfg.http.host, self.cfg.http.port, self.store,
                                       lambda: self.published_snapshot)
            self.server.start()
            write_json_atomic(self.cfg.state_dir / "daemon.json", {"pid": os.getpid(), "host": self.cfg.http.host,
                                                                  "port": self.server.port})
            logger.info("status endpoint on http://{}:{}/", self.cfg.http.host, self.server.port)
        logger.info("rknn-dropbox {} ready: inbox {}, outbox {}, failed {}, {} workers", __version__,
                    self.cfg.inbox, self.cfg.outbox, self.cfg.failed, self.cfg.workers)
        notify("READY=1", f"STATUS={self.status_line()}")

    # ---- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.install_signal_handlers()
        self.start()
        try:
            while not self.stopping:
                self.step(timeout=0.5)
        finally:
            self.shutdown()
        return 0

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            logger.info("received {}: stopping", signal.Signals(signum).name)
            self.stopping = True

        def reload(_signum: int, _frame: Any) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def step(self, timeout: float) -> None:
        """One turn: worker events, inbox changes, deliveries, dispatch."""
        if self._next_scan is not None:
            timeout = max(0.0, min(timeout, self._next_scan - time.monotonic()))
        for event in self.pool.wait_events(timeout):
            self.handle_event(event)
        woke = self.watcher.drain() if self.watcher else False
        now = time.monotonic()
        if woke or (self._next_scan is not None and now >= self._next_scan) or \
                (self._waiting and now - self._last_scan >= 0.5) or \
                (self._unclaimed and self.claim_room() > 0) or \
                now - self._last_full_scan >= self.cfg.rescan_seconds:
            self.scan_inbox()
        if self.reload_requested:
            self.reload_requested = False
            self.reload()
        self.retry_deliveries()
        self.apply_cancellations()
        self.dispatch()
        self.keep_alive(time.monotonic())
        self.publish_snapshot()

    def keep_alive(self, now: float) -> None:
        """Heartbeat for the other hosts, stale-claim takeover, WATCHDOG=1 and STATUS= (each at its own pace)."""
        beat_every = min(30.0, self.cfg.stale_claim_seconds / 4)
        if now - self._last_heartbeat >= beat_every:
            self._last_heartbeat = now
            touch_heartbeat(self.cfg.claim_dir)
            self.take_over_stale_claims()
        lines = []
        if self._watchdog_every is not None and now - self._last_watchdog >= self._watchdog_every:
            self._last_watchdog = now
            lines.append("WATCHDOG=1")
        if now - self._last_status >= STATUS_SECONDS:
            self._last_status = now
            lines.append(f"STATUS={self.status_line()}")
        if lines:
            notify(*lines)

    def take_over_stale_claims(self) -> None:
        if self.cfg.work_dir is not None:
            return  # a private work area is not shared with other hosts
        for taken in take_over_stale_claims(self.cfg.claim_dir, self.cfg.stale_claim_seconds):
            try:
                self._resume_claim(JobDir(taken.root), f"host {taken.host}, which stopped beating")
            except FileNotFoundError:
                continue

    def reload(self) -> None:
        """SIGHUP: re-read and validate the config; apply what can change live, keep the old one if invalid."""
        try:
            new = self.reloader()
        except (ConfigError, OSError) as exc:
            logger.error("reload refused, keeping the running config: {}", exc)
            return
        live, restart = changed_keys(self.cfg, new)
        self.cfg = apply_live(self.cfg, new, live)
        self.scanner.stable_seconds = self.cfg.stable_seconds
        self.scanner.bundle_timeout_seconds = self.cfg.bundle_timeout_seconds
        self.scanner.max_file_size = self.cfg.max_file_size
        self.pool.timeout_seconds = self.cfg.timeout_seconds
        self.pool.max_jobs_per_worker = self.cfg.max_jobs_per_worker
        self.pool.memory_limit_mb = self.cfg.worker_memory_limit_mb
        if "log_level" in live:
            setup_logging(self.cfg.log_level)
        logger.info("config reloaded from {}: {}{}", self.cfg.source or "defaults",
                    f"applied {', '.join(live)}" if live else "nothing changed that applies live",
                    f"; needs a restart to take effect: {', '.join(restart)}" if restart else "")
        for pending in self.deliveries.values():
            pending.next_try = 0.0  # a reload (after freeing space, say) retries deliveries now

    def scan_inbox(self) -> None:
        now = time.monotonic()
        self._last_scan = now
        self._last_full_scan = now
        result = self.scanner.scan()
        self._next_scan = now + result.next_check + 0.01 if result.next_check is not None else None
        self._unclaimed = 0
        for bundle in result.ready:
            if self.claim_room() <= 0:
                self._unclaimed += 1  # stays in inbox, complete; claimed when a worker frees up
                continue
            job = self.claim(bundle.name, bundle.entries, bundle.kind)
            if job is not None:
                self.queue.append(job.job_id)
        self._waiting = result.waiting + self._unclaimed
        for rejection in result.rejected:
            self.reject(rejection)

    def claim_room(self) -> int:
        """How many more bundles this host should claim now: free workers plus claim_ahead."""
        return self.cfg.workers + self.cfg.claim_ahead - len(self.queue) - len(self.pool.busy())

    def claim(self, name: str, entries: list[str], kind: str,
              rejection: dict[str, Any] | None = None) -> JobDir | None:
        job = claim_bundle(self.cfg.inbox, self.cfg.claim_dir, name, entries, kind, rejection=rejection)
        self.scanner.forget(entries)
        if job is None:
            return None
        self.store.add(JobRecord(id=job.job_id, name=name, work_path=str(job.root),
                                 target=",".join(self.cfg.convert.target_platform),
                                 callback_url=callback_url_for(job.input, self.cfg.convert.callback_url)))
        logger.info("claimed {} as job {} ({})", name, job.job_id, ", ".join(entries))
        return job

    def reject(self, rejection: Rejection) -> None:
        job = self.claim(rejection.name, rejection.entries, "rejected",
                         {"error": rejection.error, "hint": rejection.hint})
        if job is None:
            return
        logger.warning("rejecting {}: {}", ", ".join(rejection.entries), rejection.error)
        self.fail_job(job.job_id, rejection.error, rejection.hint, stage="analyze")

    def dispatch(self) -> None:
        while self.queue and self.pool.idle_slots() and not self.stopping:
            job_id = self.queue.popleft()
            record = self.store.get(job_id)
            if record is None or record.status != QUEUED:
                continue
            order = {"job_id": job_id, "root": record.work_path, "name": record.name,
                     "defaults": self.cfg.convert.to_json(),
                     "cache_dir": str(self.cfg.cache_dir) if self.cfg.cache else None,
                     "cache_max_bytes": self.cfg.cache_max_bytes, "lock_dir": str(self.cfg.state_dir)}
            pid = self.pool.submit(order)
            if pid is not None:
                self.store.update(job_id, status=PROCESSING, stage="starting", started_at=time.time(),
                                  progress=1.0, worker_pid=pid)
                logger.info("job {} ({}) started", job_id, record.name)
            else:  # pragma: no cover - idle_slots said yes
                self.queue.appendleft(job_id)
                return

    # ---- results ----------------------------------------------------------------------------------------------
    def handle_event(self, event: PoolEvent) -> None:
        if event.kind == "progress":
            self.store.raise_progress(event.job_id, min(99.0, event.data["progress"]), event.data["stage"])
        elif event.kind == "done":
            if event.data.get("ok"):
                self.complete_job(event.job_id, event.data["result"])
            else:
                self.fail_job(event.job_id, event.data["error"], event.data.get("hint"))
        elif event.kind == "died":
            job = self._job_dir(event.job_id)
            if job:
                finish_log(job)
            self.fail_job(event.job_id, event.data["cause"], event.data.get("hint") or
                          "the toolkit ended the worker process; see conversion.log for its last words")
        elif event.kind == "timeout":
            job = self._job_dir(event.job_id)
            if job:
                finish_log(job)
            self.fail_job(event.job_id, f"timed out after {event.data['seconds']:.0f} s (timeout_seconds)",
                          "raise timeout_seconds for very large models")

    def _job_dir(self, job_id: str) -> JobDir | None:
        record = self.store.get(job_id)
        return JobDir(Path(record.work_path)) if record and record.work_path else None

    def complete_job(self, job_id: str, result: dict[str, Any]) -> None:
        record = self.store.get(job_id)
        assert record is not None
        finished = time.time()
        outputs = [t["file"] for t in result["targets"] if t.get("ok")]
        payload = {
            "task_id": job_id, "name": record.name, "status": COMPLETED, "format": result["format"],
            "inputs": result["inputs"], "target_platform": [t["platform"] for t in result["targets"]],
            "targets": result["targets"], "quantization": result["quantization"],
            "quantized": result["quantization"].get("quantized"), "toolkit_version": result["toolkit_version"],
            "rknn_dropbox_version": __version__, "started_at": record.started_at, "finished_at": finished,
            "duration": round(finished - (record.started_at or finished), 3),
            "outputs": [{"name": t["file"], "size": t["size"], "sha256": t["sha256"]}
                        for t in result["targets"] if t.get("ok")],
            "warnings": result["warnings"], "config": result["options"],
            **result.get("extra", {}),  # cached / cache_of / verification (converter)
        }
        self.store.update(job_id, format=result["format"], outputs=outputs, warnings=result["warnings"],
                          target=",".join(payload["target_platform"]))
        self._deliver(job_id, True, payload)

    def fail_job(self, job_id: str, error: str, hint: str | None, stage: str | None = None) -> None:
        record = self.store.get(job_id)
        assert record is not None
        payload = {"task_id": job_id, "name": record.name, "status": FAILED, "error": error, "hint": hint,
                   "stage": stage or record.stage, "format": record.format or None, "failed_at": time.time(),
                   "log": "conversion.log", "rknn_dropbox_version": __version__}
        self._deliver(job_id, False, payload)

    def _deliver(self, job_id: str, success: bool, payload: dict[str, Any]) -> None:
        record = self.store.get(job_id)
        assert record is not None
        job = JobDir(Path(record.work_path))
        dest = self.cfg.outbox if success else self.cfg.failed
        status = COMPLETED if success else (payload.get("status") if payload.get("status") == CANCELLED
                                             else FAILED)
        try:
            folder = deliver(job, dest, record.name, {"result.json" if success else "error.json": payload})
        except DeliveryError as exc:
            logger.error("job {}: {}; will retry in {:.0f} s", job_id, exc.strerror, DELIVERY_RETRY_SECONDS)
            self.store.update(job_id, stage="delivery", error=f"{exc.strerror} (will retry)")
            self.deliveries[job_id] = PendingDelivery(job_id, success, payload,
                                                      time.monotonic() + DELIVERY_RETRY_SECONDS)
            return
        self.deliveries.pop(job_id, None)
        self.store.update(job_id, status=status, output_dir=str(folder), finished_at=time.time(),
                          progress=100.0 if success else record.progress, stage="done",
                          error=None if success else payload.get("error"),
                          hint=None if success else payload.get("hint"))
        self.notify_callback(job_id)
        if success:
            logger.success("job {} ({}) completed: {}", job_id, record.name, folder)
        else:
            logger.warning("job {} ({}) failed: {} -> {}", job_id, record.name, payload.get("error"), folder)

    def retry_deliveries(self) -> None:
        now = time.monotonic()
        for pending in list(self.deliveries.values()):
            if pending.next_try <= now:
                self._deliver(pending.job_id, pending.success, pending.payload)

    # ---- cancellation and callbacks ---------------------------------------------------------------------------
    def apply_cancellations(self) -> None:
        """Cancel what `rknn-dropbox cancel` flagged in the store: a queued job leaves the queue, a running one
        loses its worker; either way its inputs go to failed/ and the task reads "cancelled"."""
        for job_id in self.store.cancel_requested_ids():
            if job_id in self.deliveries:
                continue  # it finished already; only its delivery is pending
            if job_id in self.queue:
                self.queue.remove(job_id)
                was = "queued"
            elif self.pool.kill_job(job_id, "cancel"):
                was = "running"
                job = self._job_dir(job_id)
                if job:
                    finish_log(job)
                    for part in job.output.glob(".*.part"):
                        part.unlink(missing_ok=True)
                    shutil.rmtree(job.root / "tmp", ignore_errors=True)
            else:
                continue  # not held by this daemon
            record = self.store.get(job_id)
            assert record is not None
            logger.warning("job {} ({}) cancelled while {}", job_id, record.name, was)
            self._deliver(job_id, False, {
                "task_id": job_id, "name": record.name, "status": CANCELLED, "error": "cancelled",
                "hint": f"cancelled with `rknn-dropbox cancel` while {was}", "stage": record.stage,
                "format": record.format or None, "cancelled_at": time.time(), "log": "conversion.log",
                "rknn_dropbox_version": __version__})

    def notify_callback(self, job_id: str) -> None:
        """Queue the POST of a finished job's task JSON to its callback_url (background threads; never blocks)."""
        record = self.store.get(job_id)
        if record is not None and record.callback_url and record.status in FINAL_STATUSES:
            self.callbacks.submit(job_id, record.callback_url, record.to_task())

    def resend_pending_callbacks(self) -> None:
        for record in self.store.pending_callbacks():
            if record.callback_url:
                self.callbacks.submit(record.id, record.callback_url, record.to_task())

    # ---- status and shutdown ----------------------------------------------------------------------------------
    def status_snapshot(self) -> dict[str, Any]:
        folders = (self.cfg.inbox, self.cfg.outbox, self.cfg.failed, self.cfg.state_dir)
        return {"queue_depth": len(self.queue), "workers_alive": self.pool.alive, "workers": self.cfg.workers,
                "in_progress": len(self.pool.busy()), "watcher_alive": bool(self.watcher and self.watcher.is_alive()),
                "waiting_in_inbox": self._waiting, "stopping": self.stopping,
                "unwritable_folders": [str(f) for f in folders if not os.access(f, os.W_OK | os.X_OK)],
                "callbacks_pending": self.callbacks.pending}

    def publish_snapshot(self) -> None:
        """Hand the status server a fresh snapshot (it never touches the pool or the watcher itself)."""
        self.published_snapshot = {**self.status_snapshot(), "published_at": time.monotonic()}

    def status_line(self) -> str:
        s = self.status_snapshot()
        return f"{s['in_progress']} converting, {s['queue_depth']} queued, {s['workers_alive']} workers"

    def shutdown(self) -> None:
        notify("STOPPING=1")
        self.publish_snapshot()  # stopping: /readyz answers 503 while running jobs drain
        logger.info("shutting down: draining running jobs for up to {:.0f} s", self.cfg.drain_seconds)
        if self.watcher:
            self.watcher.stop()
        unfinished = self.pool.stop(self.cfg.drain_seconds, self.handle_event)
        for job_id in unfinished:
            job = self._job_dir(job_id)
            if job:
                shutil.rmtree(job.output, ignore_errors=True)
                shutil.rmtree(job.root / "tmp", ignore_errors=True)
                (job.root / "conversion.raw").unlink(missing_ok=True)
            self.store.update(job_id, status=QUEUED, stage="queued", progress=0.0)
            logger.info("job {} left queued; it resumes on the next start", job_id)
        self.callbacks.stop()
        if self.server:
            self.server.stop()
        self.store.close()

"""The daemon: one loop moving bundles watcher → scanner → claims → store → pool, finished by results."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from loguru import logger

from rknn_dropbox import __version__
from rknn_dropbox.config import Config, ConfigError, load_config
from rknn_dropbox.intake.claims import callback_url_for, claim_bundle, claim_room
from rknn_dropbox.intake.hosts import touch_heartbeat
from rknn_dropbox.intake.scanner import InboxScanner, Rejection
from rknn_dropbox.intake.watcher import InboxWatcher
from rknn_dropbox.intake.workarea import JobDir, mount_point, write_json_atomic
from rknn_dropbox.joblog import finish_log
from rknn_dropbox.logsetup import setup_logging
from rknn_dropbox.service.callbacks import CallbackSender
from rknn_dropbox.service.messages import EventKind, JobDone, JobProgress, JobTimeout, PoolEvent, WorkerDeath, WorkOrder
from rknn_dropbox.service.pool import WorkerPool
from rknn_dropbox.service.recovery import Recovery
from rknn_dropbox.service.reload import apply_live, changed_keys, push_live_settings
from rknn_dropbox.service.results import Finisher
from rknn_dropbox.service.systemd import notify, watchdog_interval
from rknn_dropbox.store import QUEUED, JobRecord, JobStore

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


class Daemon:
    """Owns the loop; the status server (if any) only reads the store and the published snapshot."""

    def __init__(self, cfg: Config, reloader: Callable[[], Config] | None = None) -> None:
        self.cfg = cfg
        self.store = JobStore(cfg.store_path)
        self.scanner = InboxScanner(cfg.inbox, cfg.stable_seconds, cfg.bundle_timeout_seconds, cfg.max_file_size)
        self.pool = WorkerPool(cfg.workers, cfg.timeout_seconds, cfg.max_jobs_per_worker,
                               memory_limit_mb=cfg.worker_memory_limit_mb)
        self.reloader = reloader or (lambda: load_config(self.cfg.source))
        self.queue: deque[str] = deque()
        self.callbacks = CallbackSender(self.store)
        self.finisher = Finisher(self.store, cfg.outbox, cfg.failed, self.callbacks)
        self.recovery = Recovery(self.store, self.finisher, self.queue)
        self.watcher: InboxWatcher | None = None
        self.server: Any = None
        self.stopping = False
        self.reload_requested = False
        self._watchdog_every = watchdog_interval()
        self._last_watchdog = self._last_status = self._last_heartbeat = 0.0
        self._last_scan = self._last_full_scan = 0.0
        self._waiting = 0
        self._next_scan: float | None = None  # monotonic time when a waiting entry may have become stable
        self._unclaimed = 0  # complete bundles left in inbox because the workers were busy (claim_ahead)
        self.published_snapshot: dict[str, Any] = {}  # what the status server reads; replaced whole each step

    # ---- start-up and the loop --------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover, start the workers and the watcher, claim what waits, then tell systemd READY=1."""
        prepare_folders(self.cfg)
        touch_heartbeat(self.cfg.claim_dir)
        self.recovery.recover(self.cfg)
        self.recovery.take_over_stale_claims(self.cfg)
        self.pool.start()
        self.start_watcher()
        self.scan_inbox()
        self.finisher.resend_pending()
        self.publish_snapshot()
        self.start_status_server()
        logger.info("rknn-dropbox {} ready: inbox {}, outbox {}, failed {}, {} workers", __version__,
                    self.cfg.inbox, self.cfg.outbox, self.cfg.failed, self.cfg.workers)
        notify("READY=1", f"STATUS={self.status_line()}")

    def start_watcher(self) -> None:
        self.watcher = InboxWatcher(self.cfg.inbox, self.cfg.claim_dir.parent if self.cfg.work_dir is None
                                    else self.cfg.claim_dir, self.cfg.poll, self.cfg.poll_interval_seconds)
        self.pool.extra_fds = [self.watcher.read_fd]
        self.watcher.start()

    def start_status_server(self) -> None:
        """The HTTP status endpoint (a thread that only reads); daemon.json says where it listens."""
        if not self.cfg.http.enabled:
            return
        from rknn_dropbox.status.server import StatusServer
        self.server = StatusServer(self.cfg.http.host, self.cfg.http.port, self.store, lambda: self.published_snapshot)
        self.server.start()
        write_json_atomic(self.cfg.state_dir / "daemon.json", {"pid": os.getpid(), "host": self.cfg.http.host,
                                                              "port": self.server.port})
        logger.info("status endpoint on http://{}:{}/", self.cfg.http.host, self.server.port)

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
        """One turn: worker events, inbox changes, reload, deliveries, cancellations, dispatch, keep-alive."""
        if self._next_scan is not None:
            timeout = max(0.0, min(timeout, self._next_scan - time.monotonic()))
        for event in self.pool.wait_events(timeout):
            self.handle_event(event)
        if self.inbox_needs_scan(self.watcher.drain() if self.watcher else False):
            self.scan_inbox()
        if self.reload_requested:
            self.reload_requested = False
            self.reload()
        self.finisher.retry_due(time.monotonic())
        self.apply_cancellations()
        self.dispatch()
        self.keep_alive(time.monotonic())
        self.publish_snapshot()

    def inbox_needs_scan(self, woke: bool) -> bool:
        """The watcher saw a change, an entry may have become stable, room for an unclaimed bundle, or rescan time."""
        now = time.monotonic()
        return woke or (self._next_scan is not None and now >= self._next_scan) or \
            (self._waiting > 0 and now - self._last_scan >= 0.5) or \
            (self._unclaimed > 0 and self.claim_room() > 0) or \
            now - self._last_full_scan >= self.cfg.rescan_seconds

    def keep_alive(self, now: float) -> None:
        """Heartbeat for the other hosts, stale-claim takeover, WATCHDOG=1 and STATUS= (each at its own pace)."""
        if now - self._last_heartbeat >= min(30.0, self.cfg.stale_claim_seconds / 4):
            self._last_heartbeat = now
            touch_heartbeat(self.cfg.claim_dir)
            self.recovery.take_over_stale_claims(self.cfg)
        lines = []
        if self._watchdog_every is not None and now - self._last_watchdog >= self._watchdog_every:
            self._last_watchdog = now
            lines.append("WATCHDOG=1")
        if now - self._last_status >= STATUS_SECONDS:
            self._last_status = now
            lines.append(f"STATUS={self.status_line()}")
        if lines:
            notify(*lines)

    def reload(self) -> None:
        """SIGHUP: re-read and validate the config; apply what can change live, keep the old one if invalid."""
        try:
            new = self.reloader()
        except (ConfigError, OSError) as exc:
            logger.error("reload refused, keeping the running config: {}", exc)
            return
        live, restart = changed_keys(self.cfg, new)
        self.cfg = apply_live(self.cfg, new, live)
        push_live_settings(self.cfg, self.scanner, self.pool)
        if "log_level" in live:
            setup_logging(self.cfg.log_level)
        logger.info("config reloaded from {}: {}{}", self.cfg.source or "defaults",
                    f"applied {', '.join(live)}" if live else "nothing changed that applies live",
                    f"; needs a restart to take effect: {', '.join(restart)}" if restart else "")
        self.finisher.retry_all_soon()

    # ---- claiming and dispatch --------------------------------------------------------------------------------
    def scan_inbox(self) -> None:
        """Claim the complete bundles there is room for, leave the rest in inbox, reject what cannot convert."""
        now = time.monotonic()
        self._last_scan = self._last_full_scan = now
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
        return claim_room(self.cfg.workers, self.cfg.claim_ahead, len(self.queue), len(self.pool.busy()))

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
        self.finisher.fail(job.job_id, rejection.error, rejection.hint, stage="analyze")

    def dispatch(self) -> None:
        """Hand queued jobs to idle workers."""
        while self.queue and self.pool.idle_slots() and not self.stopping:
            job_id = self.queue.popleft()
            record = self.store.get(job_id)
            if record is None or record.status != QUEUED:
                continue
            pid = self.pool.submit(self.work_order(record))
            if pid is None:  # pragma: no cover - idle_slots said yes
                self.queue.appendleft(job_id)
                return
            self.store.mark_processing(job_id, pid)
            logger.info("job {} ({}) started", job_id, record.name)

    def work_order(self, record: JobRecord) -> WorkOrder:
        return WorkOrder(record.id, record.work_path, record.name, self.cfg.convert.to_json(),
                         str(self.cfg.cache_dir) if self.cfg.cache else None, self.cfg.cache_max_bytes,
                         str(self.cfg.state_dir))

    # ---- what workers report, and cancellation ----------------------------------------------------------------
    def handle_event(self, event: PoolEvent) -> None:
        detail = event.detail
        if event.kind is EventKind.PROGRESS and isinstance(detail, JobProgress):
            self.store.raise_progress(event.job_id, min(99.0, detail.progress), detail.stage)
        elif event.kind is EventKind.DONE and isinstance(detail, JobDone):
            if detail.ok and detail.result is not None:
                self.finisher.complete(event.job_id, detail.result)
            else:
                self.finisher.fail(event.job_id, detail.error or "the worker reported no error", detail.hint)
        elif event.kind is EventKind.DIED and isinstance(detail, WorkerDeath):
            self._finish_log(event.job_id)
            self.finisher.fail(event.job_id, detail.cause, detail.hint or
                               "the toolkit ended the worker process; see conversion.log for its last words")
        elif event.kind is EventKind.TIMEOUT and isinstance(detail, JobTimeout):
            self._finish_log(event.job_id)
            self.finisher.fail(event.job_id, f"timed out after {detail.seconds:.0f} s (timeout_seconds)",
                               "raise timeout_seconds for very large models")

    def _job_dir(self, job_id: str) -> JobDir | None:
        record = self.store.get(job_id)
        return JobDir(Path(record.work_path)) if record and record.work_path else None

    def _finish_log(self, job_id: str) -> None:
        job = self._job_dir(job_id)
        if job:
            finish_log(job)

    def apply_cancellations(self) -> None:
        """Cancel what `rknn-dropbox cancel` flagged in the store: a queued job leaves the queue, a running one
        loses its worker; either way its inputs go to failed/ and the task reads "cancelled"."""
        for job_id in self.store.cancel_requested_ids():
            if job_id in self.finisher.pending:
                continue  # it finished already; only its delivery is pending
            if job_id in self.queue:
                self.queue.remove(job_id)
                self.finisher.cancel(job_id, "queued")
            elif self.pool.kill_job(job_id, "cancel"):
                self._discard_partial_work(job_id)
                self.finisher.cancel(job_id, "running")
            # else: not held by this daemon

    def _discard_partial_work(self, job_id: str) -> None:
        """A killed conversion's half-written outputs and scratch files; its log is kept."""
        job = self._job_dir(job_id)
        if job:
            finish_log(job)
            for part in job.output.glob(".*.part"):
                part.unlink(missing_ok=True)
            shutil.rmtree(job.root / "tmp", ignore_errors=True)

    # ---- status and shutdown ----------------------------------------------------------------------------------
    def status_snapshot(self) -> dict[str, Any]:
        folders = (self.cfg.inbox, self.cfg.outbox, self.cfg.failed, self.cfg.state_dir)
        return {"queue_depth": len(self.queue), "workers_alive": self.pool.alive, "workers": self.cfg.workers,
                "in_progress": len(self.pool.busy()), "watcher_alive": bool(self.watcher and self.watcher.is_alive()),
                "waiting_in_inbox": self._waiting, "stopping": self.stopping,
                "unwritable_folders": [str(f) for f in folders if not os.access(f, os.W_OK | os.X_OK)],
                "callbacks_pending": self.callbacks.pending,
                "job_costs": {k: replace(h, counts=list(h.counts)) for k, h in self.finisher.job_costs.items()}}

    def publish_snapshot(self) -> None:
        """Hand the status server a fresh snapshot (it never touches the pool or the watcher itself)."""
        self.published_snapshot = {**self.status_snapshot(), "published_at": time.monotonic()}

    def status_line(self) -> str:
        s = self.status_snapshot()
        return f"{s['in_progress']} converting, {s['queue_depth']} queued, {s['workers_alive']} workers"

    def shutdown(self) -> None:
        """Drain running jobs for drain_seconds; what is left goes back to queued and resumes on the next start."""
        notify("STOPPING=1")
        self.publish_snapshot()  # stopping: /readyz answers 503 while running jobs drain
        logger.info("shutting down: draining running jobs for up to {:.0f} s", self.cfg.drain_seconds)
        if self.watcher:
            self.watcher.stop()
        for job_id in self.pool.stop(self.cfg.drain_seconds, self.handle_event):
            job = self._job_dir(job_id)
            if job:
                shutil.rmtree(job.output, ignore_errors=True)
                shutil.rmtree(job.root / "tmp", ignore_errors=True)
                (job.root / "conversion.raw").unlink(missing_ok=True)
            self.store.mark_queued(job_id)
            logger.info("job {} left queued; it resumes on the next start", job_id)
        self.callbacks.stop()
        if self.server:
            self.server.stop()
        self.store.close()

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
from rknn_dropbox.intake.hosts import Heartbeat
from rknn_dropbox.intake.parked import ParkedEntries
from rknn_dropbox.intake.scanner import InboxScanner
from rknn_dropbox.intake.watcher import InboxWatcher
from rknn_dropbox.intake.workarea import JobDir, folder_gone, write_json_atomic
from rknn_dropbox.logsetup import setup_logging
from rknn_dropbox.service.admission import MemoryAdmission, MemoryGate, MemoryHistory
from rknn_dropbox.service.callbacks import CallbackPolicy, CallbackSender
from rknn_dropbox.service.endings import JobEndings
from rknn_dropbox.service.intake_loop import InboxIntake
from rknn_dropbox.service.guard import StepGuard
from rknn_dropbox.service.messages import PoolEvent, WorkOrder
from rknn_dropbox.service.pool import WorkerPool, threads_per_worker
from rknn_dropbox.service.recovery import Recovery
from rknn_dropbox.service.reload import apply_live, changed_keys, push_live_settings
from rknn_dropbox.service.results import Finisher
from rknn_dropbox.service.startup import (  # noqa: F401  (StartupError, prepare_folders: re-exported)
    StartupError, bind_status_server, open_store_path, prepare_folders, watcher_problem,
)
from rknn_dropbox.service.routing import ToolkitRouter, missing_default, toolkit_folder
from rknn_dropbox.service.share import ShareWatch
from rknn_dropbox.service.systemd import notify, watchdog_interval
from rknn_dropbox.service.threads import ThreadKeeper
from rknn_dropbox.store import QUEUED, JobRecord, JobStore

STATUS_SECONDS = 10.0  # how often STATUS= goes to systemd


class Daemon:
    """Owns the loop; the status server (if any) only reads the store and the published snapshot."""

    def __init__(self, cfg: Config, reloader: Callable[[], Config] | None = None) -> None:
        self.cfg = cfg
        prepare_folders(cfg)
        open_store_path(cfg)
        self.store = JobStore(cfg.store_path)
        self.scanner = InboxScanner(cfg.inbox, cfg.stable_seconds, cfg.bundle_timeout_seconds, cfg.max_file_size)
        self.router = ToolkitRouter(cfg.toolkits.default, self.store)
        self.pool = WorkerPool(cfg.workers, cfg.timeout_seconds, cfg.max_jobs_per_worker,
                               memory_limit_mb=cfg.worker_memory_limit_mb, max_rss_mb=cfg.worker_max_rss_mb,
                               default_toolkit=cfg.toolkits.default, toolkit_folder=toolkit_folder,
                               worker_threads=threads_per_worker(cfg.workers))
        self.memory = MemoryGate(MemoryAdmission(MemoryHistory.load(cfg.state_dir), cfg.memory_reserve_mb)
                                 if cfg.memory_admission else None, self.pool)
        self.reloader = reloader or (lambda: load_config(self.cfg.source))
        self.queue: deque[str] = deque()
        self.callbacks = CallbackSender(self.store, CallbackPolicy.for_convert(cfg.convert))
        self.finisher = Finisher(self.store, cfg.outbox, cfg.failed, self.callbacks)
        self.intake = InboxIntake(self.scanner, ParkedEntries(cfg.inbox, cfg.state_dir), self.store, self.finisher,
                                  self.queue, lambda: self.cfg, lambda: len(self.pool.busy()))
        self.endings = JobEndings(self.store, self.queue, self.pool, self.memory, self.router, self.finisher,
                                  lambda: self.cfg)
        self.recovery = Recovery(self.store, self.finisher, self.queue, self.intake.report_unclaimable, self.router)
        self.watcher: InboxWatcher | None = None
        self.server: Any = None
        self.serving = False  # the status server's threads run (it may be bound and not yet serving)
        self.started = False
        self.stopping = False
        self.reload_requested = False
        self._watchdog_every = watchdog_interval()
        self._last_watchdog = self._last_status = self._last_takeover = 0.0
        self.heartbeat = Heartbeat(cfg.claim_dir, lambda: self.heartbeat_seconds)
        self.guard = StepGuard()
        self.threads = ThreadKeeper()
        self.held_events: deque[tuple[PoolEvent, bool]] = deque()  # reports not yet handled, and if during an outage
        self.share = ShareWatch({"inbox": cfg.inbox, "outbox": cfg.outbox, "failed": cfg.failed,
                                 **({"work_dir": cfg.work_dir} if cfg.work_dir is not None else {})})
        self.finisher.share_available = lambda: self.share.check(force=True)
        self.published_snapshot: dict[str, Any] = {}  # what the status server reads; replaced whole each step

    # ---- start-up and the loop --------------------------------------------------------------------------------
    def start(self) -> None:
        """Check and bind what can fail (folders, store, port), recover, watch, start the workers, claim what
        waits, serve status, then tell systemd READY=1. A failure here raises StartupError before any worker
        exists, except for what `run()`'s finally tears down."""
        prepare_folders(self.cfg)
        open_store_path(self.cfg)
        problem = missing_default(self.cfg.toolkits.default)
        if problem:
            raise StartupError(problem)
        if self.cfg.http.enabled:
            self.server = bind_status_server(self.cfg, self.store, lambda: self.published_snapshot)
        self.heartbeat.start()
        self.recovery.recover(self.cfg)
        self.recovery.take_over_stale_claims(self.cfg)
        self.start_watcher()
        self.threads.keep("heartbeat", self.heartbeat.is_alive, self.heartbeat.restart)
        self.threads.keep("watcher", lambda: bool(self.watcher and self.watcher.is_alive()), self.restart_watcher)
        self.pool.start()
        self.intake.scan_inbox()
        self.finisher.resend_pending()
        self.publish_snapshot()
        self.start_status_server()
        self.started = True
        logger.info("rknn-dropbox {} ready: inbox {}, outbox {}, failed {}, {} workers", __version__,
                    self.cfg.inbox, self.cfg.outbox, self.cfg.failed, self.cfg.workers)
        notify("READY=1", f"STATUS={self.status_line()}")

    def start_watcher(self) -> None:
        try:
            watcher = InboxWatcher(self.cfg.inbox, self.cfg.claim_dir.parent if self.cfg.work_dir is None
                                   else self.cfg.claim_dir, self.cfg.poll, self.cfg.poll_interval_seconds)
        except OSError as exc:  # watchdog opens the inotify instance when the observer is made
            raise StartupError(watcher_problem(exc)) from None
        try:
            watcher.start()
        except OSError as exc:
            watcher.close_pipe()
            raise StartupError(watcher_problem(exc)) from None
        self.watcher = watcher
        self.pool.extra_fds = [watcher.read_fd]

    def restart_watcher(self) -> None:
        """A watcher whose observer thread died (an inbox that vanished under inotify, say) is replaced."""
        old, self.watcher = self.watcher, None
        self.pool.extra_fds = []
        if old is not None:
            try:
                old.stop()
            except Exception as exc:  # noqa: BLE001 - the old one is dead already; its pipe is closed below
                logger.debug("stopping the dead watcher: {}", exc)
                old.close_pipe()
        self.start_watcher()

    def start_status_server(self) -> None:
        """Serve the bound status endpoint (a thread that only reads); daemon.json says where it listens."""
        if self.server is None:
            return
        self.server.start()
        self.serving = True
        write_json_atomic(self.cfg.state_dir / "daemon.json", {"pid": os.getpid(), "host": self.cfg.http.host,
                                                              "port": self.server.port})
        logger.info("status endpoint on http://{}:{}/", self.cfg.http.host, self.server.port)

    def run(self) -> int:
        """Start, loop until SIGTERM/SIGINT, shut down; a failed start tears down whatever it had started."""
        self.install_signal_handlers()
        try:
            self.start()
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
        """One turn: worker events, inbox changes, reload, deliveries, cancellations, dispatch, keep-alive.

        Each verb runs under the guard: one that fails (a share gone, a full state disk, a worker that just died)
        is logged, counted and retried with back-off while the others, and the status server, go on."""
        timeout = self.intake.wait_at_most(timeout)
        if not self.guard.run("worker events", lambda: self.receive_events(timeout)):
            time.sleep(timeout)  # never spin while waiting on the workers fails
        here = self.guard.run("share", self.share_check) and self.share.available
        if here:  # the share away: nothing new is converted, nothing delivered, no job failed for it
            self.guard.run("job endings", self.handle_held_events)
            self.guard.run("inbox scan", self.scan_if_needed)
        if self.reload_requested:
            self.reload_requested = False
            self.guard.run("reload", self.reload)
        if here:
            self.guard.run("deliveries", lambda: self.finisher.retry_due(time.monotonic()))
            self.guard.run("cancellations", self.endings.apply_cancellations)
            self.guard.run("dispatch", self.dispatch)
        self.guard.run("keep-alive", lambda: self.keep_alive(time.monotonic()))
        if here:
            self.guard.run("threads", self.threads.check)
        self.publish_snapshot()

    def receive_events(self, timeout: float) -> None:
        """The workers' reports, held with whether the share was away when they came (a job that failed then
        failed for the outage, not for its model: it is converted again)."""
        away = not self.share.available
        self.held_events.extend((event, away) for event in self.pool.wait_events(timeout))

    def share_check(self) -> None:
        """Look at the share; when it came back, watch inbox afresh (inotify lost its watches) and rescan."""
        if not self.share.check():
            self.held_events = deque((event, True) for event, _ in self.held_events)  # unhandled when it went
        if self.share.came_back:
            self.share.came_back = False
            self.finisher.retry_all_soon()
            self.intake.last_full_scan = 0.0
            if self.started:
                self.restart_watcher()

    def handle_held_events(self) -> None:
        """The workers' reports, oldest first; one whose handling fails stays first, to be handled on a retry."""
        while self.held_events:
            event, during_outage = self.held_events[0]
            if not during_outage and self.endings.failed_for_the_outage(event) and not self.share.check(force=True):
                self.share_check()  # it went just now: this failure may be the outage's; held as such
                return
            if during_outage and self.endings.failed_for_the_outage(event):
                self.endings.retry_after_outage(event)
            else:
                self.endings.handle_event(event)
            self.held_events.popleft()

    def scan_if_needed(self) -> None:
        if self.intake.needs_scan(self.watcher.drain() if self.watcher else False):
            self.intake.scan_inbox()

    def keep_alive(self, now: float) -> None:
        """Stale-claim takeover (guarded on its own), then WATCHDOG=1 and STATUS= (each at its own pace)."""
        if now - self._last_takeover >= self.heartbeat_seconds and self.share.available:  # it beats on its own
            self._last_takeover = now
            self.guard.run("takeover", self.take_over)
            self.guard.run("adopt", lambda: self.recovery.adopt_unrecorded(self.cfg))
        lines = []
        if self._watchdog_every is not None and now - self._last_watchdog >= self._watchdog_every:
            self._last_watchdog = now
            lines.append("WATCHDOG=1")
        if now - self._last_status >= STATUS_SECONDS:
            self._last_status = now
            lines.append(f"STATUS={self.status_line()}")
        if lines:
            notify(*lines)

    def take_over(self) -> None:
        """Resume the claims of hosts that stopped beating; drop ours that another host took."""
        self.recovery.take_over_stale_claims(self.cfg)
        self.drop_taken_claims()

    @property
    def heartbeat_seconds(self) -> float:
        return min(30.0, self.cfg.stale_claim_seconds / 4)

    def drop_taken_claims(self) -> None:
        """Another host took over a job of ours (our heartbeat looked dead to it): stop converting it here and
        deliver nothing; it is that host's job now."""
        for job_id in [*self.pool.busy(), *self.queue]:
            record = self.store.get(job_id)
            if record is None or not record.work_path or not folder_gone(Path(record.work_path)):
                continue
            if not self.share.check(force=True):
                return  # the folder is missing because the share is: nothing was taken
            self.pool.kill_job(job_id, "taken over")
            if job_id in self.queue:
                self.queue.remove(job_id)
            self.finisher.drop_taken(job_id)

    def reload(self) -> None:
        """SIGHUP: re-read and validate the config; apply what can change live, keep the old one if invalid."""
        try:
            new = self.reloader()
        except (ConfigError, OSError, ValueError) as exc:  # ValueError: a file that is not UTF-8, say
            logger.error("reload refused, keeping the running config: {}", exc)
            return
        live, restart = changed_keys(self.cfg, new)
        self.cfg = apply_live(self.cfg, new, live)
        push_live_settings(self.cfg, self.scanner, self.pool, self.memory.admission, self.callbacks)
        if "log_level" in live:
            setup_logging(self.cfg.log_level)
        logger.info("config reloaded from {}: {}{}", self.cfg.source or "defaults",
                    f"applied {', '.join(live)}" if live else "nothing changed that applies live",
                    f"; needs a restart to take effect: {', '.join(restart)}" if restart else "")
        self.finisher.retry_all_soon()

    # ---- dispatch ---------------------------------------------------------------------------------------------
    def dispatch(self) -> None:
        """Hand queued jobs to idle workers of the toolkit each needs; make room for versions without one."""
        waiting: dict[str, int] = {}
        for job_id in list(self.queue):
            if not self.pool.idle_slots() or self.stopping:
                break
            record = self.store.get(job_id)
            if record is None or record.status != QUEUED:
                self.queue.remove(job_id)
                continue
            toolkit = self.router.toolkit_of(job_id)
            if toolkit in self.pool.broken_toolkits:
                self.queue.remove(job_id)
                self.finisher.fail(job_id, self.router.broken(job_id, toolkit), "run `rknn-dropbox toolkits`")
                continue
            if not self.memory.admit(job_id, JobDir(Path(record.work_path))):
                break  # memory: the queue waits, in order, until the running jobs' peaks leave room
            pid = self.pool.submit(self.work_order(record), toolkit)
            if pid is None:
                self.memory.not_started(job_id)
                waiting[toolkit] = waiting.get(toolkit, 0) + 1
                # room now, before later jobs take the idle workers: only the versions of the jobs up to this one
                # keep theirs (else a job of another version waits for ever under steady load)
                self.pool.make_room(toolkit, waiting[toolkit], set(waiting))
                continue
            self.queue.remove(job_id)
            self.store.mark_processing(job_id, pid)
            logger.info("job {} ({}) started with rknn-toolkit2 {}", job_id, record.name, toolkit)

    def work_order(self, record: JobRecord) -> WorkOrder:
        return WorkOrder(record.id, record.work_path, record.name, self.cfg.convert.to_json(),
                         str(self.cfg.cache_dir) if self.cfg.cache else None, self.cfg.cache_max_bytes,
                         str(self.cfg.state_dir), **self.router.order_fields(record.id),
                         repair_crash=self.endings.repair_crashes.get(record.id))

    # ---- status and shutdown ----------------------------------------------------------------------------------
    def status_snapshot(self) -> dict[str, Any]:
        folders = (self.cfg.inbox, self.cfg.outbox, self.cfg.failed, self.cfg.state_dir)
        return {"queue_depth": len(self.queue), "workers_alive": self.pool.alive, "workers": self.cfg.workers,
                "in_progress": len(self.pool.busy()), "watcher_alive": bool(self.watcher and self.watcher.is_alive()),
                "threads_alive": self.threads.alive(), "thread_restarts": self.threads.restarts(),
                "loop_errors": self.guard.failures(), "failing_steps": self.guard.failing(),
                "share_missing": list(self.share.missing), "share_outages": self.share.outages,
                "waiting_in_inbox": self.intake.waiting, "stopping": self.stopping,
                "unwritable_folders": [str(f) for f in folders if not os.access(f, os.W_OK | os.X_OK)],
                "callbacks_pending": self.callbacks.pending, "worker_toolkits": self.pool.toolkits(),
                "waiting_for_memory": self.memory.waiting_for_memory,
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
        if self.started:
            logger.info("shutting down: draining running jobs for up to {:.0f} s", self.cfg.drain_seconds)
        if self.watcher:
            self.watcher.stop()
        self.heartbeat.stop()
        for job_id in self.pool.stop(self.cfg.drain_seconds if self.started else 0.0, self.endings.handle_event):
            job = self.endings.job_dir(job_id)
            if job:
                shutil.rmtree(job.output, ignore_errors=True)
                shutil.rmtree(job.root / "tmp", ignore_errors=True)
                (job.root / "conversion.raw").unlink(missing_ok=True)
            self.store.mark_queued(job_id)
            logger.info("job {} left queued; it resumes on the next start", job_id)
        self.finisher.copier.stop()  # copies under way to another filesystem finish, and are recorded
        self.finisher.collect_copies()
        self.callbacks.stop()
        if self.server is not None:
            if self.serving:
                self.server.stop()
            else:
                self.server.listener.close()
        self.store.close()

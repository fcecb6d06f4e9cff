"""The worker pool: supervises N long-lived worker processes and knows which job each one holds."""

from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from loguru import logger

from rknn_dropbox.service.memory import tree_rss_mb
from rknn_dropbox.service.messages import (
    EventKind, JobDone, JobProgress, JobTimeout, PoolEvent, WorkerDeath, WorkerReady, WorkOrder,
)
from rknn_dropbox.service.worker import worker_main

OUT_OF_MEMORY_HINT = ("one build of a large input takes several GB (a 512x512 segmentation model ~9 GB): export the "
                      "model at a smaller input size, run fewer workers, or give the machine more memory")
MEMORY_CHECK_SECONDS = 0.1  # how often busy workers' memory is read when worker_memory_limit_mb is set
PEAK_SAMPLE_SECONDS = 0.5  # how often busy workers' memory is sampled for each job's peak

_SIGNAL_CAUSES = {
    signal.SIGKILL: "worker killed by signal 9 (SIGKILL): most likely the machine ran out of memory during the "
                    "toolkit's build (the kernel's OOM killer ends the largest process)",
    signal.SIGSEGV: "worker crashed with signal 11 (SIGSEGV) in the toolkit's native code",
    signal.SIGILL: "worker crashed with signal 4 (SIGILL) in the toolkit's native code",
    signal.SIGABRT: "worker aborted with signal 6 (SIGABRT): the toolkit's native compiler gave up "
                    "(an unsupported quantized_dtype for this platform?)",
    signal.SIGBUS: "worker crashed with signal 7 (SIGBUS): the model file is probably truncated or corrupt",
    signal.SIGTERM: "worker stopped by signal 15 (SIGTERM)",
}


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores this process may run on (at least one thread)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def death_cause(exitcode: int | None) -> str:
    """Words for how a worker process ended, for error.json."""
    if exitcode is None:
        return "worker vanished"
    if exitcode < 0:
        sig = -exitcode
        try:
            known = _SIGNAL_CAUSES.get(signal.Signals(sig))
        except ValueError:
            known = None
        return known or f"worker killed by signal {sig}"
    return (f"worker exited with code {exitcode}: the toolkit ended the process "
            "(its native compiler calls exit() on inputs it cannot build)")


@dataclass
class WorkerSlot:
    index: int
    process: Any
    conn: Connection
    ready: bool = False
    job_id: str | None = None
    started_at: float = 0.0
    jobs_done: int = 0
    stopping: bool = False  # killed on purpose (timeout/cancel/stop): the cause is already known
    peak_mb: float = 0.0  # the highest resident memory sampled during the current job
    toolkit: str = ""  # the rknn-toolkit2 version this worker imported ("": the venv's, in pools without versions)


class WorkerPool:
    """gunicorn-arbiter style: spawn, watch sentinels, kill on timeout, replace the dead, recycle the old.

    Each worker imports one rknn-toolkit2 version; the pool keeps `size` processes in all, starts them with the
    default version and turns idle workers of versions no queued job needs into workers of one a job waits for."""

    def __init__(self, size: int, timeout_seconds: float, max_jobs_per_worker: int,
                 target: Callable[..., None] = worker_main, clock: Callable[[], float] = time.monotonic,
                 memory_limit_mb: int = 0, default_toolkit: str = "",
                 toolkit_folder: Callable[[str], str | None] = lambda version: None, max_rss_mb: int = 0,
                 worker_threads: int = 0) -> None:
        self.size = size
        self.worker_threads = worker_threads  # each worker's threads (its share of the cores); 0: the libraries'

        self.default_toolkit = default_toolkit
        self.toolkit_folder = toolkit_folder  # version -> the folder to put first on the worker's sys.path
        self.broken_toolkits: set[str] = set()  # versions whose worker died before it was ready
        self.max_rss_mb = max_rss_mb  # 0: never; else a worker above it after a job is replaced (recycled)
        self.fresh_worker_mb = 0.0  # the last worker's resident memory when it said ready (toolkit imported)
        self.peaks: dict[str, float] = {}  # job id -> peak resident MB sampled, for jobs that ended
        self._last_sample = 0.0
        self.memory_limit_mb = memory_limit_mb  # 0: none; else a busy worker over it is killed
        self.timeout_seconds = timeout_seconds
        self.max_jobs_per_worker = max_jobs_per_worker
        self.target = target
        self.clock = clock
        self._ctx = mp.get_context("spawn")
        self.slots: list[WorkerSlot] = []
        self.extra_fds: list[int] = []  # waited on too (the watcher's wake-up pipe)

    def start(self) -> None:
        for i in range(self.size):
            self.slots.append(self._spawn(i, self.default_toolkit))

    def _spawn(self, index: int, toolkit: str) -> WorkerSlot:
        parent, child = self._ctx.Pipe(duplex=True)
        folder = self.toolkit_folder(toolkit) if toolkit else None
        kwargs: dict[str, Any] = {"toolkit_folder": folder} if folder else {}
        if self.worker_threads and "threads" in inspect.signature(self.target).parameters:  # stand-ins take none
            kwargs["threads"] = self.worker_threads
        proc = self._ctx.Process(target=self.target, args=(child, os.getpid()), kwargs=kwargs,
                                 name=f"rknn-worker-{index}", daemon=False)
        proc.start()
        child.close()
        logger.debug("worker {} started (pid {}{})", index, proc.pid, f", rknn-toolkit2 {toolkit}" if toolkit else "")
        return WorkerSlot(index, proc, parent, toolkit=toolkit)

    @property
    def alive(self) -> int:
        return sum(1 for s in self.slots if s.process.is_alive())

    def idle_slots(self, toolkit: str | None = None) -> list[WorkerSlot]:
        """Ready workers without a job (of that toolkit version, when given)."""
        return [s for s in self.slots if s.ready and s.job_id is None and not s.stopping
                and (toolkit is None or s.toolkit == toolkit)]

    def busy(self) -> dict[str, WorkerSlot]:
        return {s.job_id: s for s in self.slots if s.job_id is not None}

    def submit(self, order: WorkOrder, toolkit: str | None = None) -> int | None:
        """Hand the order to an idle worker (of `toolkit`, when given); its pid, or None when there is none."""
        idle = self.idle_slots(toolkit)
        if not idle:
            return None
        slot = idle[0]
        try:
            slot.conn.send(order)
        except OSError as exc:  # BrokenPipeError: the worker died after its last message; a fresh one replaces it
            logger.warning("worker {} (pid {}) could not take job {} ({}); starting a fresh worker", slot.index,
                           slot.process.pid, order.job_id, exc.strerror or exc)
            slot.stopping = True
            slot.process.kill()
            slot.process.join(5)
            self._replace(slot)
            return None
        slot.job_id = order.job_id
        slot.started_at = self.clock()
        return slot.process.pid

    def kill_job(self, job_id: str, kind: str) -> bool:
        """Stop the worker holding job_id (timeout or cancel); its replacement is spawned by wait_events."""
        for slot in self.slots:
            if slot.job_id == job_id:
                slot.stopping = True
                slot.process.kill()
                slot.process.join(5)
                self._replace(slot)
                return True
        return False

    def _replace(self, slot: WorkerSlot, toolkit: str | None = None) -> None:
        try:
            slot.conn.close()
        except OSError:
            pass
        self.slots[self.slots.index(slot)] = self._spawn(slot.index, slot.toolkit if toolkit is None else toolkit)

    def make_room(self, toolkit: str, waiting: int, needed: set[str]) -> int:
        """`waiting` queued jobs need `toolkit` and no idle worker has it: retire idle workers of versions that no
        queued job (`needed`) wants, one per job still without a starting worker of its own; how many started."""
        if toolkit in self.broken_toolkits:
            return 0
        starting = sum(1 for s in self.slots if s.toolkit == toolkit and not s.ready and not s.stopping)
        started = 0
        for slot in list(self.slots):
            if starting + started >= waiting:
                break
            if slot in self.idle_slots() and slot.toolkit not in needed:
                logger.info("worker {} (rknn-toolkit2 {}) retires: a queued job needs rknn-toolkit2 {}", slot.index,
                            slot.toolkit or "default", toolkit)
                self._stop_idle(slot)
                self._replace(slot, toolkit)
                started += 1
        return started

    def toolkits(self) -> dict[str, int]:
        """How many workers hold each toolkit version (for the status snapshot)."""
        counts: dict[str, int] = {}
        for slot in self.slots:
            counts[slot.toolkit] = counts.get(slot.toolkit, 0) + 1
        return counts

    def wait_events(self, timeout: float) -> list[PoolEvent]:
        """Block until a worker says something, dies, a job times out, or `timeout` passes."""
        events: list[PoolEvent] = []
        now = self.clock()
        deadline_wait = timeout
        for slot in list(self.slots):
            if slot.job_id is not None and not slot.stopping:
                left = slot.started_at + self.timeout_seconds - now
                if left <= 0:
                    job_id = slot.job_id
                    logger.warning("job {} timed out after {:.0f} s; killing worker {}", job_id,
                                   self.timeout_seconds, slot.process.pid)
                    self.kill_job(job_id, "timeout")
                    events.append(PoolEvent(EventKind.TIMEOUT, job_id, JobTimeout(self.timeout_seconds)))
                else:
                    deadline_wait = min(deadline_wait, left)
        events.extend(self._enforce_memory_limit())
        if events:
            return events
        if self.memory_limit_mb and self.busy():
            deadline_wait = min(deadline_wait, MEMORY_CHECK_SECONDS)
        if self.busy():
            self._sample_peaks(now)
            deadline_wait = min(deadline_wait, PEAK_SAMPLE_SECONDS)
        waitables: list[Any] = [s.conn for s in self.slots] + [s.process.sentinel for s in self.slots]
        waitables += self.extra_fds
        ready = wait(waitables, timeout=max(0.0, deadline_wait))
        for slot in list(self.slots):
            if slot.conn in ready:
                events.extend(self._drain(slot))
        for slot in list(self.slots):
            if slot not in self.slots:
                continue  # recycled while draining
            if slot.process.sentinel in ready or not slot.process.is_alive():
                events.extend(self._drain(slot))
                slot.process.join(1)
                if slot.job_id is not None:
                    self._end_peak(slot)
                    cause = death_cause(slot.process.exitcode)
                    logger.error("worker {} (pid {}) died holding job {}: {}", slot.index, slot.process.pid,
                                 slot.job_id, cause)
                    killed = slot.process.exitcode == -signal.SIGKILL
                    others = any(s.job_id is not None for s in self.slots if s is not slot)
                    events.append(PoolEvent(EventKind.DIED, slot.job_id, WorkerDeath(
                        cause, slot.process.exitcode, OUT_OF_MEMORY_HINT if killed else None, killed and others)))
                elif not slot.stopping:
                    logger.warning("idle worker {} exited ({})", slot.index, death_cause(slot.process.exitcode))
                self._replace(slot, self._after_death(slot))
        return events

    def _after_death(self, slot: WorkerSlot) -> str:
        """The version a dead worker's replacement gets: a non-default one that died before it was ready does not
        start (a broken install) and is not tried again; the default takes its place."""
        if not slot.ready and not slot.stopping and slot.toolkit and slot.toolkit != self.default_toolkit:
            logger.error("a worker of rknn-toolkit2 {} exited before it was ready ({}): not starting that version "
                         "again", slot.toolkit, death_cause(slot.process.exitcode))
            self.broken_toolkits.add(slot.toolkit)
            return self.default_toolkit
        return slot.toolkit

    def _enforce_memory_limit(self) -> list[PoolEvent]:
        """Kill a busy worker whose process tree is over memory_limit_mb: only its own job fails, and says why."""
        events: list[PoolEvent] = []
        if not self.memory_limit_mb:
            return events
        for slot in list(self.slots):
            if slot.job_id is None or slot.stopping:
                continue
            used = tree_rss_mb(slot.process.pid)
            if used <= self.memory_limit_mb:
                continue
            job_id = slot.job_id
            cause = (f"worker used {used:.0f} MB of memory, over worker_memory_limit_mb ({self.memory_limit_mb} MB): "
                     "killed")
            logger.error("job {}: {} (pid {})", job_id, cause, slot.process.pid)
            self.kill_job(job_id, "memory")
            events.append(PoolEvent(EventKind.DIED, job_id, WorkerDeath(
                cause, -signal.SIGKILL, "raise worker_memory_limit_mb if this model really needs that much, "
                                        "or run fewer workers")))
        return events

    def _drain(self, slot: WorkerSlot) -> list[PoolEvent]:
        events = []
        while True:
            try:
                if not slot.conn.poll():
                    break
                message = slot.conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, WorkerReady):
                slot.ready = True
                self.fresh_worker_mb = tree_rss_mb(slot.process.pid) or self.fresh_worker_mb
            elif isinstance(message, JobProgress) and message.job_id == slot.job_id:
                events.append(PoolEvent(EventKind.PROGRESS, message.job_id, message))
            elif isinstance(message, JobDone) and message.job_id == slot.job_id:
                self._end_peak(slot)
                events.append(PoolEvent(EventKind.DONE, message.job_id, message))
                slot.job_id = None
                slot.jobs_done += 1
                if slot.jobs_done >= self.max_jobs_per_worker:
                    self._recycle(slot)
                elif self._over_max_rss(slot):
                    self._recycle(slot, "its resident memory stayed above worker_max_rss_mb after the job")
        return events

    def _sample_peaks(self, now: float) -> None:
        """Each busy worker's highest resident memory during its job (sampled; the converter's own high-water
        mark, when it reports one, is exact)."""
        if now - self._last_sample < PEAK_SAMPLE_SECONDS:
            return
        self._last_sample = now
        for slot in self.slots:
            if slot.job_id is not None:
                slot.peak_mb = max(slot.peak_mb, tree_rss_mb(slot.process.pid))

    def _end_peak(self, slot: WorkerSlot) -> None:
        if slot.job_id is not None:
            self.peaks[slot.job_id] = max(slot.peak_mb, tree_rss_mb(slot.process.pid))
        slot.peak_mb = 0.0

    def take_peak(self, job_id: str) -> float | None:
        return self.peaks.pop(job_id, None) or None

    def _over_max_rss(self, slot: WorkerSlot) -> bool:
        if not self.max_rss_mb:
            return False
        used = tree_rss_mb(slot.process.pid)
        if used > self.max_rss_mb:
            logger.info("worker {} holds {:.0f} MB after its job, over worker_max_rss_mb ({} MB)", slot.index, used,
                        self.max_rss_mb)
            return True
        return False

    def rss_of(self, job_id: str) -> float:
        """What the worker holding job_id uses now (0 when none holds it)."""
        slot = self.busy().get(job_id)
        return tree_rss_mb(slot.process.pid) if slot else 0.0

    def fresh_worker_rss_mb(self) -> float | None:
        """A fresh worker's size (the toolkit imported, no model yet; measured when it said ready): the base a
        job's memory adds to. Not a worker's size after a job: the toolkit's heap keeps much of a build's peak."""
        return self.fresh_worker_mb or None

    def _recycle(self, slot: WorkerSlot, why: str = "") -> None:
        logger.info("recycling worker {} after {} jobs{}", slot.index, slot.jobs_done, f": {why}" if why else "")
        self._stop_idle(slot)
        self._replace(slot)

    @staticmethod
    def _stop_idle(slot: WorkerSlot) -> None:
        """Ask a worker without a job to exit (kill it when it does not within 10 s)."""
        slot.stopping = True
        try:
            slot.conn.send(None)
        except OSError:
            pass
        slot.process.join(10)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(5)

    def stop(self, drain_seconds: float, on_event: Callable[[PoolEvent], None]) -> list[str]:
        """Let running jobs finish for up to drain_seconds (their events go to on_event), then kill the rest.

        Returns the ids of the jobs left unfinished."""
        deadline = self.clock() + drain_seconds
        while self.busy() and self.clock() < deadline:
            for event in self.wait_events(min(0.5, max(0.0, deadline - self.clock()))):
                on_event(event)
        unfinished = list(self.busy())
        for slot in self.slots:
            slot.stopping = True
            try:
                if slot.job_id is None:
                    slot.conn.send(None)
            except OSError:
                pass
        for slot in self.slots:
            if slot.job_id is not None or not slot.ready:  # still importing the toolkit: nothing to lose
                slot.process.kill()
            slot.process.join(3)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(2)
            slot.conn.close()
        self.slots = []
        return unfinished

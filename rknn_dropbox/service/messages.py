"""What the daemon and its workers say to each other: the work order, the worker's replies, and the pool's events."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union


@dataclass(frozen=True)
class WorkOrder:
    """Daemon -> worker: convert the claimed job in `root` (a JobDir) with these defaults and settings."""
    job_id: str
    root: str
    name: str
    defaults: dict[str, Any] = field(default_factory=dict)  # the [convert] options as JSON (ConvertOptions.to_json)
    cache_dir: str | None = None  # None: the conversion cache is off
    cache_max_bytes: int = 0
    lock_dir: str | None = None  # where the cross-worker TensorFlow lock lives (the state dir)
    default_toolkit: str | None = None  # the first of [toolkits] versions: what a job builds with unless it asks
    toolkit: str | None = None  # build with exactly this version (the job asked for it, or a fallback)
    crashed: tuple[dict[str, str], ...] = ()  # a fallback's reason: the versions that crashed on this job before
    # the previous run's worker died building this accuracy-repair candidate: {"platform", "candidate", "cause"}
    repair_crash: dict[str, str] | None = None

    def settings(self) -> dict[str, Any]:
        """The per-daemon settings part of the order, as convert's JobSettings.from_order reads them."""
        return {"cache_dir": self.cache_dir, "cache_max_bytes": self.cache_max_bytes, "lock_dir": self.lock_dir,
                "default_toolkit": self.default_toolkit, "toolkit": self.toolkit, "crashed": list(self.crashed),
                "repair_crash": self.repair_crash}


@dataclass(frozen=True)
class WorkerReady:
    """Worker -> daemon: the toolkit is imported, send work."""
    pid: int


@dataclass(frozen=True)
class JobProgress:
    """Worker -> daemon: how far the job has got."""
    job_id: str
    stage: str
    progress: float


@dataclass(frozen=True)
class JobDone:
    """Worker -> daemon: the job ended; `result` (ConversionResult as a dict) when ok, else error and hint."""
    job_id: str
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None
    hint: str | None = None
    needs_toolkit: str | None = None  # not converted: the job needs this rknn-toolkit2 version, not the worker's
    crash: dict[str, Any] | None = None  # failed inside the toolkit: which version, what the job asked for, error


WorkerMessage = Union[WorkerReady, JobProgress, JobDone]


@dataclass(frozen=True)
class WorkerDeath:
    """The worker holding a job died (a signal, exit(), or killed over the memory limit)."""
    cause: str
    exitcode: int | None
    hint: str | None = None
    kernel_kill_beside_others: bool = False  # SIGKILL from outside while other jobs ran: an OOM kill a run alone
    #                                          may not meet (not the pool's own worker_memory_limit_mb kill)


@dataclass(frozen=True)
class JobTimeout:
    """The job ran past timeout_seconds; its worker was killed."""
    seconds: float


class EventKind(Enum):
    PROGRESS = "progress"
    DONE = "done"
    DIED = "died"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class PoolEvent:
    """Pool -> daemon loop: something happened to a job a worker held."""
    kind: EventKind
    job_id: str
    detail: JobProgress | JobDone | WorkerDeath | JobTimeout

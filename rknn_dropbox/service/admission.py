"""Memory admission: start a job only when the estimated peaks of the running jobs plus its own fit in memory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from loguru import logger

from rknn_dropbox.intake.scanner import split_name
from rknn_dropbox.intake.workarea import JobDir, write_json_atomic

MEMORY_FILE = "memory.json"
# A worker with the toolkit imported, before any model (replaced by the measured size of a fresh worker).
DEFAULT_BASE_MB = 600.0
# First time for a model of a format: peak growth per MB of model bytes over the base. Conservative: bench/memory.py
# measured ~2-5 for classifiers and detectors up to 320x320 (resnet18, mobilenet_v2, yolov8n; int8) and ~194 for
# deeplabv3_mobilenet_v3_large at 512x512 (44 MB of model, 8.9 GB at its peak), where activations dominate.
DEFAULT_RATIO = 200.0
HISTORY = 8  # ratios kept per format; the estimate is their maximum
KNOWN_MODELS = 500  # measured peaks kept per model (format and byte size): a model dropped again is estimated exactly
KNOWN_MARGIN = 1.1  # on a known model's growth over the base (not on the base, which its worker already holds)


def mem_available_mb() -> float | None:
    """MemAvailable from /proc/meminfo (None off Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def format_key(entries: list[str]) -> str:
    """What a job's memory is learned under before a worker has analyzed it: the model's file type."""
    exts = sorted({split_name(e)[1] or "folder" for e in entries} - {".yaml", ".yml"})
    return "+".join(exts) or "unknown"


def input_mb(folder: Path) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total / 1e6


@dataclass
class MemoryHistory:
    """What jobs of each format used: peak growth per model MB over the worker's base (persisted in state_dir)."""
    path: Path
    base_mb: float = DEFAULT_BASE_MB
    ratios: dict[str, list[float]] = field(default_factory=dict)
    models: dict[str, float] = field(default_factory=dict)  # "<format key> <model MB>" -> its last measured peak

    @classmethod
    def load(cls, state_dir: Path) -> "MemoryHistory":
        path = state_dir / MEMORY_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, float(raw.get("base_mb", DEFAULT_BASE_MB)),
                       {str(k): [float(x) for x in v][-HISTORY:] for k, v in raw.get("ratios", {}).items()},
                       {str(k): float(v) for k, v in raw.get("models", {}).items()})
        except (OSError, ValueError, TypeError, AttributeError):
            return cls(path)

    @staticmethod
    def model_id(key: str, model_mb: float) -> str:
        """The same architecture at the same input size exports to the same number of bytes, whatever its weights."""
        return f"{key} {model_mb:.4f}"

    def estimate_mb(self, key: str, model_mb: float) -> float:
        """The worker's estimated peak RSS for this job (its base included)."""
        known = self.models.get(self.model_id(key, model_mb))
        if known:
            return self.base_mb + max(known - self.base_mb, 0.0) * KNOWN_MARGIN
        ratios = self.ratios.get(key)
        ratio = max(ratios) if ratios else DEFAULT_RATIO
        return self.base_mb + ratio * model_mb

    def growth_mb(self, estimate_mb: float) -> float:
        """What a job estimated at `estimate_mb` adds to the machine: its idle worker already holds the base."""
        return max(estimate_mb - self.base_mb, 0.0)

    def learn(self, key: str, model_mb: float, peak_mb: float, fresh_worker_mb: float | None = None) -> None:
        """Record a finished job's measured peak (and a fresh worker's size, the base)."""
        if fresh_worker_mb:
            self.base_mb = max(fresh_worker_mb, 0.0)
        ratio = max(peak_mb - self.base_mb, 0.0) / max(model_mb, 0.1)
        self.ratios[key] = (self.ratios.get(key, []) + [round(ratio, 2)])[-HISTORY:]
        self.models.pop(self.model_id(key, model_mb), None)
        self.models[self.model_id(key, model_mb)] = round(peak_mb, 1)
        while len(self.models) > KNOWN_MODELS:
            self.models.pop(next(iter(self.models)))
        try:
            write_json_atomic(self.path, {"base_mb": round(self.base_mb, 1), "ratios": self.ratios,
                                          "models": self.models})
        except OSError as exc:
            logger.warning("cannot save memory history {}: {}", self.path, exc.strerror)


@dataclass(frozen=True)
class Running:
    """A job a worker holds: its estimated peak and what its worker uses now."""
    estimate_mb: float
    rss_mb: float


class MemoryAdmission:
    """admit(): the next job starts only if running jobs' remaining growth plus its own growth fits in MemAvailable
    minus memory_reserve_mb; with nothing running, a job always starts (a job bigger than the box runs alone, warned).

    Growth, not peak: MemAvailable already leaves out every worker's current size, the idle one that takes the job
    included, so counting the job's whole peak counted its worker's base twice; that ~1 GB decided whether two
    9 GB builds ran side by side, and made learned estimates serialize jobs that fit (bench/memory.py)."""

    def __init__(self, history: MemoryHistory, reserve_mb: float,
                 available: Callable[[], float | None] = mem_available_mb) -> None:
        self.history = history
        self.reserve_mb = reserve_mb
        self.available = available
        self.waiting_for_memory = False  # for the status snapshot

    def admit(self, job_id: str, estimate_mb: float, running: list[Running]) -> bool:
        """`estimate_mb`: what the job adds over its idle worker; `running`: each running job's estimated peak and
        its worker's size now (what it may still grow is the difference)."""
        free = self.available()
        if free is None or self.reserve_mb < 0:
            return True
        growth = sum(max(r.estimate_mb - r.rss_mb, 0.0) for r in running)
        room = free - self.reserve_mb - growth
        if estimate_mb <= room:
            self.waiting_for_memory = False
            return True
        if not running:
            logger.warning("job {} may need {:.0f} MB, more than this box has free ({:.0f} MB available, "
                           "memory_reserve_mb {:.0f}): it runs alone", job_id, estimate_mb, free, self.reserve_mb)
            self.waiting_for_memory = False
            return True
        if not self.waiting_for_memory:
            logger.info("job {} waits for memory: needs ~{:.0f} MB, {:.0f} MB left after the running jobs' peaks",
                        job_id, estimate_mb, max(room, 0.0))
        self.waiting_for_memory = True
        return False


@dataclass(frozen=True)
class JobSize:
    """What admission knows of a job before it runs: its format key, model size and estimated peak."""
    key: str
    model_mb: float
    estimate_mb: float


def job_size(job: JobDir, history: MemoryHistory | None) -> JobSize:
    try:
        entries = list(job.manifest().get("entries", []))
    except (OSError, ValueError):
        entries = []
    key, model_mb = format_key(entries), input_mb(job.input)
    return JobSize(key, model_mb, history.estimate_mb(key, model_mb) if history else 0.0)


class PoolMemory(Protocol):
    """What the gate reads of the worker pool."""
    def busy(self) -> dict[str, Any]: ...
    def rss_of(self, job_id: str) -> float: ...
    def take_peak(self, job_id: str) -> float | None: ...
    def fresh_worker_rss_mb(self) -> float | None: ...


class MemoryGate:
    """The daemon's side of admission: what each running job was estimated at, and learning from its peak."""

    def __init__(self, admission: MemoryAdmission | None, pool: PoolMemory) -> None:
        self.admission = admission
        self.pool = pool
        self.sizes: dict[str, JobSize] = {}  # running jobs: what admission estimated, what they are learned under
        self.alone: set[str] = set()  # jobs that start only when no other job runs (killed beside others before)

    @property
    def waiting_for_memory(self) -> bool:
        return bool(self.admission and self.admission.waiting_for_memory)

    def admit(self, job_id: str, job: JobDir) -> bool:
        """Start the job only if its estimated peak fits beside the running jobs' (always, without admission)."""
        if job_id in self.alone and self.pool.busy():
            return False
        self.alone.discard(job_id)
        size = job_size(job, self.admission.history if self.admission else None)
        if self.admission is not None:
            running = [Running(self.sizes[j].estimate_mb if j in self.sizes else 0.0, self.pool.rss_of(j))
                       for j in self.pool.busy()]
            if not self.admission.admit(job_id, self.admission.history.growth_mb(size.estimate_mb), running):
                return False
        self.sizes[job_id] = size
        return True

    def run_alone(self, job_id: str) -> None:
        """The job's next start waits until no other job runs."""
        self.alone.add(job_id)

    def not_started(self, job_id: str) -> None:
        self.sizes.pop(job_id, None)

    def job_peak(self, job_id: str, result: dict[str, Any] | None) -> float | None:
        """A job ended: its peak RSS (the converter's own high-water mark, else the pool's samples), put into its
        result's extra fields and learned for its format."""
        sampled = self.pool.take_peak(job_id)
        size = self.sizes.pop(job_id, None)
        extra = result.setdefault("extra", {}) if result is not None else {}
        peak = extra.get("peak_rss_mb") or sampled
        if not peak:
            return None
        extra.setdefault("peak_rss_mb", round(peak, 1))
        if self.admission is not None and size is not None:
            self.admission.history.learn(size.key, size.model_mb, peak, self.pool.fresh_worker_rss_mb())
        return peak

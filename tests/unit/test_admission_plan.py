"""Memory admission on a modelled 24 GB box (the real MemoryAdmission and MemoryHistory; the machine, workers and jobs
are a model of what bench/memory.py measured): three ~9 GB deeplabv3@512 builds beside five small int8 builds with
workers = 3. Plain workers = 3 is OOM-killed; admission must have no OOM kill and stay within 10 % of the best fixed
worker count without one, on its first run (no history) and once it has learned the estimates."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rknn_dropbox.intake.workarea import JobDir
from rknn_dropbox.service.admission import MemoryAdmission, MemoryGate, MemoryHistory

TOTAL_MB, SYSTEM_MB, BASE_MB, RESERVE_MB, RECYCLE_MB = 24105.0, 1200.0, 1200.0, 1024.0, 2048.0
TICK = 0.5  # the daemon's loop step


@dataclass(frozen=True)
class Job:
    name: str
    key: str          # the format key admission learns under
    model_mb: float
    peak_mb: float    # the worker's peak RSS (its base included)
    seconds: float


# peaks and times as bench/memory.py measured them on this box (deeplabv3 at 512: 8.9 GB; the small int8 folders
# 0.6 to 1.6 GB; workers=1 took 114 s for two deeplabs and the small ones)
BIG = [Job(f"deeplabv3-512-{i}", ".onnx", 44.0, 8900.0, 36.0) for i in range(3)]
SMALL = [Job("lraspp-int8", "folder", 13.0, 1600.0, 9.0), Job("mobilenet_v2-int8", "folder", 14.0, 1300.0, 7.0),
         Job("resnet18-int8", "folder", 45.0, 1400.0, 8.0), Job("shufflenet-int8", "folder", 9.0, 1250.0, 6.0),
         Job("yolov8n-int8", "folder", 12.8, 1500.0, 10.0)]
DROPS = BIG + SMALL  # the inbox's order: names sorted


@dataclass
class Slot:
    rss: float = BASE_MB
    job: Job | None = None
    started: float = 0.0


@dataclass
class Outcome:
    wall: float
    oom_kills: int
    concurrent_big: int = 0
    log: list[str] = field(default_factory=list)


def _rss(job: Job, elapsed: float) -> float:
    """A build's worker grows to its peak over the first 70 % of the job and stays there."""
    return BASE_MB + (job.peak_mb - BASE_MB) * min(1.0, elapsed / (0.7 * job.seconds))


def claimed(root: Path) -> dict[str, JobDir]:
    """Each drop claimed as the daemon claims it: job.json's entries and input/ (sparse files of the model's size)."""
    jobs = {}
    for job in DROPS:
        folder = JobDir(root / job.name)
        if job.key == "folder":
            entries, model = [job.name], folder.input / job.name / "model.onnx"
        else:
            entries, model = [f"{job.name}.onnx"], folder.input / f"{job.name}.onnx"
        model.parent.mkdir(parents=True)
        with open(model, "wb") as fh:
            fh.truncate(int(job.model_mb * 1e6))
        (folder.root / "job.json").write_text(json.dumps({"entries": entries, "name": job.name}))
        jobs[job.name] = folder
    return jobs


class ModelledPool:
    """What MemoryGate reads of the pool, from the modelled workers."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots

    def busy(self) -> dict[str, Slot]:
        return {s.job.name: s for s in self.slots if s.job}

    def rss_of(self, job_id: str) -> float:
        slot = self.busy().get(job_id)
        return slot.rss if slot else 0.0

    def take_peak(self, job_id: str) -> float | None:
        return None

    def fresh_worker_rss_mb(self) -> float | None:
        return BASE_MB


def simulate(workers: int, history: MemoryHistory | None, jobs: dict[str, JobDir]) -> Outcome:
    """The daemon's dispatch (in queue order, the queue waits when the head does not fit) on the modelled box."""
    slots = [Slot() for _ in range(workers)]
    queue, out, now = list(DROPS), Outcome(0.0, 0), 0.0

    def available() -> float:
        return TOTAL_MB - SYSTEM_MB - sum(s.rss for s in slots)
    gate = MemoryGate(MemoryAdmission(history, RESERVE_MB, available) if history else None, ModelledPool(slots))
    while queue or any(s.job for s in slots):
        for s in slots:  # finished jobs end; their peak is learned, a large worker replaced
            if s.job and now - s.started >= s.job.seconds:
                gate.job_peak(s.job.name, {"extra": {"peak_rss_mb": s.job.peak_mb}})
                s.job, s.rss = None, BASE_MB if s.rss > RECYCLE_MB else s.rss
        while queue and any(s.job is None for s in slots):
            if not gate.admit(queue[0].name, jobs[queue[0].name]):
                break
            slot = next(s for s in slots if s.job is None)
            slot.job, slot.started = queue.pop(0), now
        now += TICK
        for s in slots:
            if s.job:
                s.rss = _rss(s.job, now - s.started)
        out.concurrent_big = max(out.concurrent_big, sum(1 for s in slots if s.job in BIG))
        if available() < 0:  # the kernel kills the largest; the job is retried
            victim = max((s for s in slots if s.job), key=lambda s: s.rss)
            out.oom_kills += 1
            out.log.append(f"{now:.1f}s OOM {victim.job.name}")
            gate.not_started(victim.job.name)
            queue.insert(0, victim.job)
            victim.job, victim.rss = None, BASE_MB
        if now > 3600:
            raise AssertionError("the simulation did not finish")
    out.wall = now
    return out


def _best_plain(jobs: dict[str, JobDir]) -> float:
    runs = {w: simulate(w, None, jobs) for w in (1, 2, 3)}
    assert runs[3].oom_kills > 0, "the case admission exists for: plain workers = 3 is OOM-killed"
    return min(r.wall for r in runs.values() if r.oom_kills == 0)


@pytest.fixture
def history(tmp_path: Path) -> MemoryHistory:
    return MemoryHistory(tmp_path / "memory.json", base_mb=BASE_MB)


@pytest.fixture
def jobs(tmp_path: Path) -> dict[str, JobDir]:
    return claimed(tmp_path / "work")


def test_admission_with_three_workers_is_safe_and_fast_on_its_first_run(history: MemoryHistory,
                                                                         jobs: dict[str, JobDir]) -> None:
    best = _best_plain(jobs)
    first = simulate(3, history, jobs)
    assert first.oom_kills == 0, first.log
    assert first.concurrent_big <= 2
    assert first.wall <= 1.10 * best, (first.wall, best)


def test_learned_estimates_do_not_serialize_jobs_that_fit(history: MemoryHistory,
                                                           jobs: dict[str, JobDir]) -> None:
    best = _best_plain(jobs)
    simulate(3, history, jobs)  # the first run teaches it every model's peak
    learned = simulate(3, history, jobs)
    assert learned.oom_kills == 0, learned.log
    assert learned.concurrent_big == 2  # two 9 GB builds fit side by side, and run so
    assert learned.wall <= 1.10 * best, (learned.wall, best)


def test_a_known_models_margin_is_on_its_growth_not_its_workers_base(history: MemoryHistory) -> None:
    history.learn(".onnx", 44.0, 8900.0, BASE_MB)
    assert history.estimate_mb(".onnx", 44.0) == pytest.approx(BASE_MB + (8900.0 - BASE_MB) * 1.1)

"""The worker pool's supervision: which job a dead worker held, timeouts, replacement, recycling."""

from __future__ import annotations

import os
import time

import fakeworkers
import pytest

from rknn_dropbox.service.messages import EventKind, PoolEvent, WorkOrder
from rknn_dropbox.service.pool import WorkerPool, death_cause


def _collect(pool: WorkerPool, until, timeout: float = 30.0) -> list[PoolEvent]:
    events: list[PoolEvent] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, f"no expected event; got {events}"
        events.extend(pool.wait_events(0.2))
    return events


def _ready(pool: WorkerPool, n: int) -> None:
    _collect(pool, lambda _: len(pool.idle_slots()) >= n)


@pytest.fixture
def pool_factory():
    pools: list[WorkerPool] = []

    def make(target, size=2, timeout=60.0, max_jobs=100) -> WorkerPool:
        p = WorkerPool(size, timeout, max_jobs, target=target)
        p.start()
        pools.append(p)
        _ready(p, size)
        return p

    yield make
    for p in pools:
        p.stop(0, lambda e: None)


def test_a_crashing_worker_fails_only_the_job_it_held(pool_factory) -> None:
    pool = pool_factory(fakeworkers.by_name)
    assert pool.submit(WorkOrder("j-crash", "", "segfault"))
    assert pool.submit(WorkOrder("j-fine", "", "fine"))
    ended = (EventKind.DONE, EventKind.DIED)
    events = _collect(pool, lambda ev: {e.job_id for e in ev if e.kind in ended} == {"j-crash", "j-fine"})
    died = [e for e in events if e.kind is EventKind.DIED]
    assert [e.job_id for e in died] == ["j-crash"]
    assert "signal 11 (SIGSEGV)" in died[0].detail.cause
    assert [e.job_id for e in events if e.kind is EventKind.DONE] == ["j-fine"]
    _ready(pool, 2)  # replaced
    assert pool.alive == 2


def test_a_worker_that_calls_exit_is_named(pool_factory) -> None:
    pool = pool_factory(fakeworkers.by_name, size=1)
    pool.submit(WorkOrder("j1", "", "exit"))
    events = _collect(pool, lambda ev: any(e.kind is EventKind.DIED for e in ev))
    assert "exited with code 1" in events[-1].detail.cause


def test_a_hung_job_times_out_and_its_worker_is_replaced(pool_factory) -> None:
    pool = pool_factory(fakeworkers.by_name, size=1, timeout=1.0)
    pool.submit(WorkOrder("j-hang", "", "hang"))
    events = _collect(pool, lambda ev: any(e.kind is EventKind.TIMEOUT for e in ev), timeout=20)
    assert [e.job_id for e in events if e.kind is EventKind.TIMEOUT] == ["j-hang"]
    _ready(pool, 1)
    pool.submit(WorkOrder("j-next", "", "fine"))
    assert _collect(pool, lambda ev: any(e.kind is EventKind.DONE for e in ev))[-1].job_id == "j-next"


def test_workers_are_recycled_after_max_jobs(pool_factory) -> None:
    pool = pool_factory(fakeworkers.well_behaved, size=1, max_jobs=2)
    pids = []
    for i in range(4):
        _ready(pool, 1)
        pool.submit(WorkOrder(f"j{i}", "", "x"))
        done = _collect(pool, lambda ev: any(e.kind is EventKind.DONE for e in ev))
        pids.append([e for e in done if e.kind is EventKind.DONE][0].detail.result["pid"])
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[1] != pids[2]


def test_kill_job_stops_only_that_worker(pool_factory) -> None:
    pool = pool_factory(fakeworkers.by_name, size=2)
    hung_pid = pool.submit(WorkOrder("j-long", "", "hang"))
    other_pid = next(s.process.pid for s in pool.slots if s.job_id is None)
    assert pool.kill_job("j-long", "cancel")
    with pytest.raises(ProcessLookupError):  # the worker process really is gone (reaped), not just forgotten
        os.kill(hung_pid, 0)
    _ready(pool, 2)  # a replacement was spawned; the other worker kept running
    pids = {s.process.pid for s in pool.slots}
    assert other_pid in pids and hung_pid not in pids
    pool.submit(WorkOrder("j-after", "", "fine"))
    pool.submit(WorkOrder("j-after2", "", "fine"))
    events = _collect(pool, lambda ev: len([e for e in ev if e.kind is EventKind.DONE]) == 2)
    assert not [e for e in events if e.job_id == "j-long"]  # a cancel is not reported as a worker death


def test_death_cause_words() -> None:
    assert death_cause(-9).startswith("worker killed by signal 9 (SIGKILL): most likely the machine ran out of memory")
    assert "SIGABRT" in death_cause(-6)
    assert "SIGBUS" in death_cause(-7)
    assert "code 1" in death_cause(1)

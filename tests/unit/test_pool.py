"""The worker pool's supervision: which job a dead worker held, timeouts, replacement, recycling."""

from __future__ import annotations

import time

import fakeworkers
import pytest

from rknn_dropbox.service.pool import PoolEvent, WorkerPool, death_cause


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
    assert pool.submit({"job_id": "j-crash", "name": "segfault"})
    assert pool.submit({"job_id": "j-fine", "name": "fine"})
    events = _collect(pool, lambda ev: {e.job_id for e in ev if e.kind in ("done", "died")} == {"j-crash", "j-fine"})
    died = [e for e in events if e.kind == "died"]
    assert [e.job_id for e in died] == ["j-crash"]
    assert "signal 11 (SIGSEGV)" in died[0].data["cause"]
    assert [e.job_id for e in events if e.kind == "done"] == ["j-fine"]
    _ready(pool, 2)  # replaced
    assert pool.alive == 2


def test_a_worker_that_calls_exit_is_named(pool_factory) -> None:
    pool = pool_factory(fakeworkers.by_name, size=1)
    pool.submit({"job_id": "j1", "name": "exit"})
    events = _collect(pool, lambda ev: any(e.kind == "died" for e in ev))
    assert "exited with code 1" in events[-1].data["cause"]


def test_a_hung_job_times_out_and_its_worker_is_replaced(pool_factory) -> None:
    pool = pool_factory(fakeworkers.by_name, size=1, timeout=1.0)
    pool.submit({"job_id": "j-hang", "name": "hang"})
    events = _collect(pool, lambda ev: any(e.kind == "timeout" for e in ev), timeout=20)
    assert [e.job_id for e in events if e.kind == "timeout"] == ["j-hang"]
    _ready(pool, 1)
    pool.submit({"job_id": "j-next", "name": "fine"})
    assert _collect(pool, lambda ev: any(e.kind == "done" for e in ev))[-1].job_id == "j-next"


def test_workers_are_recycled_after_max_jobs(pool_factory) -> None:
    pool = pool_factory(fakeworkers.well_behaved, size=1, max_jobs=2)
    pids = []
    for i in range(4):
        _ready(pool, 1)
        pool.submit({"job_id": f"j{i}", "name": "x"})
        done = _collect(pool, lambda ev: any(e.kind == "done" for e in ev))
        pids.append([e for e in done if e.kind == "done"][0].data["result"]["pid"])
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[1] != pids[2]


def test_kill_job_stops_only_that_worker(pool_factory) -> None:
    pool = pool_factory(fakeworkers.by_name, size=2)
    pool.submit({"job_id": "j-long", "name": "hang"})
    assert pool.kill_job("j-long", "cancel")
    assert "j-long" not in pool.busy()
    _ready(pool, 2)


def test_death_cause_words() -> None:
    assert death_cause(-9) == "worker killed by signal 9 (SIGKILL) — out of memory?"
    assert "SIGABRT" in death_cause(-6)
    assert "SIGBUS" in death_cause(-7)
    assert "code 1" in death_cause(1)

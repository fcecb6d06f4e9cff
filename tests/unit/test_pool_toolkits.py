"""Workers per toolkit version: a job waits for a worker of its version, which replaces an idle one no queued job
needs; the pool never holds more than `workers` processes."""

from __future__ import annotations

import os
import time

import fakeworkers

from rknn_dropbox.service.messages import EventKind, WorkOrder
from rknn_dropbox.service.pool import WorkerPool


def _wait(pool: WorkerPool, until, timeout: float = 30.0) -> list:
    events: list = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, f"no expected event; got {events}"
        events.extend(pool.wait_events(0.2))
    return events


def test_a_job_for_another_version_gets_a_worker_of_it_in_place_of_an_idle_one() -> None:
    pool = WorkerPool(2, 60.0, 100, target=fakeworkers.reports_toolkit, default_toolkit="2.5.0",
                      toolkit_folder=lambda v: None if v == "2.5.0" else f"/toolkits/{v}")
    pool.start()
    try:
        _wait(pool, lambda _: len(pool.idle_slots("2.5.0")) == 2)
        assert pool.submit(WorkOrder("old", "", "old"), "2.3.2") is None  # no worker of 2.3.2 yet
        assert pool.make_room("2.3.2", 1, {"2.3.2"}) == 1
        assert pool.make_room("2.3.2", 1, {"2.3.2"}) == 0  # one is starting: no second retirement for one job
        assert pool.toolkits() == {"2.5.0": 1, "2.3.2": 1} and len(pool.slots) == 2
        _wait(pool, lambda _: pool.idle_slots("2.3.2"))
        assert pool.submit(WorkOrder("old", "", "old"), "2.3.2")
        done = _wait(pool, lambda ev: any(e.kind is EventKind.DONE for e in ev))[-1].detail
        assert done.result["toolkit_folder"] == "/toolkits/2.3.2"
        # a worker a queued job still needs is never retired for another version
        assert pool.make_room("2.3.0", 1, {"2.3.0", "2.3.2", "2.5.0"}) == 0
        assert pool.alive == 2
    finally:
        pool.stop(0, lambda e: None)


def test_a_version_whose_worker_dies_before_ready_is_not_started_again() -> None:
    pool = WorkerPool(1, 60.0, 100, target=fakeworkers.broken_unless_default, default_toolkit="2.5.0",
                      toolkit_folder=lambda v: None if v == "2.5.0" else f"/toolkits/{v}")
    pool.start()
    try:
        _wait(pool, lambda _: pool.idle_slots("2.5.0"))
        assert pool.make_room("2.3.2", 1, {"2.3.2"}) == 1
        _wait(pool, lambda _: "2.3.2" in pool.broken_toolkits)
        _wait(pool, lambda _: pool.idle_slots("2.5.0"))  # the default took its place, and still converts
        assert pool.make_room("2.3.2", 1, {"2.3.2"}) == 0 and pool.toolkits() == {"2.5.0": 1}
    finally:
        pool.stop(0, lambda e: None)


def test_each_worker_computes_on_its_share_of_the_cores_without_spinning(tmp_path) -> None:
    import modelgen
    from rknn_dropbox.service.pool import threads_per_worker
    model = modelgen.write_onnx_conv(tmp_path / "conv.onnx")
    share = threads_per_worker(2)
    assert share >= 1 and share * 2 <= max(2, os.cpu_count() or 1)  # two workers never ask for more than the cores
    pool = WorkerPool(2, 60.0, 100, target=fakeworkers.reports_session_threads, worker_threads=share)
    pool.start()
    try:
        _wait(pool, lambda _: len(pool.idle_slots()) == 2)
        assert pool.submit(WorkOrder("j1", str(model), "conv"))
        done = _wait(pool, lambda ev: any(e.kind is EventKind.DONE for e in ev))[-1].detail
        assert done.result == {"threads": share, "omp": str(share), "spinning": "0"}, done.result
    finally:
        pool.stop(0, lambda e: None)

"""Memory admission (in process, fake workers, a stand-in MemAvailable): a job starts only when the running jobs'
estimated peaks plus its own fit; a job bigger than the box runs alone; each job's measured peak is recorded and
learned; a worker that stays large after a job is replaced."""

from __future__ import annotations

import json
from pathlib import Path

import fakeworkers

from conftest import wait_for
from rknn_dropbox.config import Config, config_from_mapping
from rknn_dropbox.service.daemon import Daemon, prepare_folders
from rknn_dropbox.store import FAILED, PROCESSING, QUEUED


def _config(tmp_path: Path, **extra) -> Config:
    cfg = config_from_mapping({"inbox": "inbox", "outbox": "outbox", "failed": "failed", "state_dir": "state",
                               "workers": 2, "stable_seconds": 0.0, "http": {"enabled": False},
                               "memory_reserve_mb": 1000, "drain_seconds": 0, **extra}, tmp_path)
    prepare_folders(cfg)
    return cfg


def _statuses(d: Daemon) -> dict[str, str]:
    return {r.name: r.status for r in d.store.list()}


def test_a_job_waits_until_its_estimated_peak_fits(tmp_path: Path, started: list[Daemon]) -> None:
    cfg = _config(tmp_path)
    # each job grows its worker by ~3 GB (a model seen before: its measured peak over the base)
    (cfg.state_dir / "memory.json").write_text(json.dumps({"base_mb": 100, "ratios": {},
                                                           "models": {".onnx 0.0000": 2800}}))
    d = Daemon(cfg)
    d.pool.target = fakeworkers.by_name
    available = [5000.0]  # MB: room for one such job beside the 1000 MB reserve, not two
    d.memory.admission.available = lambda: available[0]
    started.append(d)
    for name in ("hang", "hang2"):
        (cfg.inbox / f"{name}.onnx").write_bytes(b"model")
    d.start()
    wait_for(lambda: (d.step(0.1), PROCESSING in _statuses(d).values() and len(d.pool.idle_slots()) == 1)[1], 30,
             what="one job converting and a worker idle")
    for _ in range(5):
        d.step(0.1)
    assert sorted(_statuses(d).values()) == [PROCESSING, QUEUED], "both started though only one fits"
    assert d.status_snapshot()["waiting_for_memory"] is True
    available[0] = 9000.0  # the box has room again
    wait_for(lambda: (d.step(0.1), sorted(_statuses(d).values()) == [PROCESSING, PROCESSING])[1], 10,
             what="the second job admitted")


def test_a_job_bigger_than_the_box_runs_alone(tmp_path: Path, started: list[Daemon]) -> None:
    cfg = _config(tmp_path)
    (cfg.state_dir / "memory.json").write_text(json.dumps({"base_mb": 100, "ratios": {},
                                                           "models": {".onnx 0.0000": 50000}}))
    d = Daemon(cfg)
    d.pool.target = fakeworkers.by_name
    d.memory.admission.available = lambda: 5000.0
    started.append(d)
    (cfg.inbox / "hang.onnx").write_bytes(b"model")
    d.start()
    wait_for(lambda: (d.step(0.1), _statuses(d).get("hang") == PROCESSING)[1], 30, what="the big job started")


def test_peak_is_recorded_learned_and_a_large_worker_recycled(tmp_path: Path, started: list[Daemon]) -> None:
    cfg = _config(tmp_path, workers=1, worker_max_rss_mb=200)
    d = fakeworkers.start_daemon(cfg, started, ("hog",))
    wait_for(lambda: (d.step(0.1), _statuses(d).get("hog") == PROCESSING)[1], 30, what="hog started")
    pid = d.pool.slots[0].process.pid
    wait_for(lambda: (d.step(0.1), _statuses(d).get("hog") == FAILED)[1], 30, what="hog finished")
    record = d.store.list()[0]
    assert record.peak_rss_mb is not None and record.peak_rss_mb > 300, record.peak_rss_mb
    assert record.to_task()["peak_rss_mb"] == record.peak_rss_mb
    learned = json.loads((cfg.state_dir / "memory.json").read_text())
    assert learned["ratios"][".onnx"], learned
    wait_for(lambda: (d.step(0.1), d.pool.slots and d.pool.slots[0].process.pid != pid)[1], 10,
             what="the worker holding 300 MB replaced")
    assert learned["models"] == {".onnx 0.0000": record.peak_rss_mb}, learned
    # the base is a fresh worker's size, not that of a worker still holding a build's heap
    assert learned["base_mb"] < 300, learned


def test_a_model_seen_before_is_estimated_from_its_own_peak(tmp_path: Path) -> None:
    from rknn_dropbox.service.admission import DEFAULT_RATIO, KNOWN_MARGIN, MemoryHistory
    history = MemoryHistory(tmp_path / "memory.json", base_mb=400.0)
    first_time = history.estimate_mb(".onnx", 44.0)
    assert first_time == 400.0 + DEFAULT_RATIO * 44.0  # conservative: what deeplabv3 at 512 grows (bench/memory.py)
    history.learn(".onnx", 44.0, 8900.0, 400.0)    # deeplabv3 at 512: 8.9 GB
    history.learn(".onnx", 46.7, 620.0, 400.0)     # resnet18: 0.6 GB, about the same number of model bytes
    assert history.estimate_mb(".onnx", 46.7) == 400.0 + 220.0 * KNOWN_MARGIN  # the margin: on the growth
    assert history.estimate_mb(".onnx", 44.0) == 400.0 + 8500.0 * KNOWN_MARGIN
    unknown = history.estimate_mb(".onnx", 20.0)   # a model never seen: the format's largest growth per MB
    assert abs(unknown - (400.0 + (8900.0 - 400.0) / 44.0 * 20.0)) < 1.0
    again = MemoryHistory.load(tmp_path)
    assert again.estimate_mb(".onnx", 46.7) == 400.0 + 220.0 * KNOWN_MARGIN

"""Poison models and live claims (in process, fake workers): a job the daemon keeps dying under fails at max_attempts
listing every cause; the heartbeat goes on while the loop is blocked; a heartbeat's age is read on the file server's
clock; a host whose claim was taken over drops its work and delivers nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import fakeworkers
import pytest

from conftest import wait_for
from rknn_dropbox.config import Config, config_from_mapping
from rknn_dropbox.intake import hosts
from rknn_dropbox.intake.claims import claim_bundle
from rknn_dropbox.intake.hosts import HEARTBEAT, heartbeat_age, take_over_stale_claims
from rknn_dropbox.service.daemon import Daemon, prepare_folders
from rknn_dropbox.store import FAILED, PROCESSING, JobRecord


def _config(tmp_path: Path, **extra) -> Config:
    cfg = config_from_mapping({"inbox": "inbox", "outbox": "outbox", "failed": "failed", "state_dir": "state",
                               "workers": 1, "host_id": "here", "http": {"enabled": False}, **extra}, tmp_path)
    prepare_folders(cfg)
    return cfg


def test_a_job_the_daemon_keeps_dying_under_fails_at_max_attempts(tmp_path: Path) -> None:
    cfg = _config(tmp_path, max_attempts=3)
    (cfg.inbox / "huge.onnx").write_bytes(b"model")
    job = claim_bundle(cfg.inbox, cfg.claim_dir, "huge", ["huge.onnx"], "file")
    first = Daemon(cfg)
    first.store.add(JobRecord(id=job.job_id, name="huge", status=PROCESSING, work_path=str(job.root)))
    first.store.close()
    for run in range(1, 10):  # each run: recover, hand the job to a worker, die under it (kill -9, OOM, power)
        d = Daemon(cfg)
        d.recovery.recover(cfg)
        status = d.store.get(job.job_id).status
        if status == FAILED:
            break
        assert d.queue and d.queue[0] == job.job_id
        d.store.mark_processing(job.job_id, 4242)
        d.store.close()
    d.store.close()
    assert run == 3, f"failed after {run} starts"
    error = json.loads((cfg.failed / "huge" / "error.json").read_text())
    assert error["error"].startswith("gave up after 3 attempts (max_attempts): attempt 1: the daemon stopped")
    assert "attempt 2:" in error["error"] and "attempt 3:" in error["error"]
    assert (cfg.failed / "huge" / "input" / "huge.onnx").is_file()


def test_heartbeat_goes_on_while_the_loop_is_blocked(tmp_path: Path, started: list[Daemon]) -> None:
    cfg = _config(tmp_path, stale_claim_seconds=1.0)  # beats every 0.25 s
    d = Daemon(cfg)
    d.pool.target = fakeworkers.well_behaved
    started.append(d)
    d.start()
    ages = []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # the loop is not stepped: a long cross-filesystem copy, say
        ages.append(heartbeat_age(cfg.claim_dir))
        time.sleep(0.05)
    assert max(ages) < 1.0, f"heartbeat went stale ({max(ages):.1f} s) while the loop was busy"


def test_heartbeat_age_is_read_on_the_file_servers_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claims = tmp_path / "inbox" / ".rknn-dropbox"
    mine, theirs = claims / "here", claims / "there"
    (theirs / "20260101-000000-abcdef" / "input").mkdir(parents=True)
    mine.mkdir()
    (theirs / HEARTBEAT).write_text("1\n")  # the other host beat just now (mtime set by the file server)
    real_time = time.time
    monkeypatch.setattr(hosts.time, "time", lambda: real_time() + 3600)  # this host's clock is an hour fast
    assert take_over_stale_claims(mine, stale_seconds=600) == []
    assert (theirs / "20260101-000000-abcdef").is_dir()


def test_a_host_whose_claim_was_taken_drops_its_work(tmp_path: Path, started: list[Daemon]) -> None:
    cfg = _config(tmp_path, stale_claim_seconds=1.0)
    d = fakeworkers.start_daemon(cfg, started, ("hang",))
    record = wait_for(lambda: (d.step(0.1), next(iter(d.store.list(status=PROCESSING)), None))[1], 30,
                      what="the job converting")
    other = cfg.claim_dir.parent / "there"
    other.mkdir()
    os.rename(record.work_path, other / record.id)  # another host decided we were dead and took the claim
    wait_for(lambda: (d.step(0.1), d.store.get(record.id).status == FAILED)[1], 10, what="the job dropped")
    assert "taken over by another host" in d.store.get(record.id).error
    assert not d.pool.busy() and not d.finisher.pending
    assert os.listdir(cfg.outbox) == [] and os.listdir(cfg.failed) == []
    assert (other / record.id / "input" / "hang.onnx").is_file()


def _step_until(d: Daemon, what: str, condition, timeout: float = 30):
    return wait_for(lambda: (d.step(0.1), condition())[1], timeout, what=what)


def test_a_worker_killed_beside_other_jobs_is_retried_alone(tmp_path: Path, started: list[Daemon]) -> None:
    """An OOM kill while two builds ran: the job is tried again, alone, and that attempt counts."""
    cfg = _config(tmp_path, workers=2, max_attempts=3)
    d = fakeworkers.start_daemon(cfg, started, ("killed-once", "slow"))
    _step_until(d, "both jobs converting", lambda: len(d.store.list(status=PROCESSING)) == 2)
    victim = next(r for r in d.store.list(status=PROCESSING) if r.name == "killed-once")
    wait_for(lambda: (Path(victim.work_path) / "first-attempt").exists(), 30, what="the victim's worker at work")
    os.kill(victim.worker_pid, 9)  # what the kernel's OOM killer does
    _step_until(d, "the victim requeued", lambda: d.store.get(victim.id).attempts == 1)
    assert d.store.get(victim.id).status != FAILED
    assert d.store.get(next(r.id for r in d.store.list() if r.name == "slow")).status == PROCESSING, \
        "the retry must wait for the other job"
    _step_until(d, "the second attempt", lambda: d.store.get(victim.id).status == FAILED)
    record, other = d.store.get(victim.id), next(r for r in d.store.list() if r.name == "slow")
    assert record.error == "second attempt ran"
    assert other.status == FAILED and other.finished_at <= record.started_at, "the retry ran beside the other job"
    assert record.attempt_causes == ["attempt 1: worker killed by signal 9 (SIGKILL): most likely the machine ran out "
                                     "of memory during the toolkit's build (the kernel's OOM killer ends the largest "
                                     "process)"]


def test_a_worker_killed_while_alone_fails_at_once(tmp_path: Path, started: list[Daemon]) -> None:
    """Alone, an OOM kill would happen again: no retry burns another build."""
    cfg = _config(tmp_path, workers=2, max_attempts=3)
    d = fakeworkers.start_daemon(cfg, started, ("killed-once",))
    record = _step_until(d, "the job converting", lambda: next(iter(d.store.list(status=PROCESSING)), None))
    os.kill(record.worker_pid, 9)
    _step_until(d, "the job failed", lambda: d.store.get(record.id).status == FAILED)
    error = json.loads((cfg.failed / "killed-once" / "error.json").read_text())
    assert error["error"].startswith("worker killed by signal 9 (SIGKILL)")
    assert d.store.get(record.id).attempt_causes == []

"""No one step ends the daemon's loop (in process, fake workers; faults injected where the OS cannot be made to
fail on cue): a worker that died before taking its order, a full state database, an OSError inside delivery's own
undo, a heartbeat thread whose folder vanished, a dead watcher. Each is logged, counted, retried; every file kept."""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

import fakeworkers
import pytest

from conftest import wait_for
from rknn_dropbox.config import Config, config_from_mapping
from rknn_dropbox.intake import delivery
from rknn_dropbox.intake.hosts import HEARTBEAT, heartbeat_age
from rknn_dropbox.service.daemon import Daemon, prepare_folders
from rknn_dropbox.status.metrics import render_metrics
from rknn_dropbox.status.server import health_body
from rknn_dropbox.store import FAILED


def _config(tmp_path: Path, **extra) -> Config:
    cfg = config_from_mapping({"inbox": "inbox", "outbox": "outbox", "failed": "failed", "state_dir": "state",
                               "workers": 1, "host_id": "here", "stable_seconds": 0.1, "stale_claim_seconds": 1.0,
                               "http": {"enabled": False}, **extra}, tmp_path)
    prepare_folders(cfg)
    return cfg


def _step_until(d: Daemon, what: str, condition, timeout: float = 30):
    return wait_for(lambda: (d.step(0.1), condition())[1], timeout, what=what)


def _completed(d: Daemon, name: str) -> bool:
    """The job ended (the fake workers fail every job) and was delivered to failed/."""
    return any(r.name == name and r.status == FAILED and r.output_dir for r in d.store.list())


def test_a_worker_that_died_before_taking_its_order_is_replaced(tmp_path: Path, started: list[Daemon]) -> None:
    cfg = _config(tmp_path)
    d = fakeworkers.start_daemon(cfg, started, target=fakeworkers.fails_fast)
    _step_until(d, "the worker ready", lambda: d.pool.idle_slots())
    slot = d.pool.idle_slots()[0]
    slot.process.kill()  # it dies after its last message; the loop has not seen the death yet
    slot.process.join(5)
    (cfg.inbox / "net.onnx").write_bytes(b"model")
    d.intake.scan_inbox()
    d.intake.scanner.stable_seconds = 0.0
    d.intake.scan_inbox()
    assert d.queue, "nothing claimed"
    d.dispatch()  # today: BrokenPipeError out of pool.submit ends the daemon
    _step_until(d, "the job done by a fresh worker", lambda: _completed(d, "net"))
    assert (cfg.failed / "net" / "input" / "net.onnx").read_bytes() == b"model"


def test_a_full_state_database_loses_no_claim(tmp_path: Path, started: list[Daemon],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    d = fakeworkers.start_daemon(cfg, started, target=fakeworkers.fails_fast)
    real_add = d.store.add
    failures = []

    def full_disk(record):
        if len(failures) < 3:
            failures.append(record.id)
            raise sqlite3.OperationalError("database or disk is full")
        return real_add(record)

    monkeypatch.setattr(d.store, "add", full_disk)
    (cfg.inbox / "net.onnx").write_bytes(b"model")
    _step_until(d, "the job done once the database has room", lambda: _completed(d, "net"))
    assert failures, "the fault never fired"
    assert (cfg.failed / "net" / "input" / "net.onnx").read_bytes() == b"model"
    assert os.listdir(cfg.failed) == ["net"]
    text = render_metrics(d.store, d.published_snapshot)
    assert 'rknn_dropbox_loop_errors_total{step="inbox scan"} 1' in text, text


def test_an_oserror_inside_deliverys_undo_keeps_the_job_whole(tmp_path: Path, started: list[Daemon],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    d = fakeworkers.start_daemon(cfg, started, target=fakeworkers.fails_fast)
    real_rename = os.rename
    broken = {"on": True}

    def eio_on_the_share(src, dst):
        if broken["on"] and str(cfg.failed) in str(dst) + str(src):
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(delivery.os, "rename", eio_on_the_share)
    (cfg.inbox / "net.onnx").write_bytes(b"model")
    _step_until(d, "the delivery waiting", lambda: d.finisher.pending)
    broken["on"] = False
    d.finisher.retry_all_soon()
    _step_until(d, "the job delivered", lambda: _completed(d, "net"))
    assert (cfg.failed / "net" / "input" / "net.onnx").read_bytes() == b"model"
    assert sorted(os.listdir(cfg.failed)) == ["net"]


def test_the_heartbeat_outlives_its_folder_vanishing(tmp_path: Path, started: list[Daemon]) -> None:
    cfg = _config(tmp_path)  # beats every 0.25 s
    d = fakeworkers.start_daemon(cfg, started, target=fakeworkers.fails_fast)
    aside = tmp_path / "aside"
    os.rename(cfg.claim_dir, aside)  # a share hiccup: the write in touch_heartbeat's except killed the thread
    time.sleep(1.0)
    os.rename(aside, cfg.claim_dir)
    (cfg.claim_dir / HEARTBEAT).unlink()
    wait_for(lambda: heartbeat_age(cfg.claim_dir) is not None and (cfg.claim_dir / HEARTBEAT).exists(), 5,
             what="the heartbeat beating again")
    assert d.heartbeat.is_alive()


def test_dead_threads_are_restarted_and_shown(tmp_path: Path, started: list[Daemon]) -> None:
    cfg = _config(tmp_path)
    d = fakeworkers.start_daemon(cfg, started, target=fakeworkers.fails_fast)
    d.watcher.observer.stop()
    d.watcher.observer.join(5)
    d.heartbeat._stop.set()
    wait_for(lambda: not d.heartbeat.is_alive(), 5, what="the heartbeat stopped")
    d.publish_snapshot()
    body = health_body(d.published_snapshot)
    assert body["status"] == "degraded"
    assert "watcher thread not running" in body["problems"] and "heartbeat thread not running" in body["problems"]
    _step_until(d, "both restarted", lambda: d.watcher and d.watcher.is_alive() and d.heartbeat.is_alive())
    d.publish_snapshot()
    assert health_body(d.published_snapshot)["status"] == "healthy"
    text = render_metrics(d.store, d.published_snapshot)
    assert 'rknn_dropbox_thread_restarts_total{thread="watcher"} 1' in text
    assert 'rknn_dropbox_thread_restarts_total{thread="heartbeat"} 1' in text
    (cfg.inbox / "late.onnx").write_bytes(b"model")  # the new watcher wakes the loop
    _step_until(d, "the job done", lambda: _completed(d, "late"))


def test_the_share_check_reads_the_mount_a_folder_is_on() -> None:
    from rknn_dropbox.service.share import MountId, mount_of
    info = ("22 1 8:1 / / rw - ext4 /dev/vda rw\n"
            "40 22 0:50 / /srv/share rw - autofs systemd-1 rw\n"
            "41 40 0:51 / /srv/share rw - nfs4 nas:/export rw\n")  # an automount, and the share mounted on it
    assert mount_of("/srv/share/inbox", info) == MountId("/srv/share", "nfs4", "nas:/export")
    assert mount_of("/srv/shared", info) == MountId("/", "ext4", "/dev/vda")
    unmounted = info.rsplit("41 40", 1)[0]
    assert mount_of("/srv/share/inbox", unmounted) == MountId("/srv/share", "autofs", "systemd-1")

"""The periodic full rescan catches what the observer missed; poll = "auto" default; config keys of issue 5."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from rknn_dropbox.config import Config, ConfigError, config_from_mapping
from rknn_dropbox.service.daemon import Daemon, prepare_folders
from rknn_dropbox.service.reload import apply_live, changed_keys
from rknn_dropbox.intake.watcher import choose_polling


def _daemon(tmp_path: Path, rescan: float) -> Daemon:
    cfg = config_from_mapping({"inbox": "inbox", "outbox": "outbox", "failed": "failed", "state_dir": "state",
                               "stable_seconds": 0.2, "rescan_seconds": rescan, "workers": 1,
                               "http": {"enabled": False}}, tmp_path)
    prepare_folders(cfg)
    d = Daemon(cfg)  # no watcher: as if the observer missed every event (an inotify queue overflow)
    return d


def _run(d: Daemon, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        d.step(timeout=0.05)


@pytest.mark.parametrize("rescan, claimed", [(1.0, True), (60.0, False)])
def test_rescan_claims_what_no_observer_reported(tmp_path: Path, rescan: float, claimed: bool) -> None:
    d = _daemon(tmp_path, rescan)
    try:
        _run(d, 0.2)  # the first scan, of an empty inbox
        (d.cfg.inbox / "missed.onnx").write_bytes(b"not really a model")
        _run(d, 2.0)
        assert (not (d.cfg.inbox / "missed.onnx").exists()) is claimed
        assert (len(d.queue) == 1) is claimed
    finally:
        d.store.close()


def test_poll_auto_is_the_default_and_says_why(tmp_path: Path) -> None:
    assert Config().poll == "auto"
    polling, reason = choose_polling("auto", tmp_path)
    assert polling is False and reason.startswith("inbox is on a local ")
    assert choose_polling(True, tmp_path) == (True, "poll = true in the config")


def test_host_id_names_the_claim_folder(tmp_path: Path) -> None:
    cfg = config_from_mapping({"inbox": "in", "host_id": "box-a"}, tmp_path)
    assert cfg.claim_dir == tmp_path / "in" / ".rknn-dropbox" / "box-a"
    for bad in ("", "..", "a/b", ".hidden"):
        with pytest.raises(ConfigError, match="host_id"):
            config_from_mapping({"host_id": bad}, tmp_path)
    with pytest.raises(ConfigError, match="worker_memory_limit_mb"):
        config_from_mapping({"worker_memory_limit_mb": -1}, tmp_path)
    with pytest.raises(ConfigError, match="stale_claim_seconds"):
        config_from_mapping({"stale_claim_seconds": 0}, tmp_path)


def test_reload_splits_live_and_restart_keys(tmp_path: Path) -> None:
    old = config_from_mapping({}, tmp_path)
    new = config_from_mapping({"timeout_seconds": 5, "workers": 3, "log_level": "debug",
                               "convert": {"target_platform": "rk3566"}}, tmp_path)
    live, restart = changed_keys(old, new)
    assert sorted(live) == ["convert", "log_level", "timeout_seconds"] and restart == ["workers"]
    merged = apply_live(old, new, live)
    assert merged.timeout_seconds == 5 and merged.workers == old.workers
    assert merged.convert.target_platform == ["rk3566"] or merged.convert.target_platform == ("rk3566",)
    assert changed_keys(old, replace(old)) == ([], [])

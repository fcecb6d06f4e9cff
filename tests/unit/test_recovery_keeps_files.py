"""Start-up recovery never deletes what a user dropped, and never converts again what already has an outcome:
a job folder whose job.json was lost gives its inputs back (inbox, or failed/ when the name is taken); a finished
job whose delivery waited (a full failed/) is delivered from the outcome kept with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rknn_dropbox.config import Config, config_from_mapping
from rknn_dropbox.intake.claims import claim_bundle
from rknn_dropbox.service.daemon import Daemon, prepare_folders
from rknn_dropbox.store import FAILED, PROCESSING, JobRecord


def _config(tmp_path: Path) -> Config:
    cfg = config_from_mapping({"inbox": "inbox", "outbox": "outbox", "failed": "failed", "state_dir": "state",
                               "workers": 1, "http": {"enabled": False}}, tmp_path)
    prepare_folders(cfg)
    return cfg


def _claimed_without_manifest(cfg: Config, name: str, data: bytes) -> tuple[Daemon, str]:
    (cfg.inbox / f"{name}.onnx").write_bytes(data)
    job = claim_bundle(cfg.inbox, cfg.claim_dir, name, [f"{name}.onnx"], "file")
    d = Daemon(cfg)
    d.store.add(JobRecord(id=job.job_id, name=name, status=PROCESSING, work_path=str(job.root)))
    (job.root / "job.json").unlink()  # the renames survived a crash on NFS, the manifest did not
    return d, job.job_id


def test_inputs_of_a_job_without_job_json_go_back_to_inbox(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    d, job_id = _claimed_without_manifest(cfg, "net", b"the user's model")
    try:
        d.recovery.recover(cfg)
        assert (cfg.inbox / "net.onnx").read_bytes() == b"the user's model"
        assert not (cfg.claim_dir / job_id).exists()
        record = d.store.get(job_id)
        assert record.status == FAILED and "claim interrupted" in record.error
    finally:
        d.store.close()


def test_inputs_of_a_job_without_job_json_go_to_failed_when_inbox_has_the_name(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    d, job_id = _claimed_without_manifest(cfg, "net", b"the first model")
    (cfg.inbox / "net.onnx").write_bytes(b"dropped again meanwhile")
    try:
        d.recovery.recover(cfg)
        assert (cfg.inbox / "net.onnx").read_bytes() == b"dropped again meanwhile"
        assert (cfg.failed / "net" / "input" / "net.onnx").read_bytes() == b"the first model"
        error = json.loads((cfg.failed / "net" / "error.json").read_text())
        assert error["task_id"] == job_id and error["error"].startswith("claim interrupted")
    finally:
        d.store.close()


def test_an_outcome_waiting_for_delivery_is_delivered_after_a_restart_not_converted_again(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    (cfg.inbox / "slow.onnx").write_bytes(b"model")
    job = claim_bundle(cfg.inbox, cfg.claim_dir, "slow", ["slow.onnx"], "file")
    d = Daemon(cfg)
    d.store.add(JobRecord(id=job.job_id, name="slow", status=PROCESSING, work_path=str(job.root)))
    shutil.rmtree(cfg.failed)
    cfg.failed.write_text("")  # stands in for a full failed/: delivering there fails
    d.finisher.fail(job.job_id, "timed out after 1800 s (timeout_seconds)", "raise timeout_seconds")
    assert d.store.get(job.job_id).stage == "delivery"
    d.store.close()
    cfg.failed.unlink()  # room again; the daemon restarts
    cfg.failed.mkdir()
    d = Daemon(cfg)
    try:
        d.recovery.recover(cfg)
        assert not d.queue, "the timed-out job was queued to convert (and time out) again"
        error = json.loads((cfg.failed / "slow" / "error.json").read_text())
        assert error["error"] == "timed out after 1800 s (timeout_seconds)"
        assert (cfg.failed / "slow" / "input" / "slow.onnx").read_bytes() == b"model"
        assert d.store.get(job.job_id).status == FAILED
    finally:
        d.store.close()

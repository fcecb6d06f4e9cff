"""The work area is on the share and group-writable: nothing in it is trusted (in process, real files; job folders
written the way the product writes them). A hostile or broken job.json is parked with an error, never followed;
junk never crashes recovery or the takeover; a job whose row is final but whose inputs were never delivered is
converted again, not deleted; a link swapped into a claimed input/ is not followed by the worker."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

import modelgen
from rknn_dropbox.config import Config, config_from_mapping
from rknn_dropbox.convert.bundle import BundleError, inspect_bundle
from rknn_dropbox.options import ConvertOptions
from rknn_dropbox.intake.claims import claim_bundle
from rknn_dropbox.intake.hosts import HEARTBEAT
from rknn_dropbox.intake.workarea import write_json_atomic
from rknn_dropbox.service.daemon import Daemon, prepare_folders
from rknn_dropbox.service.recovery import LOST_ERROR
from rknn_dropbox.service.results import TAKEN_OVER
from rknn_dropbox.store import FAILED, QUEUED, JobRecord

JOB = "20260101-000000-abcdef"


def _config(tmp_path: Path) -> Config:
    cfg = config_from_mapping({"inbox": "inbox", "outbox": "outbox", "failed": "failed", "state_dir": "state",
                               "workers": 1, "host_id": "here", "stale_claim_seconds": 60,
                               "http": {"enabled": False}}, tmp_path)
    prepare_folders(cfg)
    return cfg


def _victim(cfg: Config) -> Path:
    """Another user's delivered job in outbox/ (what `"../outbox/victim"` would move)."""
    victim = cfg.outbox / "victim"
    (victim / "input").mkdir(parents=True)
    (victim / "input" / "theirs.onnx").write_bytes(b"their model")
    write_json_atomic(victim / "result.json", {"task_id": "20250101-000000-000000", "status": "completed"})
    return victim


def _job_folder(parent: Path, manifest: Any, folder: str = JOB) -> Path:
    root = parent / folder
    (root / "input").mkdir(parents=True)
    (root / "input" / "net.onnx").write_bytes(b"model")
    if isinstance(manifest, bytes):
        (root / "job.json").write_bytes(manifest)
    else:
        write_json_atomic(root / "job.json", manifest)
    return root


GOOD = {"id": JOB, "name": "net", "entries": ["net.onnx"], "kind": "file", "claimed_at": 0}
HOSTILE = {
    "entries leave the claim": {**GOOD, "entries": ["../outbox/victim"]},
    "name leaves failed/": {**GOOD, "name": "../outbox/victim"},
    "id is not the folder's": {**GOOD, "id": "../../outbox"},
    "rejection is not a sentence": {**GOOD, "rejection": {"error": ["x"]}},
    "junk": b"\x00\xff junk",
    "truncated": json.dumps(GOOD).encode()[:20],
    "a list": [GOOD],
}


def _assert_parked(cfg: Config, d: Daemon, victim: Path, where: Path) -> None:
    assert (victim / "input" / "theirs.onnx").read_bytes() == b"their model"
    assert sorted(os.listdir(cfg.outbox)) == ["victim"]
    assert not d.queue, "a hostile job folder was queued"
    parked = cfg.claim_dir / ".parked"
    assert (parked / where.name / "input" / "net.onnx").read_bytes() == b"model"
    reports = [json.loads((cfg.failed / f / "error.json").read_text()) for f in os.listdir(cfg.failed)]
    assert len(reports) == 1 and "was not followed" in reports[0]["error"], reports
    assert str(parked / where.name) in reports[0]["error"]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_manifest_taken_over_is_parked_not_followed(tmp_path: Path, case: str) -> None:
    cfg = _config(tmp_path)
    victim = _victim(cfg)
    dead = cfg.claim_dir.parent / "dead-host"
    dead.mkdir()
    (dead / HEARTBEAT).write_text("1\n")
    old = time.time() - 3600
    os.utime(dead / HEARTBEAT, (old, old))  # anyone on the share can `touch -d` it
    root = _job_folder(dead, HOSTILE[case])
    d = Daemon(cfg)
    try:
        d.recovery.take_over_stale_claims(cfg)  # today: moves victim, or JSONDecodeError/KeyError (a crash loop)
        _assert_parked(cfg, d, victim, root)
    finally:
        d.store.close()


@pytest.mark.parametrize("case", ["junk", "truncated", "entries leave the claim"])
def test_a_broken_manifest_in_our_own_claims_never_stops_the_start(tmp_path: Path, case: str) -> None:
    cfg = _config(tmp_path)
    victim = _victim(cfg)
    root = _job_folder(cfg.claim_dir, HOSTILE[case])
    d = Daemon(cfg)
    try:
        d.recovery.recover(cfg)
        _assert_parked(cfg, d, victim, root)
    finally:
        d.store.close()


def test_a_linked_input_folder_is_parked(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.onnx").write_bytes(b"secret")
    root = cfg.claim_dir / JOB
    root.mkdir()
    (root / "input").symlink_to(secret)
    write_json_atomic(root / "job.json", {**GOOD, "entries": ["key.onnx"]})
    d = Daemon(cfg)
    try:
        d.recovery.recover(cfg)
        assert not d.queue
        assert (secret / "key.onnx").read_bytes() == b"secret" and not (cfg.inbox / "key.onnx").exists()
        assert os.path.islink(cfg.claim_dir / ".parked" / JOB / "input")
    finally:
        d.store.close()


@pytest.mark.parametrize("error", [TAKEN_OVER, LOST_ERROR])
def test_a_final_job_whose_inputs_come_back_undelivered_is_converted_again(tmp_path: Path, error: str) -> None:
    cfg = _config(tmp_path)
    (cfg.inbox / "net.onnx").write_bytes(b"the user's model")
    job = claim_bundle(cfg.inbox, cfg.claim_dir, "net", ["net.onnx"], "file")
    d = Daemon(cfg)
    d.store.add(JobRecord(id=job.job_id, name="net", work_path=str(job.root)))
    d.store.mark_failed(job.job_id, error, stage="taken over")  # a takeover taken back; a folder missing a moment
    try:
        d.recovery.recover(cfg)  # today: shutil.rmtree(job.root), the only copy of the user's model
        assert (job.input / "net.onnx").read_bytes() == b"the user's model"
        assert list(d.queue) == [job.job_id] and d.store.get(job.job_id).status == QUEUED
        assert d.store.get(job.job_id).error is None
    finally:
        d.store.close()


def test_a_final_job_whose_inputs_were_delivered_leaves_no_copy(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    (cfg.inbox / "net.onnx").write_bytes(b"model")
    job = claim_bundle(cfg.inbox, cfg.claim_dir, "net", ["net.onnx"], "file")
    (cfg.failed / "net" / "input").mkdir(parents=True)
    (cfg.failed / "net" / "input" / "net.onnx").write_bytes(b"model")
    write_json_atomic(cfg.failed / "net" / "error.json", {"task_id": job.job_id, "status": FAILED})
    d = Daemon(cfg)
    d.store.add(JobRecord(id=job.job_id, name="net", work_path=str(job.root)))
    d.store.mark_failed(job.job_id, "x", output_dir=str(cfg.failed / "net"))
    try:
        d.recovery.recover(cfg)
        assert not job.root.exists() and not d.queue
    finally:
        d.store.close()


def test_the_worker_does_not_follow_a_link_swapped_into_a_claimed_input(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("API_TOKEN=hunter2\n")
    input_dir = tmp_path / "job" / "input"
    input_dir.mkdir(parents=True)
    modelgen.write_onnx_conv(input_dir / "net.onnx")
    (input_dir / "dataset.txt").symlink_to(secret)  # swapped in after the scanner checked the bundle
    with pytest.raises(BundleError, match=r"dataset.txt is a symbolic link; links are not followed"):
        inspect_bundle(input_dir, "net", ConvertOptions(), tmp_path / "job" / "tmp")


def test_a_takeover_keeps_the_callback_the_attempts_and_the_toolkit_plan(tmp_path: Path) -> None:
    from rknn_dropbox.intake.workarea import JobDir, note_in_manifest
    cfg = _config(tmp_path)
    dead = cfg.claim_dir.parent / "dead-host"
    (cfg.inbox / "net.onnx").write_bytes(b"model")
    (cfg.inbox / "net.yaml").write_text("callback_url: https://ci.example/hook\n")
    job = claim_bundle(cfg.inbox, dead, "net", ["net.onnx", "net.yaml"], "file")
    # what the dead host had learnt: one attempt it died under, a handover to rknn-toolkit2 2.3.2
    note_in_manifest(job, attempt_causes=["attempt 1: the daemon stopped while converting it"],
                     toolkit_plan=json.dumps({"toolkit": "2.3.2", "crashed": [], "handovers": 1}))
    (dead / HEARTBEAT).write_text("1\n")
    old = time.time() - 3600
    os.utime(dead / HEARTBEAT, (old, old))
    d = Daemon(cfg)
    try:
        d.recovery.take_over_stale_claims(cfg)
        record = d.store.get(job.job_id)
        assert record.callback_url == "https://ci.example/hook"
        assert record.attempts == 1 and record.attempt_causes[0].startswith("attempt 1:")
        assert d.router.toolkit_of(job.job_id) == "2.3.2"
        assert list(d.queue) == [job.job_id] and JobDir(cfg.claim_dir / job.job_id).input.is_dir()
    finally:
        d.store.close()

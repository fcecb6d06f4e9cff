"""Claims and deliveries: atomic, never overwriting, nothing lost when the destination fails."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from rknn_dropbox.intake import delivery
from rknn_dropbox.intake.claims import claim_bundle, finish_claim
from rknn_dropbox.intake.delivery import DeliveryError, deliver, find_delivered, repair_interrupted_delivery
from rknn_dropbox.intake.workarea import JobDir, write_json_atomic


def _claim(tmp_path: Path, name: str = "net"):
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / f"{name}.onnx").write_bytes(b"model")
    return inbox, claim_bundle(inbox, inbox / ".rknn-dropbox" / "h", name, [f"{name}.onnx"], "file")


def test_claim_moves_the_bundle_and_a_lost_race_is_a_no_op(tmp_path: Path) -> None:
    inbox, job = _claim(tmp_path)
    assert job is not None and (job.input / "net.onnx").read_bytes() == b"model"
    assert not (inbox / "net.onnx").exists()
    again = claim_bundle(inbox, inbox / ".rknn-dropbox" / "other", "net", ["net.onnx"], "file")
    assert again is None and not list((inbox / ".rknn-dropbox" / "other").iterdir())


def test_delivery_never_overwrites(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    folders = []
    for _ in range(2):
        _, job = _claim(tmp_path)
        (job.output / "net.rknn").parent.mkdir(parents=True, exist_ok=True)
        (job.output / "net.rknn").write_bytes(b"rknn")
        folders.append(deliver(job, outbox, "net", {"result.json": {"task_id": job.job_id}}))
        assert not job.root.exists()
    assert [f.name for f in folders] == ["net", "net-2"]
    assert (outbox / "net" / "input" / "net.onnx").read_bytes() == b"model"
    assert not [p for p in outbox.iterdir() if p.name.startswith(".")]


def test_long_names_are_shortened_not_refused(tmp_path: Path) -> None:
    name = "n" * 250
    _, job = _claim(tmp_path, name)
    folder = deliver(job, tmp_path / "failed", name, {"error.json": {"task_id": job.job_id}})
    assert len(folder.name.encode()) <= 255 and (folder / "input" / f"{name}.onnx").is_file()


def test_no_space_keeps_the_job_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, job = _claim(tmp_path)
    job.output.mkdir(parents=True, exist_ok=True)
    (job.output / "net.rknn").write_bytes(b"rknn")
    real_rename = os.rename

    def full(src, dst):
        if ".partial-" in str(dst) or "/outbox/net" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(delivery.os, "rename", full)
    with pytest.raises(DeliveryError, match="no space left on outbox"):
        deliver(job, tmp_path / "outbox", "net", {"result.json": {"task_id": job.job_id}})
    monkeypatch.undo()
    assert (job.input / "net.onnx").read_bytes() == b"model"
    assert (job.output / "net.rknn").read_bytes() == b"rknn"
    assert not list((tmp_path / "outbox").iterdir())
    folder = deliver(job, tmp_path / "outbox", "net", {"result.json": {"task_id": job.job_id}})
    assert (folder / "net.rknn").is_file() and (folder / "input" / "net.onnx").is_file()


# ---- a crash between the steps of a claim or a delivery: each intermediate on-disk state, then the repair --------
def _manifested_job(tmp_path: Path, entries: list[str]) -> tuple[Path, JobDir]:
    """A claim cut short right after its job.json was written: every entry is still in inbox."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for entry in entries:
        (inbox / entry).write_bytes(entry.encode())
    job = JobDir(inbox / ".rknn-dropbox" / "h" / "20240101-000000-abcdef")
    job.input.mkdir(parents=True)
    write_json_atomic(job.root / "job.json", {"id": job.job_id, "name": "net", "entries": entries, "kind": "pair"})
    return inbox, job


@pytest.mark.parametrize("moved_before_crash", [0, 1])
def test_finish_claim_pulls_in_what_the_crash_left_in_inbox(tmp_path: Path, moved_before_crash: int) -> None:
    entries = ["net.onnx", "net.yaml", "net_data.bin"]
    inbox, job = _manifested_job(tmp_path, entries)
    for entry in entries[:moved_before_crash]:
        os.rename(inbox / entry, job.input / entry)
    finish_claim(inbox, job)
    assert sorted(os.listdir(job.input)) == sorted(entries)
    assert (job.input / "net.yaml").read_bytes() == b"net.yaml"
    assert not [e for e in entries if (inbox / e).exists()]


def test_finish_claim_skips_an_entry_the_user_deleted_meanwhile(tmp_path: Path) -> None:
    inbox, job = _manifested_job(tmp_path, ["net.onnx", "net.yaml"])
    os.rename(inbox / "net.onnx", job.input / "net.onnx")
    (inbox / "net.yaml").unlink()
    finish_claim(inbox, job)
    assert os.listdir(job.input) == ["net.onnx"]


def _finished_job(tmp_path: Path) -> tuple[Path, JobDir]:
    """A converted job in the work area: inputs in input/, the .rknn and the log in out/."""
    _, job = _claim(tmp_path)
    job.output.mkdir()
    (job.output / "net.rknn").write_bytes(b"rknn")
    (job.output / "conversion.log").write_text("log")
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    return outbox, job


def _assert_whole_in_work_area(job: JobDir, outbox: Path) -> None:
    assert (job.input / "net.onnx").read_bytes() == b"model"
    assert (job.output / "net.rknn").read_bytes() == b"rknn"
    assert not (job.output / "input").exists()
    assert not os.listdir(outbox)


def test_repair_after_a_crash_while_writing_result_json(tmp_path: Path) -> None:
    outbox, job = _finished_job(tmp_path)
    (job.output / f".result.json.tmp-{os.getpid()}").write_text('{"task_id": ')  # cut short
    assert repair_interrupted_delivery(job, [outbox], "net") is None
    _assert_whole_in_work_area(job, outbox)
    assert not list(job.output.glob(".*.tmp-*"))


def test_repair_after_a_crash_between_the_two_renames(tmp_path: Path) -> None:
    outbox, job = _finished_job(tmp_path)
    write_json_atomic(job.output / "result.json", {"task_id": job.job_id})
    os.rename(job.input, job.output / "input")  # step 1 of a same-filesystem move; step 2 never happened
    assert repair_interrupted_delivery(job, [outbox], "net") is None
    _assert_whole_in_work_area(job, outbox)
    assert find_delivered([outbox], job.job_id) is None  # so recovery re-delivers it


def test_repair_finishes_a_staged_delivery(tmp_path: Path) -> None:
    outbox, job = _finished_job(tmp_path)
    write_json_atomic(job.output / "result.json", {"task_id": job.job_id})
    os.rename(job.input, job.output / "input")
    os.rename(job.output, outbox / f".partial-{job.job_id}")  # staged whole; the final rename never happened
    (outbox / "net").mkdir()  # and meanwhile a folder of that name appeared: never overwritten
    final = repair_interrupted_delivery(job, [tmp_path / "failed", outbox], "net")
    assert final == outbox / "net-2"
    assert (final / "net.rknn").read_bytes() == b"rknn" and (final / "input" / "net.onnx").read_bytes() == b"model"
    assert sorted(os.listdir(outbox)) == ["net", "net-2"]
    assert find_delivered([outbox], job.job_id) == (final, "result.json")


def test_repair_drops_a_cross_filesystem_copy_cut_short(tmp_path: Path) -> None:
    outbox, job = _finished_job(tmp_path)
    staging = outbox / f".partial-{job.job_id}"
    staging.mkdir()
    (staging / "net.rknn").write_bytes(b"rk")  # half a copy; the job itself still has everything
    assert repair_interrupted_delivery(job, [outbox], "net") is None
    _assert_whole_in_work_area(job, outbox)


def test_a_delivery_finished_before_the_crash_is_found_not_repeated(tmp_path: Path) -> None:
    outbox, job = _finished_job(tmp_path)
    folder = deliver(job, outbox, "net", {"result.json": {"task_id": job.job_id}})
    job.root.mkdir(parents=True)  # the crash came before the work-area folder was removed
    assert repair_interrupted_delivery(job, [outbox], "net") is None
    assert find_delivered([outbox], job.job_id) == (folder, "result.json")
    assert os.listdir(outbox) == ["net"]

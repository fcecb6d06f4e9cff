"""Claims and deliveries: atomic, never overwriting, nothing lost when the destination fails."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from rknn_dropbox.intake import delivery
from rknn_dropbox.intake.claims import claim_bundle
from rknn_dropbox.intake.delivery import DeliveryError, deliver


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

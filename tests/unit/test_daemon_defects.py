"""Defects of the daemon side found in issue 19 (in process, fake workers, real files): a job for another toolkit
version is not starved by default-version jobs; memory_reserve_mb reloads into the admission; an unclaimable
bundle reports to the global callback; outbox/failed/state_dir inside the inbox and a state_dir on NFS are refused
in words; an archive unpacks again on a retry; file names with newlines never forge log lines."""

from __future__ import annotations

import errno
import io
from dataclasses import replace
from pathlib import Path

import fakeworkers
import pytest
from loguru import logger

from conftest import wait_for
from rknn_dropbox.config import Config, config_from_mapping
from rknn_dropbox.intake.archives import unpack_archive
from rknn_dropbox.intake.claims import ClaimError
from rknn_dropbox.logsetup import escape_controls
from rknn_dropbox.service import startup
from rknn_dropbox.service.daemon import Daemon, StartupError, prepare_folders
from rknn_dropbox.service.routing import ToolkitPlan
from rknn_dropbox.store import FINAL_STATUSES


def _config(tmp_path: Path, **extra) -> Config:
    cfg = config_from_mapping({"inbox": "inbox", "outbox": "outbox", "failed": "failed", "state_dir": "state",
                               "workers": 1, "host_id": "here", "http": {"enabled": False}, **extra}, tmp_path)
    prepare_folders(cfg)
    return cfg


def test_a_job_for_another_toolkit_is_not_starved_by_default_jobs(tmp_path: Path, started: list[Daemon]) -> None:
    cfg = _config(tmp_path, claim_ahead=10, memory_admission=False)
    d = fakeworkers.start_daemon(cfg, started, target=fakeworkers.fails_fast)
    wait_for(lambda: (d.step(0.1), d.pool.idle_slots())[1], 30, what="the worker ready")
    ids = []
    for name in ("pinned", "b", "c", "d", "e"):
        (cfg.inbox / f"{name}.onnx").write_bytes(b"model")
        ids.append(d.intake.claim(name, [f"{name}.onnx"], "file").job_id)
    d.router.plans[ids[0]] = ToolkitPlan(toolkit="2.3.2")  # pinned by its sidecar: a worker of 2.3.2 must start
    d.queue.extend(ids)
    finished: list[str] = []

    def step() -> bool:
        d.step(0.1)
        finished.extend(r.name for r in d.store.list() if r.status in FINAL_STATUSES and r.name not in finished)
        return len(finished) == 5

    wait_for(step, 60, what="every job finished")
    assert finished.index("pinned") <= 1, f"the pinned job waited behind later default-version jobs: {finished}"


def test_memory_reserve_mb_reload_reaches_the_admission(tmp_path: Path) -> None:
    cfg = _config(tmp_path, memory_reserve_mb=1024)
    d = Daemon(cfg, reloader=lambda: replace(cfg, memory_reserve_mb=6144))
    try:
        d.reload()
        assert d.cfg.memory_reserve_mb == 6144
        assert d.memory.admission.reserve_mb == 6144
    finally:
        d.store.close()


def test_an_unclaimable_bundle_reports_to_the_global_callback(tmp_path: Path) -> None:
    cfg = _config(tmp_path, convert={"callback_url": "http://127.0.0.1:9/ci-hook"})
    d = Daemon(cfg)
    try:
        (cfg.inbox / "net.onnx").write_bytes(b"model")
        d.intake.report_unclaimable("net", ["net.onnx"], ClaimError("net.onnx", OSError(errno.EACCES, "denied")))
        record = d.store.list()[0]
        assert record.callback_url == "http://127.0.0.1:9/ci-hook"
        assert record.callback_status == "pending"  # sent once start-up ends
    finally:
        d.store.close()


@pytest.mark.parametrize("key", ["outbox", "failed", "state_dir"])
def test_a_folder_inside_the_inbox_is_refused_in_words(tmp_path: Path, key: str) -> None:
    cfg = config_from_mapping({"inbox": "inbox", key: "inbox/sub"}, tmp_path)
    with pytest.raises(StartupError, match=rf"^{key} .* is inside the inbox .*put {key} beside the inbox"):
        prepare_folders(cfg)


def test_a_state_dir_on_nfs_is_refused_in_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config_from_mapping({"inbox": "inbox", "state_dir": "state"}, tmp_path)
    monkeypatch.setattr(startup, "mount_fstype", lambda path: "nfs4" if "state" in str(path) else "ext4")
    with pytest.raises(StartupError, match=r"state_dir .* is on a nfs4 mount: the job store is SQLite"):
        prepare_folders(cfg)


def test_an_archive_unpacks_again_into_the_scratch_of_an_earlier_try(tmp_path: Path) -> None:
    import zipfile
    archive = tmp_path / "net.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("net.onnx", b"model")
    dest = tmp_path / "job" / "tmp" / "unpacked"
    unpack_archive(archive, dest)
    assert [p.name for p in unpack_archive(archive, dest)] == ["net.onnx"]  # today: FileExistsError


def test_a_file_name_with_a_newline_never_forges_a_log_line() -> None:
    out = io.StringIO()
    handler = logger.add(out, format="{level: <7} {message}")
    try:
        logger.patch(escape_controls).warning("rejecting {}: not a model", "x\nCRITICAL forged line\r.txt")
    finally:
        logger.remove(handler)
    assert out.getvalue() == "WARNING rejecting x\\nCRITICAL forged line\\r.txt: not a model\n"

"""A bundle the daemon cannot claim is that bundle's failure, never the daemon's: error.json in failed/ naming cause
and fix, the bundle left in inbox and not tried again until it changes, the loop going on (and no crash loop at the
next start). The permission cases run the daemon as an unprivileged user: root moves anything."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import modelgen
from asuser import OtherUser, UserBox, other_user, shared_tmp  # noqa: F401 (fixtures)
from conftest import wait_for
from relhelpers import assert_conserved, box_factory, drop, fill_filesystem  # noqa: F401 (fixture)
from rknn_dropbox.intake.workarea import MANIFEST

pytestmark = pytest.mark.slow


def _reports(failed: Path, name: str) -> list[dict]:
    return [json.loads((f / "error.json").read_text()) for f in sorted(failed.glob(f"{name}*"))
            if (f / "error.json").is_file()]


def _dropped_by_someone_else(src: Path, inbox: Path, name: str, gid: int) -> Path:
    """A folder copied in by another user with umask 022: group-owned (setgid inbox) but not group-writable."""
    folder = drop(src, inbox / name)
    for p in [folder, *folder.rglob("*")]:
        os.chown(p, 0, gid)
        p.chmod(0o755 if p.is_dir() else 0o644)
    return folder


def test_folder_the_daemon_user_cannot_move(other_user: OtherUser, shared_tmp: Path) -> None:
    box = UserBox(shared_tmp / "box", user=other_user, workers=1)
    box.root.mkdir()
    os.chown(box.root, other_user.uid, other_user.gid)
    box.inbox.mkdir()
    os.chown(box.inbox, other_user.uid, other_user.gid)
    box.inbox.chmod(0o2775)  # the documented group inbox
    src = shared_tmp / "src"
    (src / "net").mkdir(parents=True)
    modelgen.write_onnx_conv(src / "net" / "net.onnx")
    box.start()
    _dropped_by_someone_else(src / "net", box.inbox, "netdir", other_user.gid)
    _dropped_by_someone_else(src / "net", box.inbox, "stuck", other_user.gid)
    wait_for(lambda: len(_reports(box.failed, "netdir")) and len(_reports(box.failed, "stuck")), 60,
             what="error reports")
    report = _reports(box.failed, "netdir")[0]
    assert "netdir could not be moved out of the inbox: permission denied" in report["error"]
    assert "group-writable" in report["hint"] and "docs/systemd.md" in report["hint"]
    assert report["left_in_inbox"] == ["netdir"] and (box.inbox / "netdir" / "net.onnx").is_file()
    # the loop goes on: a file dropped meanwhile converts; the parked folders are not tried again meanwhile
    drop(modelgen.write_onnx_conv(src / "ok.onnx", seed=3), box.inbox / "ok.onnx")
    box.wait_completed("ok", 180)
    assert len(_reports(box.failed, "netdir")) == 1 and box.proc.poll() is None
    # the documented fix, applied to one of them: it is claimed and converts
    subprocess.run(["chmod", "-R", "g+w", str(box.inbox / "netdir")], check=True)
    wait_for(lambda: (box.outbox / "netdir" / "result.json").is_file(), 180, what="netdir converted")
    # a restart does not try (or crash on) the unchanged one, and a claim cut short on it ends as its failure
    assert box.stop() == 0
    _dropped_by_someone_else(src / "net", box.inbox, "late", other_user.gid)
    claim = box.inbox / ".rknn-dropbox" / os.uname().nodename / "20260101-000000-abcdef"
    (claim / "input").mkdir(parents=True)
    (claim / MANIFEST).write_text(json.dumps({"id": claim.name, "name": "late", "entries": ["late"],
                                              "kind": "folder", "claimed_at": 0}))
    for p in (claim, claim / "input", claim / MANIFEST):
        os.chown(p, other_user.uid, other_user.gid)
    box.start()
    wait_for(lambda: _reports(box.failed, "late"), 30, what="the cut-short claim's report")
    assert (box.inbox / "late" / "net.onnx").is_file() and not claim.exists()
    assert len(_reports(box.failed, "stuck")) == 1 and box.proc.poll() is None
    where = assert_conserved(box.inbox, box.outbox, box.failed, ["netdir", "stuck", "late", "ok.onnx"])
    assert where == {"netdir": "outbox:netdir", "stuck": "inbox", "late": "inbox", "ok.onnx": "outbox:ok"}, where


@pytest.fixture
def tiny_inbox(tmp_path: Path):
    mnt = tmp_path / "box" / "inbox"
    mnt.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_inbox_filesystem_fails_the_claim_not_the_daemon(box_factory, tiny_inbox: Path, tmp_path: Path) -> None:
    box = box_factory("box", workers=1).start()
    model = modelgen.write_onnx_conv(tmp_path / "m.onnx")
    hidden = tiny_inbox / ".m.onnx.copying"
    hidden.write_bytes(model.read_bytes())
    filler = fill_filesystem(tiny_inbox / ".filler")  # every byte of the inbox's filesystem
    os.rename(hidden, tiny_inbox / "m.onnx")
    wait_for(lambda: _reports(box.failed, "m"), 60, what="the claim's error report")
    report = _reports(box.failed, "m")[0]
    assert "no space left on the inbox's filesystem" in report["error"] and "free space" in report["hint"]
    assert (tiny_inbox / "m.onnx").is_file() and box.proc.poll() is None
    filler.unlink()
    os.utime(tiny_inbox / "m.onnx")  # "touch the bundle", as the hint says
    wait_for(lambda: (box.outbox / "m" / "result.json").is_file(), 180, what="m converted")
    assert len(_reports(box.failed, "m")) == 1

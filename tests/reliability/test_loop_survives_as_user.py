"""An inbox the daemon's (unprivileged) user suddenly cannot list (EACCES): the daemon stays up, says so on /health
and /metrics, keeps every file, and takes up the inbox again once it can read it."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from asuser import OtherUser, UserBox, other_user, shared_tmp  # noqa: F401 (fixtures)
from conftest import wait_for


def _failing_steps(box: UserBox) -> list[str]:
    return [p for p in box.get("/health").get("problems", []) if "step failing" in p]


def test_an_inbox_that_cannot_be_listed_does_not_end_the_daemon(other_user: OtherUser, shared_tmp: Path) -> None:
    box = UserBox(shared_tmp / "box", user=other_user, workers=1, settings={"rescan_seconds": 1})
    box.root.mkdir()
    os.chown(box.root, other_user.uid, other_user.gid)
    box.start()
    box.inbox.chmod(0o311)  # listing refused (EACCES), the folder itself still there
    (box.inbox / "notes.txt").write_text("not a model\n")
    wait_for(lambda: _failing_steps(box), 30, what="/health naming the failing scan")
    assert "inbox scan step failing: PermissionError: Permission denied" in _failing_steps(box)[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{box.port}/metrics", timeout=10) as resp:
        assert 'rknn_dropbox_loop_errors_total{step="inbox scan"}' in resp.read().decode()
    assert box.proc.poll() is None and (box.inbox / "notes.txt").is_file()
    box.inbox.chmod(0o775)
    error = box.wait_failed("notes.txt", timeout=90)  # rejected as it would have been: the loop took it up again
    assert error["error"] == "notes.txt is not a model file"
    wait_for(lambda: box.get("/health")["status"] == "healthy", 30, what="healthy again")
    assert box.log().count("the loop's inbox scan step failed") == 1, box.log()[-2000:]
    assert box.stop() == 0

"""A start-up that cannot work ends at once: exit 1, one line saying what to change, no process left behind; and
`rknn-dropbox check` names the same problem before a start is tried."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asuser import OtherUser, UserBox, other_user, session_processes, shared_tmp  # noqa: F401 (fixtures)
from conftest import wait_for
from relhelpers import Box, box_factory  # noqa: F401 (fixture)

START_LIMIT = 15.0  # seconds: "within a few seconds", with room for a loaded 2-core CI box


def _ends_with_one_line(box: Box, wanted: str) -> str:
    """The daemon exits 1 within START_LIMIT, saying `wanted` on one line, and nothing of it keeps running."""
    t0 = time.monotonic()
    try:
        rc = box.proc.wait(START_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(box.proc.pid, 9)
        raise AssertionError(f"still running after {START_LIMIT:.0f} s:\n{box.log()[-3000:]}")
    took = time.monotonic() - t0
    log = box.log()
    assert rc == 1, (rc, log[-3000:])
    assert "Traceback" not in log, log[-3000:]
    lines = [line for line in log.splitlines() if wanted in line]
    assert len(lines) == 1, log[-3000:]
    wait_for(lambda: not session_processes(box.proc.pid), 5, what="no process of the daemon left")
    print(f"failed start ended in {took:.1f} s: {lines[0]}")
    return lines[0]


def test_port_in_use_ends_the_start_and_check_says_so(box_factory, tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        box = box_factory()
        box.write_config()
        text = box.config_path.read_text().replace("port = 0", f"port = {port}")
        box.config_path.write_text(text)
        box.write_config = lambda: None  # keep the taken port
        box.start(wait_ready=False)
        _ends_with_one_line(box, f"port {port} on 127.0.0.1 is in use; set [http] port or --port")
        check = subprocess.run([sys.executable, "-m", "rknn_dropbox", "check", "--config", str(box.config_path)],
                               capture_output=True, text=True, timeout=300)
        assert check.returncode == 1
        assert f"problem: port {port} on 127.0.0.1 is in use; set [http] port or --port" in check.stderr
    finally:
        taken.close()


def test_inbox_that_cannot_be_a_folder_ends_the_start(box_factory) -> None:
    box = box_factory()
    box.root.mkdir(parents=True)
    (box.root / "inbox").write_text("a file where the inbox should be")
    box.start(wait_ready=False)
    _ends_with_one_line(box, "set inbox in the config")


def _as_user_box(user: OtherUser, base: Path, **settings) -> UserBox:
    box = UserBox(base / "box", user=user, settings=settings)
    box.root.mkdir()
    os.chown(box.root, user.uid, user.gid)
    return box


def test_unwritable_state_dir_ends_the_start(other_user: OtherUser, shared_tmp: Path) -> None:
    box = _as_user_box(other_user, shared_tmp)
    box.state.mkdir(mode=0o755)  # root's: the daemon's user cannot write there
    box.start(wait_ready=False)
    _ends_with_one_line(box, f"{box.state} is not writable by this user; make it writable or set state_dir")


def test_inotify_instance_limit_ends_the_start(other_user: OtherUser, shared_tmp: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    if limit > 4096:
        pytest.skip(f"max_user_instances is {limit}: too many to use up in a test")
    holder = subprocess.Popen(  # the test user's every inotify instance, held open
        [other_user.python, "-c", "import ctypes, sys, time\nlibc = ctypes.CDLL(None)\n"
         "fds = [libc.inotify_init1(0) for _ in range(int(sys.argv[1]))]\nprint('held', sum(f >= 0 for f in fds), "
         "flush=True)\ntime.sleep(600)", str(limit)],
        user=other_user.uid, group=other_user.gid, extra_groups=[], env=other_user.env(), stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().startswith("held")
        box = _as_user_box(other_user, shared_tmp, poll=False)
        box.start(wait_ready=False)
        _ends_with_one_line(box, "the inotify limit fs.inotify.max_user_instances is reached; raise it")
    finally:
        holder.kill()
        holder.wait()

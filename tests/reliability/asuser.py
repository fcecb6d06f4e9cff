"""Running the daemon as an unprivileged user (CI runs as root, which no permission stops): a system user made with
useradd, an interpreter that user can execute, and folders it can reach.

The interpreter: this machine's venv points at a Python under /root (mode 0700), which another user cannot execute.
The same CPython minor version from the distribution (/usr/bin/python3.11 on Debian 12) loads the venv's
site-packages unchanged (same ABI), so the daemon, its workers and the real toolkit run as that user with
PYTHONPATH = repo + venv site-packages: the test stays a real run, at no install cost."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO
from relhelpers import Box

USER = "rknn-dropbox-test"


@dataclass(frozen=True)
class OtherUser:
    name: str
    uid: int
    gid: int
    python: str
    pythonpath: str

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": self.pythonpath, "PYTHONUNBUFFERED": "1",
                "LANG": "C.UTF-8"}

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, user=self.uid, group=self.gid, extra_groups=[], env=self.env(),
                              capture_output=True, text=True, **kwargs)


def _user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                              capture_output=True, text=True)
        if made.returncode not in (0, 9):  # 9: made meanwhile by another test process
            pytest.skip(f"cannot create a test user: {made.stderr.strip()}")
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture(scope="session")
def other_user() -> OtherUser:
    """An unprivileged user who can run this repo's daemon (skips when not root or no interpreter fits)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user and run the daemon as it")
    uid, gid = _user()
    site = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    pythonpath = f"{REPO}:{site}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.path.exists(python):
            continue
        user = OtherUser(USER, uid, gid, python, pythonpath)
        try:
            probe = user.run([python, "-c", "import rknn_dropbox.service.daemon"], timeout=60)
        except OSError:
            continue
        if probe.returncode == 0:
            return user
    pytest.skip(f"no {version} interpreter that user {USER} can execute with {site} (install {version} from "
                "the distribution, or put the venv where other users can read it)")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder under /tmp the test user can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="rknn-dropbox-asuser-"))
    path.chmod(0o755)
    yield path
    stop_processes_naming(path)  # a daemon the test left running (it would outlive its deleted folders)
    shutil.rmtree(path, ignore_errors=True)


def stop_processes_naming(path: Path, grace: float = 10.0) -> None:
    """SIGTERM every process whose command line names `path`, SIGKILL what is left after `grace` seconds."""
    import signal
    import time
    needle = str(path).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                continue
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in alive):
            time.sleep(0.2)


@dataclass
class UserBox(Box):
    """A Box whose daemon runs as `user`."""
    user: OtherUser | None = None

    def start(self, wait_ready: bool = True) -> "UserBox":
        assert self.user is not None
        self.write_config()
        os.chown(self.config_path, self.user.uid, self.user.gid)
        self.log_path = self.root / f"daemon-{len(list(self.root.glob('daemon-*.log')))}.log"
        (self.state / "daemon.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen([self.user.python, "-m", "rknn_dropbox", "run", "--config",
                                      str(self.config_path)], cwd=self.root,
                                     env={**self.user.env(), **self.env}, user=self.user.uid, group=self.user.gid,
                                     extra_groups=[], stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if wait_ready:
            from conftest import wait_for
            wait_for(lambda: (self.state / "daemon.json").exists() or self.proc.poll() is not None, 90,
                     what="daemon ready")
            assert self.proc.poll() is None, self.log()
        return self


def session_processes(sid: int) -> list[int]:
    """Processes still alive in session `sid` (a daemon started with start_new_session=True and its workers)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            alive.append(int(entry))
    return alive

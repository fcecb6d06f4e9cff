"""The watcher: a watchdog observer on inbox/ that only wakes the daemon's loop; the analyzer decides the rest."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from loguru import logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver
from watchdog.utils import BaseThread

NETWORK_FS_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "sshfs")


def mount_fstype(path: Path) -> str:
    """The filesystem type of the mount holding `path`, from /proc/self/mountinfo ('' when unknown)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    target = str(Path(path).resolve())
    best, fstype = "", ""
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mnt = fields[4].replace("\\040", " ")
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, right.split()[0]
    return fstype


def choose_polling(poll: bool | str, inbox: Path) -> tuple[bool, str]:
    """Decide inotify or polling, and say why (for the log)."""
    if poll is True:
        return True, "poll = true in the config"
    if poll is False:
        return False, "poll = false in the config"
    fstype = mount_fstype(inbox)
    if fstype in NETWORK_FS_TYPES or fstype.startswith("fuse"):
        return True, f"inbox is on a {fstype} mount, where inotify misses changes made by other hosts"
    return False, f"inbox is on a local {fstype or 'unknown'} filesystem"


class _WakeHandler(FileSystemEventHandler):
    def __init__(self, wake_fd: int, ignore_under: Path) -> None:
        self.wake_fd = wake_fd
        self.ignore_under = str(ignore_under)

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = str(event.src_path)
        dest = str(getattr(event, "dest_path", "") or "")
        if src.startswith(self.ignore_under) and (not dest or dest.startswith(self.ignore_under)):
            return  # the work area's own churn (a move out of it into inbox still wakes the loop)
        try:
            os.write(self.wake_fd, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is already awake


class InboxWatcher:
    """Owns the observer thread and the wake-up pipe the daemon's loop waits on."""

    def __init__(self, inbox: Path, ignore_under: Path, poll: bool | str, poll_interval: float = 1.0) -> None:
        self.inbox = inbox
        self.polling, self.reason = choose_polling(poll, inbox)
        self._others = set(threading.enumerate())  # the inotify reader thread starts with the observer object
        self.observer = PollingObserver(timeout=poll_interval) if self.polling else Observer()
        self.threads: list[threading.Thread] = []
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.observer.schedule(_WakeHandler(self.write_fd, ignore_under), str(inbox), recursive=True)

    def start(self) -> None:
        self.observer.start()
        self.threads = [t for t in threading.enumerate()  # the observer's and its inotify reader's
                        if isinstance(t, BaseThread) and t not in self._others]
        logger.info("watching {} with {} ({})", self.inbox, "polling" if self.polling else "inotify", self.reason)

    def is_alive(self) -> bool:
        """The observer and every thread it started (inotify's reader dies alone on a tree nested too deep)."""
        return self.observer.is_alive() and all(t.is_alive() for t in self.threads)

    def drain(self) -> bool:
        """Consume wake-ups; True when anything changed since the last call."""
        woke = False
        while True:
            try:
                if not os.read(self.read_fd, 4096):
                    break
                woke = True
            except BlockingIOError:
                break
        return woke

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(5)
        self.close_pipe()

    def close_pipe(self) -> None:
        """Close the wake-up pipe (also after a start that failed)."""
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass

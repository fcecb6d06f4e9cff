"""Whether the share is there: inbox, outbox and failed on the mounts they were on at start, and reachable.

A network share that goes away (unmounted, ESTALE, EIO) must never look like an empty inbox or a job whose folder
vanished: while it is away the daemon converts nothing new, delivers nothing, fails nothing, and says so."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loguru import logger

from rknn_dropbox.service.guard import describe

CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class MountId:
    """Which mount holds a folder: where it is mounted, its type and what it mounts."""
    mount_point: str
    fstype: str
    source: str


def mount_of(resolved: str, mountinfo: str) -> MountId | None:
    """The mount (from /proc/self/mountinfo's text) holding the already resolved path `resolved`."""
    best: MountId | None = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mnt = fields[4].replace("\\040", " ")
        if (resolved == mnt or resolved.startswith(mnt.rstrip("/") + "/")) and \
                (best is None or len(mnt) >= len(best.mount_point)):
            best = MountId(mnt, tail[0], tail[1])
    return best


def _mountinfo() -> str:
    try:
        return Path("/proc/self/mountinfo").read_text()
    except OSError:
        return ""


class ShareWatch:
    """Checks the folders at most once a second; logs one line when the share goes away and one when it is back."""

    def __init__(self, folders: dict[str, Path], clock: Callable[[], float] = time.monotonic) -> None:
        self.folders = folders
        self.clock = clock
        self.resolved = {name: os.path.realpath(path) for name, path in folders.items()}
        info = _mountinfo()
        self.mounts = {name: mount_of(path, info) for name, path in self.resolved.items()}
        self.missing: list[str] = []
        self.outages = 0
        self.came_back = False  # set when the share returned; the daemon clears it once it has re-watched inbox
        self._checked = -CHECK_SECONDS

    @property
    def available(self) -> bool:
        return not self.missing

    def check(self, force: bool = False) -> bool:
        """True when every folder is where it was; at most one look per CHECK_SECONDS unless forced."""
        now = self.clock()
        if not force and now - self._checked < CHECK_SECONDS:
            return self.available
        self._checked = now
        problems = self._problems()
        if problems and not self.missing:
            self.outages += 1
            logger.error("the share is unavailable ({}): converting and delivering nothing, and failing no job for "
                         "it, until it is back", "; ".join(problems))
        elif self.missing and not problems:
            logger.warning("the share is back ({} ok): resuming", ", ".join(self.folders))
            self.came_back = True
        self.missing = problems
        return self.available

    def _problems(self) -> list[str]:
        problems: dict[str, str] = {}
        for name, path in self.folders.items():  # stat first: it also brings back an automount that expired
            try:
                if not stat.S_ISDIR(os.stat(path).st_mode):
                    problems[name] = f"{name} {path}: not a folder"
            except OSError as exc:  # ENOENT, ESTALE, EIO, ENOTCONN (a FUSE server that died)
                problems[name] = f"{name} {path}: {describe(exc)}"
        info = _mountinfo()
        for name, path in self.folders.items():
            was = self.mounts[name]
            if name not in problems and info and mount_of(self.resolved[name], info) != was:
                problems[name] = f"{name} {path}: the mount it was on ({was.mount_point if was else '?'}) is gone"
        return [problems[name] for name in self.folders if name in problems]

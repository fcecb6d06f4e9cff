"""Several hosts on one inbox: a heartbeat per host claim folder, and taking over the claims of a host that died."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loguru import logger

HEARTBEAT = ".heartbeat"


def touch_heartbeat(claim_dir: Path) -> str | None:
    """Say "this host is alive" to the other hosts: the heartbeat file's mtime (set by the file server).
    None, or why it could not (a full, read-only or vanished share: the claims still work)."""
    path = claim_dir / HEARTBEAT
    try:
        try:
            os.utime(path, None)
        except FileNotFoundError:
            path.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        return f"cannot update the heartbeat {path}: {exc.strerror or exc}"
    return None


CLOCK_PROBE = ".clock"


def server_now(claim_dir: Path) -> float:
    """The file server's clock: the mtime it gives a probe file we touch now (host clocks may be skewed, and a
    heartbeat's mtime was set by the server's clock). This host's clock when the probe cannot be written."""
    probe = claim_dir / CLOCK_PROBE
    try:
        try:
            os.utime(probe, None)
        except FileNotFoundError:
            probe.touch()
        return os.stat(probe).st_mtime
    except OSError:
        return time.time()


class Heartbeat:
    """Beats from its own thread, so a main loop busy with a long copy, fsync or join never looks dead."""

    def __init__(self, claim_dir: Path, interval: Callable[[], float]) -> None:
        self.claim_dir = claim_dir
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self.failing = False

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """Touch the heartbeat; a failure is logged when it starts, and its end when it ends (not every beat)."""
        problem = touch_heartbeat(self.claim_dir)
        if problem and not self.failing:
            logger.warning("{} (other hosts may take over this host's claims if it lasts)", problem)
        elif self.failing and not problem:
            logger.info("the heartbeat {} beats again", self.claim_dir)
        self.failing = problem is not None

    def restart(self) -> None:
        """A fresh thread after this one ended (the daemon's thread keeper calls it)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self.interval()):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a heartbeat that stops lets other hosts take live claims
                logger.error("heartbeat {}: {}", self.claim_dir, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def heartbeat_age(host_dir: Path, now: float | None = None) -> float | None:
    """Seconds since the host behind host_dir last beat (its folder's mtime when it never did); None if gone."""
    now = time.time() if now is None else now
    for path in (host_dir / HEARTBEAT, host_dir):
        try:
            return now - os.stat(path).st_mtime
        except FileNotFoundError:
            continue
    return None


@dataclass
class TakenOver:
    """A job folder moved from a dead host's claim folder into ours."""
    host: str
    job_id: str
    root: Path


def take_over_stale_claims(claim_dir: Path, stale_seconds: float) -> list[TakenOver]:
    """Rename every job folder of hosts whose heartbeat is older than stale_seconds into claim_dir.

    Each move is one rename on the inbox's filesystem, so two live hosts racing for the same folder cannot both
    get it: the loser's rename fails with FileNotFoundError and it moves on."""
    claims_root = claim_dir.parent
    taken: list[TakenOver] = []
    now = server_now(claim_dir)
    try:
        hosts = sorted(p for p in claims_root.iterdir() if p.is_dir() and p.name != claim_dir.name)
    except OSError:
        return taken
    for host_dir in hosts:
        age = heartbeat_age(host_dir, now)
        if age is None or age < stale_seconds:
            continue
        try:
            jobs = sorted(p for p in host_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for job in jobs:
            dest = claim_dir / job.name
            if os.path.lexists(dest):
                continue  # same job id twice: leave it to its owner rather than overwrite ours
            try:
                os.rename(job, dest)
            except (FileNotFoundError, OSError):
                continue  # another live host took it first
            logger.warning("took over job {} from host {} (its heartbeat is {:.0f} s old, over stale_claim_seconds)",
                           job.name, host_dir.name, age)
            taken.append(TakenOver(host_dir.name, job.name, dest))
    return taken

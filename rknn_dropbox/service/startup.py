"""Start-up checks: everything that can stop the daemon from starting, each said as one line naming what to change."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

from rknn_dropbox.config import Config
from rknn_dropbox.intake.watcher import NETWORK_FS_TYPES, mount_fstype
from rknn_dropbox.intake.workarea import mount_point


class StartupError(RuntimeError):
    """The daemon cannot start (folders, filesystems, port, inotify); the message says what to change."""


def _inside(child: Path, parent: Path) -> bool:
    c, p = os.path.realpath(child), os.path.realpath(parent)
    return c == p or c.startswith(p.rstrip("/") + "/")


def check_layout(cfg: Config) -> None:
    """Refuse an outbox, failed or state_dir inside the inbox, and a state_dir on a network filesystem."""
    for key, path in (("outbox", cfg.outbox), ("failed", cfg.failed), ("state_dir", cfg.state_dir)):
        if _inside(path, cfg.inbox):
            raise StartupError(f"{key} {path} is inside the inbox {cfg.inbox}: what the daemon writes there would be "
                               "taken for drops, and anyone who can write the inbox could change it; put "
                               f"{key} beside the inbox, not in it")
    fstype = mount_fstype(cfg.state_dir)
    if fstype in NETWORK_FS_TYPES or fstype.split(".", 1)[-1] in NETWORK_FS_TYPES:
        raise StartupError(f"state_dir {cfg.state_dir} is on a {fstype} mount: the job store is SQLite, whose locks "
                           "do not hold on network filesystems (a corrupt or locked database); put state_dir on a "
                           "local disk (e.g. /var/lib/rknn-dropbox); only inbox, outbox and failed may be on the share")


def prepare_folders(cfg: Config) -> None:
    """Create the folders and refuse a work area that is not on inbox's filesystem (claims are renames)."""
    check_layout(cfg)
    names = {cfg.inbox: "inbox", cfg.outbox: "outbox", cfg.failed: "failed", cfg.state_dir: "state_dir",
             cfg.claim_dir: "work_dir"}
    for p, key in names.items():
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create {p}: {exc.strerror}; fix the path or set {key} in the config") \
                from None
        if not os.access(p, os.W_OK | os.X_OK) or not _can_create_in(p):
            raise StartupError(f"{p} is not writable by this user; make it writable or set {key} in the config")
    if os.stat(cfg.inbox).st_dev != os.stat(cfg.claim_dir).st_dev:
        raise StartupError(
            f"the work area {cfg.claim_dir} (mount {mount_point(cfg.claim_dir)}) is not on inbox's filesystem "
            f"{cfg.inbox} (mount {mount_point(cfg.inbox)}): claims are atomic renames, which only work within one "
            "filesystem; put work_dir on the same mount as inbox")


def _can_create_in(folder: Path) -> bool:
    """os.access says yes to root and ignores read-only mounts; creating a file does not."""
    probe = folder / f".rknn-dropbox-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


def open_store_path(cfg: Config) -> None:
    """The job store must open and take a write (a read-only or corrupt jobs.sqlite3 fails here, not mid-loop)."""
    try:
        conn = sqlite3.connect(cfg.store_path, timeout=5)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS startup_probe (x)")
            conn.execute("DROP TABLE startup_probe")
            conn.commit()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StartupError(f"the job store {cfg.store_path} cannot be written ({exc}); make state_dir writable "
                           "or move the damaged file away") from None


def port_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use; set [http] port or --port (0 picks a free one)"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs privileges this user does not have; set [http] port above 1023"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}; set [http] host / port or --host / --port"


def check_port(host: str, port: int) -> str | None:
    """`rknn-dropbox check`: the problem binding host:port would hit (None when it is free)."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        return port_problem(host, port, exc)
    return None


def bind_status_server(cfg: Config, store: Any, snapshot: Any) -> Any:
    """Bind the status endpoint (before any worker exists, so a taken port fails fast and leaves nothing behind)."""
    from rknn_dropbox.status.server import StatusServer
    try:
        return StatusServer(cfg.http.host, cfg.http.port, store, snapshot)
    except OSError as exc:
        raise StartupError(port_problem(cfg.http.host, cfg.http.port, exc)) from None


def watcher_problem(exc: OSError) -> str:
    """inotify's limits, said as what to raise."""
    if exc.errno in (errno.EMFILE, errno.ENOSPC):
        which = "max_user_instances" if exc.errno == errno.EMFILE else "max_user_watches"
        return (f"cannot watch the inbox: the inotify limit fs.inotify.{which} is reached; raise it "
                f"(sysctl fs.inotify.{which}=...) or set poll = true")
    return f"cannot watch the inbox: {exc.strerror or exc}; check inbox, or set poll = true"


def check_inotify() -> str | None:
    """`rknn-dropbox check`: whether this user can open one more inotify instance (None when it can)."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(0)
    except (OSError, AttributeError):
        return None  # not Linux: the watcher polls
    if fd < 0:
        err = ctypes.get_errno()
        return watcher_problem(OSError(err, os.strerror(err)))
    os.close(fd)
    return None

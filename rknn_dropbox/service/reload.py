"""SIGHUP: which changed config keys apply to a running daemon, and which need a restart."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING

from rknn_dropbox.config import Config

if TYPE_CHECKING:
    from rknn_dropbox.intake.scanner import InboxScanner
    from rknn_dropbox.service.admission import MemoryAdmission
    from rknn_dropbox.service.callbacks import CallbackSender
    from rknn_dropbox.service.pool import WorkerPool

# Read at every use by the loop, the scanner or the pool: safe to swap while running.
LIVE_KEYS = ("convert", "timeout_seconds", "log_level", "stable_seconds", "bundle_timeout_seconds", "max_file_size",
             "rescan_seconds", "drain_seconds", "max_jobs_per_worker", "stale_claim_seconds",
             "worker_memory_limit_mb", "claim_ahead", "max_attempts",
             "memory_reserve_mb", "worker_max_rss_mb")


def changed_keys(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """The keys whose value differs: (applied live, needing a restart)."""
    live, restart = [], []
    for f in fields(Config):
        if f.name == "source" or getattr(old, f.name) == getattr(new, f.name):
            continue
        (live if f.name in LIVE_KEYS else restart).append(f.name)
    return live, restart


def apply_live(old: Config, new: Config, live: list[str]) -> Config:
    """The running config with the live keys taken from `new`; the others keep their running values."""
    return replace(old, **{k: getattr(new, k) for k in live})


def push_live_settings(cfg: Config, scanner: "InboxScanner", pool: "WorkerPool",
                       admission: "MemoryAdmission | None" = None, callbacks: "CallbackSender | None" = None) -> None:
    """Hand the reloaded live keys to the scanner, the pool, the memory admission and the callback sender, which
    keep their own copies."""
    if callbacks is not None:  # [convert] callback_hosts: the allow-list applies from the next callback on
        from rknn_dropbox.service.callbacks import CallbackPolicy
        callbacks.policy = CallbackPolicy.for_convert(cfg.convert)
    if admission is not None:
        admission.reserve_mb = cfg.memory_reserve_mb
    scanner.stable_seconds = cfg.stable_seconds
    scanner.bundle_timeout_seconds = cfg.bundle_timeout_seconds
    scanner.max_file_size = cfg.max_file_size
    pool.timeout_seconds = cfg.timeout_seconds
    pool.max_jobs_per_worker = cfg.max_jobs_per_worker
    pool.memory_limit_mb = cfg.worker_memory_limit_mb
    pool.max_rss_mb = cfg.worker_max_rss_mb

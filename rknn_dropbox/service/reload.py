"""SIGHUP: which changed config keys apply to a running daemon, and which need a restart."""

from __future__ import annotations

from dataclasses import fields, replace

from rknn_dropbox.config import Config

# Read at every use by the loop, the scanner or the pool: safe to swap while running.
LIVE_KEYS = ("convert", "timeout_seconds", "log_level", "stable_seconds", "bundle_timeout_seconds", "max_file_size",
             "rescan_seconds", "drain_seconds", "max_jobs_per_worker", "stale_claim_seconds",
             "worker_memory_limit_mb", "claim_ahead")


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

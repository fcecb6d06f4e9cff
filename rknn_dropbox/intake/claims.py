"""Claims: moving a complete bundle out of inbox into this host's work area by rename, and how many to take."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from rknn_dropbox.convert.options import OptionsError, read_yaml_mapping
from rknn_dropbox.intake.sidecars import bundle_files, find_sidecars
from rknn_dropbox.intake.workarea import MANIFEST, JobDir, fsync_dir, write_json_atomic


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def claim_room(workers: int, claim_ahead: int, queued: int, running: int) -> int:
    """How many more bundles this host should claim now: free workers plus claim_ahead (the rest stay in inbox for
    other hosts, complete, and are claimed when a worker frees up)."""
    return workers + claim_ahead - queued - running


def claim_bundle(inbox: Path, claim_dir: Path, name: str, entries: list[str], kind: str,
                 job_id: str | None = None, rejection: dict[str, Any] | None = None) -> JobDir | None:
    """Move the bundle's entries out of inbox into a new job folder by rename. None if another claimer won.

    rejection: the analyzer's error/hint for a bundle claimed only to go to failed/ (kept for crash recovery)."""
    job = JobDir(claim_dir / (job_id or new_job_id()))
    job.input.mkdir(parents=True)
    manifest = {"id": job.job_id, "name": name, "entries": entries, "kind": kind, "claimed_at": time.time()}
    if rejection is not None:
        manifest["rejection"] = rejection
    write_json_atomic(job.root / MANIFEST, manifest)
    moved = 0
    for entry in entries:
        try:
            os.rename(inbox / entry, job.input / entry)
            moved += 1
        except FileNotFoundError:
            if moved == 0:
                break  # another host won the first entry: the bundle is theirs, take none of it
            continue  # gone meanwhile (deleted by the user)
    if moved == 0:
        shutil.rmtree(job.root, ignore_errors=True)
        return None
    fsync_dir(job.input)
    fsync_dir(inbox)
    return job


def finish_claim(inbox: Path, job: JobDir) -> None:
    """After a crash between renames: pull any listed entry still in inbox into the job."""
    for entry in job.manifest().get("entries", []):
        src = inbox / entry
        if os.path.lexists(src) and not os.path.lexists(job.input / entry):
            os.rename(src, job.input / entry)


def valid_callback_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) <= 2048 \
        and not any(c.isspace() for c in value)


def callback_url_for(job_input: Path, default: str | None) -> str | None:
    """callback_url from the bundle's sidecar (own sidecar > folder config.yaml), else the TOML's [convert] one.

    Read by the daemon at claim time so that jobs which fail or are cancelled before a worker parses the
    sidecar still report; an unreadable sidecar is left for the worker to reject with a proper error."""
    if not job_input.is_dir():
        return default
    found = find_sidecars([f for f in bundle_files(job_input) if not f.is_symlink()])
    url = default
    for path in (p for p in (found.folder, found.own) if p is not None):
        try:
            value = read_yaml_mapping(path).get("callback_url")
        except OptionsError:
            continue
        if valid_callback_url(value):
            url = value
    return url

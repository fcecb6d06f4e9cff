"""Claims: moving a complete bundle out of inbox into this host's work area by rename, and how many to take."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from rknn_dropbox.options import OptionsError, read_yaml_mapping
from rknn_dropbox.intake.sidecars import bundle_files, find_sidecars
from rknn_dropbox.intake.tree import TooDeep
from rknn_dropbox.intake.workarea import MANIFEST, JobDir, fsync_dir, write_json_atomic


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def claim_room(workers: int, claim_ahead: int, queued: int, running: int) -> int:
    """How many more bundles this host should claim now: free workers plus claim_ahead (the rest stay in inbox for
    other hosts, complete, and are claimed when a worker frees up)."""
    return workers + claim_ahead - queued - running


class ClaimError(OSError):
    """A bundle could not be claimed (permissions, a full disk): its entries are back in inbox, as dropped."""

    def __init__(self, entry: str | None, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.entry = entry  # the entry that would not move (None: the job folder itself could not be made)
        self.cause = cause


def claim_bundle(inbox: Path, claim_dir: Path, name: str, entries: list[str], kind: str,
                 job_id: str | None = None, rejection: dict[str, Any] | None = None) -> JobDir | None:
    """Move the bundle's entries out of inbox into a new job folder by rename. None if another claimer won.

    rejection: the analyzer's error/hint for a bundle claimed only to go to failed/ (kept for crash recovery).
    Raises ClaimError when an entry cannot be moved: what had moved is put back, the job folder removed."""
    job = JobDir(claim_dir / (job_id or new_job_id()))
    manifest = {"id": job.job_id, "name": name, "entries": entries, "kind": kind, "claimed_at": time.time()}
    if rejection is not None:
        manifest["rejection"] = rejection
    try:
        job.input.mkdir(parents=True)
        write_json_atomic(job.root / MANIFEST, manifest)
    except OSError as exc:
        shutil.rmtree(job.root, ignore_errors=True)
        raise ClaimError(None, exc) from exc
    moved = 0
    for entry in entries:
        try:
            os.rename(inbox / entry, job.input / entry)
            moved += 1
        except FileNotFoundError:
            if moved == 0:
                break  # another host won the first entry: the bundle is theirs, take none of it
            continue  # gone meanwhile (deleted by the user)
        except OSError as exc:
            unclaim(inbox, job)
            raise ClaimError(entry, exc) from exc
    if moved == 0:
        shutil.rmtree(job.root, ignore_errors=True)
        return None
    fsync_dir(job.input)
    fsync_dir(inbox)
    return job


def unclaim(inbox: Path, job: JobDir) -> list[str]:
    """Put a job's inputs back into inbox, as they were dropped, and remove its folder; the entries left where they
    are (a name taken in inbox meanwhile) keep the folder. Returns the entries now in inbox."""
    back: list[str] = []
    for entry in job.manifest().get("entries", []) if (job.root / MANIFEST).exists() else []:
        src = job.input / entry
        if os.path.lexists(src) and not os.path.lexists(inbox / entry):
            os.rename(src, inbox / entry)
        if os.path.lexists(inbox / entry):
            back.append(entry)
    fsync_dir(inbox)
    if not job.input.exists() or not any(job.input.iterdir()):
        shutil.rmtree(job.root, ignore_errors=True)
    return back


def finish_claim(inbox: Path, job: JobDir) -> None:
    """After a crash between renames: pull any listed entry still in inbox into the job.

    Raises ClaimError (the job's inputs put back into inbox) when one cannot be moved."""
    for entry in job.manifest().get("entries", []):
        src = inbox / entry
        if os.path.lexists(src) and not os.path.lexists(job.input / entry):
            try:
                os.rename(src, job.input / entry)
            except OSError as exc:
                unclaim(inbox, job)
                raise ClaimError(entry, exc) from exc


def valid_callback_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) <= 2048 \
        and not any(c.isspace() for c in value)


def callback_url_for(job_input: Path, default: str | None) -> str | None:
    """callback_url from the bundle's sidecar (own sidecar > folder config.yaml), else the TOML's [convert] one.

    Read by the daemon at claim time so that jobs which fail or are cancelled before a worker parses the
    sidecar still report; an unreadable sidecar is left for the worker to reject with a proper error."""
    if not job_input.is_dir():
        return default
    try:
        found = find_sidecars([f for f in bundle_files(job_input) if not f.is_symlink()])
    except (TooDeep, OSError):
        return default
    url = default
    for path in (p for p in (found.folder, found.own) if p is not None):
        try:
            value = read_yaml_mapping(path).get("callback_url")
        except OptionsError:
            continue
        if valid_callback_url(value):
            url = value
    return url


def claim_problem(inbox: Path, exc: ClaimError) -> tuple[str, str]:
    """(error, hint) for error.json: why the bundle could not be claimed and what to change."""
    what = f"{exc.entry} could not be moved out of the inbox" if exc.entry else \
        "the work area could not take this bundle"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = "quota exceeded" if exc.errno == errno.EDQUOT else "no space left"
        return (f"{what}: {where} on the inbox's filesystem",
                "free space on the inbox's filesystem (or raise the quota), then touch the bundle or drop it again; "
                "it is left in inbox and not tried again until it changes")
    if exc.errno in (errno.EACCES, errno.EPERM) and exc.entry:
        path = inbox / exc.entry
        try:
            st = os.lstat(path)
            mode = f"mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}, group gid {st.st_gid}"
        except OSError:
            mode = "unknown mode"
        if os.path.isdir(path) and not os.path.islink(path):
            return (f"{what}: permission denied ({mode}); moving a folder needs write permission on the folder "
                    "itself, and the daemon's user has none",
                    "make it group-writable (chmod -R g+w), or have every drop come in group-writable for good: a "
                    "default ACL on the inbox (setfacl -d -m g::rwx) or Samba's force group + create mask; see "
                    "docs/systemd.md. It is left in inbox and tried again once it changes")
        return (f"{what}: permission denied ({mode})",
                "let the daemon's user move it: the inbox must be writable by its group, without the sticky bit "
                "(chmod g+w,-t on the inbox); see docs/systemd.md. It is left in inbox and tried again once it "
                "changes")
    return (f"{what}: {exc.strerror or exc.cause}",
            "it is left in inbox and tried again once it changes (touch it or drop it again)")

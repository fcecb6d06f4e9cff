"""Delivery: moving a finished job whole into outbox/ or failed/ by one rename, and repairing one a crash cut short."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from rknn_dropbox.intake.workarea import (
    INPUT_DIR, MAX_NAME_BYTES, PARTIAL_PREFIX, JobDir, fsync_dir, same_filesystem, write_json_atomic,
)


class DeliveryError(OSError):
    """Delivering to outbox/ or failed/ failed (e.g. no space left); the job stays in the work area."""


def _unique_dir(parent: Path, name: str) -> Path:
    base = name.encode("utf-8", "surrogateescape")[:MAX_NAME_BYTES].decode("utf-8", "ignore") or "job"
    if base in (".", "..") or base.startswith("."):
        base = "_" + base.lstrip(".")
    candidate = parent / base
    n = 2
    while os.path.lexists(candidate):
        candidate = parent / f"{base}-{n}"
        n += 1
    return candidate


def _copy_entry(src: str, dst: str) -> None:
    """copy2 for a cross-filesystem delivery; a FIFO is recreated (copying one would block), a socket skipped."""
    mode = os.lstat(src).st_mode
    if stat.S_ISFIFO(mode):
        os.mkfifo(dst, stat.S_IMODE(mode))
    elif stat.S_ISSOCK(mode):
        return
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for fname in files:
            p = os.path.join(dirpath, fname)
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue  # links, and FIFOs (opening one blocks until a writer comes: never)
                fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def deliver(job: JobDir, dest_parent: Path, name: str, extra_files: dict[str, Any]) -> Path:
    """Move the job's outputs and inputs into dest_parent/<name>[-N]/ as one rename of a complete folder.

    extra_files: file name -> JSON data written beside the outputs (result.json / error.json).
    Raises DeliveryError (the job stays whole in the work area) when the destination cannot take it.
    """
    staging = dest_parent / f"{PARTIAL_PREFIX}{job.job_id}"
    try:
        _make_whole(job, staging)  # an earlier try whose undo failed too
        dest_parent.mkdir(parents=True, exist_ok=True)
        job.output.mkdir(parents=True, exist_ok=True)
        for fname, data in extra_files.items():
            write_json_atomic(job.output / fname, data)
        same_fs = same_filesystem(job.root, dest_parent)
        if same_fs:
            _fsync_tree(job.output)  # what we wrote; the inputs were renamed, not rewritten, so no fsync for them
            if job.input.exists():
                os.rename(job.input, job.output / INPUT_DIR)
                fsync_dir(job.output)
            os.rename(job.output, staging)
        else:
            shutil.copytree(job.output, staging, symlinks=True, copy_function=_copy_entry)
            if job.input.exists():
                shutil.copytree(job.input, staging / INPUT_DIR, symlinks=True, copy_function=_copy_entry)
            _fsync_tree(staging)
        final = _unique_dir(dest_parent, name)
        os.rename(staging, final)
        fsync_dir(dest_parent)
    except OSError as exc:
        try:
            _make_whole(job, staging)
        except OSError:
            pass  # the share itself fails: the next try makes the job whole first
        where = "outbox" if "result.json" in extra_files else "failed"
        if _errno_of(exc) == errno.ENOSPC:
            raise DeliveryError(exc.errno, f"no space left on {where} ({dest_parent})") from exc
        raise DeliveryError(_errno_of(exc), f"cannot write to {where} ({dest_parent}): {exc}") from exc
    shutil.rmtree(job.root, ignore_errors=True)
    return final


def _make_whole(job: JobDir, staging: Path) -> None:
    """Undo a partial same-fs move (the job whole again in the work area) and remove a staging folder that holds
    nothing of the user's; a staging folder still holding the inputs is never deleted."""
    if (job.output / INPUT_DIR).exists() and not job.input.exists():
        os.rename(job.output / INPUT_DIR, job.input)
    if not os.path.lexists(staging):
        return
    if (staging / INPUT_DIR).exists() and not job.input.exists():
        os.rename(staging / INPUT_DIR, job.input)
    if not job.output.exists():
        os.rename(staging, job.output)
    elif not (staging / INPUT_DIR).exists() or job.input.exists():
        shutil.rmtree(staging)  # a cross-fs copy cut short (the job kept everything), or an emptied staging


def deliver_report(dest_parent: Path, name: str, job_id: str, files: dict[str, Any]) -> Path:
    """A folder holding only `files` (JSON), for a bundle whose inputs stayed in inbox: staged, then one rename."""
    dest_parent.mkdir(parents=True, exist_ok=True)
    staging = dest_parent / f"{PARTIAL_PREFIX}{job_id}"
    try:
        staging.mkdir(exist_ok=True)
        for fname, data in files.items():
            write_json_atomic(staging / fname, data)
        final = _unique_dir(dest_parent, name)
        os.rename(staging, final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(dest_parent)
    return final


def _errno_of(exc: OSError) -> int:
    """The errno of an OSError, also out of a shutil.Error (copytree collects its errors as strings)."""
    if exc.errno:
        return exc.errno
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        for item in exc.args[0]:
            if "[Errno 28]" in str(item):
                return errno.ENOSPC
    return errno.ENOSPC if "[Errno 28]" in str(exc) else 0


def repair_interrupted_delivery(job: JobDir, dest_parents: list[Path], name: str) -> Path | None:
    """After a crash inside deliver(): finish a complete same-filesystem move, or undo it so the job is whole.

    Returns the final folder when the delivery could be finished, else None (the job is back in the work area)."""
    if not job.input.exists() and (job.output / INPUT_DIR).is_dir():
        os.rename(job.output / INPUT_DIR, job.input)  # died between the two renames of a same-fs move
    for leftover in job.output.glob(".*.tmp-*") if job.output.is_dir() else []:
        leftover.unlink(missing_ok=True)  # write_json_atomic cut short
    for parent in dest_parents:
        staging = parent / f"{PARTIAL_PREFIX}{job.job_id}"
        if not os.path.lexists(staging):
            continue
        if not job.output.exists() and not job.input.exists() and (staging / INPUT_DIR).is_dir():
            final = _unique_dir(parent, name)  # the staged folder was fsynced whole before its rename
            os.rename(staging, final)
            fsync_dir(parent)
            return final
        shutil.rmtree(staging, ignore_errors=True)  # a cross-fs copy cut short: the job still has everything
    return None


def find_delivered(dest_parents: list[Path], job_id: str) -> tuple[Path, str] | None:
    """A job folder in outbox/failed written for job_id (delivery finished but the store was not updated)."""
    for parent in dest_parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            if name.startswith(PARTIAL_PREFIX):
                continue
            for fname in ("result.json", "error.json"):
                p = parent / name / fname
                try:
                    data = json.loads(p.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(data, dict) and data.get("task_id") == job_id:
                    return parent / name, fname
    return None

"""The work area: claiming bundles out of inbox by rename, and delivering finished jobs to outbox/ or failed/."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "job.json"
INPUT_DIR = "input"
OUTPUT_DIR = "out"
LOG_NAME = "conversion.log"
MAX_NAME_BYTES = 200  # leaves room for "-NN" suffixes and staging prefixes under NAME_MAX (255)
PARTIAL_PREFIX = ".partial-"  # outbox/.partial-<job id>: a delivery being staged, renamed whole when complete


class DeliveryError(OSError):
    """Delivering to outbox/ or failed/ failed (e.g. no space left); the job stays in the work area."""


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class JobDir:
    """One claimed job's folder in the work area."""
    root: Path

    @property
    def job_id(self) -> str:
        return self.root.name

    @property
    def input(self) -> Path:
        return self.root / INPUT_DIR

    @property
    def output(self) -> Path:
        return self.root / OUTPUT_DIR

    @property
    def log(self) -> Path:
        return self.output / LOG_NAME

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON under a temporary name, fsync, rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
    _fsync_dir(job.input)
    _fsync_dir(inbox)
    return job


def finish_claim(inbox: Path, job: JobDir) -> None:
    """After a crash between renames: pull any listed entry still in inbox into the job."""
    for entry in job.manifest().get("entries", []):
        src = inbox / entry
        if os.path.lexists(src) and not os.path.lexists(job.input / entry):
            os.rename(src, job.input / entry)


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
        _fsync_dir(Path(dirpath))


def deliver(job: JobDir, dest_parent: Path, name: str, extra_files: dict[str, Any]) -> Path:
    """Move the job's outputs and inputs into dest_parent/<name>[-N]/ as one rename of a complete folder.

    extra_files: file name -> JSON data written beside the outputs (result.json / error.json).
    Raises DeliveryError (the job stays whole in the work area) when the destination cannot take it.
    """
    dest_parent.mkdir(parents=True, exist_ok=True)
    job.output.mkdir(parents=True, exist_ok=True)
    try:
        for fname, data in extra_files.items():
            write_json_atomic(job.output / fname, data)
        staging = dest_parent / f"{PARTIAL_PREFIX}{job.job_id}"
        if os.path.lexists(staging):
            shutil.rmtree(staging)
        same_fs = same_filesystem(job.root, dest_parent)
        if same_fs:
            _fsync_tree(job.output)  # what we wrote; the inputs were renamed, not rewritten, so no fsync for them
            if job.input.exists():
                os.rename(job.input, job.output / INPUT_DIR)
                _fsync_dir(job.output)
            os.rename(job.output, staging)
        else:
            shutil.copytree(job.output, staging, symlinks=True, copy_function=_copy_entry)
            if job.input.exists():
                shutil.copytree(job.input, staging / INPUT_DIR, symlinks=True, copy_function=_copy_entry)
            _fsync_tree(staging)
        final = _unique_dir(dest_parent, name)
        os.rename(staging, final)
        _fsync_dir(dest_parent)
    except OSError as exc:
        # undo a partial same-fs move so the job is whole again, and leave no partial folder behind
        if (job.output / INPUT_DIR).exists() and not job.input.exists():
            os.rename(job.output / INPUT_DIR, job.input)
        staging = dest_parent / f"{PARTIAL_PREFIX}{job.job_id}"
        if staging.exists() and not job.output.exists():
            try:
                if (staging / INPUT_DIR).exists() and not job.input.exists():
                    os.rename(staging / INPUT_DIR, job.input)
                os.rename(staging, job.output)
            except OSError:
                pass
        shutil.rmtree(staging, ignore_errors=True)
        where = "outbox" if "result.json" in extra_files else "failed"
        if _errno_of(exc) == errno.ENOSPC:
            raise DeliveryError(exc.errno, f"no space left on {where} ({dest_parent})") from exc
        raise DeliveryError(_errno_of(exc), f"cannot write to {where} ({dest_parent}): {exc}") from exc
    shutil.rmtree(job.root, ignore_errors=True)
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
            _fsync_dir(parent)
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

"""The work area: claiming bundles out of inbox by rename, and delivering finished jobs to outbox/ or failed/."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "job.json"
INPUT_DIR = "input"
OUTPUT_DIR = "out"
LOG_NAME = "conversion.log"
MAX_NAME_BYTES = 200  # leaves room for "-NN" suffixes and staging prefixes under NAME_MAX (255)


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
                 job_id: str | None = None) -> JobDir | None:
    """Move the bundle's entries out of inbox into a new job folder by rename. None if another claimer won."""
    job = JobDir(claim_dir / (job_id or new_job_id()))
    job.input.mkdir(parents=True)
    write_json_atomic(job.root / MANIFEST, {"id": job.job_id, "name": name, "entries": entries, "kind": kind,
                                            "claimed_at": time.time()})
    moved = 0
    for entry in entries:
        try:
            os.rename(inbox / entry, job.input / entry)
            moved += 1
        except FileNotFoundError:
            continue  # another host claimed it first
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


def _move_or_copy(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True)
            shutil.rmtree(src)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
            os.unlink(src)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for fname in files:
            p = os.path.join(dirpath, fname)
            if os.path.islink(p):
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
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
        staging = dest_parent / f".partial-{job.job_id}"
        if os.path.lexists(staging):
            shutil.rmtree(staging)
        same_fs = same_filesystem(job.root, dest_parent)
        if same_fs:
            if job.input.exists():
                os.rename(job.input, job.output / INPUT_DIR)
            _fsync_tree(job.output)
            os.rename(job.output, staging)
        else:
            shutil.copytree(job.output, staging, symlinks=True)
            if job.input.exists():
                shutil.copytree(job.input, staging / INPUT_DIR, symlinks=True)
            _fsync_tree(staging)
        final = _unique_dir(dest_parent, name)
        os.rename(staging, final)
        _fsync_dir(dest_parent)
    except OSError as exc:
        # undo a partial same-fs move so the job is whole again, and leave no partial folder behind
        if (job.output / INPUT_DIR).exists() and not job.input.exists():
            os.rename(job.output / INPUT_DIR, job.input)
        staging = dest_parent / f".partial-{job.job_id}"
        if staging.exists() and not job.output.exists():
            try:
                if (staging / INPUT_DIR).exists() and not job.input.exists():
                    os.rename(staging / INPUT_DIR, job.input)
                os.rename(staging, job.output)
            except OSError:
                pass
        shutil.rmtree(staging, ignore_errors=True)
        where = "outbox" if "result.json" in extra_files else "failed"
        if exc.errno == errno.ENOSPC:
            raise DeliveryError(exc.errno, f"no space left on {where} ({dest_parent})") from exc
        raise DeliveryError(exc.errno or 0, f"cannot write to {where} ({dest_parent}): {exc}") from exc
    shutil.rmtree(job.root, ignore_errors=True)
    return final


def find_delivered(dest_parents: list[Path], job_id: str) -> tuple[Path, str] | None:
    """A job folder in outbox/failed written for job_id (delivery finished but the store was not updated)."""
    for parent in dest_parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            for fname in ("result.json", "error.json"):
                p = parent / name / fname
                try:
                    data = json.loads(p.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(data, dict) and data.get("task_id") == job_id:
                    return parent / name, fname
    return None

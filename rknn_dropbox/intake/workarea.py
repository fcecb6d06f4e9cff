"""The work area: a claimed job's folder (JobDir), the attempt journal read as plain JSON (the daemon's side), and
the atomic-write/fsync helpers claims and deliveries share."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "job.json"
INPUT_DIR = "input"
OUTPUT_DIR = "out"
LOG_NAME = "conversion.log"
MAX_NAME_BYTES = 200  # leaves room for "-NN" suffixes and staging prefixes under NAME_MAX (255)
PARTIAL_PREFIX = ".partial-"  # outbox/.partial-<job id>: a delivery being staged, renamed whole when complete
ATTEMPTS = "attempts.json"  # the attempt journal: convert/attempts.py writes it, the daemon only reads it


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
        """job.json, checked field by field (ManifestError: junk, or naming anything outside this claim)."""
        return read_manifest(self.root)


class ManifestError(ValueError):
    """A job.json the daemon will not follow: not JSON, or a field that could name a path outside the claim."""


JOB_ID_RE = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")
MAX_MANIFEST_BYTES = 1024 * 1024


def is_job_id(value: Any) -> bool:
    return isinstance(value, str) and JOB_ID_RE.fullmatch(value) is not None


def is_single_name(value: Any) -> bool:
    """A name of one path component: no '/', not '.' or '..', no NUL, within NAME_MAX."""
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\0" not in value \
        and len(value.encode("utf-8", "surrogateescape")) <= 255


def _manifest_problem(data: Any, folder: str) -> str | None:
    if not isinstance(data, dict):
        return "it is not a JSON object"
    if data.get("id") != folder or not is_job_id(folder):
        return f"its id {data.get('id')!r} is not the folder's name in the YYYYMMDD-HHMMSS-xxxxxx form"
    if not is_single_name(data.get("name")):
        return f"its name {data.get('name')!r} is not a plain file name"
    entries = data.get("entries")
    if not isinstance(entries, list) or not entries or not all(is_single_name(e) for e in entries):
        return "its entries are not plain file names inside the claim"
    if not isinstance(data.get("kind"), str):
        return "its kind is not a word"
    causes = data.get("attempt_causes", [])
    if not (isinstance(causes, list) and len(causes) <= 100 and all(isinstance(c, str) for c in causes)):
        return "its attempt_causes are not sentences"
    if not isinstance(data.get("toolkit_plan", ""), str):
        return "its toolkit_plan is not text"
    rejection = data.get("rejection")
    if rejection is not None and not (isinstance(rejection, dict) and isinstance(rejection.get("error"), str)
                                      and isinstance(rejection.get("hint"), (str, type(None)))):
        return "its rejection is not an error sentence"
    return None


def read_manifest(root: Path) -> dict[str, Any]:
    """A job folder's job.json, validated; FileNotFoundError when there is none."""
    path = root / MANIFEST
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
        raise ManifestError("job.json is not a regular file of a sane size")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # truncated, junk, not UTF-8
        raise ManifestError("job.json is not valid JSON") from None
    problem = _manifest_problem(data, root.name)
    if problem:
        raise ManifestError(f"job.json cannot be trusted: {problem}")
    return data


def note_in_manifest(job: JobDir, **fields: Any) -> None:
    """Keep what the job store learnt about a job (its attempts, its toolkit plan) in its job.json too, so that a
    host taking the claim over knows it; best effort (the store stays the reference for this host)."""
    try:
        data = read_manifest(job.root)
        data.update(fields)
        write_json_atomic(job.root / MANIFEST, data)
    except (OSError, ValueError):
        pass


def linked_parts(job: JobDir) -> list[str]:
    """The parts of a job folder that are symbolic links (the folder, input/, out/): never followed."""
    return [p.name for p in (job.root, job.input, job.output) if p.is_symlink()]


def folder_gone(path: Path) -> bool:
    """True only when `path` is really not there (ENOENT); ESTALE, EIO ... raise: a share in trouble, not a move."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    return False


def read_attempts(root: Path) -> dict[str, Any] | None:
    """A job folder's attempt journal as plain JSON (None: none, or unreadable)."""
    try:
        data = json.loads((root / ATTEMPTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def unfinished_repair(job: JobDir) -> tuple[str, str] | None:
    """(platform, candidate label) of the accuracy-repair candidate the job's worker had started and not finished
    ("accuracy_analysis": the per-layer report before them), from its attempt journal; None when there is none (the
    worker died anywhere else)."""
    targets = (read_attempts(job.root) or {}).get("targets")
    for platform, section in (targets.items() if isinstance(targets, dict) else ()):
        if not isinstance(section, dict):
            continue
        analysis = section.get("analysis")
        if isinstance(analysis, dict) and analysis.get("state") == "started":
            return str(platform), "accuracy_analysis"
        attempts = section.get("attempts")
        for entry in attempts if isinstance(attempts, list) else ():
            if isinstance(entry, dict) and entry.get("state") == "started":
                return str(platform), str(entry.get("label"))
    return None


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def fsync_dir(path: Path) -> None:
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

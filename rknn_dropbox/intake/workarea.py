"""The work area: a claimed job's folder (JobDir), the attempt journal read as plain JSON (the daemon's side), and
the atomic-write/fsync helpers claims and deliveries share."""

from __future__ import annotations

import json
import os
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
        return json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))


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

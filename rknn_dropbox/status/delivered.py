"""What the status server reads (never writes) in a job's folder: result.json / error.json, dropped files, its log."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from rknn_dropbox.joblog import clean_log_text
from rknn_dropbox.store import COMPLETED, JobRecord

MAX_LOG_BYTES = 8 * 1024 * 1024
MAX_LISTED = 500  # dropped files listed from a failed job's input/ (the walk stops there)
CACHE_ENTRIES = 2048


class FileCache:
    """Values computed from a file, kept while its size and mtime stay the same (bounded, thread-safe)."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self.lock = threading.Lock()
        self.values: OrderedDict[str, tuple[tuple[int, int], Any]] = OrderedDict()

    def get(self, path: Path, compute: Callable[[Path], Any]) -> Any:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key, stamp = str(path), (st.st_size, st.st_mtime_ns)
        with self.lock:
            hit = self.values.get(key)
            if hit is not None and hit[0] == stamp:
                self.values.move_to_end(key)
                return hit[1]
        value = compute(path)
        with self.lock:
            self.values[key] = (stamp, value)
            while len(self.values) > self.entries:
                self.values.popitem(last=False)
        return value


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class DeliveredFiles:
    """Reads what the daemon delivered for a job, caching parsed JSON; it never hashes a dropped file (that would
    let anyone make request handlers read gigabytes): sha256 comes from result.json only."""

    def __init__(self) -> None:
        self.docs = FileCache()

    def doc(self, job: JobRecord) -> dict[str, Any]:
        """result.json of a completed job, error.json of a failed or cancelled one; {} when there is none yet."""
        if not job.output_dir:
            return {}
        name = "result.json" if job.status == COMPLETED else "error.json"
        return self.docs.get(Path(job.output_dir) / name, _load_json) or {}

    def dropped_files(self, job: JobRecord, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """Name, size and sha256 of each dropped file from result.json; else the name and size of the first
        MAX_LISTED files in the job's input/ folder (no sha256: nothing delivered one)."""
        listed = doc.get("inputs")
        if isinstance(listed, list) and listed:
            return [f for f in listed if isinstance(f, dict)]
        folder = Path(job.output_dir) / "input" if job.output_dir else None
        if folder is None or not folder.is_dir():
            return []
        files = []
        for path in sorted(_first_files(folder, MAX_LISTED)):
            try:
                size = path.lstat().st_size
            except OSError:
                continue
            files.append({"name": str(path.relative_to(folder)), "size": size, "sha256": None})
        return files

    def log_text(self, job: JobRecord, tail: int | None) -> str:
        """The job's conversion.log (delivered, or still being written in the work area); "" when none."""
        candidates: list[Path] = []
        if job.output_dir:
            candidates.append(Path(job.output_dir) / "conversion.log")
        if job.work_path:
            candidates += [Path(job.work_path) / "conversion.raw", Path(job.work_path) / "out" / "conversion.log"]
        for path in candidates:
            try:
                return read_log(path, tail)
            except OSError:
                continue
        return ""


def _first_files(folder: Path, limit: int) -> list[Path]:
    """Up to `limit` regular files under `folder` (links not followed), without walking the rest of the tree
    (iterative: a folder nested thousands deep is no recursion)."""
    found: list[Path] = []
    stack = [folder]
    while stack and len(found) < limit:
        try:
            entries = sorted(os.scandir(stack.pop()), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False) and len(found) < limit:
                found.append(Path(entry.path))
    return found


def read_log(path: Path, tail: int | None) -> str:
    """The log's text (ANSI and progress-bar redraws removed); only the last `tail` lines when given."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - MAX_LOG_BYTES))
        raw = fh.read(MAX_LOG_BYTES)
    text = clean_log_text(raw.decode("utf-8", errors="replace"))
    if size > MAX_LOG_BYTES:
        text = f"[... first {size - MAX_LOG_BYTES} bytes left out ...]\n" + text.split("\n", 1)[-1]
    if tail is not None:
        lines = text.rstrip("\n").split("\n")
        text = "\n".join(lines[-tail:]) + "\n" if tail else ""
    return text

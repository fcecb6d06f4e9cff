"""The job store: one sqlite row per job (JobRecord), shared by the daemon's threads and read by the status server."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED = "queued", "processing", "completed", "failed", "cancelled"
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)
FINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED})


@dataclass
class JobRecord:
    id: str
    name: str
    format: str = ""
    status: str = QUEUED
    progress: float = 0.0
    stage: str = "queued"
    target: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    hint: str | None = None
    work_path: str = ""
    output_dir: str | None = None
    outputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    attempts: int = 0
    cancel_requested: bool = False
    worker_pid: int | None = None
    updated_at: float = field(default_factory=time.time)
    callback_url: str | None = None  # where the final task JSON is POSTed; never shown in the task JSON
    callback_status: str | None = None  # "pending", "delivered (HTTP 200)", "failed after 4 attempts: ..."
    attempt_causes: list[str] = field(default_factory=list)  # why each earlier attempt ended without an outcome
    peak_rss_mb: float | None = None  # the worker's peak resident memory during the job (its last attempt)
    toolkit_version: str | None = None  # the rknn-toolkit2 that built the outputs
    rknn_files: list[dict[str, Any]] = field(default_factory=list)  # each .rknn as read back from the file itself
    toolkit_plan: str | None = None  # JSON: the version a fallback or handover sends the job to (service/routing.py)

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def to_task(self) -> dict[str, Any]:
        """The task JSON of the older HTTP API (task_id, status, progress) plus this design's fields."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict(): its deep copies cost 5x
        d["outputs"], d["warnings"], d["rknn_files"] = list(self.outputs), list(self.warnings), list(self.rknn_files)
        d["attempt_causes"] = list(self.attempt_causes)
        d["task_id"] = d.pop("id")
        d["duration"] = self.duration
        d.pop("callback_url", None)  # may carry a token
        d.pop("toolkit_plan", None)  # the daemon's routing state
        d.pop("work_path", None)  # no absolute server paths: the job folder's name in outbox/ or failed/ instead
        d["output_dir"] = Path(self.output_dir).name if self.output_dir else None
        return d


_JSON_FIELDS = {"outputs", "warnings", "rknn_files", "attempt_causes"}
_BOOL_FIELDS = {"cancel_requested"}
_COLUMNS = [f.name for f in fields(JobRecord)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, format TEXT, status TEXT NOT NULL, progress REAL, stage TEXT,
    target TEXT, created_at REAL, started_at REAL, finished_at REAL, error TEXT, hint TEXT, work_path TEXT,
    output_dir TEXT, outputs TEXT, warnings TEXT, attempts INTEGER, cancel_requested INTEGER, worker_pid INTEGER,
    updated_at REAL, callback_url TEXT, callback_status TEXT, toolkit_version TEXT, rknn_files TEXT,
    attempt_causes TEXT, peak_rss_mb REAL, toolkit_plan TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
"""


def _to_row(job: JobRecord) -> tuple[Any, ...]:
    values = []
    for name in _COLUMNS:
        v = getattr(job, name)
        if name in _JSON_FIELDS:
            v = json.dumps(v)
        elif name in _BOOL_FIELDS:
            v = int(bool(v))
        values.append(v)
    return tuple(values)


def _from_row(row: sqlite3.Row) -> JobRecord:
    kw: dict[str, Any] = {}
    for name in _COLUMNS:
        v = row[name]
        if name in _JSON_FIELDS:
            v = json.loads(v) if v else []
        elif name in _BOOL_FIELDS:
            v = bool(v)
        kw[name] = v
    return JobRecord(**kw)


class JobStore:
    """sqlite in WAL mode; one connection per thread, writes serialized by sqlite itself."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.executescript(_SCHEMA)
            have = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
            for column, kind in (("callback_url", "TEXT"), ("callback_status", "TEXT"), ("toolkit_version", "TEXT"),
                                 ("rknn_files", "TEXT"), ("attempt_causes", "TEXT"),
                                 ("peak_rss_mb", "REAL"), ("toolkit_plan", "TEXT")):  # stores older than these
                if column not in have:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes (kill -9)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def add(self, job: JobRecord) -> None:
        placeholders = ",".join("?" for _ in _COLUMNS)
        self._conn().execute(f"INSERT INTO jobs ({','.join(_COLUMNS)}) VALUES ({placeholders})", _to_row(job))

    def get(self, job_id: str) -> JobRecord | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _from_row(row) if row else None

    def update(self, job_id: str, **changes: Any) -> None:
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"unknown job fields: {sorted(unknown)}")
        changes["updated_at"] = time.time()
        sets, values = [], []
        for name, v in changes.items():
            if name in _JSON_FIELDS:
                v = json.dumps(v)
            elif name in _BOOL_FIELDS:
                v = int(bool(v))
            sets.append(f"{name} = ?")
            values.append(v)
        self._conn().execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*values, job_id))

    # ---- named state changes: every status a job goes through is set by one of these ----------------------
    def mark_queued(self, job_id: str) -> None:
        """Waiting for a worker (claimed, resumed after a restart, or left unfinished by a shutdown)."""
        self.update(job_id, status=QUEUED, stage="queued", progress=0.0)

    def reopen(self, job_id: str) -> None:
        """A job recorded final whose inputs were never delivered is queued again (its old outcome cleared)."""
        self.update(job_id, status=QUEUED, stage="queued", progress=0.0, error=None, hint=None, output_dir=None,
                    finished_at=None, outputs=[])

    def record_interrupted_attempt(self, record: JobRecord, cause: str) -> list[str]:
        """An attempt ended without an outcome (the daemon or its worker died under it): counted, with its cause;
        every attempt's cause so far."""
        attempts = record.attempts + 1
        causes = [*record.attempt_causes, f"attempt {attempts}: {cause}"]
        self.update(record.id, attempts=attempts, attempt_causes=causes)
        return causes

    def record_peak_rss(self, job_id: str, peak_rss_mb: float) -> None:
        self.update(job_id, peak_rss_mb=round(peak_rss_mb, 1))

    def mark_processing(self, job_id: str, worker_pid: int) -> None:
        """Handed to worker `worker_pid`."""
        self.update(job_id, status=PROCESSING, stage="starting", started_at=time.time(), progress=1.0,
                    worker_pid=worker_pid)

    def mark_completed(self, job_id: str, output_dir: str, outputs: list[str] | None = None,
                       stage: str | None = "done") -> None:
        """Delivered to outbox/."""
        self._finish(job_id, COMPLETED, output_dir=output_dir, progress=100.0, error=None, hint=None,
                     stage=stage, outputs=outputs)

    def mark_failed(self, job_id: str, error: str | None, hint: str | None = None, output_dir: str | None = None,
                    stage: str | None = "done", progress: float | None = None,
                    outputs: list[str] | None = None) -> None:
        """Delivered to failed/ (or lost: output_dir None); progress None keeps how far it got."""
        self._finish(job_id, FAILED, output_dir=output_dir, progress=progress, error=error, hint=hint, stage=stage,
                     outputs=outputs)

    def mark_cancelled(self, job_id: str, error: str | None, hint: str | None, output_dir: str,
                       stage: str | None = "done", progress: float | None = None,
                       outputs: list[str] | None = None) -> None:
        """Cancelled with `rknn-dropbox cancel` and delivered to failed/."""
        self._finish(job_id, CANCELLED, output_dir=output_dir, progress=progress, error=error, hint=hint,
                     stage=stage, outputs=outputs)

    def mark_delivery_pending(self, job_id: str, problem: str) -> None:
        """Finished, but outbox/ or failed/ could not take it yet (full disk, say): retried by the daemon."""
        self.update(job_id, stage="delivery", error=f"{problem} (will retry)")

    def _finish(self, job_id: str, status: str, *, output_dir: str | None, progress: float | None,
                error: str | None, hint: str | None, stage: str | None, outputs: list[str] | None = None) -> None:
        changes: dict[str, Any] = {"status": status, "finished_at": time.time(), "error": error, "hint": hint}
        if output_dir is not None:
            changes["output_dir"] = output_dir
        if progress is not None:
            changes["progress"] = progress
        if stage is not None:
            changes["stage"] = stage
        if outputs is not None:
            changes["outputs"] = outputs
        self.update(job_id, **changes)

    def record_conversion(self, job_id: str, fmt: str, outputs: list[str], warnings: list[str], target: str,
                          toolkit_version: str | None = None, rknn_files: list[dict[str, Any]] | None = None) -> None:
        """What a worker's successful conversion produced (before its delivery): also the toolkit that built it and
        what each .rknn says about itself."""
        self.update(job_id, format=fmt, outputs=outputs, warnings=warnings, target=target,
                    toolkit_version=toolkit_version, rknn_files=rknn_files or [])

    def set_work_path(self, job_id: str, work_path: str) -> None:
        self.update(job_id, work_path=work_path)

    def set_callback_status(self, job_id: str, callback_status: str) -> None:
        self.update(job_id, callback_status=callback_status)

    def raise_progress(self, job_id: str, progress: float, stage: str) -> None:
        """Progress only goes up."""
        self._conn().execute(
            "UPDATE jobs SET progress = MAX(COALESCE(progress, 0), ?), stage = ?, updated_at = ? WHERE id = ?",
            (float(progress), stage, time.time(), job_id))

    def list(self, status: str | None = None, limit: int | None = None) -> list[JobRecord]:
        sql, args = "SELECT * FROM jobs", []
        if status:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_from_row(r) for r in self._conn().execute(sql, args)]

    def toolkit_plans(self) -> dict[str, str]:
        """Unfinished jobs' toolkit plans (JSON), for a daemon starting up."""
        final = ",".join("?" for _ in FINAL_STATUSES)
        rows = self._conn().execute(f"SELECT id, toolkit_plan FROM jobs WHERE toolkit_plan IS NOT NULL AND status NOT "
                                    f"IN ({final})", tuple(FINAL_STATUSES))
        return {r["id"]: r["toolkit_plan"] for r in rows}

    def list_named(self, name: str, limit: int | None = None) -> list[JobRecord]:
        """The jobs of one drop name, newest first."""
        sql = "SELECT * FROM jobs WHERE name = ? ORDER BY created_at DESC, id DESC"
        args: list[Any] = [name]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_from_row(r) for r in self._conn().execute(sql, args)]

    def iter_unfinished(self) -> Iterator[JobRecord]:
        rows = self._conn().execute(
            "SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY created_at, id", (QUEUED, PROCESSING)).fetchall()
        return (_from_row(r) for r in rows)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for row in self._conn().execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status"):
            out[row["status"]] = row["n"]
        return out

    def data_version(self) -> int:
        """Changes whenever another connection committed a write (sqlite's PRAGMA data_version): a cheap way for a
        read-only thread to know that what it read before is still current."""
        return int(self._conn().execute("PRAGMA data_version").fetchone()[0])

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Flag an unfinished job for the daemon to cancel; the job as it now reads (None when unknown)."""
        self._conn().execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ? AND status IN (?, ?)",
                             (time.time(), job_id, QUEUED, PROCESSING))
        return self.get(job_id)

    def cancel_requested_ids(self) -> list[str]:
        """Unfinished jobs somebody asked to cancel (cheap: uses the status index)."""
        rows = self._conn().execute("SELECT id FROM jobs WHERE status IN (?, ?) AND cancel_requested = 1",
                                    (QUEUED, PROCESSING))
        return [r["id"] for r in rows]

    def pending_callbacks(self) -> list[JobRecord]:
        """Finished jobs whose callback was not delivered before the last shutdown."""
        rows = self._conn().execute("SELECT * FROM jobs WHERE callback_status LIKE 'pending%' AND status IN (?, ?, ?)",
                                    (COMPLETED, FAILED, CANCELLED))
        return [_from_row(r) for r in rows]

    def duration_histogram(self, bounds: tuple[float, ...]) -> tuple[list[int], int, float]:
        """Completed conversions: cumulative counts per upper bound, total count and sum of seconds."""
        cases = ", ".join(f"SUM(CASE WHEN d <= {float(b)!r} THEN 1 ELSE 0 END)" for b in bounds)
        row = self._conn().execute(
            f"SELECT COUNT(*), COALESCE(SUM(d), 0){', ' + cases if cases else ''} FROM "
            "(SELECT finished_at - started_at AS d FROM jobs WHERE status = ? AND started_at IS NOT NULL "
            "AND finished_at IS NOT NULL)", (COMPLETED,)).fetchone()
        return [int(v or 0) for v in tuple(row)[2:]], int(row[0]), float(row[1])

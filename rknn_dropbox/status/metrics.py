"""Prometheus text exposition (format 0.0.4) of the job store and the daemon's snapshot; no job ids as labels."""

from __future__ import annotations

from typing import Any

from rknn_dropbox.store import CANCELLED, COMPLETED, FAILED, JobStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CONVERSION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else f"{int(value)}"


def render_metrics(store: JobStore, snapshot: dict[str, Any]) -> str:
    """The /metrics body: counters from the store (they survive restarts), gauges from the daemon's snapshot."""
    counts = store.counts()
    buckets, count, total = store.duration_histogram(CONVERSION_BUCKETS)
    lines = [
        "# HELP rknn_dropbox_jobs_total Jobs that reached a final state, by status.",
        "# TYPE rknn_dropbox_jobs_total counter",
    ]
    lines += [f'rknn_dropbox_jobs_total{{status="{s}"}} {counts.get(s, 0)}' for s in (COMPLETED, FAILED, CANCELLED)]
    gauges = [
        ("rknn_dropbox_jobs_in_progress", "Jobs a worker is converting now.",
         snapshot.get("in_progress", counts.get("processing", 0))),
        ("rknn_dropbox_queue_depth", "Claimed jobs waiting for a free worker.",
         snapshot.get("queue_depth", counts.get("queued", 0))),
        ("rknn_dropbox_workers_alive", "Worker processes alive.", snapshot.get("workers_alive", 0)),
    ]
    for name, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
    lines += ["# HELP rknn_dropbox_conversion_seconds Wall time of completed conversions (start to delivery).",
              "# TYPE rknn_dropbox_conversion_seconds histogram"]
    lines += [f'rknn_dropbox_conversion_seconds_bucket{{le="{b!r}"}} {n}' for b, n in zip(CONVERSION_BUCKETS, buckets)]
    lines += [f'rknn_dropbox_conversion_seconds_bucket{{le="+Inf"}} {count}',
              f"rknn_dropbox_conversion_seconds_sum {total!r}",
              f"rknn_dropbox_conversion_seconds_count {count}"]
    return "\n".join(lines) + "\n"

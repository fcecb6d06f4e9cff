"""Prometheus text exposition (format 0.0.4) of the job store and the daemon's snapshot; no job ids as labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rknn_dropbox.store import CANCELLED, COMPLETED, FAILED, JobStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CONVERSION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
STEP_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
RSS_BUCKETS_MB = (256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0)


@dataclass
class Histogram:
    """Cumulative-bucket histogram of values observed since the daemon started."""
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.count += 1
        self.total += value


# result.json field -> (metric name, help, buckets): what completed jobs cost, from their result.json
JOB_COSTS = (
    (("timings", "verify"), "rknn_dropbox_verification_seconds", "Time completed jobs spent verifying.", STEP_BUCKETS),
    (("timings", "repair"), "rknn_dropbox_accuracy_repair_seconds", "Time completed jobs spent on accuracy repair.",
     STEP_BUCKETS),
    (("peak_rss_mb",), "rknn_dropbox_job_peak_rss_megabytes", "Peak resident memory of completed jobs' workers.",
     RSS_BUCKETS_MB),
)


def new_job_costs() -> dict[str, Histogram]:
    return {name: Histogram(bounds) for _, name, _, bounds in JOB_COSTS}


def observe_job_costs(costs: dict[str, Histogram], result: dict[str, Any]) -> None:
    """Add one completed job's verification/repair seconds and peak RSS (when its result.json has them)."""
    for path, name, _, _ in JOB_COSTS:
        value: Any = result
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and name in costs:
            costs[name].observe(float(value))


def _histogram_lines(name: str, help_text: str, hist: Histogram) -> list[str]:
    counts = hist.counts or [0] * len(hist.bounds)
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    lines += [f'{name}_bucket{{le="{b!r}"}} {n}' for b, n in zip(hist.bounds, counts)]
    return lines + [f'{name}_bucket{{le="+Inf"}} {hist.count}', f"{name}_sum {hist.total!r}",
                    f"{name}_count {hist.count}"]


def _labelled_counter(name: str, help_text: str, label: str, values: dict[str, int]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    return lines + [f'{name}{{{label}="{key}"}} {int(n)}' for key, n in sorted(values.items())]


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
    lines += _labelled_counter("rknn_dropbox_loop_errors_total", "Failures of a daemon loop step (each retried "
                               "with back-off), by step.", "step", snapshot.get("loop_errors") or {})
    lines += _labelled_counter("rknn_dropbox_thread_restarts_total", "Daemon threads found dead and restarted, by "
                               "thread.", "thread", snapshot.get("thread_restarts") or {})
    missing = snapshot.get("share_missing")
    lines += ["# HELP rknn_dropbox_share_available 1 when inbox, outbox and failed are reachable, 0 during an outage.",
              "# TYPE rknn_dropbox_share_available gauge", f"rknn_dropbox_share_available {0 if missing else 1}",
              "# HELP rknn_dropbox_share_outages_total Times the share (inbox, outbox or failed) went away.",
              "# TYPE rknn_dropbox_share_outages_total counter",
              f"rknn_dropbox_share_outages_total {int(snapshot.get('share_outages') or 0)}"]
    costs = snapshot.get("job_costs") or {}
    for _, name, help_text, bounds in JOB_COSTS:
        lines += _histogram_lines(name, help_text, costs.get(name) or Histogram(bounds))
    return "\n".join(lines) + "\n"

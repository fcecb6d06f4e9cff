"""The job list at `/`: one row per job (newest first), a summary line, status filters, pages of PAGE_SIZE; no JS."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from rknn_dropbox.status.html import cosine_chip, duration, e, layout, pill, size, table
from rknn_dropbox.status.jobview import JobView
from rknn_dropbox.store import COMPLETED, FAILED, FINAL_STATUSES, STATUSES

REFRESH_SECONDS = 5
PAGE_SIZE = 100
HEADERS = ("job", "status", "targets", "build", "verification", "warnings", "duration", "output", "toolkit", "links")


@dataclass
class ListRequest:
    """What the list shows: a status filter (or all) and a 1-based page."""
    status: str | None = None
    page: int = 1
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.counts.get(self.status, 0) if self.status else sum(self.counts.values())

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // PAGE_SIZE))

    def url(self, status: str | None, page: int = 1) -> str:
        query = {k: v for k, v in (("status", status), ("page", page if page > 1 else None)) if v}
        return "/" + ("?" + urlencode(query) if query else "")


def _status_cell(view: JobView) -> str:
    job = view.record
    cell = pill(job.status)
    if job.status not in FINAL_STATUSES:
        cell += (f' <progress max="100" value="{job.progress:.0f}"></progress> '
                 f'<span class="small">{job.progress:.0f}% {e(job.stage)}</span>')
    elif job.status == FAILED and view.error:
        first = view.error.splitlines()[0] if view.error.strip() else view.error
        cell += f'<div class="small error-line" style="color:#c0262d">{e(first[:160])}</div>'
    return cell


def _build_cell(view: JobView) -> str:
    if not view.precision:
        return '<span class="muted">–</span>'
    cell = pill(view.precision, "int8" if view.precision != "fp16" else "fp16")
    return cell + (" " + pill("repaired") if view.repaired else "")


def _links(view: JobView) -> str:
    job_id = e(view.record.id)
    links = [f'<a href="/tasks/{job_id}">details</a>', f'<a href="/api/tasks/{job_id}/logs">log</a>',
             f'<a href="/api/tasks/{job_id}">json</a>']
    if view.downloadable:
        links.append(f'<a href="/api/download/{job_id}">download</a>')
    return " ".join(links)


def _row(view: JobView) -> list[str]:
    job = view.record
    targets = view.targets
    several = len(targets) > 1
    chips = "<br>".join(cosine_chip(t, several) for t in targets) if job.status == COMPLETED else ""
    warnings = len(view.warnings)
    return [
        f'<a class="name" href="/tasks/{e(job.id)}">{e(job.name)}</a><div class="small muted mono">{e(job.id)}</div>',
        _status_cell(view),
        e(", ".join(t.platform for t in targets)),
        _build_cell(view),
        chips or '<span class="muted">–</span>',
        f'<span class="warn-count" title="{e(chr(10).join(view.warnings))}">{warnings}</span>' if warnings
        else '<span class="muted">0</span>',
        e(duration(job.duration)),
        e(size(view.output_size)),
        e(view.toolkit_version),
        _links(view),
    ]


def summary_line(snapshot: dict[str, Any], memory_mb: float | None) -> str:
    parts = [f"<b>{int(snapshot.get('in_progress') or 0)}</b> converting",
             f"<b>{int(snapshot.get('queue_depth') or 0)}</b> queued",
             f"<b>{int(snapshot.get('workers_alive') or 0)}/{int(snapshot.get('workers') or 0)}</b> workers",
             f"<b>{int(snapshot.get('waiting_in_inbox') or 0)}</b> waiting in inbox"]
    if memory_mb is not None:
        parts.append(f"<b>{memory_mb:,.0f} MB</b> memory in use")
    if snapshot.get("stopping"):
        parts.append('<b style="color:#c0262d">stopping</b>')
    parts.append(f'<span class="muted">updated {e(time.strftime("%Y-%m-%d %H:%M:%S"))}</span>')
    return '<p class="summary">' + " &middot; ".join(parts) + "</p>"


def _filters(req: ListRequest) -> str:
    links = []
    for status in (None, *STATUSES):
        label = status or "all"
        count = req.counts.get(status, 0) if status else sum(req.counts.values())
        css = ' class="current"' if status == req.status else ""
        links.append(f'<a{css} href="{e(req.url(status))}">{e(label)} ({count})</a>')
    return '<p class="filters">' + "".join(links) + "</p>"


def _pager(req: ListRequest) -> str:
    if req.pages <= 1:
        return ""
    links = []
    if req.page > 1:
        links.append(f'<a href="{e(req.url(req.status, req.page - 1))}">&larr; newer</a>')
    links.append(f"<span>page {req.page} of {req.pages}</span>")
    if req.page < req.pages:
        links.append(f'<a href="{e(req.url(req.status, req.page + 1))}">older &rarr;</a>')
    return '<p class="pager">' + " ".join(links) + "</p>"


def render_list(views: list[JobView], snapshot: dict[str, Any], version: str, req: ListRequest,
                memory_mb: float | None = None) -> str:
    running = any(v.record.status not in FINAL_STATUSES for v in views)
    refresh = REFRESH_SECONDS if running or not views else REFRESH_SECONDS * 6
    rows = [_row(v) for v in views]
    body = table(HEADERS, rows, "jobs") if rows else \
        '<p class="muted">no jobs here yet: drop a model in inbox/</p>'
    return layout("rknn-dropbox", summary_line(snapshot, memory_mb) + _filters(req) + body + _pager(req),
                  version, refresh)

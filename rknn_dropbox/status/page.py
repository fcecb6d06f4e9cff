"""The plain HTML status page at `/`: a self-refreshing table of tasks, no JavaScript."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from rknn_dropbox.store import FINAL_STATUSES, JobRecord

REFRESH_SECONDS = 5


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _row(job: JobRecord) -> str:
    e = escape
    links = [f'<a href="/api/tasks/{e(job.id)}">json</a>', f'<a href="/api/tasks/{e(job.id)}/logs">log</a>']
    if job.status == "completed" and job.outputs:
        links.append(f'<a href="/api/download/{e(job.id)}">download</a>')
    detail = e(job.error or job.stage or "")
    return (f"<tr class=\"{e(job.status)}\"><td><code>{e(job.id)}</code></td><td>{e(job.name)}</td>"
            f"<td>{e(job.format or '')}</td><td>{e(job.target or '')}</td><td>{e(job.status)}</td>"
            f"<td><progress max=\"100\" value=\"{job.progress:.0f}\">{job.progress:.0f}%</progress> "
            f"{job.progress:.0f}%</td><td>{_duration(job.duration)}</td><td>{detail}</td>"
            f"<td>{' '.join(links)}</td></tr>")


def render_page(jobs: list[JobRecord], snapshot: dict[str, Any], version: str) -> str:
    running = [j for j in jobs if j.status not in FINAL_STATUSES]
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if running or not jobs else \
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS * 6}">'
    summary = (f"{snapshot.get('in_progress', 0)} converting, {snapshot.get('queue_depth', 0)} queued, "
               f"{snapshot.get('workers_alive', 0)}/{snapshot.get('workers', 0)} workers alive")
    rows = "\n".join(_row(j) for j in jobs) or '<tr><td colspan="9">no tasks yet: drop a model in inbox/</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}<title>rknn-dropbox</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; }}
td, th {{ padding: .25em .6em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }}
tr.failed td {{ color: #a00; }} tr.cancelled td {{ color: #777; }} tr.completed td {{ color: #060; }}
</style></head><body>
<h1>rknn-dropbox {escape(version)}</h1>
<p>{escape(summary)} &middot; updated {escape(time.strftime('%Y-%m-%d %H:%M:%S'))} &middot;
<a href="/api/tasks">json</a> &middot; <a href="/metrics">metrics</a></p>
<table><thead><tr><th>task</th><th>name</th><th>format</th><th>target</th><th>status</th><th>progress</th>
<th>duration</th><th>stage / error</th><th>links</th></tr></thead>
<tbody>
{rows}
</tbody></table></body></html>
"""

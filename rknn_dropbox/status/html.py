"""HTML pieces the status pages share: the layout and its CSS, number formats, verdict and cosine chips, SVG bars."""

from __future__ import annotations

import math
from html import escape
from typing import Any, Iterable

from rknn_dropbox.status.jobview import OutputCheck, TargetView

CSS = """
:root { --ok: #17803d; --bad: #c0262d; --warn: #a15c00; --muted: #667085; --line: #e4e7ec; --bg: #f8f9fb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2939;
       background: var(--bg); }
header { background: #101828; color: #fff; padding: .7em 1.5em; display: flex; gap: 1.5em; align-items: baseline; }
header a { color: #fff; text-decoration: none; font-weight: 600; font-size: 1.1em; }
header .meta { color: #98a2b3; font-size: .9em; }
main { padding: 1em 1.5em 3em; max-width: 1400px; }
h1 { font-size: 1.4em; margin: .3em 0 .2em; word-break: break-word; white-space: pre-wrap; }
h2 { font-size: 1.1em; margin: 1.6em 0 .5em; border-bottom: 1px solid var(--line); padding-bottom: .25em; }
h3 { font-size: 1em; margin: 1em 0 .4em; }
a { color: #175cd3; }
table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
td, th { padding: .35em .7em; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f2f4f7; font-weight: 600; font-size: .9em; color: #344054; white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; }
table.jobs { width: 100%; }
.name { white-space: pre-wrap; word-break: break-word; font-weight: 600; }
.pill { display: inline-block; padding: .05em .55em; border-radius: 1em; font-size: .85em; font-weight: 600;
        background: #eaecf0; color: #344054; white-space: nowrap; }
.pill.completed { background: #dcfae6; color: var(--ok); } .pill.failed { background: #fee4e2; color: var(--bad); }
.pill.processing { background: #d1e9ff; color: #175cd3; } .pill.cancelled { background: #f2f4f7; color: var(--muted); }
.pill.int8 { background: #ebe9fe; color: #5925dc; } .pill.fp16 { background: #e0f2fe; color: #026aa2; }
.pill.repaired { background: #fef0c7; color: var(--warn); }
.cos { font-variant-numeric: tabular-nums; font-weight: 600; white-space: nowrap; }
.cos.ok { color: var(--ok); } .cos.bad { color: var(--bad); } .cos.none { color: var(--muted); font-weight: 400; }
.cos.warn { color: var(--warn); } .verdict { font-size: 1.05em; } tr.lost td { color: var(--bad); }
.muted { color: var(--muted); } .nowrap { white-space: nowrap; } .small { font-size: .88em; }
.warnings li { color: var(--warn); } .warn-count { color: var(--warn); font-weight: 600; }
.error { background: #fef3f2; border: 1px solid #fecdca; border-radius: 6px; padding: .8em 1em; margin: .8em 0; }
.error .text { color: var(--bad); font-weight: 600; white-space: pre-wrap; word-break: break-word; }
.error .hint { margin-top: .4em; white-space: pre-wrap; word-break: break-word; }
.summary { margin: .4em 0 .8em; } .summary b { font-variant-numeric: tabular-nums; }
.filters a, .filters span { margin-right: .8em; } .filters .current { font-weight: 700; }
.pager { margin: 1em 0; } .pager a { margin-right: 1em; }
pre.log { background: #0c111d; color: #d0d5dd; padding: .8em 1em; overflow-x: auto; font-size: 12px;
          line-height: 1.35; max-height: 48em; border-radius: 6px; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .92em; }
.hash { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .8em; color: var(--muted);
        word-break: break-all; }
.target table { margin: .3em 0 .7em; }
.target { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .6em 1em 1em; margin: .8em 0; }
.kv td:first-child, .kv.options td:nth-child(odd) { color: var(--muted); white-space: nowrap; }
table.jobs td:nth-child(n+6) { white-space: nowrap; }
header .links a { font-size: .9em; font-weight: 400; color: #98a2b3; }
progress { width: 7em; vertical-align: middle; }
svg.bars text { font: 12px system-ui, sans-serif; fill: #344054; } svg.bars .tick { fill: #98a2b3; font-size: 11px; }
"""

NINES_MAX = 5.0  # the bar scale: 0.9 -> 1 nine, 0.99 -> 2, ... 0.99999 and above fill the bar


def e(value: Any) -> str:
    """Text for HTML (element content and quoted attributes alike)."""
    return escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, version: str, refresh_seconds: int | None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_seconds}">' if refresh_seconds else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{refresh}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>\n"
            f'<header><a href="/">rknn-dropbox</a><span class="meta">{e(version)}</span>'
            f'<span class="meta links"><a href="/api/tasks">json</a> &middot; <a href="/metrics">metrics</a></span>'
            f"</header>\n<main>\n{body}\n</main></body></html>\n")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def size(n: int | None) -> str:
    if n is None:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def cosine_text(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    text = f"{value:.4f}"
    return f"{value:.6f}" if text == "1.0000" and value < 1 else text


def cosine_chip(target: TargetView, with_platform: bool) -> str:
    """`rk3588 0.9991` coloured against the target's threshold (grey when not verified)."""
    label = f"{e(target.platform)} " if with_platform else ""
    if target.built is False:
        return f'<span class="cos bad" title="{e(target.error or "")}">{label}build failed</span>'
    if target.verdict is not None:
        return verdict_chip(target, label)
    low = target.min_cosine
    if low is None:
        why = target.reason or target.check_status or "not verified"
        return f'<span class="cos none" title="{e(why)}">{label}{e(target.check_status or "–")}</span>'
    css = "bad" if target.below_threshold else "ok"
    title = f"lowest output cosine; threshold {cosine_text(target.threshold)}" if target.threshold else ""
    return f'<span class="cos {css}" title="{e(title)}">{label}{cosine_text(low)}</span>'


def verdict_chip(target: TargetView, label: str = "") -> str:
    """`top-1 agrees 4/4` coloured by the task checks' verdict: passed green, below threshold red, a shortfall on
    synthetic samples amber (and it says so)."""
    verdict = target.verdict
    assert verdict is not None
    return f'<span class="cos {verdict.css}" title="{e(verdict.detail)}">{label}{e(verdict.label)}</span>'


def pill(text: str, css: str = "") -> str:
    return f'<span class="pill {e(css or text)}">{e(text)}</span>'


def nines(value: float) -> float:
    """Position on the bar scale: the number of leading nines of a cosine, capped at NINES_MAX."""
    if math.isnan(value) or value <= 0:
        return 0.0
    return min(NINES_MAX, -math.log10(max(1.0 - value, 10 ** -NINES_MAX)))


def cosine_bars(outputs: list[OutputCheck], threshold: float | None, neutral: bool = False) -> str:
    """Inline SVG: one bar per output (its lowest cosine), a dot per sample, the threshold as a dashed line;
    `neutral` (the task checks decided) draws them grey-blue: a high cosine can hide a broken model."""
    label_w, bar_w, row_h, top = 190, 520, 28, 22
    height = top + row_h * len(outputs) + 24
    width = label_w + bar_w + 90
    x = lambda v: label_w + bar_w * nines(v) / NINES_MAX  # noqa: E731
    parts = [f'<svg class="bars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="cosine per output">']
    for tick in (0.9, 0.99, 0.999, 0.9999):
        tx = x(tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - 4}" stroke="#eaecf0"/>'
                     f'<text class="tick" x="{tx:.1f}" y="{top - 8}" text-anchor="middle">{tick}</text>')
    for i, out in enumerate(outputs):
        y = top + i * row_h
        short = out.name if len(out.name) <= 26 else out.name[:25] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end"><title>{e(out.name)}</title>'
                     f"{e(short)}</text>")
        parts.append(f'<rect x="{label_w}" y="{y + 5}" width="{bar_w}" height="16" fill="#f2f4f7" rx="3"/>')
        if out.cosine is not None:
            ok = threshold is None or out.cosine >= threshold
            fill, ink = ("#84adff", "#344054") if neutral else \
                (("#32d583", "#17803d") if ok else ("#f97066", "#c0262d"))
            parts.append(f'<rect x="{label_w}" y="{y + 5}" width="{x(out.cosine) - label_w:.1f}" height="16" '
                         f'rx="3" fill="{fill}"><title>{cosine_text(out.cosine)}</title></rect>')
            for s in out.samples:
                parts.append(f'<circle cx="{x(s):.1f}" cy="{y + 13}" r="3" fill="#101828" fill-opacity=".55">'
                             f"<title>sample {cosine_text(s)}</title></circle>")
            parts.append(f'<text x="{label_w + bar_w + 8}" y="{y + 17}" font-weight="600" '
                         f'fill="{ink}">{cosine_text(out.cosine)}</text>')
    if threshold is not None and not neutral:
        tx = x(threshold)
        parts.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{height - 20}" stroke="#c0262d" '
                     f'stroke-width="2" stroke-dasharray="4 3"><title>threshold {threshold}</title></line>')
    dots = ", dots: each sample" if any(o.samples for o in outputs) else ""
    legend = f"bar: lowest cosine per output{dots}" + (", dashed: the threshold" if threshold is not None
                                                        and not neutral else "")
    legend += "; for reference only: the task checks decide" if neutral else " (scale: 0.9, 0.99, 0.999, …)"
    parts.append(f'<text class="tick" x="{label_w}" y="{height - 4}">{e(legend)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], css: str = "") -> str:
    """Cells are HTML already (escape them before)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{e(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def plain(value: Any) -> str:
    """A JSON value as short escaped text: lists joined, dicts as k=v, floats to 6 significant digits."""
    if value is None:
        return '<span class="muted">–</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return e(f"{value:.6g}")
    if isinstance(value, list):
        return ", ".join(plain(v) for v in value) or '<span class="muted">none</span>'
    if isinstance(value, dict):
        return "; ".join(f"{e(k)}={plain(v)}" for k, v in value.items())
    return e(value)

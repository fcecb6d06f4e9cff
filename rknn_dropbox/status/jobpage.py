"""One job at `/tasks/<id>`: what was dropped, the options, per-target verification, repair, warnings, error, log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rknn_dropbox.status.html import (cosine_bars, cosine_chip, cosine_text, duration, e, layout, pill, plain, size,
                                      table)
from rknn_dropbox.status.jobview import JobView, TargetView, was_repaired
from rknn_dropbox.intake.scanner import split_name
from rknn_dropbox.store import COMPLETED, FINAL_STATUSES

LOG_LINES = 200
MAX_DROPPED_ROWS = 200  # a calibration set can be thousands of images
DETAIL_KEYS = ("rknn", "toolkit_fallback", "timings", "peak_rss_mb", "cached", "cache_of", "rknn_dropbox_version")
ACCURACY_FACTS = ("delivered_label", "delivered_because", "repair_crashed", "npu_cost", "passed", "not_tried",
                  "report", "analysis_error")
TENSOR_KEYS = ("name", "shape", "dtype", "layout", "quant")
CHECK_WORDS = {"passed": "passed", "below_threshold": "below the threshold", "skipped": "skipped",
               "error": "could not run", "warning": "fell short on synthetic samples (a warning: never repaired)"}
CHECK_HEADERS = ("kind", "outputs", "metric", "value", "threshold", "", "summary")
PART_HEADERS = ("output", "part", "reference range", "quantization step", "error of range: mean / max", "",
                "summary")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "–"


def _kv(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def _format(view: JobView, dropped: list[dict[str, Any]]) -> str:
    """The model format; for a job that failed before it was read, guessed from the dropped file's extension."""
    fmt = view.record.format or view.doc.get("format")
    if fmt:
        return str(fmt)
    exts = [split_name(Path(str(f.get("name", ""))).name)[1] for f in dropped]
    exts = [x for x in exts if x and x not in (".yaml", ".yml", ".txt", ".npy", ".jpg", ".png")]
    return f"{exts[0].lstrip('.')} (by its extension)" if exts else "–"


def _heading(view: JobView, fmt: str) -> str:
    job = view.record
    pills = [pill(job.status)]
    if view.precision:
        pills.append(pill(view.precision, "int8" if view.precision != "fp16" else "fp16"))
    if view.repaired:
        pills.append(pill("repaired"))
    facts = [f'<span class="mono">{e(job.id)}</span>', f"format {e(fmt)}",
             f"targets {e(', '.join(view.platforms) or '–')}"]
    if view.toolkit_version:
        facts.append(f"rknn-toolkit2 {e(view.toolkit_version)}")
    facts += [f"dropped {_when(job.created_at)}", f"took {e(duration(job.duration) or '–')}"]
    out = f'<h1 class="name">{e(job.name)}</h1><p>{" ".join(pills)}</p><p class="muted">{" &middot; ".join(facts)}</p>'
    if job.status not in FINAL_STATUSES:
        out += (f'<p><progress max="100" value="{job.progress:.0f}"></progress> {job.progress:.0f}% '
                f"&middot; {e(job.stage)}</p>")
    reason = view.quantization.get("reason")
    if reason and reason not in view.warnings:
        out += f"<p>{e(reason)}</p>"
    return out


def _problems(view: JobView) -> str:
    out = ""
    if view.record.status in FINAL_STATUSES and view.record.status != COMPLETED and view.error:
        hint = f'<div class="hint"><b>Hint:</b> {e(view.hint)}</div>' if view.hint else ""
        stage = view.doc.get("stage")
        where = f'<div class="small muted">stage: {e(stage)}</div>' if stage else ""
        out += f'<div class="error"><div class="text">{e(view.error)}</div>{hint}{where}</div>'
    if view.warnings:
        items = "".join(f"<li>{e(w)}</li>" for w in view.warnings)
        out += f'<h2>Warnings ({len(view.warnings)})</h2><ul class="warnings">{items}</ul>'
    return out


def _downloads(view: JobView) -> str:
    job_id = e(view.record.id)
    doc_name = "result.json" if view.record.status == COMPLETED else "error.json"
    links = [f'<a href="/api/tasks/{job_id}/logs">conversion.log</a>', f'<a href="/api/tasks/{job_id}">task JSON</a>']
    if view.doc:
        links.insert(0, f'<a href="/api/tasks/{job_id}/result">{doc_name}</a>')
    rows = []
    if view.downloadable:
        by_file = {t.file: t for t in view.targets if t.file}
        listed = view.doc.get("outputs") if isinstance(view.doc.get("outputs"), list) else []
        for out in [o for o in listed if isinstance(o, dict)] or [{"name": n} for n in view.record.outputs]:
            name = str(out.get("name", ""))
            target = by_file.get(name)
            rows.append([f'<a href="/api/download/{job_id}/{e(quote(name, safe=""))}">{e(name)}</a>',
                         e(target.platform if target else ""), f'<span class="nowrap">{e(size(out.get("size")))}</span>',
                         f'<span class="hash">{e(out.get("sha256", ""))}</span>'])
        if len(rows) > 1:
            links.insert(0, f'<a href="/api/download/{job_id}">all outputs (zip)</a>')
    files = table(("file", "target", "size", "sha256"), rows) if rows else ""
    return f"<h2>{'Downloads' if rows else 'Files'}</h2>{files}<p>{' &middot; '.join(links)}</p>"


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in the order first seen: a table's columns."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    return keys


def _attempts(block: dict[str, Any]) -> str:
    attempts = [a for a in block.get("attempts") or [] if isinstance(a, dict)]
    if not attempts:
        return ""
    keys = _columns(attempts)
    delivered = block.get("delivered")
    rows = []
    for i, a in enumerate(attempts):
        mark = i == delivered or delivered in (a, a.get("name"), a.get("label"), a.get("id"))
        rows.append([pill("delivered", "completed") if mark else ""] + [plain(a.get(k)) for k in keys])
    title = "Accuracy repair: attempts" + (" (repaired)" if was_repaired(block) else "")
    return f"<h3>{title}</h3>" + table(["", *map(e, keys)], rows)


def _worst_layers(block: dict[str, Any]) -> str:
    layers = [w for w in block.get("worst_layers") or [] if isinstance(w, dict)]
    if not layers:
        return ""
    keys = _columns(layers)
    return "<h3>Layers that lose the most accuracy</h3>" + table(map(e, keys), [[plain(w.get(k)) for k in keys]
                                                                                   for w in layers])


def _accuracy_facts(block: dict[str, Any]) -> str:
    pairs = [(k, plain(block[k])) for k in ACCURACY_FACTS if block.get(k) not in (None, "", [])]
    return _kv(pairs) if pairs else ""


def _rknn_file(t: TargetView) -> str:
    """What the delivered .rknn says about itself: toolkit, compiler, format version, the runtime it loads on."""
    r = t.rknn
    if not r:
        return ""
    if r.get("error"):
        return f'<p class="muted">reading the .rknn back: {e(r["error"])}</p>'
    facts = [f"{k.replace('_', ' ')}: {plain(r[k])}" for k in ("toolkit_version", "format_version", "compiler",
                                                                 "loads_on") if r.get(k) not in (None, "")]
    tensors = [[e(kind)] + [plain(x.get(k)) for k in TENSOR_KEYS]
               for kind in ("inputs", "outputs") for x in r.get(kind) or [] if isinstance(x, dict)]
    table_html = table(("", *TENSOR_KEYS), tensors) if tensors else ""
    return f'<p class="small">{" &middot; ".join(facts)}</p>{table_html}'


def _mark(passed: bool | None) -> str:
    return {True: pill("passed", "completed"), False: pill("lost", "failed"), None: ""}[passed]


def _figure(value: float | None, spec: str = ".4g") -> str:
    return '<span class="muted">–</span>' if value is None else e(format(value, spec))


def _span(span: tuple[float, float] | None) -> str:
    return '<span class="muted">–</span>' if span is None else e(f"{span[0]:.4g} – {span[1]:.4g}")


def _errors(mean: float | None, worst: float | None) -> str:
    return f"{_figure(mean, '.2%')} / {_figure(worst, '.2%')}"


def _verdict(t: TargetView) -> str:
    """The task checks: the verdict in words, one row per check, one row per output part (its step vs its range)."""
    v = t.verdict
    if v is None:
        return ""
    by = f" &middot; decided by {e(v.metric)}" + (f" ({e(v.decided_by)})" if v.decided_by else "") if v.metric else ""
    out = f'<p class="verdict">verdict: <span class="cos {v.css}">{e(v.label)}</span>{by}</p>'
    if v.synthetic:
        out += ('<p class="small" style="color:#a15c00">verified on synthetic samples (structured images: no real '
                "samples were given): a shortfall is a warning, never a repair. Drop a dataset.txt or set "
                "verify_dataset to verify on your own inputs.</p>")
    rows = [[e(c.kind), e(", ".join(c.outputs)), e(c.metric or "–"), _figure(c.value), _figure(c.threshold),
             _mark(c.passed), e(c.summary or "")] for c in v.checks]
    out += "<h3>Task checks</h3>" + table(CHECK_HEADERS, rows) if rows else ""
    parts = [[e(p.output), e(p.rows), _span(p.span), _figure(p.step), _errors(p.mean_rel, p.max_rel),
              _mark(p.passed), e(p.summary or "")] for p in v.parts]
    parts += [[e(err.output), "whole output", _span(err.span), '<span class="muted">–</span>',
               _errors(err.mean_rel, err.max_rel), "",
               e(f"SNR {err.snr_db:.1f} dB" if err.snr_db is not None else "")] for err in v.errors]
    return out + ("<h3>Outputs, part by part</h3>" + table(PART_HEADERS, parts) if parts else "")


def _target(view: JobView, t: TargetView) -> str:
    built = {True: pill("built", "completed"), False: pill("failed"), None: ""}[t.built]
    chip = cosine_chip(t, False) if t.min_cosine is not None or t.verdict is not None else ""
    head = f'<h3>{e(t.platform)} {built} {chip}</h3>'
    lines = []
    if t.file:
        lines.append(f"{e(t.file)} &middot; {e(size(t.size))}")
    if t.error:
        lines.append(f'<span style="color:#c0262d">{e(t.error)}</span>')
    if t.check_status:
        facts = [f"verification {e(CHECK_WORDS.get(t.check_status, t.check_status))}"]
        if t.threshold is not None:
            facts.append(f"{'cosine ' if t.verdict else ''}threshold {cosine_text(t.threshold)}")
        if t.reference:
            facts.append(f"against {e(t.reference)}")
        if t.inputs_used:
            facts.append(f"on {e(', '.join(t.inputs_used[:8]))}" + (" …" if len(t.inputs_used) > 8 else ""))
        lines.append(" &middot; ".join(facts))
        if t.reason:
            lines.append(f'<span class="muted">{e(t.reason)}</span>')
    elif view.record.status == COMPLETED:
        lines.append('<span class="muted">not verified</span>')
    if t.build_settings:
        lines.append(f"built with {plain(t.build_settings)}")
    bars = cosine_bars(t.outputs, t.threshold, t.verdict is not None) if t.outputs else ""
    extra = _rknn_file(t) + _attempts(t.accuracy) + _accuracy_facts(t.accuracy) + _worst_layers(t.accuracy)
    return f'<div class="target">{head}<p>{"<br>".join(lines)}</p>{_verdict(t)}{bars}{extra}</div>'


def _outputs_layout(view: JobView) -> str:
    """A YOLO head's delivered outputs: layout, names, shapes, roles, and how the original tensor comes back."""
    layout = view.outputs_layout
    outputs = [o for o in layout.get("outputs") or [] if isinstance(o, dict)]
    if not outputs:
        return ""
    rows = [[e(o.get("name")), plain(o.get("shape")), e(o.get("role"))] for o in outputs]
    original = layout.get("original") if isinstance(layout.get("original"), dict) else {}
    facts = (f"{e(layout.get('layout'))} &middot; {e(layout.get('family'))} {e(layout.get('task'))} &middot; "
             f"{e(layout.get('num_classes'))} classes &middot; original {e(original.get('name'))} "
             f"{plain(original.get('shape'))}")
    return (f"<h2>Output layout</h2><p>{facts}</p>" + table(("output", "shape", "role"), rows)
            + f'<p class="small">{e(layout.get("reassemble"))}</p>' + _layout_proof(layout))


def _layout_proof(layout: dict[str, Any]) -> str:
    """The float16 ranges an int8 build keeps (a pose head's keypoints) and the edit's proof against the stock head."""
    out = []
    ranges = [r for r in layout.get("float_ranges") or [] if isinstance(r, list) and len(r) == 2]
    if ranges:
        out.append("kept in float16: " + ", ".join(f"{e(a)} &rarr; {e(z)}" for a, z in ranges))
    proof = layout.get("equivalence") if isinstance(layout.get("equivalence"), dict) else {}
    diffs = [f"{e(k)} {e(v)}" for k, v in proof.items() if k != "inputs"]
    if diffs:
        out.append(f"decoded against the stock head on {e(proof.get('inputs'))} inputs: largest differences "
                   + ", ".join(diffs))
    return "".join(f'<p class="small">{line}</p>' for line in out)


def _dropped(files: list[dict[str, Any]]) -> str:
    if not files:
        return ""
    more = len(files) - MAX_DROPPED_ROWS
    files = files[:MAX_DROPPED_ROWS]
    rows = [[e(f.get("name")), f'<span class="nowrap">{e(size(f.get("size")))}</span>', f'<span class="hash">{e(f.get("sha256") or "–")}</span>']
            for f in files]
    tail = f'<p class="muted">… and {more} more (all of them in result.json)</p>' if more > 0 else ""
    return "<h2>Dropped files</h2>" + table(("file", "size", "sha256"), rows) + tail


def _options(view: JobView) -> str:
    config = view.doc.get("config")
    if not isinstance(config, dict):
        return ""
    pairs = [(k, plain(v)) for k, v in config.items()]
    per_row = 3
    rows = "".join("<tr>" + "".join(f"<td>{e(k)}</td><td>{v}</td>" for k, v in pairs[i:i + per_row]) + "</tr>"
                   for i in range(0, len(pairs), per_row))
    return f'<h2>Effective options</h2><table class="kv options">{rows}</table>'



def _details(view: JobView) -> str:
    pairs = [(k, plain(view.doc[k])) for k in DETAIL_KEYS if k in view.doc and view.doc[k] not in (None, "", {})]
    return "<h2>Build details</h2>" + _kv(pairs) if pairs else ""


def render_job(view: JobView, dropped: list[dict[str, Any]], log_text: str, version: str) -> str:
    shown = [t for t in view.targets if t.built is not None or t.check_status or t.accuracy or t.rknn]
    per_target = "".join(_target(view, t) for t in shown)
    body = (_heading(view, _format(view, dropped)) + _problems(view) + (f"<h2>Targets</h2>{per_target}" if per_target else "")
            + _outputs_layout(view) + _downloads(view) + _dropped(dropped) + _options(view) + _details(view)
            + f"<h2>conversion.log (last {LOG_LINES} lines)</h2>"
            + (f'<pre class="log">{e(log_text)}</pre>' if log_text else '<p class="muted">no log yet</p>'))
    refresh = None if view.record.status in FINAL_STATUSES else 5
    return layout(f"{view.record.name} – rknn-dropbox", body, version, refresh)

"""`rknn-dropbox submit`: drop models into the inbox for a CI pipeline and, with --wait, follow them to the end."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rknn_dropbox.client.dropper import Drop, SubmitError, drop_into_inbox, plan_drops
from rknn_dropbox.client.follow import HttpApi, Unreachable, download_outputs, follow, url_from_state_dir
from rknn_dropbox.config import Config

EXIT_COMPLETED, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 2
DOWNLOAD_SECONDS = 600.0


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="model file(s) or folder; files sharing a stem "
                   "(net.cfg + net.weights) make one job")
    p.add_argument("--sidecar", type=Path, help="YAML options for the job (copied as <job>.yaml)")
    p.add_argument("--target", help="target platform(s), comma-separated (written into the sidecar)")
    p.add_argument("--url", help="the status endpoint to follow the job on (default: from <state_dir>/daemon.json)")
    p.add_argument("--wait", action="store_true", help="follow the job to the end, download its outputs")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)")
    p.add_argument("-o", "--output", type=Path, default=Path("."), help="where --wait downloads to (default .)")
    p.add_argument("--json", action="store_true", help="print the final task JSON on stdout")


class Reporter:
    """Human lines on stderr (stdout stays JSON with --json), a progress line when stderr is a terminal."""

    def __init__(self, stream: TextIO, json_on_stdout: bool) -> None:
        self.err = stream
        self.out = stream if json_on_stdout else sys.stdout
        self.tty = stream.isatty()
        self.last = ""

    def say(self, text: str, error: bool = False) -> None:
        self.clear()
        print(text, file=self.err if error else self.out, flush=True)

    def progress(self, name: str, task: dict[str, Any] | None) -> None:
        if not self.tty:
            return
        line = f"{name}: " + ("waiting for the daemon to pick it up" if task is None else
                              f"{task['status']} {task.get('progress', 0):.0f}% {task.get('stage') or ''}")
        if line != self.last:
            self.err.write("\r" + line[:150].ljust(len(self.last)))
            self.err.flush()
            self.last = line

    def clear(self) -> None:
        if self.tty and self.last:
            self.err.write("\r" + " " * len(self.last) + "\r")
            self.last = ""


def _verification_lines(result: dict[str, Any]) -> list[str]:
    """Per target the task checks' verdict in words (older result.json: the lowest cosine)."""
    lines = []
    for platform, check in (result.get("verification") or {}).items():
        verdict = check.get("verdict") or {}
        if verdict.get("summary"):
            said = f"{verdict['summary']} ({verdict.get('metric')}"
            said += ", synthetic samples)" if check.get("synthetic") else ")"
            lines.append(f"  {platform}: verification {check.get('status')}, {said}")
            continue
        cosines = [o.get("cosine") for o in check.get("outputs") or []]
        cosines = [c for c in cosines if isinstance(c, (int, float))]
        low = f"min cosine {min(cosines):.4f}" if cosines else check.get("reason", "")
        threshold = check.get("min_cosine")
        lines.append(f"  {platform}: verification {check.get('status')}, {low}"
                     + (f" (threshold {threshold})" if threshold is not None else ""))
    return lines


def _report_completed(rep: Reporter, api: HttpApi, task: dict[str, Any], out_dir: Path) -> None:
    deadline = time.monotonic() + DOWNLOAD_SECONDS
    result = api.get_json(f"/api/tasks/{task['task_id']}/result", deadline)
    saved = download_outputs(api, task, out_dir, deadline, result)
    (out_dir / f"{task['name']}.result.json").write_text(json.dumps(result, indent=2))
    quant = (result.get("quantization") or {}).get("dtype", "")
    rep.say(f"{task['name']}: completed in {task.get('duration') or 0:.1f} s ({quant}, rknn-toolkit2 "
            f"{result.get('toolkit_version', '?')})")
    for line in _verification_lines(result):
        rep.say(line)
    for warning in task.get("warnings") or []:
        rep.say(f"  warning: {warning}")
    for path in saved:
        rep.say(f"  -> {path} ({path.stat().st_size} bytes)")


def _wait_for(rep: Reporter, api: HttpApi, drop: Drop, deadline: float, out_dir: Path) -> tuple[int, Any]:
    task = follow(api, drop.name, deadline, lambda t: rep.progress(drop.name, t))
    rep.clear()
    if task is None:
        rep.say(f"{drop.name}: the daemon did not pick it up in time (is --inbox the daemon's inbox, and "
                "--url its status endpoint?)", error=True)
        return EXIT_TIMEOUT, None
    if task["status"] == "completed":
        _report_completed(rep, api, task, out_dir)
        return EXIT_COMPLETED, task
    if task["status"] in ("failed", "cancelled"):
        rep.say(f"{drop.name}: {task['status']}: {task.get('error') or 'no reason recorded'}", error=True)
        if task.get("hint"):
            rep.say(f"  hint: {task['hint']}", error=True)
        rep.say(f"  log: {api.base.rstrip('/')}/tasks/{task['task_id']}", error=True)
        return EXIT_FAILED, task
    rep.say(f"{drop.name}: still {task['status']} ({task.get('progress', 0):.0f}%) when the timeout ran out",
            error=True)
    return EXIT_TIMEOUT, task


def _status_url(args: argparse.Namespace, cfg: Config) -> str:
    url = args.url or url_from_state_dir(cfg.state_dir)
    if not url:
        raise SubmitError(f"cannot follow the job: no --url given and no {cfg.state_dir / 'daemon.json'} "
                          "(give --url http://box:8080, or --state-dir of the daemon)")
    return url if "://" in url else f"http://{url}"


def run_submit(args: argparse.Namespace, cfg: Config) -> int:
    rep = Reporter(sys.stderr, args.json)
    try:
        url = _status_url(args, cfg) if args.wait else None
        drops = plan_drops([Path(m) for m in args.models])
        for drop in drops:
            drop_into_inbox(cfg.inbox, drop, args.sidecar, args.target)
            rep.say(drop.name)
    except SubmitError as exc:
        rep.say(f"rknn-dropbox submit: {exc}", error=True)
        return EXIT_TIMEOUT  # nothing was converted, so not 1: that means the model failed
    if not args.wait:
        return EXIT_COMPLETED
    api, deadline = HttpApi(url), time.monotonic() + args.timeout
    codes, tasks = [], []
    for drop in drops:
        try:
            code, task = _wait_for(rep, api, drop, deadline, args.output)
        except Unreachable as exc:
            rep.say(f"{drop.name}: {exc}", error=True)
            code, task = EXIT_TIMEOUT, None
        codes.append(code)
        tasks.append(task)
    if args.json:
        print(json.dumps(tasks[0] if len(tasks) == 1 else tasks, indent=2, default=str), flush=True)
    return max(codes)

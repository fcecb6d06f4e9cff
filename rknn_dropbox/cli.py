"""The command line: `rknn-dropbox run | convert | check | status | cancel | submit`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from loguru import logger

from rknn_dropbox import __version__
from rknn_dropbox.config import Config, ConfigError, load_config
from rknn_dropbox.logsetup import setup_logging

DEFAULT_CONFIG_NAMES = ("rknn-dropbox.toml", "/etc/rknn-dropbox/config.toml")


def _find_config(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    env = os.environ.get("RKNN_DROPBOX_CONFIG")
    if env:
        return Path(env)
    for name in DEFAULT_CONFIG_NAMES:
        if Path(name).is_file():
            return Path(name)
    return None


def _load(args: argparse.Namespace) -> Config:
    overrides = {k: getattr(args, k, None) for k in ("inbox", "outbox", "failed", "state_dir", "host", "port",
                                                     "workers")}
    cfg = load_config(_find_config(args.config), overrides)
    if getattr(args, "debug", False):
        from dataclasses import replace
        cfg = replace(cfg, log_level="DEBUG")
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from rknn_dropbox.service.daemon import Daemon, StartupError
    cfg = _load(args)
    setup_logging(cfg.log_level)
    try:
        return Daemon(cfg, reloader=lambda: _load(args)).run()
    except StartupError as exc:
        logger.error("cannot start: {}", exc)
        return 1


def check_environment(cfg: Config) -> list[str]:
    """Problems that would stop the daemon from working, as sentences; empty when all is well."""
    from rknn_dropbox.service.startup import (
        StartupError, check_inotify, check_port, open_store_path, prepare_folders,
    )
    problems: list[str] = []
    try:
        prepare_folders(cfg)
        open_store_path(cfg)
    except StartupError as exc:
        problems.append(str(exc))
    if cfg.http.enabled:
        busy = check_port(cfg.http.host, cfg.http.port)
        if busy:
            problems.append(busy)
    if cfg.poll is not True and (inotify := check_inotify()):
        problems.append(inotify)
    problems += check_toolkits(cfg)
    try:
        watches = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
        instances = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
        print(f"inotify: max_user_watches={watches}, max_user_instances={instances}")
        if watches < 1024 or instances < 8:
            problems.append("inotify limits are very low: raise fs.inotify.max_user_watches / max_user_instances "
                            "or set poll = true")
    except (OSError, ValueError):
        print("inotify limits unknown (not Linux?)")
    return problems


def check_toolkits(cfg: Config) -> list[str]:
    """Every version listed in [toolkits] is installed and imports (each probed in a subprocess)."""
    from rknn_dropbox.toolkits import installed_names, installed_toolkits, probe_toolkit
    toolkits = installed_toolkits()
    by_version = {t.version: t for t in toolkits}
    problems = []
    for version in cfg.toolkits.versions:
        tk = by_version.get(version)
        if tk is None:
            problems.append(f"rknn-toolkit2 {version} is listed in [toolkits] versions but not installed (installed: "
                            f"{installed_names(toolkits)}): run `rknn-dropbox toolkits install {version}`")
            continue
        probe = probe_toolkit(tk)
        if probe.ok:
            print(f"rknn-toolkit2 {version} imports fine ({tk.where})")
        else:
            problems.append(f"rknn-toolkit2 {version} cannot be imported: {probe.error}")
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args)
    problems = check_environment(cfg)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if not problems:
        print(f"ok: inbox {cfg.inbox}, outbox {cfg.outbox}, failed {cfg.failed}, work area {cfg.claim_dir}")
    return 1 if problems else 0


def _short_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 100:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def status_table(jobs: list[Any], width: int) -> str:
    """The `status` table: one line per job, the last column (stage or error) cut to the terminal width."""
    header = f"{'TASK ID':<22} {'NAME':<20} {'STATUS':<10} {'PROGRESS':>8} {'TIME':>7}  {'TARGET':<12} DETAIL"
    lines = [header]
    for j in jobs:
        detail = j.error or ("" if j.status == "completed" else j.stage or "")
        if j.cancel_requested and j.status in ("queued", "processing"):
            detail = "cancel requested; " + detail
        line = (f"{j.id:<22} {j.name[:20]:<20} {j.status:<10} {j.progress:>7.0f}% "
                f"{_short_duration(j.duration):>7}  {j.target[:12]:<12} {detail}")
        lines.append(line[:max(width, len(header))])
    if not jobs:
        lines.append("(no jobs yet)")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from rknn_dropbox.store import STATUSES, JobStore
    cfg = _load(args)
    if args.status and args.status not in STATUSES:
        print(f"rknn-dropbox: --status must be one of {', '.join(STATUSES)}", file=sys.stderr)
        return 2
    if not cfg.store_path.exists():
        print(f"rknn-dropbox: no job store at {cfg.store_path} (has the daemon run with this config?)",
              file=sys.stderr)
        return 1
    store = JobStore(cfg.store_path)
    try:
        while True:
            jobs = store.list(status=args.status, limit=args.limit)
            if args.json:
                print(json.dumps([j.to_task() for j in jobs], default=str, indent=None if args.watch else 2),
                      flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")
                counts = store.counts()
                print(status_table(jobs, shutil.get_terminal_size((120, 40)).columns))
                print(f"\n{counts['processing']} converting, {counts['queued']} queued, {counts['completed']} "
                      f"completed, {counts['failed']} failed, {counts['cancelled']} cancelled", flush=True)
            if not args.watch:
                return 0
            time.sleep(args.interval)
    finally:
        store.close()


def cmd_cancel(args: argparse.Namespace) -> int:
    """Flag jobs in the store; the daemon cancels them within a step (queued: dequeued; running: worker killed)."""
    from rknn_dropbox.status.server import TASK_ID_RE
    from rknn_dropbox.store import FINAL_STATUSES, JobStore
    cfg = _load(args)
    if not cfg.store_path.exists():
        print(f"rknn-dropbox: no job store at {cfg.store_path}", file=sys.stderr)
        return 1
    store = JobStore(cfg.store_path)
    failures, flagged = 0, []
    try:
        for job_id in args.ids:
            if not TASK_ID_RE.fullmatch(job_id):
                print(f"{job_id[:80]}: not a task id (expected YYYYMMDD-HHMMSS-xxxxxx)", file=sys.stderr)
                failures += 1
                continue
            job = store.request_cancel(job_id)
            if job is None:
                print(f"{job_id}: no such task", file=sys.stderr)
                failures += 1
            elif job.status in FINAL_STATUSES:
                print(f"{job_id} ({job.name}): already {job.status}, nothing to cancel", file=sys.stderr)
                failures += 1
            else:
                print(f"{job_id} ({job.name}): cancel requested while {job.status}")
                flagged.append(job_id)
        deadline = time.monotonic() + args.timeout
        while args.wait and flagged and time.monotonic() < deadline:
            time.sleep(0.2)
            for job_id in list(flagged):
                job = store.get(job_id)
                if job is not None and job.status in FINAL_STATUSES:
                    print(f"{job_id} ({job.name}): {job.status}")
                    flagged.remove(job_id)
                    failures += job.status != "cancelled"
        if args.wait and flagged:
            print(f"still not cancelled after {args.timeout:.0f} s (is the daemon running?): {', '.join(flagged)}",
                  file=sys.stderr)
            failures += len(flagged)
    finally:
        store.close()
    return 1 if failures else 0


def cmd_submit(args: argparse.Namespace) -> int:
    from rknn_dropbox.client.submit import run_submit
    return run_submit(args, _load(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rknn-dropbox", description="Drop a model in inbox/, get a .rknn")
    parser.add_argument("--version", action="version", version=f"rknn-dropbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML config (default: $RKNN_DROPBOX_CONFIG, ./rknn-dropbox.toml)")
        p.add_argument("--inbox")
        p.add_argument("--outbox")
        p.add_argument("--failed")
        p.add_argument("--state-dir", dest="state_dir")
        p.add_argument("--debug", action="store_true", help="verbose logging")

    run = sub.add_parser("run", help="run the daemon in the foreground until SIGTERM/SIGINT")
    common(run)
    run.add_argument("--host", help="status endpoint address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="status endpoint port (default 8080)")
    run.add_argument("--workers", type=int, help="worker processes (default 2)")
    run.set_defaults(func=cmd_run)

    conv = sub.add_parser("convert", help="convert models once, without the daemon")
    common(conv)
    conv.add_argument("models", nargs="+", metavar="MODEL")
    conv.add_argument("--target", help="target platform(s), comma-separated (default from config: rk3588)")
    conv.add_argument("-o", "--output", default=".", help="output folder (default: .)")
    conv.add_argument("--toolkit", help="build with exactly this installed rknn-toolkit2 version")
    conv.add_argument("--crashed", help=argparse.SUPPRESS)  # a fallback child: the versions that crashed before
    from rknn_dropbox.cli_convert import cmd_convert
    conv.set_defaults(func=cmd_convert)

    check = sub.add_parser("check", help="verify the environment and folders")
    common(check)
    check.set_defaults(func=cmd_check)

    status = sub.add_parser("status", help="list jobs from the store, newest first")
    common(status)
    status.add_argument("--json", action="store_true", help="the task JSON of the HTTP API, for scripts")
    status.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch")
    status.add_argument("--status", help="only jobs with this status (queued, processing, completed, ...)")
    status.add_argument("--limit", type=int, default=30)
    status.set_defaults(func=cmd_status)

    cancel = sub.add_parser("cancel", help="cancel queued or running jobs (their inputs go to failed/)")
    common(cancel)
    cancel.add_argument("ids", nargs="+", metavar="TASK_ID")
    cancel.add_argument("--wait", action="store_true", help="wait until the daemon has cancelled them")
    cancel.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (default 60)")
    cancel.set_defaults(func=cmd_cancel)

    from rknn_dropbox.client.submit import add_submit_arguments
    submit = sub.add_parser("submit", help="copy models into the inbox (for CI); --wait follows them to the end")
    common(submit)
    add_submit_arguments(submit)
    submit.set_defaults(func=cmd_submit)
    from rknn_dropbox.cli_tools import add_commands
    add_commands(sub, common, _load)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"rknn-dropbox: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

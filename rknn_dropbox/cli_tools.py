"""The command line's toolkit and model-file commands: `toolkits`, `toolkits install VERSION`, `inspect FILE.rknn`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from rknn_dropbox.config import Config
from rknn_dropbox.toolkits import (
    ToolkitError, install_toolkit, installed_names, installed_toolkits, probe_toolkit, toolkits_dir,
)


def cmd_toolkits(args: argparse.Namespace, load: Callable[[argparse.Namespace], Config]) -> int:
    """List the installed versions and whether each imports; `install V` adds one."""
    if args.action == "install":
        return _install(args.versions)
    if args.action is not None:
        print(f"rknn-dropbox: unknown toolkits action {args.action!r} (use: toolkits, toolkits install VERSION)",
              file=sys.stderr)
        return 2
    cfg = load(args)
    toolkits = installed_toolkits()
    rows = []
    for tk in toolkits:
        probe = probe_toolkit(tk)
        rows.append({"version": tk.version, "folder": tk.where, "imports": probe.ok,
                     "api_file": probe.api_file, "error": probe.error,
                     "default": tk.version == cfg.toolkits.default, "listed": tk.version in cfg.toolkits.versions})
    missing = [v for v in cfg.toolkits.versions if v not in {t.version for t in toolkits}]
    if args.json:
        print(json.dumps({"toolkits": rows, "missing": missing, "dir": str(toolkits_dir())}, indent=2))
    else:
        for r in rows:
            state = "imports" if r["imports"] else f"does NOT import: {r['error']}"
            mark = " (default)" if r["default"] else ""
            print(f"rknn-toolkit2 {r['version']}{mark}: {state} [{r['folder']}]")
        for v in missing:
            print(f"rknn-toolkit2 {v}: listed in [toolkits] versions but not installed "
                  f"(rknn-dropbox toolkits install {v})")
    return 0 if all(r["imports"] for r in rows) and not missing and rows else 1


def _install(versions: list[str]) -> int:
    if not versions:
        print("rknn-dropbox: name the version to install, e.g. `rknn-dropbox toolkits install 2.3.2`",
              file=sys.stderr)
        return 2
    failures = 0
    for version in versions:
        present = {t.version: t for t in installed_toolkits()}
        try:
            tk = present.get(version) or install_toolkit(version)
        except ToolkitError as exc:
            print(f"rknn-dropbox: {exc}", file=sys.stderr)
            failures += 1
            continue
        probe = probe_toolkit(tk)
        if probe.ok:
            print(f"rknn-toolkit2 {version} installed in {tk.where} and imports (rknn.api from {probe.api_file})")
        else:
            print(f"rknn-dropbox: rknn-toolkit2 {version} is in {tk.where} but does not import: {probe.error}",
                  file=sys.stderr)
            failures += 1
    if failures:
        print(f"installed now: {installed_names(installed_toolkits())}", file=sys.stderr)
    return 1 if failures else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print what a .rknn file says about itself, read without the toolkit."""
    from rknn_dropbox.formats.rknnfile import RknnFileError, format_report, read_rknn_file
    status = 0
    for name in args.files:
        try:
            info = read_rknn_file(Path(name))
        except RknnFileError as exc:
            print(f"rknn-dropbox: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps({"file": name, **info.to_json()}, indent=2))
        else:
            print(format_report(name, info))
    return status


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None],
                 load: Callable[[argparse.Namespace], Config]) -> None:
    tk = sub.add_parser("toolkits", help="list the installed rknn-toolkit2 versions; `toolkits install 2.3.2` adds one")
    common(tk)
    tk.add_argument("action", nargs="?", choices=("install",), help="install: add the named versions")
    tk.add_argument("versions", nargs="*", metavar="VERSION")
    tk.add_argument("--json", action="store_true")
    tk.set_defaults(func=lambda a: cmd_toolkits(a, load))

    ins = sub.add_parser("inspect", help="what a .rknn says about itself (toolkit, format, tensors), offline")
    ins.add_argument("files", nargs="+", metavar="FILE.rknn")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_inspect)

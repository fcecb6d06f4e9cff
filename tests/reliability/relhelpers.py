"""Reliability-suite helpers: daemons with full control of their config, and the nothing-was-lost check."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import DaemonProcess, daemons_under, wait_for

FAULTS = {"RKNN_DROPBOX_FAULT_INJECTION": "1"}


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


@dataclass
class Box(DaemonProcess):
    """A daemon whose whole config is `settings`; folders may be shared with other boxes (`shared`)."""
    settings: dict[str, Any] = field(default_factory=dict)
    convert: dict[str, Any] = field(default_factory=dict)
    shared: Path | None = None

    @property
    def inbox(self) -> Path:
        return (self.shared or self.root) / "inbox"

    @property
    def outbox(self) -> Path:
        return Path(self.settings.get("outbox") or (self.shared or self.root) / "outbox")

    @property
    def failed(self) -> Path:
        return (self.shared or self.root) / "failed"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = {"inbox": str(self.inbox), "outbox": str(self.outbox), "failed": str(self.failed),
                "state_dir": str(self.state), "workers": self.workers, "stable_seconds": 0.5,
                "poll_interval_seconds": 0.3, **self.settings}
        lines = [f"{k} = {toml_value(v)}" for k, v in conf.items() if v is not None]
        lines += ["", "[http]", 'host = "127.0.0.1"', "port = 0"]
        if self.convert:
            lines += ["", "[convert]"] + [f"{k} = {toml_value(v)}" for k, v in self.convert.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def tasks(self) -> list[dict[str, Any]]:
        return self.get("/api/tasks")["tasks"]

    def log_text(self) -> str:
        """Every log of this box's runs, oldest first."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("daemon-*.log")))


def _listdir(p: Path) -> list[str]:
    try:
        return os.listdir(p)
    except FileNotFoundError:
        return []


def locate(inbox: Path, outbox: Path, failed: Path, entry: str) -> list[str]:
    """Every place a dropped top-level entry is found: inbox, a work area, outbox/*/input, failed/*/input."""
    places = []
    if os.path.lexists(inbox / entry):
        places.append("inbox")
    claims = inbox / ".rknn-dropbox"
    for host in _listdir(claims):
        for job in _listdir(claims / host):
            for sub in ("input", "out/input"):
                if os.path.lexists(claims / host / job / sub / entry):
                    places.append(f"work:{host}/{job}/{sub}")
    for parent, label in ((outbox, "outbox"), (failed, "failed")):
        for folder in _listdir(parent):
            if os.path.lexists(parent / folder / "input" / entry):
                places.append(f"{label}:{folder}")
    return places


def assert_conserved(inbox: Path, outbox: Path, failed: Path, entries: list[str]) -> dict[str, str]:
    """Every dropped entry is in exactly one of inbox / work area / outbox / failed, and nothing is half-written.

    Returns entry -> where it is."""
    where: dict[str, str] = {}
    problems = []
    for entry in entries:
        places = locate(inbox, outbox, failed, entry)
        if len(places) != 1:
            problems.append(f"{entry!r} found {len(places)} times: {places}")
        else:
            where[entry] = places[0]
    for parent, marker in ((outbox, "result.json"), (failed, "error.json")):
        for folder in _listdir(parent):
            if folder.startswith(".partial-"):
                problems.append(f"partial delivery left behind: {parent / folder}")
            elif not (parent / folder / marker).is_file():
                problems.append(f"{parent / folder} has no {marker}")
            for dirpath, _, files in os.walk(parent / folder):
                problems += [f"temporary file {dirpath}/{f}" for f in files if ".tmp-" in f]
    assert not problems, "\n".join(problems)
    return where


def wait_idle(box: Box, timeout: float = 60) -> None:
    """Until the daemon reports nothing queued or converting."""
    wait_for(lambda: all(t["status"] in ("completed", "failed", "cancelled") for t in box.tasks()), timeout,
             what="all jobs finished")


@pytest.fixture
def box_factory(tmp_path: Path) -> Iterator[Callable[..., Box]]:
    """Make Box daemons under tmp_path; whatever still runs at the end is stopped (then killed)."""
    yield from daemons_under(tmp_path, Box)


def drop(src: Path, dest: Path) -> Path:
    """Copy into the inbox the way a careful user does: under a dot name, then one rename."""
    tmp = dest.with_name("." + dest.name + ".copying")
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    os.rename(tmp, dest)
    return dest


def fill_filesystem(filler: Path) -> Path:
    """Write zeros into `filler` until its filesystem refuses one more byte (a full disk, for real)."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler

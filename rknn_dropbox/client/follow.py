"""Following a submitted job over the status server's read-only HTTP API: find it by name, poll, download."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

FINAL = ("completed", "failed", "cancelled")
POLL_SECONDS = 0.5
REQUEST_TIMEOUT = 15.0
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class Unreachable(Exception):
    """The status server did not answer (or answered with an error) for longer than allowed."""


class BadDownload(OSError):
    """A download that is not the file the daemon delivered: cut short, or not the sha256 result.json records."""


def url_from_state_dir(state_dir: Path) -> str | None:
    """http://host:port of the daemon that wrote <state_dir>/daemon.json, or None."""
    try:
        info = json.loads((state_dir / "daemon.json").read_text())
        host, port = str(info.get("host") or ""), int(info["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    host = "127.0.0.1" if host in WILDCARD_HOSTS else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class HttpApi:
    """GETs against the status server; connection problems are retried until `patience` seconds have passed."""
    base: str
    patience: float = 30.0

    def _open(self, path: str) -> Any:
        return urllib.request.urlopen(self.base.rstrip("/") + path, timeout=REQUEST_TIMEOUT)

    def get_json(self, path: str, deadline: float) -> Any:
        return json.loads(self._retrying(path, deadline, lambda resp: resp.read()))

    def download(self, path: str, dest: Path, deadline: float, sha256: str | None = None) -> int:
        """Stream to `dest` (via a temporary name, renamed when complete and checked: every byte the
        Content-Length announced, and `sha256` when given); the number of bytes. A short or different file is
        fetched again until `patience` runs out, then Unreachable; `dest` is never a partial file."""
        tmp = dest.with_name(f".{dest.name}.download-{os.getpid()}")

        def save(resp: Any) -> int:
            n, digest = 0, hashlib.sha256()
            with open(tmp, "wb") as fh:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    fh.write(block)
                    digest.update(block)
                    n += len(block)
            announced = resp.headers.get("Content-Length")
            if announced is not None and announced.isdigit() and int(announced) != n:
                raise BadDownload(f"{dest.name} arrived cut short ({n} of {announced} bytes)")
            if sha256 is not None and digest.hexdigest() != sha256:
                raise BadDownload(f"{dest.name} arrived with sha256 {digest.hexdigest()[:16]}..., not the "
                                  f"{sha256[:16]}... result.json records")
            os.replace(tmp, dest)
            return n
        try:
            return self._retrying(path, deadline, save)
        finally:
            tmp.unlink(missing_ok=True)

    def _retrying(self, path: str, deadline: float, read: Callable[[Any], Any]) -> Any:
        give_up = min(deadline, time.monotonic() + self.patience)
        while True:
            try:
                with self._open(path) as resp:
                    return read(resp)
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or time.monotonic() >= give_up:
                    raise Unreachable(f"{self.base}{path} answered HTTP {exc.code}: {_error_text(exc)}") from None
            except BadDownload as exc:
                if time.monotonic() >= give_up:
                    raise Unreachable(f"{exc} from {self.base}; not saved") from None
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() >= give_up:
                    reason = getattr(exc, "reason", None) or exc
                    raise Unreachable(f"cannot reach {self.base}: {reason}") from None
            time.sleep(POLL_SECONDS)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error"))
    except (ValueError, OSError, AttributeError):
        return exc.reason or ""


def find_task(api: HttpApi, name: str, deadline: float) -> dict[str, Any] | None:
    """The newest job of this drop name, or None while the daemon has not picked it up."""
    tasks = api.get_json(f"/api/tasks?name={quote(name, safe='')}&limit=1", deadline)["tasks"]
    return tasks[0] if tasks else None


def follow(api: HttpApi, name: str, deadline: float,
           on_change: Callable[[dict[str, Any] | None], None]) -> dict[str, Any] | None:
    """Poll until the job named `name` is final (its task JSON) or the deadline passes (its last task JSON/None)."""
    task: dict[str, Any] | None = None
    while True:
        task = api.get_json(f"/api/tasks/{task['task_id']}", deadline) if task else find_task(api, name, deadline)
        on_change(task)
        if task is not None and task["status"] in FINAL:
            return task
        if time.monotonic() >= deadline:
            return task
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def download_outputs(api: HttpApi, task: dict[str, Any], out_dir: Path, deadline: float,
                     result: dict[str, Any] | None = None) -> list[Path]:
    """Every output of a completed job into out_dir, byte-identical to outbox/: each checked against the sha256
    its result.json records (`result`, else fetched)."""
    if result is None:
        result = api.get_json(f"/api/tasks/{task['task_id']}/result", deadline)
    recorded = {o.get("name"): o.get("sha256") for o in result.get("outputs") or [] if isinstance(o, dict)}
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for name in task.get("outputs") or []:
        dest = out_dir / Path(name).name
        api.download(f"/api/download/{task['task_id']}/{quote(name, safe='')}", dest, deadline, recorded.get(name))
        saved.append(dest)
    return saved

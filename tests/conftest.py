"""Shared fixtures: a real daemon process on tmp folders, and waiting on conditions with deadlines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll predicate until it returns something truthy; fail the test with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class DaemonProcess:
    """A real `rknn-dropbox run` in a subprocess, on its own tmp folders."""
    root: Path
    extra_config: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 2
    nofile: int | None = None  # the daemon's soft RLIMIT_NOFILE (None: this process's)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f'inbox = "inbox"\noutbox = "outbox"\nfailed = "failed"\nstate_dir = "state"\n'
            f"workers = {self.workers}\nstable_seconds = 1.0\n{self.extra_config}\n"
            '[http]\nhost = "127.0.0.1"\nport = 0\n')

    def start(self, wait_ready: bool = True) -> "DaemonProcess":
        self.write_config()
        self.log_path = self.root / f"daemon-{int(time.time() * 1000)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        (self.state / "daemon.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "rknn_dropbox", "run", "--config", str(self.config_path)],
                                     cwd=self.root, env=env, stdout=open(self.log_path, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self._limits)
        if wait_ready:
            wait_for(lambda: (self.state / "daemon.json").exists() or self.proc.poll() is not None, 60,
                     what="daemon ready")
            assert self.proc.poll() is None, self.log()
        return self

    def _limits(self) -> None:
        if self.nofile is not None:
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    @property
    def port(self) -> int:
        return json.loads((self.state / "daemon.json").read_text())["port"]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
            return json.loads(resp.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def wait_outcome(self, name: str, timeout: float = 120) -> Path:
        """The outbox/ or failed/ folder for job `name`, once it exists."""
        def found() -> Path | None:
            for parent in (self.outbox, self.failed):
                if (parent / name).is_dir():
                    return parent / name
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return None
        try:
            return wait_for(found, timeout, what=f"outcome of {name}")
        except AssertionError:
            print(self.log()[-5000:])
            raise

    def wait_completed(self, name: str, timeout: float = 120) -> dict[str, Any]:
        folder = self.wait_outcome(name, timeout)
        if folder.parent == self.failed:
            err = (folder / "error.json").read_text()
            raise AssertionError(f"{name} failed: {err}")
        return json.loads((folder / "result.json").read_text())

    def wait_failed(self, name: str, timeout: float = 120) -> dict[str, Any]:
        folder = self.wait_outcome(name, timeout)
        assert folder.parent == self.failed, f"{name} was expected to fail but landed in {folder}"
        return json.loads((folder / "error.json").read_text())


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def daemons_under(tmp_path: Path, cls: type[DaemonProcess]) -> Iterator[Callable[..., Any]]:
    """A factory of `cls` daemons under tmp_path (for a fixture to `yield from`); what still runs is stopped."""
    started: list[DaemonProcess] = []

    def make(name: str = "box", **kwargs: Any) -> DaemonProcess:
        d = cls(tmp_path / name, **kwargs)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            try:
                d.stop(timeout=30)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    yield from daemons_under(tmp_path, DaemonProcess)


@pytest.fixture
def daemon(daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    return daemon_factory().start()


@pytest.fixture(scope="session")
def trained_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tests/trained.py keeps the trained networks and real photos (the pytest cache: fetched once)."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("trained")) if cache is not None else tmp_path_factory.mktemp("trained")


@pytest.fixture(scope="session")
def zoo_corpus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real-architecture corpus (tests/zoo.py): exported once, cached in the pytest cache per package versions."""
    from zoo import build_corpus, corpus_available
    why = corpus_available()
    if why:
        pytest.fail(f"the model corpus cannot be built: {why}")
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider: build it for this session
    return build_corpus(Path(cache.mkdir("zoo")) if cache is not None else tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the tests that only drop models and read what it did (status pages, submit): started once."""
    d = DaemonProcess(tmp_path_factory.mktemp("shared") / "box").start()
    yield d
    try:
        d.stop(timeout=30)
    except subprocess.TimeoutExpired:
        pass


EXTRA_TOOLKITS = ("2.3.2", "2.3.0")  # beside the venv's 2.5.0: installed once per run, as users do


@pytest.fixture(scope="session")
def extra_toolkits() -> tuple[str, ...]:
    """rknn-toolkit2 2.3.2 and 2.3.0 in <venv>/toolkits/, installed through `rknn-dropbox toolkits install` (a no-op
    when they are there already; CI installs them once per run, ~230 MB from PyPI)."""
    proc = subprocess.run([sys.executable, "-m", "rknn_dropbox", "toolkits", "install", *EXTRA_TOOLKITS],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return EXTRA_TOOLKITS


def toolkits_subset(root: Path, versions: tuple[str, ...]) -> Path:
    """A toolkits folder (for RKNN_DROPBOX_TOOLKITS_DIR) holding only `versions` of the installed ones, linked."""
    from rknn_dropbox.toolkits import toolkits_dir
    root.mkdir(parents=True, exist_ok=True)
    for version in versions:
        (root / version).symlink_to(toolkits_dir() / version, target_is_directory=True)
    return root



@pytest.fixture
def started() -> Iterator[list[Any]]:
    """The in-process daemons (service.daemon.Daemon) a test started, appended by the test; each is shut down after."""
    daemons: list[Any] = []
    yield daemons
    for d in daemons:
        d.shutdown()


def module_daemon(tmp_path_factory: pytest.TempPathFactory, name: str, extra_config: str = "") -> Iterator[DaemonProcess]:
    """One daemon shared by a test module (starting one costs seconds), for a module fixture to `yield from`."""
    d = DaemonProcess(tmp_path_factory.mktemp(name) / "box", extra_config=extra_config)
    d.start()
    yield d
    d.stop(timeout=60)

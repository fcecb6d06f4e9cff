"""Daemon configuration: the TOML file and command-line overrides, validated into dataclasses."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from rknn_dropbox.options import ConvertOptions, OptionsError, parse_convert_options


class ConfigError(ValueError):
    """An invalid configuration: the message names the key."""


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class ToolkitsConfig:
    """[toolkits]: the rknn-toolkit2 versions this box keeps installed; the first is the default for jobs."""
    versions: tuple[str, ...] = ("2.5.0",)

    @property
    def default(self) -> str:
        return self.versions[0]


@dataclass(frozen=True)
class Config:
    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    failed: Path = Path("failed")
    state_dir: Path = Path("state")
    # Where claimed bundles live while they are converted. Must be on inbox's filesystem (claims are renames).
    # Default: <inbox>/.rknn-dropbox/<hostname> (hidden, so the analyzer never sees it).
    work_dir: Path | None = None
    workers: int = 2
    stable_seconds: float = 3.0
    poll: bool | str = "auto"  # true / false / "auto" (polling on network/FUSE mounts, inotify elsewhere)
    poll_interval_seconds: float = 1.0
    rescan_seconds: float = 300.0
    max_file_size: int = 500 * 1024 * 1024
    timeout_seconds: float = 1800.0
    max_jobs_per_worker: int = 50
    # Bundles claimed beyond what the workers can start now. Small, so that several hosts on one inbox share the
    # work instead of the first one to scan taking everything.
    claim_ahead: int = 2
    bundle_timeout_seconds: float = 600.0
    drain_seconds: float = 30.0
    log_level: str = "INFO"
    # Several hosts may share one inbox: each claims into <inbox>/.rknn-dropbox/<host_id>/ (default: the hostname)
    # and takes over the claims of a host whose heartbeat is older than stale_claim_seconds.
    host_id: str | None = None
    stale_claim_seconds: float = 600.0
    worker_memory_limit_mb: int = 0  # 0: no limit; else a worker over this resident size is killed, failing its job
    # A job whose conversion was cut short this many times (the daemon died under it: a crash, an OOM kill of the
    # service, a power loss) fails, listing every attempt's cause, instead of being retried without end.
    max_attempts: int = 3
    # Memory admission: a queued job starts only when the estimated peaks of the running jobs plus its own fit in
    # MemAvailable minus memory_reserve_mb (estimates learned per model and format in state_dir/memory.json).
    # workers stays the upper bound. A worker whose resident memory after a job stays above worker_max_rss_mb
    # (0: never) is replaced by a fresh one: the toolkit's heap keeps most of a big build's peak.
    memory_admission: bool = True
    memory_reserve_mb: int = 1024
    worker_max_rss_mb: int = 2048
    cache: bool = True  # reuse the outputs of an earlier job with the same model bytes + config + toolkit
    cache_max_bytes: int = 2 * 1024 * 1024 * 1024  # the cache (state_dir/cache) evicts least recently used entries
    http: HttpConfig = field(default_factory=HttpConfig)
    convert: ConvertOptions = field(default_factory=ConvertOptions)
    toolkits: ToolkitsConfig = field(default_factory=ToolkitsConfig)
    source: Path | None = None  # the TOML file this came from

    @property
    def claim_dir(self) -> Path:
        if self.work_dir is not None:
            return self.work_dir
        return self.inbox / ".rknn-dropbox" / self.host_name

    @property
    def host_name(self) -> str:
        return self.host_id or socket.gethostname() or "localhost"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def store_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"


_PATH_KEYS = {"inbox", "outbox", "failed", "state_dir", "work_dir"}
_TABLES = ("http", "convert", "toolkits")
_TOP_KEYS = {f.name for f in fields(Config)} - {*_TABLES, "source"}


def _check_type(key: str, value: Any, expected: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) and expected in (int, float, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not isinstance(value, expected):
        name = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
        raise ConfigError(f"{key}: expected {name}, got {value!r}")


def _build_top(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TABLES:
            continue
        if key not in _TOP_KEYS:
            raise ConfigError(f"unknown key {key!r} (allowed: {', '.join(sorted(_TOP_KEYS | set(_TABLES)))})")
        if key in _PATH_KEYS:
            _check_type(key, value, str)
            p = Path(os.path.expanduser(value))
            out[key] = p if p.is_absolute() else base_dir / p
        elif key == "host_id":
            _check_type(key, value, str)
            if not value or value in (".", "..") or "/" in value or "\0" in value or value.startswith("."):
                raise ConfigError(f"host_id: must be a plain folder name, got {value!r}")
            out[key] = value
        elif key in ("worker_memory_limit_mb", "memory_reserve_mb", "worker_max_rss_mb"):
            _check_type(key, value, int)
            if value < 0:
                raise ConfigError(f"{key}: must be 0 (no limit) or a size in MB, got {value}")
            out[key] = value
        elif key == "claim_ahead":
            _check_type(key, value, int)
            if value < 0:
                raise ConfigError(f"claim_ahead: must be 0 or more, got {value}")
            out[key] = value
        elif key in ("cache", "memory_admission"):
            _check_type(key, value, bool)
            out[key] = value
        elif key in ("workers", "max_jobs_per_worker", "max_file_size", "cache_max_bytes", "max_attempts"):
            _check_type(key, value, int)
            if value < 1:
                raise ConfigError(f"{key}: must be at least 1, got {value}")
            out[key] = value
        elif key in ("stable_seconds", "timeout_seconds", "bundle_timeout_seconds", "drain_seconds",
                     "poll_interval_seconds", "rescan_seconds", "stale_claim_seconds"):
            _check_type(key, value, (int, float))
            if value < 0 or (key in ("timeout_seconds", "poll_interval_seconds", "stale_claim_seconds") and value == 0):
                raise ConfigError(f"{key}: must be positive, got {value}")
            out[key] = float(value)
        elif key == "poll":
            if value not in (True, False, "auto"):
                raise ConfigError(f"poll: expected true, false or \"auto\", got {value!r}")
            out[key] = value
        elif key == "log_level":
            _check_type(key, value, str)
            if value.upper() not in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"):
                raise ConfigError(f"log_level: unknown level {value!r}")
            out[key] = value.upper()
    return out


def _build_http(raw: Any) -> HttpConfig:
    if raw is None:
        return HttpConfig()
    if not isinstance(raw, dict):
        raise ConfigError("[http] must be a table")
    allowed = {f.name for f in fields(HttpConfig)}
    for key, value in raw.items():
        if key not in allowed:
            raise ConfigError(f"http.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")
    http = HttpConfig(**raw)
    _check_type("http.enabled", http.enabled, bool)
    _check_type("http.host", http.host, str)
    _check_type("http.port", http.port, int)
    if not 0 <= http.port <= 65535:
        raise ConfigError(f"http.port: must be 0-65535, got {http.port}")
    return http


def _build_toolkits(raw: Any) -> ToolkitsConfig:
    from rknn_dropbox.toolkits import ToolkitError, check_version
    if raw is None:
        return ToolkitsConfig()
    if not isinstance(raw, dict):
        raise ConfigError("[toolkits] must be a table")
    for key in raw:
        if key != "versions":
            raise ConfigError(f"toolkits.{key}: unknown key (allowed: versions)")
    versions = raw.get("versions", list(ToolkitsConfig.versions))
    if not isinstance(versions, list) or not versions:
        raise ConfigError(f"toolkits.versions: expected a list of versions like [\"2.5.0\", \"2.3.2\"], "
                          f"got {versions!r}")
    try:
        checked = tuple(dict.fromkeys(check_version("toolkits.versions", v) for v in versions))
    except ToolkitError as exc:
        raise ConfigError(str(exc)) from None
    return ToolkitsConfig(checked)


def config_from_mapping(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> Config:
    """Validate a parsed TOML mapping; relative paths resolve against `base_dir`."""
    top = {k: base_dir / getattr(Config, k) for k in ("inbox", "outbox", "failed", "state_dir")}
    top.update(_build_top(raw, base_dir))
    try:
        convert = parse_convert_options(raw.get("convert") or {}, where="convert", base_dir=base_dir)
    except OptionsError as exc:
        raise ConfigError(str(exc)) from None
    return Config(**top, http=_build_http(raw.get("http")), convert=convert,
                  toolkits=_build_toolkits(raw.get("toolkits")), source=source)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the TOML at `path` (or defaults when None) and apply command-line `overrides` (None values ignored)."""
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text (save the config as UTF-8)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
        base_dir = path.resolve().parent
    cfg = config_from_mapping(raw, base_dir, source=path)
    return apply_overrides(cfg, overrides or {})


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    top: dict[str, Any] = {}
    http: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("host", "port"):
            http[key] = value
        elif key in _PATH_KEYS:
            top[key] = Path(value).absolute()
        else:
            top[key] = value
    if "workers" in top and top["workers"] < 1:
        raise ConfigError(f"workers: must be at least 1, got {top['workers']}")
    return replace(cfg, **top, http=replace(cfg.http, **http))

"""Installed rknn-toolkit2 versions: where each lives, whether it imports, installing one, choosing one for a job."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIST_NAME = "rknn-toolkit2"
VERSION_RE = re.compile(r"^\d+(\.\d+){1,3}$")
_DIST_INFO_RE = re.compile(r"^rknn_toolkit2-(\d+(?:\.\d+)+)\.dist-info$")


class ToolkitError(ValueError):
    """A toolkit version that cannot be used: the message names the installed ones."""


def version_key(version: str) -> tuple[int, ...]:
    """'2.3.2' -> (2, 3, 2); leading numbers only, so '2.3.0 (c949ad889d@2024-11-07)' works too."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not m:
        raise ToolkitError(f"{version!r} is not a version number like 2.3.2")
    parts = [int(x) for x in m[1].split(".")]
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def check_version(key: str, value: object) -> str:
    """A version given in the TOML or a sidecar: a string like "2.3.2" (YAML may hand over a float like 2.3)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not VERSION_RE.match(value.strip()):
        raise ToolkitError(f"{key}: expected a version like \"2.3.2\", got {value!r}")
    return value.strip()


def toolkits_dir(prefix: str | None = None) -> Path:
    """Where the extra versions live: <venv>/toolkits/<version>/ (RKNN_DROPBOX_TOOLKITS_DIR overrides)."""
    env = os.environ.get("RKNN_DROPBOX_TOOLKITS_DIR")
    if env:
        return Path(env)
    return Path(prefix or sys.prefix) / "toolkits"


@dataclass(frozen=True)
class Toolkit:
    """One installed rknn-toolkit2: `folder` goes first on sys.path; None is the venv's own (site-packages)."""
    version: str
    folder: Path | None

    @property
    def where(self) -> str:
        return str(self.folder) if self.folder else "the venv's site-packages"

    def sys_path_entry(self) -> str | None:
        return str(self.folder) if self.folder else None


def venv_toolkit_version() -> str | None:
    """The venv's own toolkit, read from its metadata in site-packages (nothing is imported)."""
    import importlib.metadata as md
    for dist in md.distributions(path=[p for p in sys.path if "site-packages" in p or "dist-packages" in p]):
        if (dist.metadata["Name"] or "").lower().replace("_", "-") == DIST_NAME:
            return dist.version
    return None


def _folder_version(folder: Path) -> str | None:
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    for name in names:
        m = _DIST_INFO_RE.match(name)
        if m:
            return m[1]
    return None


def installed_toolkits(root: Path | None = None) -> list[Toolkit]:
    """Every installed version, newest first: the venv's own and each <root>/<version>/ holding its dist-info."""
    found: dict[str, Toolkit] = {}
    root = root or toolkits_dir()
    try:
        entries = sorted(root.iterdir())
    except OSError:
        entries = []
    for folder in entries:
        version = _folder_version(folder) if folder.is_dir() and not folder.name.startswith(".") else None
        if version and version == folder.name:
            found[version] = Toolkit(version, folder)
    own = venv_toolkit_version()
    if own:
        found[own] = Toolkit(own, None)  # the venv's own wins over a folder of the same version
    return sorted(found.values(), key=lambda t: version_key(t.version), reverse=True)


@dataclass(frozen=True)
class ProbeResult:
    """Whether a toolkit imports in a fresh interpreter, and which rknn.api it actually loaded."""
    version: str
    ok: bool
    api_file: str = ""
    loaded_version: str = ""
    error: str = ""


PROBE_CODE = """
import sys, json
folder = sys.argv[1]
if folder:
    sys.path.insert(0, folder)
import importlib.metadata as md
import rknn.api
print(json.dumps({"api_file": rknn.api.__file__, "version": md.version("rknn-toolkit2")}))
"""


def probe_toolkit(toolkit: Toolkit, timeout: float = 300.0) -> ProbeResult:
    """Import `rknn.api` of this toolkit in a subprocess (its folder first on sys.path) and read where it came from."""
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE_CODE, toolkit.sys_path_entry() or ""],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ProbeResult(toolkit.version, False, error=f"importing it took longer than {timeout:.0f} s")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeResult(toolkit.version, False, error=last)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = info["version"] == toolkit.version and (
        toolkit.folder is None or Path(info["api_file"]).resolve().is_relative_to(toolkit.folder.resolve()))
    error = "" if ok else f"rknn.api {info['version']} was loaded from {info['api_file']} instead"
    return ProbeResult(toolkit.version, ok, info["api_file"], info["version"], error)


def install_toolkit(version: str, root: Path | None = None, pip_args: tuple[str, ...] = ()) -> Toolkit:
    """pip install --no-deps --target <root>/<version> rknn-toolkit2==<version>, whole or not at all."""
    version = check_version("version", version)
    root = root or toolkits_dir()
    target = root / version
    if _folder_version(target) == version:
        return Toolkit(version, target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                               "--no-deps", "--target", str(tmp), f"{DIST_NAME}=={version}", *pip_args],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise ToolkitError(f"pip could not install {DIST_NAME}=={version}: "
                               f"{last[-1] if last else 'no output'} (is the version on PyPI for this Python?)")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Toolkit(version, target)


def installed_names(toolkits: list[Toolkit]) -> str:
    return ", ".join(t.version for t in toolkits) or "none"


def choose_toolkit(toolkits: list[Toolkit], toolkit_version: str | None, runtime_version: str | None,
                   default: str | None = None) -> Toolkit:
    """The toolkit a job builds with: exactly `toolkit_version`; else the newest not newer than the board's
    `runtime_version`; else `default` (the first listed in [toolkits] versions); else the newest installed."""
    by_version = {t.version: t for t in toolkits}
    if toolkit_version:
        if toolkit_version in by_version:
            chosen = by_version[toolkit_version]
            if runtime_version and version_key(chosen.version) > version_key(runtime_version):
                raise ToolkitError(
                    f"toolkit_version {toolkit_version} builds models that librknnrt {runtime_version} cannot load "
                    f"(a model loads on a runtime of the same version or newer)")
            return chosen
        raise ToolkitError(f"rknn-toolkit2 {toolkit_version} is not installed (installed: "
                           f"{installed_names(toolkits)}); add it with `rknn-dropbox toolkits install "
                           f"{toolkit_version}` or list it in [toolkits] versions")
    if runtime_version:
        fitting = runtime_candidates(toolkits, runtime_version)
        if not fitting:
            raise ToolkitError(
                f"no installed rknn-toolkit2 builds models that librknnrt {runtime_version} can load (installed: "
                f"{installed_names(toolkits)}; a model loads on a runtime of the same version or newer): install "
                f"one with `rknn-dropbox toolkits install {runtime_version}` or update the board's librknnrt")
        return fitting[0]
    if default and default in by_version:
        return by_version[default]
    if not toolkits:
        raise ToolkitError("no rknn-toolkit2 is installed: run scripts/setup-venv.sh")
    return toolkits[0]


def runtime_candidates(toolkits: list[Toolkit], runtime_version: str | None) -> list[Toolkit]:
    """Installed toolkits whose models load on librknnrt `runtime_version` (all when None), newest first."""
    out = sorted(toolkits, key=lambda t: version_key(t.version), reverse=True)
    if runtime_version is None:
        return out
    rt = version_key(runtime_version)
    # the documented rule: a model loads on a runtime of the same version or newer; toolkit 1.5.0's only on 1.5.0
    return [t for t in out if version_key(t.version) <= rt
            and (version_key(t.version) != (1, 5, 0) or rt == (1, 5, 0))]


def loads_on(toolkit_version: str) -> str:
    """The documented rule as a sentence: which librknnrt loads a model built by this toolkit."""
    key = version_key(toolkit_version)
    if key == (1, 5, 0):
        return "librknnrt 1.5.0 exactly (models of toolkit 1.5.0 load only there)"
    return f"librknnrt >= {'.'.join(map(str, key))}"


class ToolkitMismatch(Exception):
    """This process already has another toolkit loaded than the job needs: run the job in a process of `wanted`."""

    def __init__(self, wanted: Toolkit, loaded: str) -> None:
        super().__init__(f"the job needs rknn-toolkit2 {wanted.version}; this process has {loaded} loaded")
        self.wanted = wanted
        self.loaded = loaded


def loaded_toolkit_version() -> str:
    """The version of the `rknn` package this process imported, read from the dist-info beside it."""
    import rknn.api  # rknn itself is a namespace package: rknn/api/__init__.py is the anchor
    folder = Path(rknn.api.__file__).resolve().parent.parent.parent
    version = _folder_version(folder)
    if version is None:
        import importlib.metadata as md
        version = md.version(DIST_NAME)
    return version


def load_toolkit(toolkit: Toolkit) -> tuple[Any, str]:
    """Import `toolkit`'s rknn.api here (its folder first on sys.path, unless a toolkit is already loaded):
    (the RKNN class, the version loaded); ToolkitMismatch when this process holds another version."""
    if "rknn" not in sys.modules:
        entry = toolkit.sys_path_entry()
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    from rknn.api import RKNN
    loaded = loaded_toolkit_version()
    if loaded != toolkit.version:
        raise ToolkitMismatch(toolkit, loaded)
    return RKNN, loaded


def job_toolkit(toolkit_version: str | None, runtime_version: str | None, forced: str | None = None,
                default: str | None = None, toolkits: list[Toolkit] | None = None) -> Toolkit:
    """The toolkit for one job: `forced` (a fallback or the pool's choice) wins; else choose_toolkit."""
    toolkits = installed_toolkits() if toolkits is None else toolkits
    if forced:
        for tk in toolkits:
            if tk.version == forced:
                return tk
        raise ToolkitError(f"rknn-toolkit2 {forced} is not installed (installed: {installed_names(toolkits)})")
    return choose_toolkit(toolkits, toolkit_version, runtime_version, default)


def fallback_toolkits(toolkit_version: str | None, runtime_version: str | None, tried: list[str],
                      toolkits: list[Toolkit] | None = None) -> list[Toolkit]:
    """After a toolkit crash: the other installed versions whose models still load on the job's runtime_version
    (any, when none was given), newest first. None when the job asked for exactly one toolkit_version."""
    if toolkit_version:
        return []
    toolkits = installed_toolkits() if toolkits is None else toolkits
    return [t for t in runtime_candidates(toolkits, runtime_version) if t.version not in tried]


def fallback_warning(built_with: str, crashed: list[dict[str, str]]) -> str:
    """The warning a fallback build is delivered with: which version built it and why."""
    why = "; ".join(f"rknn-toolkit2 {c['toolkit']} crashed: {c['error']}" for c in crashed)
    return f"built with rknn-toolkit2 {built_with} instead ({why}); check the model on the board"


def next_fallback(crash: dict[str, Any], crashed_before: list[dict[str, str]] | tuple[dict[str, str], ...] = (),
                  toolkits: list[Toolkit] | None = None) -> tuple[Toolkit | None, list[dict[str, str]]]:
    """The job orchestration's step after a toolkit crash: the next version to build with (None: no other installed
    version fits the job) and the crashes so far, which the fallback build reports in its warning."""
    crashed = [*crashed_before, {"toolkit": str(crash["toolkit"]), "error": str(crash["error"])}]
    candidates = fallback_toolkits(crash.get("toolkit_version"), crash.get("runtime_version"),
                                   [c["toolkit"] for c in crashed], toolkits)
    return (candidates[0] if candidates else None), crashed


def fallback_exhausted(error: str, crashed: list[dict[str, str]]) -> str:
    """The final error when every fitting version crashed."""
    if len(crashed) < 2:
        return error
    return f"{error} (rknn-toolkit2 {', '.join(c['toolkit'] for c in crashed)} all crashed on this model)"

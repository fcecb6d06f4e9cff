"""Putting models into the inbox for `submit`: a unique job name, copied under an ignored name, renamed into place."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from rknn_dropbox.intake.scanner import SIDECAR_EXTS, split_name

MAX_STEM_CHARS = 80
FOLDER_CONFIGS = ("config.yaml", "config.yml")


class SubmitError(Exception):
    """A submission that cannot be made; the message is a sentence for the user."""


@dataclass
class Drop:
    """One job to submit: its sources (files sharing a stem, or one folder) and the unique name it gets."""
    stem: str
    sources: list[Path]
    name: str = ""
    entries: list[str] = field(default_factory=list)  # what was renamed into the inbox, in order

    @property
    def is_folder(self) -> bool:
        return len(self.sources) == 1 and self.sources[0].is_dir()


def unique_name(stem: str) -> str:
    """`model` -> `model-20261201T033853-9f2c1a`: two pipelines submitting model.onnx at once never collide."""
    return f"{stem[:MAX_STEM_CHARS]}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def plan_drops(models: list[Path]) -> list[Drop]:
    """Group the given paths into jobs: files that share a stem (net.cfg + net.weights) are one job, a folder is one."""
    drops: dict[str, Drop] = {}
    for path in models:
        if not path.exists():
            raise SubmitError(f"{path}: no such file or folder")
        if path.is_dir():
            key = f"dir:{path.resolve()}"
            drops[key] = Drop(path.name, [path])
            continue
        stem = split_name(path.name)[0]
        drops.setdefault(f"file:{stem}", Drop(stem, [])).sources.append(path)
    for drop in drops.values():
        drop.name = unique_name(drop.stem)
    return list(drops.values())


def _sidecar_text(existing: Path | None, target: str | None) -> str | None:
    """The sidecar to write: the given one, with target_platform set when --target is given."""
    if target is None:
        return existing.read_text(encoding="utf-8") if existing else None
    data: Any = {}
    if existing is not None:
        data = yaml.safe_load(existing.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise SubmitError(f"{existing}: a sidecar must be a YAML mapping (key: value lines)")
    platforms = [p.strip() for p in target.split(",") if p.strip()]
    data["target_platform"] = platforms[0] if len(platforms) == 1 else platforms
    return yaml.safe_dump(data, sort_keys=False)


def _temporary(inbox: Path, name: str) -> Path:
    return inbox / f".{name}.submit-{secrets.token_hex(4)}.tmp"  # a dotfile: the scanner never looks at it


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _place(inbox: Path, final_name: str, write: Callable[[Path], Any]) -> str:
    """Write via `write(tmp_path)` under an ignored name, then rename it to `final_name` in one step."""
    final = inbox / final_name
    if os.path.lexists(final):
        raise SubmitError(f"{final} already exists in the inbox")
    tmp = _temporary(inbox, final_name)
    try:
        write(tmp)
        _fsync_tree(tmp)
        os.rename(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    return final_name


def _drop_folder(inbox: Path, drop: Drop, sidecar: Path | None, target: str | None) -> None:
    src = drop.sources[0]
    own = next((src / n for n in FOLDER_CONFIGS if (src / n).is_file()), None)
    text = _sidecar_text(sidecar or own, target)

    def write(tmp: Path) -> None:
        shutil.copytree(src, tmp, symlinks=False)
        if text is not None:
            for n in FOLDER_CONFIGS:
                (tmp / n).unlink(missing_ok=True)
            (tmp / "config.yaml").write_text(text, encoding="utf-8")
    drop.entries.append(_place(inbox, drop.name, write))


def _drop_files(inbox: Path, drop: Drop, sidecar: Path | None, target: str | None) -> None:
    given = [p for p in drop.sources if split_name(p.name)[1] in SIDECAR_EXTS]
    models = [p for p in drop.sources if p not in given]
    if not models:
        raise SubmitError(f"{', '.join(p.name for p in drop.sources)}: only a sidecar, no model file")
    text = _sidecar_text(sidecar or (given[0] if given else None), target)
    if text is not None:  # the sidecar first: the model never sits in the inbox without it
        drop.entries.append(_place(inbox, f"{drop.name}.yaml",
                                   lambda tmp: tmp.write_text(text, encoding="utf-8")))
    for src in models:
        name = drop.name + split_name(src.name)[1]
        drop.entries.append(_place(inbox, name, lambda tmp, s=src: shutil.copyfile(s, tmp)))


def drop_into_inbox(inbox: Path, drop: Drop, sidecar: Path | None = None, target: str | None = None) -> None:
    """Copy one job's sources into the inbox so that the daemon can never see a partial copy."""
    if not inbox.is_dir():
        raise SubmitError(f"inbox {inbox} is not a folder (is the share mounted?)")
    if sidecar is not None and not sidecar.is_file():
        raise SubmitError(f"--sidecar {sidecar}: no such file")
    try:
        (_drop_folder if drop.is_folder else _drop_files)(inbox, drop, sidecar, target)
    except (OSError, SubmitError) as exc:
        for entry in drop.entries:  # a sidecar already in place must not become a job of its own
            (inbox / entry).unlink(missing_ok=True)
        if isinstance(exc, SubmitError):
            raise
        raise SubmitError(f"cannot copy {drop.stem} into {inbox}: {exc.strerror or exc}") from None

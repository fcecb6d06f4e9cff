"""The analyzer: decides which inbox entries form a complete, stable bundle, and which are to be rejected."""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rknn_dropbox.formats import PAIR_EXTS, SINGLE_MODEL_EXTS, SUPPORTED_HINT, is_checkpoint_ext
from rknn_dropbox.intake.archives import ARCHIVE_SUFFIXES as ARCHIVE_EXTS
from rknn_dropbox.intake.tree import MAX_DEPTH, TooDeep, walk_tree

__all__ = ["PAIR_EXTS", "SINGLE_MODEL_EXTS", "ARCHIVE_EXTS", "SIDECAR_EXTS", "is_checkpoint_ext", "is_ignored",
           "split_name", "InboxScanner"]

IGNORED_PATTERNS = ("Thumbs.db", "desktop.ini", "*.part", "*.tmp", "*.crdownload", "~*", "@eaDir", "__MACOSX")
SIDECAR_EXTS = (".yaml", ".yml")
TOO_DEEP = "too deep"  # a folder signature's marker: nested deeper than MAX_DEPTH


def is_ignored(name: str) -> bool:
    """Names that are never models: dotfiles (.DS_Store, ._*, .syncthing.*), partial downloads, OS litter."""
    return name.startswith(".") or any(fnmatch.fnmatchcase(name, p) for p in IGNORED_PATTERNS)


def split_name(name: str) -> tuple[str, str]:
    """'net.onnx' -> ('net', '.onnx'); 'm.tar.gz' -> ('m', '.tar.gz'); 'net.onnx.yaml' -> ('net', '.yaml')."""
    lower = name.lower()
    for ext in (*ARCHIVE_EXTS, *SINGLE_MODEL_EXTS, *SIDECAR_EXTS, *PAIR_EXTS):
        if lower.endswith(ext) and len(name) > len(ext):
            stem = name[: -len(ext)]
            if ext in SIDECAR_EXTS:
                inner_stem, inner_ext = split_name(stem)
                if inner_ext in SINGLE_MODEL_EXTS or inner_ext in PAIR_EXTS or inner_ext in ARCHIVE_EXTS:
                    stem = inner_stem
            return stem, ext
    stem, ext = os.path.splitext(name)
    return stem, ext.lower()


Signature = tuple


def entry_signature(path: Path) -> Signature | None:
    """What must stay unchanged for `stable_seconds`: size and mtime of the entry (every file of a folder)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return (st.st_mode, st.st_size, st.st_mtime_ns)
    items: list[tuple[str, Any, int, int]] = []
    try:
        for root, _, files in walk_tree(path, is_ignored):
            for fname in files:
                full = os.path.join(root, fname)
                try:
                    fst = os.lstat(full)
                except OSError:
                    continue
                items.append((os.path.relpath(full, path), fst.st_mode, fst.st_size, fst.st_mtime_ns))
    except TooDeep:
        items.append(("", TOO_DEEP, 0, 0))
    return ("dir", tuple(items))


@dataclass
class Bundle:
    """A complete set of top-level inbox entries that make one job."""
    name: str
    entries: list[str]
    kind: str  # "file" | "folder"


@dataclass
class Rejection:
    """Top-level inbox entries that will never make a job, and why."""
    name: str
    entries: list[str]
    error: str
    hint: str | None = None


@dataclass
class _Seen:
    signature: Signature
    changed_at: float
    first_seen: float


@dataclass
class ScanResult:
    ready: list[Bundle] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    waiting: int = 0  # entries not yet stable or waiting for a partner
    next_check: float | None = None  # seconds until the earliest waiting entry may become stable


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class InboxScanner:
    """Tracks every top-level inbox entry until it is stable, then groups entries into bundles."""

    def __init__(self, inbox: Path, stable_seconds: float, bundle_timeout_seconds: float, max_file_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inbox = Path(inbox)
        self.stable_seconds = stable_seconds
        self.bundle_timeout_seconds = bundle_timeout_seconds
        self.max_file_size = max_file_size
        self.clock = clock
        self._seen: dict[str, _Seen] = {}
        self.skip: Callable[[str], bool] = lambda name: False  # entries not to look at (parked: could not claim)

    def forget(self, entries: list[str]) -> None:
        for e in entries:
            self._seen.pop(e, None)

    def _observe(self, now: float) -> dict[str, _Seen]:
        try:
            names = [n for n in os.listdir(self.inbox) if not is_ignored(n) and not self.skip(n)]
        except FileNotFoundError:
            names = []
        current: dict[str, _Seen] = {}
        for name in names:
            sig = entry_signature(self.inbox / name)
            if sig is None:
                continue
            old = self._seen.get(name)
            if old is None:
                current[name] = _Seen(sig, now, now)
            elif old.signature != sig:
                current[name] = _Seen(sig, now, old.first_seen)
            else:
                current[name] = old
        self._seen = current
        return current

    def scan(self) -> ScanResult:
        now = self.clock()
        seen = self._observe(now)
        result = ScanResult()
        stable = {n for n, s in seen.items() if now - s.changed_at >= self.stable_seconds}
        unstable_left = [s.changed_at + self.stable_seconds - now for n, s in seen.items() if n not in stable]
        result.next_check = min(unstable_left) if unstable_left else None
        groups: dict[str, dict[str, str]] = {}
        for name in sorted(seen):
            st_mode = seen[name].signature[0]
            path_kind = "dir" if st_mode == "dir" else ("file" if stat.S_ISREG(st_mode) else "other")
            if name not in stable:
                result.waiting += 1
                continue
            if path_kind == "dir":
                self._folder(name, seen[name], now, result)
                continue
            if stat.S_ISLNK(st_mode):
                result.rejected.append(Rejection(name, [name], f"{name} is a symbolic link; links are not followed",
                                                 "copy the file itself into the inbox"))
                continue
            if path_kind == "other":
                result.rejected.append(Rejection(name, [name], f"{name} is not a regular file (a pipe, socket or "
                                                 "device)", "copy a model file into the inbox"))
                continue
            size = seen[name].signature[1]
            if size > self.max_file_size:
                result.rejected.append(Rejection(name, [name], f"{name} is too large: {_mb(size)}, over "
                                                 f"max_file_size ({_mb(self.max_file_size)})",
                                                 "raise max_file_size in the config if this model is expected"))
                continue
            stem, ext = split_name(name)
            groups.setdefault(stem, {})[name] = ext
        # TensorFlow writes a bookkeeping file named `checkpoint` beside model.ckpt.*: it joins the one loose
        # checkpoint set rather than failing as "not a model file".
        ckpt_stems = [st for st, m in groups.items() if any(is_checkpoint_ext(e) for e in m.values())]
        if groups.get("checkpoint") == {"checkpoint": ""} and len(ckpt_stems) == 1:
            groups[ckpt_stems[0]]["checkpoint"] = groups.pop("checkpoint")["checkpoint"]
        # A group with a member still being written waits as a whole.
        unstable_stems = {split_name(n)[0] for n in seen if n not in stable}
        for stem, members in groups.items():
            if stem in unstable_stems:
                result.waiting += len(members)
                continue
            self._group(stem, members, seen, now, result)
        return result

    def _folder(self, name: str, seen: _Seen, now: float, result: ScanResult) -> None:
        files = seen.signature[1]
        if not files:
            if now - seen.first_seen >= self.bundle_timeout_seconds:
                result.rejected.append(Rejection(name, [name], f"folder {name} stayed empty", "put a model file in it"))
            else:
                result.waiting += 1
            return
        for rel, mode, size, _ in files:
            if mode == TOO_DEEP:
                result.rejected.append(Rejection(name, [name], f"folder {name} is nested more than {MAX_DEPTH} "
                                                 "folders deep", "flatten it: a bundle needs only a few levels"))
                return
            if stat.S_ISLNK(mode):
                result.rejected.append(Rejection(name, [name], f"{name}/{rel} is a symbolic link; links are not "
                                                 "followed", "copy the file itself into the folder"))
                return
            if not stat.S_ISREG(mode):
                result.rejected.append(Rejection(name, [name], f"{name}/{rel} is not a regular file"))
                return
            if size > self.max_file_size:
                result.rejected.append(Rejection(name, [name], f"{name}/{rel} is too large: {_mb(size)}, over "
                                                 f"max_file_size ({_mb(self.max_file_size)})"))
                return
        result.ready.append(Bundle(name, [name], "folder"))

    def _checkpoint(self, stem: str, members: dict[str, str], parts: list[str], sidecars: list[str], waited: float,
                    result: ScanResult) -> None:
        """A TF checkpoint dropped loose: <stem>.meta + <stem>.index + every <stem>.data-NNNNN-of-TTTTT."""
        exts = {members[n] for n in parts}
        shards = [e for e in exts if e.startswith(".data-")]
        totals = {e.rsplit("-of-", 1)[-1] for e in shards}
        need = int(next(iter(totals))) if len(totals) == 1 and next(iter(totals)).isdigit() else 1
        missing = [f"{stem}{e}" for e in (".meta", ".index") if e not in exts]
        if len(shards) < need or not shards:
            missing.append(f"{stem}.data-* ({len(shards)} of {need} shards)")
        entries = sorted(parts + sidecars)
        if not missing:
            result.ready.append(Bundle(stem, entries, "file"))
        elif waited >= self.bundle_timeout_seconds:
            result.rejected.append(Rejection(stem, entries, f"incomplete TensorFlow checkpoint: "
                                             f"{', '.join(missing)} never arrived",
                                             "copy the .meta, .index and .data-* files together, or drop the "
                                             "checkpoint as a folder"))
        else:
            result.waiting += len(entries)

    def _pair(self, stem: str, members: dict[str, str], halves: list[str], sidecars: list[str], waited: float,
              result: ScanResult) -> None:
        """A two-file model (.cfg + .weights, .prototxt + .caffemodel): ready, still waiting, or timed out."""
        exts = {members[h] for h in halves}
        partner_ext, family = PAIR_EXTS[members[halves[0]]]
        if len(halves) == 2 and partner_ext in exts:
            result.ready.append(Bundle(stem, sorted(halves + sidecars), "file"))
        elif waited >= self.bundle_timeout_seconds:
            missing = f"{stem}{partner_ext}"
            result.rejected.append(Rejection(stem, sorted(halves + sidecars),
                                             f"incomplete {family} model: {missing} never arrived",
                                             f"copy {halves[0]} and {missing} into the inbox together "
                                             f"(waited {int(waited)} s, bundle_timeout_seconds)"))
        else:
            result.waiting += len(halves) + len(sidecars)

    def _group(self, stem: str, members: dict[str, str], seen: dict[str, _Seen], now: float,
               result: ScanResult) -> None:
        """Sort one stem's entries into a ready bundle, a wait, or rejections."""
        sidecars = [n for n, e in members.items() if e in SIDECAR_EXTS]
        models = [n for n, e in members.items() if e in SINGLE_MODEL_EXTS or e in ARCHIVE_EXTS]
        halves = [n for n, e in members.items() if e in PAIR_EXTS]
        ckpt = [n for n, e in members.items() if is_checkpoint_ext(e) or n == "checkpoint"]
        others = [n for n, e in members.items()
                  if n not in sidecars and n not in models and n not in halves and n not in ckpt]
        waited = now - min(seen[n].first_seen for n in members)
        if ckpt and not models and not halves:
            self._checkpoint(stem, members, ckpt, sidecars, waited, result)
            members = {n: e for n, e in members.items() if n in others}
            sidecars = []
        for name in others:
            result.rejected.append(Rejection(name, [name], f"{name} is not a model file",
                                             SUPPORTED_HINT))
        if len(sidecars) > 1:
            result.rejected.append(Rejection(stem, sorted(members), f"more than one sidecar for {stem}: "
                                             f"{', '.join(sorted(sidecars))}", "keep one .yaml per model"))
            return
        if models and halves or len(models) > 1 or len({members[h] for h in halves}) < len(halves):
            names = sorted(models + halves)
            result.rejected.append(Rejection(stem, sorted(models + halves + sidecars),
                                             f"several models share the name {stem}: {', '.join(names)}",
                                             "give each model its own name or its own folder"))
            return
        if models:
            result.ready.append(Bundle(stem, sorted(models + sidecars), "file"))
            return
        if halves:
            self._pair(stem, members, halves, sidecars, waited, result)
            return
        if sidecars:
            if waited >= self.bundle_timeout_seconds:
                result.rejected.append(Rejection(stem, sidecars, f"sidecar {sidecars[0]} has no model next to it",
                                                 f"copy the model ({stem}.onnx, ...) next to it"))
            else:
                result.waiting += 1

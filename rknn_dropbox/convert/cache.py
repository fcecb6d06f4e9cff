"""The result cache: earlier .rknn outputs keyed by model bytes + normalized config + toolkit version, size-bounded."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rknn_dropbox.filehash import copy_hashing, hash_into

META = "meta.json"
KEY_VERSION = 1  # bump when what goes into the key changes


@dataclass(frozen=True)
class CacheHit:
    key: str
    meta: dict[str, Any]     # what the original job recorded (job id, result fields)
    folder: Path             # holds the cached files named in meta["files"]


def cache_key(model_files: list[tuple[str, Path]], config: dict[str, Any], toolkit_version: str,
              dataset_files: list[Path] = ()) -> str:  # type: ignore[assignment]
    """sha256 over the model files (role + bytes), the normalized config, the calibration samples, the toolkit."""
    h = hashlib.sha256()
    h.update(f"rknn-dropbox-cache-v{KEY_VERSION}\0toolkit {toolkit_version}\0".encode())
    for role, path in model_files:
        h.update(f"file {role} {path.stat().st_size}\0".encode())
        hash_into(h, path)
    h.update(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode())
    for i, sample in enumerate(dataset_files):
        h.update(f"\0sample {i} {sample.stat().st_size}\0".encode())
        hash_into(h, sample)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ResultCache:
    """cache_dir/<key>/ holds meta.json and the output files; entries are written whole (rename) and evicted oldest
    first (by last use) when the total passes max_bytes."""

    def __init__(self, cache_dir: Path, max_bytes: int) -> None:
        self.dir = Path(cache_dir)
        self.max_bytes = max_bytes

    def lookup(self, key: str) -> CacheHit | None:
        folder = self.dir / key
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not all((folder / f).is_file() for f in meta.get("files", {}).values()):
            return None
        try:
            now = time.time_ns()  # explicit: finer than the coarse clock file writes are stamped with
            os.utime(folder / META, ns=(now, now))  # last use, for eviction
        except OSError:
            pass
        return CacheHit(key, meta, folder)

    def copy_out(self, hit: CacheHit, cache_name: str, dest: Path, sha256: str | None) -> bool:
        """Copy one cached file to dest, checking its sha256 on the way; False (a miss) when the entry was evicted
        meanwhile or its bytes are not what was stored (the entry is evicted then)."""
        h = hashlib.sha256()
        try:
            with open(hit.folder / hit.meta["files"][cache_name], "rb") as src, open(dest, "wb") as out:
                copy_hashing(src, h, out)
        except (OSError, KeyError):
            dest.unlink(missing_ok=True)
            return False  # evicted by another worker between lookup and copy
        if sha256 is not None and h.hexdigest() != sha256:
            dest.unlink(missing_ok=True)
            shutil.rmtree(hit.folder, ignore_errors=True)
            return False
        return True

    def store(self, key: str, meta: dict[str, Any], files: dict[str, Path]) -> bool:
        """Copy `files` (cache name -> path) under `key`; False when it is already there or does not fit."""
        total = sum(p.stat().st_size for p in files.values())
        if total > self.max_bytes or (self.dir / key).exists():
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            for name, src in files.items():
                shutil.copyfile(src, tmp / name)
            (tmp / META).write_text(json.dumps({**meta, "files": {n: n for n in files}, "stored_at": time.time()},
                                               indent=2), encoding="utf-8")
            for name in [*files, META]:  # on disk before the rename makes the entry visible (power loss)
                _fsync(tmp / name)
            _fsync(tmp)
            os.rename(tmp, self.dir / key)
            _fsync(self.dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        self.evict()
        return True

    def entries(self) -> list[tuple[float, int, Path]]:
        out = []
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        for name in names:
            folder = self.dir / name
            if name.startswith(".tmp-"):
                try:  # a writer that died mid-store
                    if time.time() - folder.stat().st_mtime > 3600:
                        shutil.rmtree(folder, ignore_errors=True)
                except OSError:
                    pass
                continue
            try:
                used = (folder / META).stat().st_mtime
                size = sum(p.stat().st_size for p in folder.iterdir())
            except OSError:
                continue
            out.append((used, size, folder))
        return sorted(out)

    def evict(self) -> list[Path]:
        """Remove the least recently used entries until the cache fits max_bytes."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, folder in entries:
            if total <= self.max_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed.append(folder)
        return removed

"""The result cache never ships bytes it did not store: a damaged entry (a power loss after an unsynced write) or one
evicted by another worker between lookup and copy is a miss, converted afresh, never a bad .rknn or an internal
error; and entries reach the disk before their rename makes them visible."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

import modelgen
from rknn_dropbox.convert import cache as cache_module
from rknn_dropbox.convert.cache import ResultCache
from rknn_dropbox.options import ConvertOptions
from rknn_dropbox.intake.claims import claim_bundle

pytestmark = pytest.mark.slow


def _convert(tmp_path: Path, model: Path, name: str, cache_dir: Path) -> tuple[dict, Path]:
    from rknn_dropbox.convert.job import JobSettings, convert_job
    inbox = tmp_path / f"inbox-{name}"
    inbox.mkdir()
    shutil.copy(model, inbox / f"{name}.onnx")
    job = claim_bundle(inbox, tmp_path / "work", name, [f"{name}.onnx"], "file")
    result = convert_job(job, name, ConvertOptions(), lambda stage, pct: None,
                         JobSettings(cache_dir, 1 << 30, tmp_path))
    target = result.targets[0]
    return {**result.extra, **target}, job.output / target["file"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_damaged_or_vanishing_cache_entry_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = modelgen.write_onnx_conv(tmp_path / "m.onnx", seed=21)
    cache_dir = tmp_path / "cache"
    first, first_out = _convert(tmp_path, model, "first", cache_dir)
    assert first["cached"] is False and first["sha256"] == _sha(first_out)
    (entry,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    cached = next(p for p in entry.iterdir() if p.name != "meta.json")
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])  # what a power loss can leave
    second, second_out = _convert(tmp_path, model, "second", cache_dir)
    assert second["cached"] is False, "a truncated cache entry was shipped"
    assert _sha(second_out) == second["sha256"]
    # evicted by another worker between lookup and copy: a miss again, not an "internal error"
    real_lookup = ResultCache.lookup

    def lookup_then_evicted(self: ResultCache, key: str):
        hit = real_lookup(self, key)
        if hit is not None:
            shutil.rmtree(hit.folder)
        return hit

    monkeypatch.setattr(ResultCache, "lookup", lookup_then_evicted)
    third, third_out = _convert(tmp_path, model, "third", cache_dir)
    assert third["cached"] is False and _sha(third_out) == third["sha256"]


def test_cache_entry_is_synced_before_its_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(cache_module.os, "fsync",
                        lambda fd: (events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(cache_module.os, "rename", lambda a, b: (events.append(f"rename {a}"), real_rename(a, b)))
    out = tmp_path / "o.rknn"
    out.write_bytes(b"r" * 100)
    assert ResultCache(tmp_path / "cache", 1 << 20).store("k", {"targets": []}, {"rk3588": out})
    rename = next(i for i, e in enumerate(events) if e.startswith("rename"))
    synced = {Path(e.split(" ", 1)[1]).name for e in events[:rename] if e.startswith("fsync")}
    assert {"rk3588", "meta.json"} <= synced, events

"""Hypothesis: any file name a user can drop is grouped, rejected or left waiting by the analyzer; it never crashes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from rknn_dropbox.intake.scanner import InboxScanner, is_ignored, split_name

EXTS = ["", ".onnx", ".ONNX", ".yaml", ".yml", ".cfg", ".weights", ".prototxt", ".caffemodel", ".tar.gz", ".tgz",
        ".zip", ".tar", ".pt", ".pth", ".tflite", ".pb", ".txt", ".part", ".onnx.yaml", ".tar.gz.yml", "."]


def _fits(name: str) -> bool:
    raw = name.encode("utf-8", "surrogatepass")
    return 0 < len(raw) <= 255 and name not in (".", "..")


stems = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=0, max_size=80)
names = st.builds(lambda s, e: s + e, stems, st.sampled_from(EXTS)).filter(_fits)


@given(names)
def test_split_name_round_trips(name: str) -> None:
    stem, ext = split_name(name)
    assert isinstance(stem, str) and isinstance(ext, str)
    if ext not in (".yaml", ".yml"):
        assert name.lower().endswith(ext) and len(stem) + len(ext) <= len(name)
    is_ignored(name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(names, min_size=1, max_size=12, unique=True), st.booleans())
def test_every_entry_is_accounted_for_exactly_once(entries: list[str], as_dirs: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inbox = Path(tmp)
        for i, name in enumerate(entries):
            if as_dirs and i % 3 == 0:
                (inbox / name).mkdir()
                (inbox / name / "model.onnx").write_bytes(b"x")
            else:
                (inbox / name).write_bytes(b"x" * (i + 1))
        now = [1000.0]
        scanner = InboxScanner(inbox, stable_seconds=1.0, bundle_timeout_seconds=5.0, max_file_size=10**6,
                               clock=lambda: now[0])
        first = scanner.scan()
        assert not first.ready and not first.rejected  # nothing is claimed before it was stable
        now[0] += 10.0
        result = scanner.scan()
        counted: dict[str, int] = {}
        for bundle in result.ready:
            for e in bundle.entries:
                counted[e] = counted.get(e, 0) + 1
        for rej in result.rejected:
            assert rej.error and isinstance(rej.error, str)
            for e in rej.entries:
                counted[e] = counted.get(e, 0) + 1
        visible = [e for e in entries if not is_ignored(e)]
        assert all(e in visible for e in counted), f"{counted} names an entry that is not in the inbox"
        assert all(n == 1 for n in counted.values()), f"an entry is in two bundles/rejections: {counted}"
        # after the bundle timeout everything visible is decided: a bundle or a rejection, nothing waits forever
        assert result.waiting == 0 and sorted(counted) == sorted(visible), (result, visible)
        assert sorted(os.listdir(inbox)) == sorted(entries)  # the analyzer only looks

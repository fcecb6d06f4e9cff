"""Thirty-nine kinds of bad input, dropped at once: each ends in failed/ with a readable error.json, none crashes the
daemon, nothing is lost, and the daemon converts a good model afterwards."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

import pytest

import modelgen
from relhelpers import assert_conserved, box_factory, drop  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

LAUGHS = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
LONG = "L" * 250  # + ".onnx" = 255 bytes, the longest name a Linux filesystem takes


def build(inbox: Path, src: Path, outside: Path) -> dict[str, tuple[str, list[str], str | None]]:
    """Create every bad input in `inbox`; returns kind -> (failed/ folder name, inbox entries, error substring)."""
    good = modelgen.write_onnx_conv(src / "good.onnx")
    onnx = good.read_bytes()
    kinds: dict[str, tuple[str, list[str], str | None]] = {}

    def add(kind: str, folder: str, entries: dict[str, bytes | str | Callable[[Path], None] | None],
            expect: str | None) -> None:
        for name, content in entries.items():
            path = inbox / name
            if callable(content):
                content(path)
            elif content is None:
                pass  # already there
            else:
                data = content.encode() if isinstance(content, str) else content
                tmp = inbox / f".{kind}.tmp"
                tmp.write_bytes(data)
                os.rename(tmp, path)
        kinds[kind] = (folder, list(entries), expect)

    noise = os.urandom(4096)
    add("empty file", "empty", {"empty.onnx": b""}, "empty")
    add("truncated ONNX", "trunc", {"trunc.onnx": onnx[: len(onnx) // 2]}, None)
    add("random bytes", "noise", {"noise.onnx": noise}, None)
    add("wrong extension (.txt)", "notes.txt", {"notes.txt": "not a model"}, "not a model file")
    add("random .pt", "noise-pt", {"noise-pt.pt": noise}, None)
    add("random .pb", "noise-pb", {"noise-pb.pb": noise}, None)

    def model_dir(path: Path) -> None:
        path.mkdir()
        (path / "readme.txt").write_text("a folder named like a model")
    add("directory named model.onnx", "model.onnx", {"model.onnx": model_dir}, None)
    (outside / "outside.onnx").write_bytes(onnx)
    add("symlink to a file outside inbox", "link.onnx",
        {"link.onnx": lambda p: os.symlink(outside / "outside.onnx", p)}, "symbolic link")
    add("FIFO", "pipe.onnx", {"pipe.onnx": lambda p: os.mkfifo(p)}, "not a regular file")

    def unix_socket(path: Path) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    add("unix socket", "sock.onnx", {"sock.onnx": unix_socket}, "not a regular file")
    add("name with spaces", "with  spaces", {"with  spaces.onnx": noise}, None)
    add("unicode name", "модель_模型_🙂", {"модель_模型_🙂.onnx": noise}, None)
    add("newline in the name", "new\nline", {"new\nline.onnx": noise}, None)
    add("255-byte name", LONG[:200], {LONG + ".onnx": noise}, None)
    add("leading dash", "-rf", {"-rf.onnx": noise}, None)

    def unreadable(path: Path) -> None:
        path.write_bytes(noise)
        path.chmod(0)
    add("unreadable permissions", "secret", {"secret.onnx": unreadable}, None)
    add("too large (sparse 600 MB)", "huge.onnx", {"huge.onnx": lambda p: os.truncate(os.open(p, os.O_CREAT |
                                                   os.O_WRONLY), 600 * 1024 * 1024) or None}, "too large")
    sidecars = {
        "sidecar not a mapping": ("lst", "- a\n- b\n", "expected a mapping"),
        "sidecar with tabs": ("tabs", "target_platform:\trk3588\n\tmean_values: 1\n", "not valid YAML"),
        "sidecar duplicate keys": ("dup", "target_platform: rk3588\ntarget_platform: rk3566\n", "duplicate key"),
        "sidecar unknown key": ("unk", "colour: blue\n", "colour"),
        "sidecar wrong type": ("wtype", "optimization_level: high\n", "optimization_level"),
        "sidecar billion laughs": ("laughs", LAUGHS, "aliases"),
        "sidecar YAML syntax error": ("syntax", "target_platform: [rk3588\n", "not valid YAML"),
        "sidecar binary garbage": ("binyaml", b"\xff\xfe" + noise, "UTF-8"),
        "sidecar fault key (not an option: faults are test-only, by environment)": ("faulty", "fault: segfault\n", "fault"),
        "sidecar unknown platform": ("plat", "target_platform: rk9999\n", "rk9999"),
    }
    for kind, (stem, text, expect) in sidecars.items():
        add(kind, stem, {f"{stem}.onnx": onnx, f"{stem}.yaml": text}, expect)

    def huge_sidecar(path: Path) -> None:
        with open(path, "wb") as fh:
            fh.write(b"x" * (100 * 1024 * 1024))
    add("100 MB sidecar", "bigyaml", {"bigyaml.onnx": onnx, "bigyaml.yaml": huge_sidecar}, "too large")

    add("corrupt zip", "broken", {"broken.zip": noise}, None)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("model.onnx")
        info.size = len(onnx)
        tf.addfile(info, io.BytesIO(onnx))
    add("truncated tar.gz", "cut", {"cut.tar.gz": buf.getvalue()[: len(buf.getvalue()) // 2]}, None)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("../../evil.onnx", onnx)
    add("zip with a path-traversal member", "evil", {"evil.zip": zbuf.getvalue()}, None)
    add("empty folder", "emptydir", {"emptydir": lambda p: p.mkdir()}, "empty")
    add("lone sidecar", "lonely", {"lonely.yaml": "target_platform: rk3588\n"}, "no model next to it")
    add("half a Darknet pair", "half", {"half.cfg": "[net]\n"}, "never arrived")
    add("two models, one name", "twin", {"twin.onnx": onnx, "twin.tflite": noise}, "several models")
    add("two sidecars", "pair2", {"pair2.onnx": onnx, "pair2.yaml": "{}\n", "pair2.yml": "{}\n"},
        "more than one sidecar")

    def link_dir(path: Path) -> None:
        path.mkdir()
        os.symlink(outside / "outside.onnx", path / "model.onnx")
    add("folder holding a symlink", "linkdir", {"linkdir": link_dir}, "symbolic link")

    def two_models(path: Path) -> None:
        path.mkdir()
        (path / "a.onnx").write_bytes(onnx)
        (path / "b.onnx").write_bytes(onnx)
    add("folder with two models", "twodir", {"twodir": two_models}, None)

    def config_only(path: Path) -> None:
        path.mkdir()
        (path / "config.yaml").write_text("target_platform: rk3588\n")
    add("folder with only a config.yaml", "cfgonly", {"cfgonly": config_only}, None)
    add("garbage Caffe pair", "cafe", {"cafe.prototxt": noise, "cafe.caffemodel": noise}, None)
    add("garbage Darknet pair", "dn", {"dn.cfg": "not a darknet cfg\n", "dn.weights": noise}, None)
    return kinds


def test_dozens_of_kinds_of_bad_input_each_fail_readably(box_factory, tmp_path: Path) -> None:
    box = box_factory(workers=2, settings={"bundle_timeout_seconds": 2.0}).start()
    outside = tmp_path / "outside"
    outside.mkdir()
    kinds = build(box.inbox, tmp_path / "src", outside)
    assert len(kinds) >= 30
    report, problems = [], []
    for kind, (folder, entries, expect) in kinds.items():
        err = box.wait_failed(folder, timeout=90)
        text = (box.failed / folder / "error.json").read_text(encoding="utf-8")
        assert json.loads(text) == err
        msg = err["error"]
        report.append(f"{kind:42} {msg[:110]!r}")
        assert err["status"] == "failed" and err["task_id"], (kind, err)
        if not (isinstance(msg, str) and 0 < len(msg) < 1500):
            problems.append(f"{kind}: unreadable error {msg!r}")
        elif "Traceback" in msg or "internal error" in msg:
            problems.append(f"{kind}: not explained: {msg}")
        elif expect and expect not in msg:
            problems.append(f"{kind}: expected {expect!r} in {msg!r}")
    print("\n".join(report))
    assert not problems, "\n".join(problems)
    entries = [e for _, es, _ in kinds.values() for e in es]
    assert_conserved(box.inbox, box.outbox, box.failed, entries)
    assert (outside / "outside.onnx").is_file()  # a link is never followed out of the inbox
    assert not (tmp_path / "evil.onnx").exists() and not (box.root / "evil.onnx").exists()
    assert box.proc.poll() is None
    drop(modelgen.write_onnx_conv(tmp_path / "src" / "ok.onnx", seed=4), box.inbox / "-my model ünï.onnx")
    result = box.wait_completed("-my model ünï", timeout=60)
    assert (box.outbox / "-my model ünï" / "-my model ünï.rknn").is_file() and result["status"] == "completed"

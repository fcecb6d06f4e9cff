"""The inbox scanner: stability windows, grouping by stem and folder, rejections."""

from __future__ import annotations

import os
from pathlib import Path

from rknn_dropbox.intake.scanner import InboxScanner, is_ignored, split_name


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(inbox: Path, stable: float = 3.0, bundle_timeout: float = 600.0, max_size: int = 10**6):
    clock = Clock()
    return InboxScanner(inbox, stable, bundle_timeout, max_size, clock=clock), clock


def test_a_file_is_ready_only_after_it_stayed_unchanged(tmp_path: Path) -> None:
    scanner, clock = make(tmp_path)
    f = tmp_path / "net.onnx"
    f.write_bytes(b"a")
    assert not scanner.scan().ready
    clock.now += 2
    f.write_bytes(b"ab")  # still growing
    assert not scanner.scan().ready
    clock.now += 2.9
    assert not scanner.scan().ready
    clock.now += 0.2
    ready = scanner.scan().ready
    assert [(b.name, b.entries) for b in ready] == [("net", ["net.onnx"])]


def test_sidecar_joins_its_model_and_waits_with_it(tmp_path: Path) -> None:
    scanner, clock = make(tmp_path)
    (tmp_path / "net.yaml").write_text("target_platform: rk3566\n")
    scanner.scan()
    clock.now += 10
    assert not scanner.scan().ready  # a lone sidecar waits for its model
    (tmp_path / "net.onnx").write_bytes(b"x")
    assert not scanner.scan().ready
    clock.now += 3
    [bundle] = scanner.scan().ready
    assert bundle.entries == ["net.onnx", "net.yaml"]


def test_half_a_pair_waits_then_fails_naming_the_missing_file(tmp_path: Path) -> None:
    scanner, clock = make(tmp_path, bundle_timeout=60)
    (tmp_path / "yolov3-tiny.cfg").write_text("[net]\n")
    scanner.scan()
    clock.now += 30
    r = scanner.scan()
    assert not r.ready and not r.rejected and r.waiting
    clock.now += 31
    [rej] = scanner.scan().rejected
    assert rej.error == "incomplete Darknet model: yolov3-tiny.weights never arrived"


def test_a_pair_is_one_bundle(tmp_path: Path) -> None:
    scanner, clock = make(tmp_path)
    (tmp_path / "m.prototxt").write_text("name: 'x'\n")
    (tmp_path / "m.caffemodel").write_bytes(b"\0")
    scanner.scan()
    clock.now += 3
    [bundle] = scanner.scan().ready
    assert bundle.entries == ["m.caffemodel", "m.prototxt"]


def test_ignored_and_unknown_files(tmp_path: Path) -> None:
    scanner, clock = make(tmp_path)
    for name in (".DS_Store", "._net.onnx", "Thumbs.db", "net.onnx.part", "x.crdownload", "~lock", "a.tmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("hi")
    scanner.scan()
    clock.now += 5
    r = scanner.scan()
    assert not r.ready
    assert [(x.entries, x.error) for x in r.rejected] == [(["readme.txt"], "readme.txt is not a model file")]


def test_too_large_symlink_and_fifo_are_rejected(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    scanner, clock = make(inbox, max_size=10)
    (inbox / "big.onnx").write_bytes(b"x" * 11)
    (tmp_path / "outside.onnx").write_bytes(b"x")
    os.symlink(tmp_path / "outside.onnx", inbox / "link.onnx")
    os.mkfifo(inbox / "pipe.onnx")
    scanner.scan()
    clock.now += 5
    errors = {x.entries[0]: x.error for x in scanner.scan().rejected}
    assert "too large" in errors["big.onnx"]
    assert "symbolic link" in errors["link.onnx"]
    assert "not a regular file" in errors["pipe.onnx"]


def test_folder_waits_for_all_its_files(tmp_path: Path) -> None:
    scanner, clock = make(tmp_path)
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x")
    clock.now += 2
    scanner.scan()
    (folder / "calib").mkdir()
    (folder / "calib" / "a.npy").write_bytes(b"y")
    clock.now += 2
    assert not scanner.scan().ready
    clock.now += 3
    [bundle] = scanner.scan().ready
    assert (bundle.name, bundle.kind) == ("job", "folder")


def test_two_models_with_one_name_are_refused_together(tmp_path: Path) -> None:
    scanner, clock = make(tmp_path)
    (tmp_path / "net.onnx").write_bytes(b"x")
    (tmp_path / "net.tflite").write_bytes(b"x")
    scanner.scan()
    clock.now += 5
    [rej] = scanner.scan().rejected
    assert "several models share the name net" in rej.error and rej.entries == ["net.onnx", "net.tflite"]


def test_names() -> None:
    assert split_name("net.onnx") == ("net", ".onnx")
    assert split_name("net.onnx.yaml") == ("net", ".yaml")
    assert split_name("m.tar.gz") == ("m", ".tar.gz")
    assert split_name("-rf .onnx") == ("-rf ", ".onnx")
    assert is_ignored(".rknn-dropbox") and is_ignored("@eaDir") and not is_ignored("model.onnx")


def test_a_loose_checkpoint_set_takes_tensorflows_checkpoint_file_along(tmp_path: Path) -> None:
    scanner, clock = make(tmp_path)
    for name in ("model.ckpt.meta", "model.ckpt.index", "model.ckpt.data-00000-of-00001", "checkpoint"):
        (tmp_path / name).write_bytes(b"x")
    scanner.scan()
    clock.now += 5
    result = scanner.scan()
    assert not result.rejected
    [bundle] = result.ready
    assert bundle.name == "model.ckpt" and "checkpoint" in bundle.entries and len(bundle.entries) == 4

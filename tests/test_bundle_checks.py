"""Issue 3, fast: archive member checks, weight-file integrity, model_config.yml parsing, dtype rules, the cache."""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

import modelgen
from rknn_dropbox.intake.scanner import InboxScanner
from rknn_dropbox.intake.archives import ArchiveError, ArchiveLimits, unpack_archive
from rknn_dropbox.convert.cache import ResultCache, cache_key
from rknn_dropbox.formats.base import IntegrityError
from rknn_dropbox.formats.caffe import check_caffe
from rknn_dropbox.formats.darknet import check_darknet, darknet_expected_weights_bytes
from rknn_dropbox.convert.model_config import is_model_config, model_config_to_options
from rknn_dropbox.options import OptionsError, parse_convert_options


# ------------------------------------------------------------------------------------------------------- archives

def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_good_zip_unpacks(tmp_path: Path) -> None:
    z = _zip(tmp_path / "ok.zip", {"m/net.onnx": b"x" * 10, "m/net.yaml": b"a: 1\n"})
    files = unpack_archive(z, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["m/net.onnx", "m/net.yaml"]


@pytest.mark.parametrize("member", ["../evil", "a/../../evil", "/etc/evil", "C:/evil"])
def test_zip_members_leaving_the_folder_are_refused_before_anything_is_written(tmp_path: Path, member: str) -> None:
    z = _zip(tmp_path / "bad.zip", {"fine.onnx": b"ok", member: b"pwned"})
    with pytest.raises(ArchiveError, match=f"member {member!r}"):
        unpack_archive(z, tmp_path / "work" / "out")
    assert not (tmp_path / "work" / "out").exists()
    assert not list(tmp_path.rglob("evil"))


def test_tar_links_devices_and_limits(tmp_path: Path) -> None:
    def tar(name: str, *infos: tuple[tarfile.TarInfo, bytes | None]) -> Path:
        p = tmp_path / name
        with tarfile.open(p, "w:gz") as tf:
            for info, data in infos:
                if data is not None:
                    info.size = len(data)
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
        return p

    sym = tarfile.TarInfo("out")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/tmp"
    with pytest.raises(ArchiveError, match="member 'out' is a link"):
        unpack_archive(tar("sym.tgz", (sym, None)), tmp_path / "o1")
    hard = tarfile.TarInfo("h")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../../etc/passwd"
    with pytest.raises(ArchiveError, match="member 'h' is a link"):
        unpack_archive(tar("hard.tar.gz", (hard, None)), tmp_path / "o2")
    dev = tarfile.TarInfo("null")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(ArchiveError, match="member 'null' is a device"):
        unpack_archive(tar("dev.tgz", (dev, None)), tmp_path / "o3")
    many = [(tarfile.TarInfo(f"f{i}"), b"x") for i in range(5)]
    with pytest.raises(ArchiveError, match="more than 4 members"):
        unpack_archive(tar("many.tgz", *many), tmp_path / "o4", ArchiveLimits(max_members=4))
    big = tarfile.TarInfo("big")
    with pytest.raises(ArchiveError, match="more than 1000 bytes .* 'big'"):
        unpack_archive(tar("big.tgz", (big, b"0" * 5000)), tmp_path / "o5", ArchiveLimits(max_bytes=1000))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("o")]


def test_zip_bomb_by_declared_size(tmp_path: Path) -> None:
    p = tmp_path / "bomb.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * 2_000_000)
    assert p.stat().st_size < 10_000
    with pytest.raises(ArchiveError, match="zip bomb"):
        unpack_archive(p, tmp_path / "out", ArchiveLimits(max_bytes=1_000_000))


# ---------------------------------------------------------------------------------------------------- integrity

def test_darknet_weights_size_checks(tmp_path: Path) -> None:
    cfg, weights = modelgen.write_darknet(tmp_path / "n.cfg", tmp_path / "n.weights")
    check_darknet(cfg, weights)
    data = weights.read_bytes()
    assert len(data) == darknet_expected_weights_bytes(cfg.read_text())
    weights.write_bytes(data[:30])
    with pytest.raises(IntegrityError, match=r"layer 0 \[convolutional\] needs bytes 20-") as exc:
        check_darknet(cfg, weights)
    assert f"{len(data) - 30} bytes missing" in str(exc.value)
    weights.write_bytes(data + b"\0" * 12)
    with pytest.raises(IntegrityError, match="12 bytes more than n.cfg implies"):
        check_darknet(cfg, weights)


def test_caffe_blob_checks(tmp_path: Path) -> None:
    proto, model = modelgen.write_caffe(tmp_path / "d.prototxt", tmp_path / "d.caffemodel")
    check_caffe(proto, model)
    cut = modelgen.write_truncated(model, tmp_path / "cut.caffemodel", 0.9)
    with pytest.raises(IntegrityError, match="cut.caffemodel is truncated: layer 'conv1'"):
        check_caffe(proto, cut)
    wrong = tmp_path / "wrong.prototxt"
    wrong.write_text(proto.read_text().replace("num_output: 4", "num_output: 8"))
    with pytest.raises(IntegrityError, match=r"layer 'conv1' blob 0: .* shape \[4, 3, 3, 3\], .* implies \[8, 3, 3, 3\]"):
        check_caffe(wrong, model)
    renamed = tmp_path / "renamed.prototxt"
    renamed.write_text(proto.read_text().replace('name: "conv1"', 'name: "conv_other"'))
    with pytest.raises(IntegrityError, match="no weights for layer 'conv_other'"):
        check_caffe(renamed, model)


# ------------------------------------------------------------------------------------------- options and the cache

def test_model_config_yml_is_normalised() -> None:
    raw = {"models": {"name": "m", "platform": "onnx", "model_file_path": "./m.onnx", "quantize": "true",
                      "dataset": "./dataset.txt",
                      "configs": {"quantized_dtype": "asymmetric_quantized-8", "channel_mean_value": "0 0 0 255",
                                  "quant_img_RGB2BGR": "false", "target_platform": "rk3566"},
                      "subgraphs": {"input_size_list": ["3,224,224"], "inputs": ["x"], "outputs": ["y"]}}}
    assert is_model_config(raw) and not is_model_config({"target_platform": "rk3588"})
    native, refs = model_config_to_options(raw, "model_config.yml")
    opts = parse_convert_options(native, "model_config.yml")
    assert refs.platform == "onnx" and refs.files == ("./m.onnx",)
    assert opts.do_quantization is True and opts.quantized_dtype == "w8a8" and opts.target_platform == ("rk3566",)
    assert opts.mean_values == [[0.0, 0.0, 0.0]] and opts.std_values == [[255.0, 255.0, 255.0]]
    assert opts.input_size_list == [[1, 3, 224, 224]] and opts.inputs == ["x"]
    with pytest.raises(OptionsError, match="configs: unknown key 'bogus'"):
        model_config_to_options({"models": {"configs": {"bogus": 1}}}, "model_config.yml")


def test_dtype_platform_rules_measured_on_the_toolkit() -> None:
    with pytest.raises(OptionsError, match="'w16a16i' is refused by rknn-toolkit2 2.5.0; use 'w16a16i_dfp'"):
        parse_convert_options({"quantized_dtype": "w16a16i"}, "s.yaml")
    with pytest.raises(OptionsError, match="w8a16 is not supported on rk3588"):
        parse_convert_options({"quantized_dtype": "w8a16", "target_platform": "rk3588"}, "s.yaml")
    # several targets: refused only when none of them can take it (the others fail per target at build time)
    opts = parse_convert_options({"quantized_dtype": "w4a16", "target_platform": ["rk3588", "rk3576"]}, "s.yaml")
    assert opts.target_platform == ("rk3588", "rk3576")
    with pytest.raises(OptionsError, match="rk3588 .*rk3566"):
        parse_convert_options({"quantized_dtype": "w4a16", "target_platform": ["rk3588", "rk3566"]}, "s.yaml")


def test_cache_hit_and_oldest_evicted(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    k1 = cache_key([(".onnx", model)], {"a": 1}, "2.5.0")
    assert k1 == cache_key([(".onnx", model)], {"a": 1}, "2.5.0")
    assert k1 != cache_key([(".onnx", model)], {"a": 2}, "2.5.0") != cache_key([(".onnx", model)], {"a": 1}, "2.4")
    out = tmp_path / "o.rknn"
    out.write_bytes(b"r" * 400)
    cache = ResultCache(tmp_path / "cache", max_bytes=1200)  # two entries of ~500 bytes fit
    assert cache.store("k1", {"job_id": "j1", "targets": []}, {"rk3588": out})
    os.utime(tmp_path / "cache" / "k1" / "meta.json", (time.time() - 100, time.time() - 100))
    assert cache.store("k2", {"job_id": "j2", "targets": []}, {"rk3588": out})
    assert cache.lookup("k1").meta["job_id"] == "j1"  # k1 is now the most recently used
    assert cache.store("k3", {"job_id": "j3", "targets": []}, {"rk3588": out})
    assert cache.lookup("k2") is None and cache.lookup("k1") and cache.lookup("k3")


def test_loose_checkpoint_set_waits_for_every_part(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    now = [0.0]
    scanner = InboxScanner(inbox, stable_seconds=1, bundle_timeout_seconds=10, max_file_size=10**9,
                           clock=lambda: now[0])
    (inbox / "m.meta").write_bytes(b"m")
    (inbox / "m.index").write_bytes(b"i")
    scanner.scan()
    now[0] = 2.0
    r = scanner.scan()
    assert not r.ready and not r.rejected and r.waiting == 2
    (inbox / "m.data-00000-of-00001").write_bytes(b"d")
    scanner.scan()
    now[0] = 4.0
    r = scanner.scan()
    assert [b.entries for b in r.ready] == [["m.data-00000-of-00001", "m.index", "m.meta"]]
    (inbox / "lone.meta").write_bytes(b"m")
    scanner.scan()
    now[0] = 20.0
    r = scanner.scan()
    assert r.rejected and "incomplete TensorFlow checkpoint: lone.index" in r.rejected[0].error

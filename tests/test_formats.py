"""Issue 3: every format through a running daemon, pairs, archives, several targets, the cache, model_config.yml."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

import modelgen
from conftest import DaemonProcess, module_daemon, wait_for

pytestmark = pytest.mark.slow

try:
    import tensorflow  # noqa: F401
    HAVE_TF = True
except ImportError:  # pragma: no cover - CI installs it (scripts/setup-venv.sh --test)
    HAVE_TF = False
needs_tf = pytest.mark.skipif(not HAVE_TF, reason="TensorFlow is not importable (scripts/setup-venv.sh --tensorflow)")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the module (starting one costs seconds): short bundle timeout, TF lock in its state dir."""
    yield from module_daemon(tmp_path_factory, "formats", "bundle_timeout_seconds = 8.0\n")


def src(tmp_path: Path) -> Path:
    p = tmp_path / "src"
    p.mkdir(exist_ok=True)
    return p


# ---------------------------------------------------------------------------------------------- Darknet and Caffe

def test_darknet_pair_whose_weights_arrive_seconds_later(box: DaemonProcess, tmp_path: Path) -> None:
    cfg, weights = modelgen.write_darknet(src(tmp_path) / "yolo.cfg", src(tmp_path) / "yolo.weights")
    shutil.copy(cfg, box.inbox / "yolo.cfg")
    # the second half of the pair comes later (a slow SMB copy): a rejected marker dropped after the .cfg shows
    # that the daemon has scanned the inbox with the .cfg stable, and left the lone .cfg waiting for its partner
    (box.inbox / "yolo-marker.txt").write_text("not a model")
    box.wait_failed("yolo-marker.txt", timeout=60)
    assert (box.inbox / "yolo.cfg").exists(), "the lone .cfg was claimed before its partner arrived"
    shutil.copy(weights, box.inbox / "yolo.weights")
    result = box.wait_completed("yolo")
    assert result["format"] == "darknet"
    assert sorted(i["name"] for i in result["inputs"]) == ["yolo.cfg", "yolo.weights"]
    assert (box.outbox / "yolo" / "yolo.rknn").stat().st_size > 1000
    assert result["verification"]["rk3588"]["status"] == "skipped"


def test_darknet_half_whose_partner_never_arrives(box: DaemonProcess, tmp_path: Path) -> None:
    cfg, _ = modelgen.write_darknet(src(tmp_path) / "lone.cfg", src(tmp_path) / "lone.weights")
    shutil.copy(cfg, box.inbox / "lonely.cfg")
    err = box.wait_failed("lonely", timeout=60)
    assert err["error"] == "incomplete Darknet model: lonely.weights never arrived"
    assert (box.failed / "lonely" / "input" / "lonely.cfg").is_file()


def test_short_and_long_darknet_weights_fail_in_the_analyzer(box: DaemonProcess, tmp_path: Path) -> None:
    cfg, weights = modelgen.write_darknet(src(tmp_path) / "d.cfg", src(tmp_path) / "d.weights")
    data = weights.read_bytes()
    for name, blob in (("shortw", data[:-100]), ("longw", data + b"\0" * 8)):
        shutil.copy(cfg, box.inbox / f"{name}.cfg")
        (box.inbox / f"{name}.weights").write_bytes(blob)
    short = box.wait_failed("shortw")
    assert "shortw.weights is truncated" in short["error"]
    assert f"{len(data) - 100} bytes" in short["error"] and f"{len(data)} bytes" in short["error"]
    assert "layer 2 [convolutional]" in short["error"] and "100 bytes missing" in short["error"]
    assert short["stage"] == "analyze"  # the job never reached the toolkit's loader
    assert "load_darknet" not in (box.failed / "shortw" / "conversion.log").read_text()
    long_ = box.wait_failed("longw")
    assert "8 bytes more than longw.cfg implies" in long_["error"]


def test_caffe_pair_and_a_truncated_caffemodel(box: DaemonProcess, tmp_path: Path) -> None:
    proto, model = modelgen.write_caffe(src(tmp_path) / "deploy.prototxt", src(tmp_path) / "deploy.caffemodel")
    folder = tmp_path / "caffenet"
    folder.mkdir()
    shutil.copy(proto, folder / "deploy.prototxt")
    shutil.copy(model, folder / "deploy.caffemodel")
    shutil.copytree(folder, box.inbox / "caffenet")
    shutil.copy(proto, box.inbox / "cut.prototxt")
    modelgen.write_truncated(model, box.inbox / "cut.caffemodel", 0.5)
    result = box.wait_completed("caffenet")
    assert result["format"] == "caffe" and (box.outbox / "caffenet" / "caffenet.rknn").is_file()
    err = box.wait_failed("cut")
    assert "cut.caffemodel is truncated: layer 'conv1'" in err["error"]
    assert f"only {int(model.stat().st_size * 0.5)} bytes" in err["error"]


# ------------------------------------------------------------------------------------------------------- archives

def test_zip_with_model_sidecar_and_calibration_images(box: DaemonProcess, tmp_path: Path) -> None:
    s = src(tmp_path)
    cfg, weights = modelgen.write_darknet(s / "net.cfg", s / "net.weights")
    images = modelgen.write_calibration_images(s / "calib", n=2, size=32)
    with zipfile.ZipFile(tmp_path / "zipped.zip", "w") as zf:
        zf.write(cfg, "pack/net.cfg")
        zf.write(weights, "pack/net.weights")
        zf.writestr("pack/config.yaml", "mean_values: [0, 0, 0]\nstd_values: [255, 255, 255]\n")
        for img in images:
            zf.write(img, f"pack/calib/{img.name}")
    shutil.copy(tmp_path / "zipped.zip", box.inbox / "zipped.zip")
    result = box.wait_completed("zipped")
    assert result["format"] == "darknet" and result["quantized"] is True
    assert result["quantization"]["dataset_size"] == 2
    assert result["config"]["std_values"] == [[255.0, 255.0, 255.0]]
    assert any(i["name"] == "zipped.zip" for i in result["inputs"])


def _evil_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.onnx", b"x")
        zf.writestr("../evil", b"pwned")


def _symlink_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("link.onnx")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")


def test_archives_with_dotdot_or_a_symlink_fail_naming_the_member(box: DaemonProcess, tmp_path: Path) -> None:
    _evil_zip(tmp_path / "dotdot.zip")
    _symlink_zip(tmp_path / "linky.zip")
    tar_path = tmp_path / "tarlink.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        info = tarfile.TarInfo("escape")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../../outside"
        tf.addfile(info)
        data = b"written through the link"
        info2 = tarfile.TarInfo("escape/payload")
        info2.size = len(data)
        tf.addfile(info2, io.BytesIO(data))
    for p in (tmp_path / "dotdot.zip", tmp_path / "linky.zip", tar_path):
        shutil.copy(p, box.inbox / p.name)
    before = set(box.root.parent.rglob("*"))
    assert "member '../evil'" in box.wait_failed("dotdot")["error"]
    assert "member 'link.onnx' is a symbolic link" in box.wait_failed("linky")["error"]
    assert "member 'escape' is a link" in box.wait_failed("tarlink")["error"]
    after = set(box.root.parent.rglob("*"))
    new = {p for p in after - before if not str(p).startswith((str(box.failed), str(box.inbox), str(box.state),
                                                               str(box.outbox)))}
    assert not [p for p in new if p.name in ("evil", "outside", "payload")], new
    assert not list(box.root.parent.rglob("evil")) and not list(box.root.parent.rglob("outside"))
    assert not (box.failed / "dotdot" / "tmp").exists()


# ----------------------------------------------------------------------------- several targets, cache, model_config

def test_three_targets_from_one_drop_with_one_per_target_error(box: DaemonProcess, tmp_path: Path) -> None:
    s = src(tmp_path)
    modelgen.write_onnx_conv(s / "multi" / "model.onnx")
    modelgen.write_calibration_npy(s / "multi" / "calib", n=2)
    (s / "multi" / "config.yaml").write_text("target_platform: [rk3588, rk3566, rv1106]\n")
    shutil.copytree(s / "multi", box.inbox / "multi")
    result = box.wait_completed("multi", timeout=180)
    assert result["target_platform"] == ["rk3588", "rk3566", "rv1106"]
    assert sorted(o["name"] for o in result["outputs"]) == ["multi.rk3566.rknn", "multi.rk3588.rknn",
                                                             "multi.rv1106.rknn"]
    for o in result["outputs"]:
        assert (box.outbox / "multi" / o["name"]).stat().st_size == o["size"]
    # w4a16 only exists on rk3576/rv1126b: rk3588 fails alone, rk3576 is built
    modelgen.write_onnx_conv(s / "w4" / "model.onnx", seed=3)
    modelgen.write_calibration_npy(s / "w4" / "calib", n=2)
    (s / "w4" / "config.yaml").write_text("target_platform: [rk3576, rk3588]\nquantized_dtype: w4a16\n")
    shutil.copytree(s / "w4", box.inbox / "w4")
    result = box.wait_completed("w4", timeout=180)
    by = {t["platform"]: t for t in result["targets"]}
    assert by["rk3576"]["ok"] is True and (box.outbox / "w4" / "w4.rk3576.rknn").is_file()
    assert by["rk3588"]["ok"] is False
    assert by["rk3588"]["error"] == "quantized_dtype w4a16 is not supported on rk3588 (only on rk3576, rv1126b)"
    assert not (box.outbox / "w4" / "w4.rk3588.rknn").exists()


def test_same_model_twice_is_a_cache_hit(box: DaemonProcess, tmp_path: Path) -> None:
    model = modelgen.write_onnx_conv(src(tmp_path) / "c.onnx", seed=11)
    shutil.copy(model, box.inbox / "first.onnx")
    first = box.wait_completed("first")
    assert first["cached"] is False
    assert first["verification"]["rk3588"]["status"] == "passed"
    shutil.copy(model, box.inbox / "second.onnx")
    second = box.wait_completed("second")
    assert second["cached"] is True and second["cache_of"] == first["task_id"]
    assert second["duration"] < 1.0, second["duration"]
    assert second["outputs"][0]["name"] == "second.rknn"
    assert second["outputs"][0]["sha256"] == first["outputs"][0]["sha256"]
    assert (box.outbox / "second" / "second.rknn").read_bytes() == (box.outbox / "first" / "first.rknn").read_bytes()
    # another config is another key
    shutil.copy(model, box.inbox / "third.onnx")
    (box.inbox / "third.yaml").write_text("optimization_level: 2\n")
    assert box.wait_completed("third")["cached"] is False


def test_model_config_yml_of_the_toolkit_cli_used_as_is(box: DaemonProcess, tmp_path: Path) -> None:
    folder = src(tmp_path) / "zoo"
    modelgen.write_caffe(folder / "net.prototxt", folder / "net.caffemodel")
    cal = modelgen.write_calibration_npy(folder / "data", n=2)
    (folder / "dataset.txt").write_text("".join(f"data/{p.name}\n" for p in cal))
    (folder / "model_config.yml").write_text(
        "models:\n"
        "    name: net\n"
        "    platform: caffe\n"
        "    prototxt_file_path: ./net.prototxt\n"
        "    caffemodel_file_path: ./net.caffemodel\n"
        "    quantize: true\n"
        "    dataset: ./dataset.txt\n"
        "    configs:\n"
        "      quantized_dtype: asymmetric_quantized-8\n"
        "      mean_values: [0, 0, 0]\n"
        "      std_values: [1, 1, 1]\n"
        "      quant_img_RGB2BGR: false\n"
        "      quantized_algorithm: normal\n"
        "      quantized_method: channel\n"
        "      optimization_level: 2\n"
        "      target_platform: rk3566\n")
    shutil.copytree(folder, box.inbox / "zoo")
    result = box.wait_completed("zoo")
    assert result["format"] == "caffe" and result["quantized"] is True
    assert result["target_platform"] == ["rk3566"]
    assert result["config"]["optimization_level"] == 2 and result["config"]["quantized_dtype"] == "w8a8"
    assert result["quantization"]["dataset_size"] == 2


# ----------------------------------------------------------------------------------------------------- TensorFlow

@needs_tf
def test_frozen_pb_savedmodel_and_checkpoint(box: DaemonProcess, tmp_path: Path) -> None:
    s = src(tmp_path)
    modelgen.write_tf_frozen_pb(s / "frozen.pb")
    modelgen.write_tf_saved_model(s / "saved")
    modelgen.write_tf_checkpoint(s / "ckpt")
    shutil.copy(s / "frozen.pb", box.inbox / "frozen.pb")   # no sidecar: inputs/outputs found from the graph
    shutil.copytree(s / "saved", box.inbox / "saved")
    shutil.copytree(s / "ckpt", box.inbox / "ckpt")
    # the same checkpoint dropped loose, with TensorFlow's `checkpoint` bookkeeping file beside it
    loose = sorted(p.name for p in (s / "ckpt").iterdir())
    assert "checkpoint" in loose and "model.meta" in loose
    for fname in loose:
        shutil.copy(s / "ckpt" / fname, box.inbox / f".{fname}.copying")
    for fname in loose:
        (box.inbox / f".{fname}.copying").rename(box.inbox / fname)
    for name, fmt in (("frozen", "tensorflow"), ("saved", "savedmodel"), ("ckpt", "checkpoint"),
                      ("model", "checkpoint")):
        result = box.wait_completed(name, timeout=180)
        assert result["format"] == fmt
        assert (box.outbox / name / f"{name}.rknn").stat().st_size > 1000
        v = result["verification"]["rk3588"]
        assert v["status"] == "passed" and v["reference"] == "tensorflow", v
    assert sorted(p.name for p in (box.outbox / "model" / "input").iterdir()) == loose
    assert not (box.failed / "checkpoint").exists()


@needs_tf
def test_float_and_int8_tflite(box: DaemonProcess, tmp_path: Path) -> None:
    modelgen.write_tflite(box.inbox / ".tmp-f", seed=0)
    (box.inbox / ".tmp-f").rename(box.inbox / "flite.tflite")
    modelgen.write_tflite(box.inbox / ".tmp-q", seed=0, int8=True)
    (box.inbox / ".tmp-q").rename(box.inbox / "qlite.bin.tflite")
    f = box.wait_completed("flite")
    assert f["format"] == "tflite" and f["quantized"] is False
    assert f["verification"]["rk3588"]["status"] == "passed"
    q = box.wait_completed("qlite.bin")
    assert q["quantization"]["dtype"] == "prequantized", q["quantization"]
    assert (box.outbox / "qlite.bin" / "qlite.bin.rknn").is_file()
    # int8 input/output: the simulator must get the quantized integers and its int8 outputs be dequantized
    qv = q["verification"]["rk3588"]
    assert qv["status"] == "passed" and qv["outputs"][0]["cosine"] >= 0.98, qv


@needs_tf
def test_two_tensorflow_drops_at_once_do_not_share_the_toolkit_temp_graph(box: DaemonProcess,
                                                                          tmp_path: Path) -> None:
    """load_tensorflow writes /tmp/optimized_tf.pb: two different graphs converted at once must each get theirs."""
    s = src(tmp_path)
    a = modelgen.write_tf_frozen_pb(s / "a.pb", seed=21)
    b = modelgen.write_tf_frozen_pb(s / "b.pb", seed=22)
    shutil.copy(a, box.inbox / "tfa.pb")
    shutil.copy(b, box.inbox / "tfb.pb")
    ra, rb = box.wait_completed("tfa", timeout=180), box.wait_completed("tfb", timeout=180)
    # each .rknn agrees with its own graph (a swapped graph would give a low cosine: different weights)
    for r in (ra, rb):
        assert r["verification"]["rk3588"]["status"] == "passed", r["verification"]
    assert ra["outputs"][0]["sha256"] != rb["outputs"][0]["sha256"]
    log_a = (box.outbox / "tfa" / "conversion.log").read_text()
    log_b = (box.outbox / "tfb" / "conversion.log").read_text()
    assert "rknn building done" in log_a and "rknn building done" in log_b
    # the two locked sections (load + build under the state dir's lock) did not overlap
    (a_in, a_out), (b_in, b_out) = _lock_span(log_a), _lock_span(log_b)
    assert a_out <= b_in or b_out <= a_in, ((a_in, a_out), (b_in, b_out))


def _lock_span(log: str) -> tuple[float, float]:
    acquired = re.findall(r"TensorFlow toolkit lock acquired at ([0-9.]+)", log)
    released = re.findall(r"TensorFlow toolkit lock released at ([0-9.]+)", log)
    assert len(acquired) == len(released) == 1, log[-3000:]
    return float(acquired[0]), float(released[0])


def test_a_tar_gz_of_a_model_folder_converts(box: DaemonProcess, tmp_path: Path) -> None:
    folder = src(tmp_path) / "tarnet"
    modelgen.write_onnx_conv(folder / "net.onnx", seed=7)
    (folder / "net.yaml").write_text("optimization_level: 2\n")
    archive = src(tmp_path) / "tarnet.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="tarnet")
    shutil.copy(archive, box.inbox / "tarnet.tar.gz")
    result = box.wait_completed("tarnet")
    assert result["format"] == "onnx" and result["config"]["optimization_level"] == 2
    assert "(unpacked) net.onnx" in [i["name"] for i in result["inputs"]]
    assert (box.outbox / "tarnet" / "tarnet.rknn").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------- verification
def test_verification_below_the_threshold_warns_or_fails_when_strict(box: DaemonProcess, tmp_path: Path) -> None:
    # an int8 build never matches the float model exactly: thresholds no build can meet (without the repair)
    impossible = ("verify_thresholds: {relative_error: 0.0, top1_agreement: 1.01, detection_agreement: 1.01, "
                  "argmax_agreement: 1.01, mask_iou: 1.01, ctc_agreement: 1.01}\n")
    for name, strict in (("lenient", "false"), ("strict", "true")):
        folder = modelgen.write_int8_folder(src(tmp_path) / name, 1, f"{impossible}verify_strict: "
                                            f"{strict}\naccuracy_repair: \"off\"\n")
        shutil.copytree(folder, box.inbox / name)
    lenient = box.wait_completed("lenient")
    [target] = [t for t in lenient["targets"] if t.get("ok")]
    assert lenient["quantized"] is True
    assert any("verif" in w for w in lenient["warnings"]), lenient["warnings"]
    assert (box.outbox / "lenient" / "lenient.rknn").is_file()
    strict = box.wait_failed("strict")
    assert "below its threshold) (verify_strict)" in strict["error"], strict["error"]
    assert not list((box.failed / "strict").glob("*.rknn"))

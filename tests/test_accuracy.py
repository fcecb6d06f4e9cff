"""Issue 10: verification on real samples, int8 repair with the per-layer report, verify_strict failing closed."""

from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import accuracygen as gen
from conftest import DaemonProcess, module_daemon
from rknn_dropbox.convert import repair

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    yield from module_daemon(tmp_path_factory, "accuracy", "bundle_timeout_seconds = 8.0\n")


def _drop(box: DaemonProcess, folder: Path) -> None:
    shutil.copytree(folder, box.inbox / folder.name)


def test_real_images_end_the_false_alarm(box: DaemonProcess, tmp_path: Path) -> None:
    """Two-output conv net + dataset.txt + 4 images, no mean/std, int8: verified on the images, not on noise."""
    folder = tmp_path / "twoout"
    gen.write_two_output_net(folder / "net.onnx")
    images = gen.write_natural_images(folder / "images", n=4)
    gen.write_dataset(folder / "dataset.txt", images)
    _drop(box, folder)
    result = box.wait_completed("twoout", timeout=180)
    v = result["verification"]["rk3588"]
    assert v["status"] == "passed", v
    assert v["samples"] == {"source": "calibration set", "names": [p.name for p in images]}
    assert [o["name"] for o in v["outputs"]] == ["feat", "score"]
    for out in v["outputs"]:
        assert len(out["cosines"]) == 4 and out["cosine"] == min(out["cosines"]) >= 0.98, out
    assert "accuracy" not in result and not any("verification" in w for w in result["warnings"])
    assert result["peak_rss_mb"] > 0 and result["timings"]["verify"] > 0


def test_int8_below_threshold_is_repaired_with_its_worst_layers(box: DaemonProcess, tmp_path: Path) -> None:
    folder = tmp_path / "outlier"
    gen.write_outlier_channel_net(folder / "net.onnx")
    gen.write_dataset(folder / "dataset.txt", gen.write_natural_images(folder / "images", n=4))
    (folder / "config.yaml").write_text("mean_values: [0, 0, 0]\nstd_values: [255, 255, 255]\n")
    _drop(box, folder)
    result = box.wait_completed("outlier", timeout=300)
    acc = result["accuracy"]["rk3588"]
    first, delivered = acc["attempts"][0], acc["attempts"][acc["delivered"]]
    assert first["min_cosine"] < 0.98 and not first["passed"], first
    assert delivered["passed"] and delivered["min_cosine"] >= 0.98 and acc["delivered"] > 0, acc
    assert result["verification"]["rk3588"]["status"] == "passed"
    q = result["quantization"]  # what was delivered, not what was asked for
    assert q["configured_dtype"] == "w8a8" and q["repaired"] == ["rk3588"], q
    assert q["dtype"] == repair.delivered_dtype(delivered["settings"], "w8a8") != "w8a8", q
    assert all({"label", "settings", "build_seconds"} <= set(a) for a in acc["attempts"])
    worst = acc["worst_layers"]
    assert worst[0]["single_cosine"] < 0.9 and {"name", "op", "cosine", "single_cosine"} <= set(worst[0])
    assert "d" in worst[0]["name"] or worst[0]["op"] == "Relu", worst  # the activation after the outlier conv
    report = (box.outbox / "outlier" / "accuracy" / "error_analysis.txt").read_text()
    assert "single" in report and "[Conv]" in report
    assert result["timings"]["repair"] > 0 and any("repaired build" in w for w in result["warnings"])
    with urllib.request.urlopen(f"http://127.0.0.1:{box.port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    for name in ("verification_seconds", "accuracy_repair_seconds", "job_peak_rss_megabytes"):
        count = re.search(rf"^rknn_dropbox_{name}_count (\d+)$", metrics, re.M)
        assert count and int(count[1]) >= 1, (name, metrics[-2000:])


def test_repair_off_keeps_the_single_build_and_reports_it(box: DaemonProcess, tmp_path: Path) -> None:
    folder = tmp_path / "outlieroff"
    gen.write_outlier_channel_net(folder / "net.onnx")
    gen.write_dataset(folder / "dataset.txt", gen.write_natural_images(folder / "images", n=2))
    (folder / "config.yaml").write_text("mean_values: [0, 0, 0]\nstd_values: [255, 255, 255]\n"
                                        "accuracy_repair: \"off\"\n")
    _drop(box, folder)
    result = box.wait_completed("outlieroff", timeout=180)
    assert result["verification"]["rk3588"]["status"] == "below_threshold"
    acc = result["accuracy"]["rk3588"]
    assert "attempts" not in acc and len(acc["worst_layers"]) >= 1
    assert any("fails its task check" in w for w in result["warnings"]), result["warnings"]


def test_verify_dataset_first_and_strict_fails_an_erroring_verification(box: DaemonProcess, tmp_path: Path) -> None:
    held_out = tmp_path / "heldout"
    gen.write_two_output_net(held_out / "net.onnx")
    calib = gen.write_natural_images(held_out / "calib", n=3, seed=1, prefix="calib")
    gen.write_dataset(held_out / "dataset.txt", calib)
    verify = gen.write_natural_images(held_out / "verify", n=2, seed=2, prefix="check")
    gen.write_dataset(held_out / "verify.txt", verify)
    (held_out / "config.yaml").write_text("verify_dataset: verify.txt\n")
    # the same model whose held-out samples fit no input: a verification that errors
    broken = tmp_path / "brokencheck"
    gen.write_two_output_net(broken / "net.onnx")
    gen.write_dataset(broken / "dataset.txt", gen.write_natural_images(broken / "calib", n=2, prefix="calib"))
    (broken / "verify").mkdir()
    np.save(broken / "verify" / "wrong.npy", np.zeros((1, 5, 7, 7), np.float32))
    (broken / "verify.txt").write_text("verify/wrong.npy\n")
    (broken / "config.yaml").write_text("verify_dataset: verify.txt\nverify_strict: true\n")
    lenient = tmp_path / "lenientcheck"
    shutil.copytree(broken, lenient)
    (lenient / "config.yaml").write_text("verify_dataset: verify.txt\n")
    for f in (held_out, broken, lenient):
        _drop(box, f)
    v = box.wait_completed("heldout", timeout=180)["verification"]["rk3588"]
    assert v["samples"] == {"source": "verify_dataset", "names": [p.name for p in verify]}, v
    error = box.wait_failed("brokencheck", timeout=180)
    assert "verification failed on rk3588" in error["error"] and "verify_dataset" in error["error"], error
    ok = box.wait_completed("lenientcheck", timeout=180)
    assert ok["verification"]["rk3588"]["status"] == "error"
    assert any("delivered unverified" in w for w in ok["warnings"]), ok["warnings"]


def test_fp16_overflow_is_retried_with_auto_hybrid_and_its_tensors_reported(box: DaemonProcess, tmp_path: Path) -> None:
    folder = tmp_path / "overflow"
    gen.write_fp16_overflow_net(folder / "net.onnx")
    gen.write_dataset(folder / "dataset.txt", gen.write_natural_images(folder / "images", n=2, size=16))
    (folder / "config.yaml").write_text("do_quantization: false\n")
    _drop(box, folder)
    result = box.wait_completed("overflow", timeout=180)
    assert result["quantization"]["quantized"] is False
    acc = result["accuracy"]["rk3588"]
    labels = [a["label"] for a in acc["attempts"]]
    assert labels[0] == "as configured" and any("auto_hybrid" in label for label in labels[1:]), acc
    assert acc["attempts"][1]["settings"] == {"do_quantization": False, "auto_hybrid": True}
    assert "b" in acc["fp16_overflow_tensors"], acc

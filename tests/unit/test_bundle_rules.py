"""README claims about a bundle, checked on real model files without the toolkit: option precedence, formats
recognised by content, rv1103/rv1106 refusing fp16, faults not being a sidecar option."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import modelgen
from rknn_dropbox.convert.bundle import inspect_bundle
from rknn_dropbox.options import (
    ConvertOptions, OptionsError, check_fp16_platforms, effective_quantization, parse_convert_options,
)


def _inspect(folder: Path, name: str, defaults: ConvertOptions | None = None):
    return inspect_bundle(folder, name, defaults or ConvertOptions(), folder.parent / f"{name}-work")


def test_sidecar_beats_folder_config_beats_the_toml(tmp_path: Path) -> None:
    bundle = tmp_path / "in" / "net"
    modelgen.write_onnx_conv(bundle / "model.onnx")
    (bundle / "config.yaml").write_text("optimization_level: 2\nverify: false\n")
    (bundle / "model.yaml").write_text("optimization_level: 1\n")
    toml = parse_convert_options({"optimization_level": 0, "verify": True, "compress_weight": True}, "[convert]")
    spec = _inspect(tmp_path / "in", "net", toml)
    assert spec.options.optimization_level == 1   # the sidecar over config.yaml and the TOML
    assert spec.options.verify is False           # config.yaml over the TOML
    assert spec.options.compress_weight is True   # the TOML where nothing else says
    assert spec.sidecar is not None and spec.sidecar.name == "model.yaml"


@pytest.mark.parametrize("name", ["net.pb", "net.tflite"])
def test_an_onnx_file_under_a_tensorflow_extension_is_onnx(tmp_path: Path, name: str) -> None:
    modelgen.write_onnx_conv(tmp_path / "in" / name)
    spec = _inspect(tmp_path / "in", "net")
    assert spec.format == "onnx" and spec.facts.input_shapes == [[1, 3, 16, 16]]


def test_a_tflite_flatbuffer_under_another_extension_is_tflite(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    modelgen.write_tflite(tmp_path / "in" / "net.bin")
    assert _inspect(tmp_path / "in", "net").format == "tflite"


def test_a_darknet_cfg_is_recognised_by_its_net_section(tmp_path: Path) -> None:
    bundle = tmp_path / "in" / "yolo"
    cfg, weights = modelgen.write_darknet(tmp_path / "y.cfg", tmp_path / "y.weights")
    bundle.mkdir(parents=True)
    shutil.copy(cfg, bundle / "yolo.conf")   # not .cfg: recognised by [net]
    shutil.copy(weights, bundle / "yolo.weights")
    spec = _inspect(tmp_path / "in", "yolo")
    assert spec.format == "darknet" and spec.model.name == "yolo.conf" and spec.weights.name == "yolo.weights"


@pytest.mark.parametrize("platform", ["rv1103", "rv1106"])
def test_rv1103_and_rv1106_refuse_fp16(platform: str) -> None:
    opts = parse_convert_options({"target_platform": platform}, "net.yaml")
    quantize, why = effective_quantization(opts, has_dataset=False, prequantized=False)
    assert quantize is False
    with pytest.raises(OptionsError, match=f"{platform}.*fp16|fp16.*{platform}"):
        check_fp16_platforms(opts, quantize)
    quantize, _ = effective_quantization(opts, has_dataset=True, prequantized=False)
    check_fp16_platforms(opts, quantize)  # with a calibration set: an int8 build, accepted


def test_fault_injection_is_not_a_sidecar_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKNN_DROPBOX_FAULT_INJECTION", "1")
    with pytest.raises(OptionsError, match="fault"):
        parse_convert_options({"fault": "segfault"}, "net.yaml")


def test_daemon_and_worker_find_the_same_sidecars(tmp_path: Path) -> None:
    """model_config.yml is a folder config for both (the daemon once took it for the model's own sidecar)."""
    from rknn_dropbox.intake.claims import callback_url_for
    job_input = tmp_path / "in"
    bundle = job_input / "net"
    modelgen.write_onnx_conv(bundle / "net.onnx")
    (bundle / "model_config.yml").write_text("callback_url: http://folder/\noptimization_level: 2\n")
    assert callback_url_for(job_input, None) == "http://folder/"
    assert _inspect(job_input, "net").sidecar.name == "model_config.yml"
    (bundle / "net.yaml").write_text("callback_url: http://own/\n")
    assert callback_url_for(job_input, None) == "http://own/"
    spec = _inspect(job_input, "net")
    assert spec.sidecar.name == "net.yaml" and spec.options.callback_url == "http://own/"
    assert spec.options.optimization_level == 2

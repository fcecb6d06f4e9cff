"""A bundle's dataset paths stay inside the bundle (links resolved): a sidecar or dataset.txt cannot make the daemon
read, quote or probe a file elsewhere; the TOML's [convert] dataset applies only when the bundle brings none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import modelgen
from rknn_dropbox.convert.bundle import BundleError, inspect_bundle
from rknn_dropbox.options import ConvertOptions, parse_convert_options

SECRET = "RKNN_DROPBOX_TEST_SECRET=hunter2"


def _inspect(inbox: Path, name: str, defaults: ConvertOptions | None = None):
    return inspect_bundle(inbox, name, defaults or ConvertOptions(), inbox.parent / f"{name}-work")


def _bundle(tmp_path: Path, sidecar: str | None = None) -> Path:
    bundle = tmp_path / "in" / "net"
    modelgen.write_onnx_conv(bundle / "net.onnx")
    if sidecar is not None:
        (bundle / "net.yaml").write_text(sidecar)
    return bundle


def _secret_file(tmp_path: Path) -> Path:
    """A file outside the bundle whose content must never show (like /proc/self/environ: no whitespace)."""
    outside = tmp_path / "private" / "environ"
    outside.parent.mkdir()
    outside.write_text(SECRET)
    return outside


def _refusal(tmp_path: Path, why: str = "outside the bundle") -> str:
    with pytest.raises(BundleError) as exc:
        _inspect(tmp_path / "in", "net")
    text = f"{exc.value.error} {exc.value.hint}"
    assert why in text
    assert "hunter2" not in text and SECRET not in text
    return exc.value.error


@pytest.mark.parametrize("key", ["dataset", "verify_dataset"])
def test_a_sidecar_naming_an_absolute_path_is_refused_without_reading_it(tmp_path: Path, key: str) -> None:
    outside = _secret_file(tmp_path)
    _bundle(tmp_path, f"{key}: {outside}\n")
    _refusal(tmp_path)


def test_proc_self_environ_never_reaches_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKNN_DROPBOX_TEST_SECRET", "hunter2")
    _bundle(tmp_path, "dataset: /proc/self/environ\n")
    _refusal(tmp_path)


def test_an_outside_path_that_exists_and_one_that_does_not_read_the_same(tmp_path: Path) -> None:
    outside = _secret_file(tmp_path)
    _bundle(tmp_path, f"dataset: {outside}\n")
    exists = _refusal(tmp_path)
    (tmp_path / "in" / "net" / "net.yaml").write_text(f"dataset: {outside.parent / 'missing'}\n")
    missing = _refusal(tmp_path)
    assert exists.replace("environ", "X") == missing.replace("missing", "X")


def test_model_config_dataset_outside_is_refused(tmp_path: Path) -> None:
    outside = _secret_file(tmp_path)
    bundle = _bundle(tmp_path)
    (bundle / "model_config.yml").write_text(f"platform: onnx\nmodel_file_path: net.onnx\nquantize: true\n"
                                             f"dataset: {outside}\n")
    _refusal(tmp_path)


def test_a_relative_path_climbing_out_is_refused(tmp_path: Path) -> None:
    _secret_file(tmp_path)
    _bundle(tmp_path, "dataset: ../../private/environ\n")
    _refusal(tmp_path)


def test_a_symlink_out_is_refused(tmp_path: Path) -> None:
    outside = _secret_file(tmp_path)
    bundle = _bundle(tmp_path, "dataset: calib.txt\n")
    os.symlink(outside, bundle / "calib.txt")
    _refusal(tmp_path, "links are not followed")  # a link in a claimed bundle is refused before any path is read


def test_the_folders_dataset_txt_linked_out_is_refused(tmp_path: Path) -> None:
    outside = _secret_file(tmp_path)
    bundle = _bundle(tmp_path)
    os.symlink(outside, bundle / "dataset.txt")
    _refusal(tmp_path, "links are not followed")


@pytest.mark.parametrize("line", ["ABSOLUTE", "../../private/environ", "link.npy"])
def test_every_dataset_line_stays_inside(tmp_path: Path, line: str) -> None:
    outside = _secret_file(tmp_path)
    bundle = _bundle(tmp_path)
    modelgen.write_calibration_npy(bundle / "calib", n=1)
    if line == "link.npy":  # a link in the bundle is refused before its dataset is read
        os.symlink(outside, bundle / "link.npy")
    inside = sorted((bundle / "calib").iterdir())[0]
    line = str(outside) if line == "ABSOLUTE" else line
    (bundle / "dataset.txt").write_text(f"calib/{inside.name}\n{line}\n")
    if line == "link.npy":
        _refusal(tmp_path, "links are not followed")
    else:
        assert "sample 2" in _refusal(tmp_path)


def test_a_dataset_inside_the_bundle_still_works(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "dataset: calib/list.txt\n")
    files = modelgen.write_calibration_npy(bundle / "calib", n=2)
    (bundle / "calib" / "list.txt").write_text("".join(f"{Path(f).name}\n" for f in files))
    spec = _inspect(tmp_path / "in", "net")
    assert spec.dataset_size == 2 and all(p.is_relative_to(bundle.resolve()) for p in spec.dataset_samples)


def _toml_dataset(tmp_path: Path) -> ConvertOptions:
    shared = tmp_path / "shared"
    files = modelgen.write_calibration_npy(shared, n=3)
    (shared / "dataset.txt").write_text("".join(f"{f}\n" for f in files))
    return parse_convert_options({"dataset": "shared/dataset.txt"}, "convert", base_dir=tmp_path)


def test_the_tomls_dataset_applies_when_the_bundle_brings_none(tmp_path: Path) -> None:
    toml = _toml_dataset(tmp_path)
    _bundle(tmp_path)
    spec = _inspect(tmp_path / "in", "net", toml)
    assert spec.dataset_size == 3  # the TOML may name a path anywhere


def test_the_bundles_own_dataset_txt_beats_the_tomls(tmp_path: Path) -> None:
    toml = _toml_dataset(tmp_path)
    bundle = _bundle(tmp_path)
    files = modelgen.write_calibration_npy(bundle / "calib", n=1)
    (bundle / "dataset.txt").write_text("".join(f"calib/{Path(f).name}\n" for f in files))
    spec = _inspect(tmp_path / "in", "net", toml)
    assert spec.dataset_size == 1
    assert all(p.is_relative_to(bundle.resolve()) for p in spec.dataset_samples)


def test_the_bundles_images_beat_the_tomls(tmp_path: Path) -> None:
    toml = _toml_dataset(tmp_path)
    bundle = _bundle(tmp_path)
    modelgen.write_calibration_images(bundle, n=2)
    spec = _inspect(tmp_path / "in", "net", toml)
    assert spec.dataset_size == 2

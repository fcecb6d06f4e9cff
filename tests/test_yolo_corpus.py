"""The corpus's stock Ultralytics exports (yolov8n, yolo11n, yolov8n-seg, yolov8n-pose) with trained-like class
scores (tests/zoo.py's -spread recipes), int8 on real photos through one running daemon: the default split layout is
delivered and passes its detection check; the same drop with `yolo_outputs: keep` does not (its scores share the box
coordinates' int8 step), as issue 18 asks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProcess
from outcomes import Outcome, collect_outcomes
from trained import photo_drop, real_photos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
MODELS = ("yolov8n-spread", "yolo11n-spread", "yolov8n-seg-spread", "yolov8n-pose-spread")
CALIBRATION = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "china", "flower", "horse")
# held out, and on none of them a random head's scores saturate (on bus, zidane, grace_hopper some heads score
# dozens of anchors ~1.0: their top-10 is then an arbitrary pick among ties, and yolo11n's split build matches only
# 5-6/10 of it; on these photos every split build matches 8-10/10)
HELD_OUT = ("retina", "hubble_deep_field", "gravel", "ihc")
ALL_DONE_SECONDS = 800


@pytest.fixture(scope="module")
def spread_corpus(request: pytest.FixtureRequest, trained_cache: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four -spread exports, set from the calibration photos (cached like zoo_corpus)."""
    from zoo import build_corpus, corpus_available
    why = corpus_available()
    if why:
        pytest.fail(f"the model corpus cannot be built: {why}")
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("zoo")) if cache is not None else tmp_path_factory.mktemp("zoo")
    photos = real_photos(trained_cache)
    infos = build_corpus(folder, list(MODELS), photos=[photos[n] for n in CALIBRATION])
    return {name: info.path for name, info in infos.items()}


def _drop(folder: Path, model: Path, photos: dict[str, Path], extra: str = "") -> None:
    """What a user drops for int8: the model, calibration photos + dataset.txt, held-out photos to verify on."""
    # the first build's verdict is what is asserted: no repair search (it would also cost minutes per job)
    photo_drop(folder, model, photos, CALIBRATION, HELD_OUT, "mean_values: [0, 0, 0]\nstd_values: [255, 255, 255]\n"
               'verify_samples: 4\naccuracy_repair: "off"\n' + extra)


@pytest.fixture(scope="module")
def outcomes(spread_corpus: dict[str, Path], trained_cache: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """One daemon, every model dropped twice: <model>-split (the int8 default) and <model>-keep."""
    daemon = DaemonProcess(tmp_path_factory.mktemp("yolo-corpus-daemon"), extra_config="timeout_seconds = 600\n")
    staging = daemon.root / "staging"
    photos = real_photos(trained_cache)
    names = []
    for model in MODELS:
        _drop(staging / f"{model}-split", spread_corpus[model], photos)
        _drop(staging / f"{model}-keep", spread_corpus[model], photos, "yolo_outputs: keep\n")
        names += [f"{model}-split", f"{model}-keep"]
    daemon.start()
    try:
        for name in names:
            os.rename(staging / name, daemon.inbox / name)
        return collect_outcomes(daemon, names, ALL_DONE_SECONDS)
    finally:
        daemon.stop()


def _detection(verification: dict[str, Any]) -> dict[str, Any]:
    [check] = [c for c in verification["checks"] if c["kind"] == "detection"]
    return check


@pytest.mark.parametrize("model", MODELS)
def test_the_split_int8_build_is_delivered_and_keeps_the_float_models_detections(
        outcomes: dict[str, Outcome], model: str) -> None:
    o = outcomes[f"{model}-split"]
    assert o.delivered, o
    layout = o.data["outputs_layout"]
    assert layout["layout"] == "split" and [p["role"] for p in layout["outputs"]][:2] == ["boxes", "scores"], o
    verification = o.data["verification"]["rk3588"]
    detection = _detection(verification)
    assert verification["status"] == "passed" and detection["passed"], o
    # judged by matching detections on the photos, not by the no-object fallback: the scores are trained-like
    assert detection["metric"] == "detection_agreement" and detection["details"]["total"] >= 10, detection
    assert detection["value"] >= detection["threshold"], detection
    if "pose" in model:  # and the keypoints the head predicts at the matched detections (float16 branch)
        assert detection["details"]["keypoints_compared"] >= 10, detection
        assert rknn_dtype(o, "keypoints") == "float16", o


def rknn_dtype(o: Outcome, output: str) -> str:
    return next(t["dtype"] for t in o.data["targets"][0]["rknn"]["outputs"] if t["name"] == output)


@pytest.mark.parametrize("model", MODELS)
def test_the_kept_int8_build_fails_its_detection_check(outcomes: dict[str, Outcome], model: str) -> None:
    o = outcomes[f"{model}-keep"]
    if o.delivered:  # a build that needed no workaround is delivered with its verdict in words
        verification = o.data["verification"]["rk3588"]
        detection = _detection(verification)
        assert verification["status"] == "below_threshold" and not detection["passed"], o
        assert o.data["outputs_layout"]["layout"] == "keep", o
        said = detection["summary"]
        assert any("fails its task check" in w for w in o.data["warnings"]), o
    else:  # the toolkit's rule workaround built it: a build failing its check is not delivered
        said = o.data["error"]
        assert "fails its task check" in said, o
    # the class scores share the boxes' int8 step: lost, or the detections no longer agree
    assert "scores lost" in said or "detections agree" in said, said
    assert "int8 step" in said or "detections agree" in said, said

"""A cache hit reports what the cached job delivered: the quantization its accuracy repair chose (not the configured
one), and no accuracy/error_analysis.txt, which the cache does not keep. A real cache folder, real files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rknn_dropbox.convert.cache import ResultCache
from rknn_dropbox.convert.job import ConversionResult, TargetsOutcome, _from_cache, _store_in_cache
from rknn_dropbox.intake.workarea import JobDir

CONFIGURED = {"quantized": True, "dtype": "w8a8", "dataset_size": 4, "reason": "int8 (w8a8): a calibration dataset "
              "was found"}


def _first_job(tmp_path: Path, cache: ResultCache) -> dict:
    job = JobDir(tmp_path / "work" / "20240101-120000-aaaaaa")
    job.output.mkdir(parents=True)
    (job.output / "net.rknn").write_bytes(b"rknn" * 100)
    (job.output / "accuracy").mkdir()
    (job.output / "accuracy" / "error_analysis.txt").write_text("layer rows\n")
    target = {"platform": "rk3588", "ok": True, "file": "net.rknn", "size": 400,
              "sha256": hashlib.sha256(b"rknn" * 100).hexdigest(),
              "build_settings": {"do_quantization": False}}  # repair delivered the fp16 build
    delivered = {**CONFIGURED, "quantized": False, "dtype": "float16", "configured_dtype": "w8a8",
                 "repaired": ["rk3588"]}
    result = ConversionResult(format="onnx", targets=[target], quantization=delivered)
    outcome = TargetsOutcome(verification={"rk3588": {"status": "passed"}},
                             accuracy={"rk3588": {"report": "accuracy/error_analysis.txt", "delivered": "fp16",
                                                  "attempts": [{"name": "baseline"}, {"name": "fp16"}]}})
    _store_in_cache(cache, "k" * 64, job, "net", result, outcome)
    return delivered


def test_a_cache_hit_reports_the_delivered_quantization_and_no_report_it_lacks(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", 1 << 30)
    delivered = _first_job(tmp_path, cache)
    again = JobDir(tmp_path / "work" / "20240101-130000-bbbbbb")
    again.output.mkdir(parents=True)
    result = ConversionResult(format="onnx", quantization=dict(CONFIGURED))
    assert _from_cache(cache, "k" * 64, "net", ("rk3588",), again, result)
    assert result.quantization == delivered
    assert (again.output / "net.rknn").is_file()
    accuracy = result.extra["accuracy"]["rk3588"]
    assert accuracy["delivered"] == "fp16" and "report" not in accuracy
    named = [v for block in result.extra["accuracy"].values() for v in block.values()
             if isinstance(v, str) and v.endswith(".txt")]
    assert all((again.output / n).is_file() for n in named)

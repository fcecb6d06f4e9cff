"""Issue 10, in-process: verification samples decoded like the toolkit, the per-layer report, the repair search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import accuracygen as gen
from rknn_dropbox.convert import repair as rp
from rknn_dropbox.convert.analysis import hybrid_ranges, parse_report, worst_layers
from rknn_dropbox.convert.samples import InputLayout, collect_samples
from rknn_dropbox.convert.accuracy import fp16_overflow
from rknn_dropbox.convert.verify import strict_failure
from rknn_dropbox.status.metrics import new_job_costs, observe_job_costs, render_metrics

REPORT = """
layer_name                          simulator_error
                                entire              single
                             cos      euc        cos      euc
-------------------------------------------------------------------
[Input] x                  1.00000 | 0.00000   1.00000 | 0.00000
[exDataConvert] x_int8     1.00000 | 0.00001   1.00000 | 0.00001
[Conv] a
[Relu] b                   0.99987 | 19.18947  0.99987 | 19.18947
[Conv] c
[Relu] d                   0.73799 | 10.20298  0.74140 | 10.17287
[Conv] y_int8              0.76273 | 14.15784  0.99996 | 0.19414
"""


def test_images_are_decoded_rgb_resized_and_normalized_like_the_toolkit(tmp_path: Path) -> None:
    import cv2
    images = gen.write_natural_images(tmp_path / "img", n=5, size=48)
    ds = gen.write_dataset(tmp_path / "dataset.txt", images)
    layout = InputLayout([[1, 3, 32, 32]], False, [[10.0, 20.0, 30.0]], [[2.0, 2.0, 2.0]])
    got = collect_samples(layout, None, ds, count=3)
    assert got.source == "calibration set" and [s.name for s in got.samples] == ["img_00.png", "img_02.png",
                                                                                  "img_04.png"]
    first = got.samples[0]
    want = cv2.resize(cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB), (32, 32)).astype(np.float32)
    assert np.array_equal(first.raw[0], want.transpose(2, 0, 1)[None])  # NCHW for an ONNX model
    assert np.allclose(first.norm[0][0, 1], (want[..., 1] - 20.0) / 2.0)
    bgr = collect_samples(InputLayout([[1, 32, 32, 3]], True, rgb2bgr=True), None, ds, count=1).samples[0]
    assert np.array_equal(bgr.raw[0][0], want[..., ::-1])  # NHWC, and quant_img_RGB2BGR swaps back


def test_verify_dataset_comes_first_and_synthetic_images_follow_the_8_bit_range(tmp_path: Path) -> None:
    calib = gen.write_dataset(tmp_path / "dataset.txt", gen.write_natural_images(tmp_path / "c", n=2))
    held = gen.write_dataset(tmp_path / "verify.txt", gen.write_natural_images(tmp_path / "v", n=1, prefix="v"))
    layout = InputLayout([[1, 3, 16, 16]], False)
    assert collect_samples(layout, held, calib).source == "verify_dataset"
    eight_bit = collect_samples(InputLayout([[1, 3, 16, 16]], False, std=[[58.0, 57.0, 57.0]]), None, None)
    unit = collect_samples(layout, None, None)
    assert eight_bit.source == unit.source == "synthetic images" and eight_bit.synthetic
    assert eight_bit.samples[0].raw[0].max() > 100 and unit.samples[0].raw[0].max() <= 1.0
    kinds = [s.name for s in unit.samples]
    assert kinds == ["synthetic colour field", "synthetic edges", "synthetic texture", "synthetic shapes"], kinds
    edges = unit.samples[1].raw[0][0]
    assert np.abs(np.diff(edges, axis=2)).max() > 0.1      # structure, not uniform noise: sharp edges ...
    assert np.median(np.abs(np.diff(edges, axis=2))) < 0.02  # ... between smooth regions
    vector = collect_samples(InputLayout([[1, 16]], False), None, None)
    assert vector.source == "seeded random" and vector.synthetic  # no image input: noise, and said so
    np.save(tmp_path / "bad.npy", np.zeros((2, 2), np.float32))
    (tmp_path / "bad.txt").write_text("bad.npy\n")
    with pytest.raises(ValueError, match="verify_dataset"):
        collect_samples(layout, tmp_path / "bad.txt", calib)


def test_the_report_ranks_layers_and_proposes_hybrid_ranges_that_cover_the_producer() -> None:
    rows = parse_report(REPORT)
    assert [r.name for r in rows] == ["x", "x_int8", "a", "b", "c", "d", "y_int8"]
    worst = worst_layers(rows)
    assert worst[0].name == "d" and worst[0].op == "Relu" and worst[0].single_cosine == 0.7414
    assert "x" not in [w.name for w in worst]  # inputs are not layers that lose accuracy
    # measured: [b, d] or [a, d] keeps conv a's int8 output (the loss); [x_int8, d] repairs to 0.9999
    # the layers losing by themselves (single cosine < 0.99) first, then the worst few
    assert hybrid_ranges(rows, worst) == [[["x_int8", "d"]], [["x_int8", "d"], ["x", "b"], ["b", "y_int8"]]]


def _attempt(label: str, agreement: float, seconds: float = 1.0) -> rp.Attempt:
    """An attempt whose task check (threshold 0.8) measured `agreement`."""
    return rp.Attempt(rp.Candidate(label), None, {}, seconds, agreement >= 0.8, score=agreement / 0.8,
                      summary=f"agrees {agreement:.0%}")


def test_the_search_goes_cheapest_for_the_npu_first_stops_at_the_first_pass_and_keeps_to_its_budget() -> None:
    first = _attempt("as configured", 0.50, seconds=10.0)
    scores = {"custom_hybrid worst layer": 0.6, "kl_divergence": 0.85, "w16a16i_dfp": 0.99}
    built: list[str] = []

    def build(c: rp.Candidate) -> rp.Attempt:
        built.append(c.label)
        return _attempt(c.label, scores.get(c.label, 0.5))
    cands = rp.int8_candidates("rk3588", "normal", "channel", [[["x_int8", "d"]]])
    assert [c.label for c in cands][-1] == "w16a16i_dfp"   # 16-bit activations: the last resort
    out = rp.search(first, cands, build, budget=60.0)
    assert built == ["custom_hybrid worst layer", "auto_hybrid", "kl_divergence"] and out.passed
    assert out.delivered == 3 and "first candidate" in out.reason
    # mmse would take ~25 first builds: left out of a 60 s budget, and said so
    built.clear()
    scores.clear()
    out = rp.search(first, cands, build, budget=60.0)
    assert "mmse" not in built and any(s.startswith("mmse") for s in out.skipped)
    assert not out.passed and out.delivered == 0 and "none was clearly better" in out.reason  # the first build
    # a failing candidate that is not clearly better than the first build is not delivered; one that is, is
    scores.update({"custom_hybrid worst layer": 0.52, "auto_hybrid": 0.7})
    out = rp.search(first, cands, build, budget=60.0)
    assert not out.passed and out.attempts[out.delivered].candidate.label == "auto_hybrid", out.to_json()
    assert rp.higher_precision_dtype("rk3588") == "w16a16i_dfp" and rp.higher_precision_dtype("rk3562") == "w8a16"
    assert rp.budget_seconds(None, 5.0) == 60.0 and rp.budget_seconds(None, 100.0) == 300.0


def test_strict_fails_closed_except_where_no_runtime_exists() -> None:
    assert strict_failure({"status": "error", "reason": "init_runtime() failed"})
    assert strict_failure({"status": "skipped", "reason": "the input shapes are not fixed"})
    assert strict_failure({"status": "skipped", "reason": "no Caffe runtime here; the weights were checked"}) is None
    assert strict_failure({"status": "passed", "outputs": []}) is None


def test_fp16_overflow_tensors_are_read_from_the_build_log() -> None:
    log = ("W build: Tensor name:'b' value range exceeds Fp16 Max, convert it to Int16\n"
           "W build: Tensor name:'y' value range exceeds Fp16 Max, convert it to Int16\n")
    assert fp16_overflow(log) == ["b", "y"] and fp16_overflow("I rknn building done") is None


def test_job_costs_become_metrics_histograms() -> None:
    costs = new_job_costs()
    observe_job_costs(costs, {"timings": {"verify": 0.3, "repair": 4.0}, "peak_rss_mb": 700.0})
    observe_job_costs(costs, {"timings": {"verify": 12.0}})  # no repair, no peak: only what is there
    class Store:
        def counts(self) -> dict[str, int]:
            return {}

        def duration_histogram(self, bounds: tuple[float, ...]) -> tuple[list[int], int, float]:
            return [0] * len(bounds), 0, 0.0
    text = render_metrics(Store(), {"job_costs": costs})  # type: ignore[arg-type]
    assert 'rknn_dropbox_verification_seconds_bucket{le="0.5"} 1' in text
    assert "rknn_dropbox_verification_seconds_count 2" in text
    assert "rknn_dropbox_accuracy_repair_seconds_count 1" in text
    assert 'rknn_dropbox_job_peak_rss_megabytes_bucket{le="512.0"} 0' in text
    assert 'rknn_dropbox_job_peak_rss_megabytes_bucket{le="1024.0"} 1' in text


def test_result_quantization_says_what_a_repair_delivered() -> None:
    configured = {"quantized": True, "dtype": "w8a8", "dataset_size": 8, "reason": "dataset given"}
    one = [{"platform": "rk3588", "ok": True, "build_settings": {"do_quantization": True,
                                                                "quantized_dtype": "w16a16i_dfp"}}]
    q = rp.delivered_quantization(configured, one)
    assert (q["dtype"], q["configured_dtype"], q["quantized"], q["repaired"]) == \
        ("w16a16i_dfp", "w8a8", True, ["rk3588"])
    fallback = [{"platform": "rk3588", "ok": True, "build_settings": {"do_quantization": False}},
                {"platform": "rk3566", "ok": True}]
    q = rp.delivered_quantization(configured, fallback)
    assert q["dtype"] == "mixed" and q["per_target"] == {"rk3588": "float16", "rk3566": "w8a8"} and q["quantized"]
    assert rp.delivered_quantization(configured, [{"platform": "rk3588", "ok": True}]) is configured
    hybrid = {"do_quantization": True, "custom_hybrid": [["a", "b"]]}
    assert rp.delivered_dtype(hybrid, "w8a8") == "w8a8 hybrid (some layers in float16)"


def test_auto_hybrid_is_left_out_on_toolkits_whose_build_lacks_it() -> None:
    from rknn_dropbox.convert.accuracy import _supported

    class Toolkit230:
        def build(self, do_quantization=True, dataset=None, rknn_batch_size=None):  # rknn-toolkit2 2.3.0's
            ...

    class Toolkit232:
        def build(self, do_quantization=True, dataset=None, rknn_batch_size=None, auto_hybrid=False):
            ...
    candidates = rp.int8_candidates("rk3588", "normal", "channel", [])
    kept, why = _supported(candidates, Toolkit230())
    assert [c.label for c in kept] == [c.label for c in candidates if not c.auto_hybrid] and len(kept) < len(candidates)
    assert why == ["auto_hybrid: this rknn-toolkit2's build() has no auto_hybrid (2.3.2 and later have it)"]
    assert _supported(candidates, Toolkit232()) == (candidates, [])


def test_expensive_samples_are_bounded_by_the_builds_time_and_the_source_model_loads_once() -> None:
    from rknn_dropbox.convert.samples import Sample, SampleSet
    from rknn_dropbox.convert.verify import Reference
    loads: list[int] = []

    def runner():
        loads.append(1)
        return lambda inputs: [inputs[0] * 2]
    samples = SampleSet([Sample(f"s{i}", [np.full((1, 2), i, np.float32)], [np.full((1, 2), i, np.float32)])
                         for i in range(4)], "calibration set")
    cheap = Reference(samples, ["y"], runner=runner)
    cheap.bound_samples(per_sample_seconds=0.2, build_seconds=4.0, share=0.15)  # 0.8 s in all: under 5 s
    assert cheap.count == 4 and cheap.limited is None
    heavy = Reference(samples, ["y"], runner=runner)
    assert heavy.output(0)[0].tolist() == [[0.0, 0.0]] and heavy.output(1)[0].tolist() == [[2.0, 2.0]]
    heavy.bound_samples(per_sample_seconds=12.6, build_seconds=75.0, share=0.15)  # 4 x 12.6 s beside a 75 s build
    assert heavy.count == 2 and heavy.limited.startswith("2 of 4 samples: each took 12.6 s"), heavy.limited
    assert heavy.runner is None  # its two samples (the fewest a verdict goes by) are computed: the model is let go
    mid = Reference(samples, ["y"], runner=runner)
    mid.bound_samples(per_sample_seconds=4.0, build_seconds=60.0, share=0.25)  # 15 s of budget: 3 samples
    assert mid.count == 3
    assert [mid.output(i)[0][0, 0] for i in range(3)] == [0.0, 2.0, 4.0] and mid.runner is None
    assert len(loads) == 2  # heavy and mid each loaded the model once; cheap never needed it

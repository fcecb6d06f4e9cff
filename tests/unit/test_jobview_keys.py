"""The pages read result.json as the converter writes it (verification's min_cosine, cosines, samples; accuracy per
platform with `delivered` an index), not keys nothing writes (threshold, per_sample, samples_used, min, ...)."""

from __future__ import annotations

from rknn_dropbox.status.jobview import JobView
from rknn_dropbox.store import JobRecord

WRITTEN = {"status": "passed", "reference": "onnxruntime", "input": "2 samples of the calibration set",
           "samples": {"source": "calibration set", "names": ["a.npy", "b.npy"]}, "min_cosine": 0.98,
           "outputs": [{"name": "out", "shape": [1, 4], "cosine": 0.991, "cosines": [0.991, 0.995]}]}
NEVER_WRITTEN = {"threshold": 0.5, "samples_used": ["forged.npy"],
                 "outputs": [{"name": "out", "min": 0.1, "per_sample": [0.1, 0.2], "cosine": 0.991,
                              "cosines": [0.991, 0.995]}]}


def _target(verification: dict, accuracy: dict | None = None):
    doc = {"target_platform": ["rk3588"], "targets": [{"platform": "rk3588", "ok": True, "file": "n.rknn"}],
           "verification": {"rk3588": verification}, "accuracy": accuracy or {}}
    return JobView(JobRecord(id="20240101-120000-abcdef", name="n", status="completed"), doc)


def test_the_page_reads_what_the_converter_writes() -> None:
    view = _target(WRITTEN)
    t = view.targets[0]
    assert t.threshold == 0.98 and t.min_cosine == 0.991 and t.inputs_used == ["a.npy", "b.npy"]
    assert t.outputs[0].samples == [0.991, 0.995]


def test_keys_nothing_writes_are_not_read() -> None:
    t = _target({**WRITTEN, **NEVER_WRITTEN}).targets[0]
    assert t.threshold == 0.98 and t.inputs_used == ["a.npy", "b.npy"]
    assert t.outputs[0].cosine == 0.991 and t.outputs[0].samples == [0.991, 0.995]


def test_repaired_means_a_later_attempt_was_delivered() -> None:
    first = {"attempts": [{"label": "baseline"}, {"label": "mmse"}], "delivered": 0, "repaired": True}
    assert not _target(WRITTEN, {"rk3588": first}).repaired  # `repaired` is no key the converter writes
    assert _target(WRITTEN, {"rk3588": {**first, "delivered": 1}}).repaired

"""kill -9 of the daemon at random moments during a stream of conversions: nothing lost, nothing converted twice."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

import modelgen
from conftest import wait_for
from relhelpers import FAULTS, assert_conserved, box_factory, drop  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_ten_kill_9_during_a_stream_of_ten_conversions(box_factory, tmp_path: Path) -> None:
    seed = int(os.environ.get("RELIABILITY_SEED", "5"))
    rng = random.Random(seed)
    # ten kills may land on one job more than max_attempts times: this test is about losing nothing, not poison
    names = [f"stream{i}" for i in range(10)]
    # each conversion starts with a 0.6 s pause (the "slow" fault, then it converts for real): a tiny model's
    # conversion alone is over before most kills aimed at it land
    slow = {**FAULTS, "RKNN_DROPBOX_FAULTS": ",".join(f"{n}=slow" for n in names),
            "RKNN_DROPBOX_FAULT_SLOW_SECONDS": "0.6"}
    box = box_factory(workers=2, settings={"max_attempts": 20}, env=slow).start()
    entries = [f"{n}.onnx" for n in names]
    busy_at_kill = 0
    for i, name in enumerate(names):
        drop(modelgen.write_onnx_conv(tmp_path / "src" / entries[i], seed=i), box.inbox / entries[i])
        moment = rng.choice(["claim", "conversion", "conversion", "conversion", "conversion", "later"])
        if moment == "claim":
            time.sleep(rng.uniform(0.0, 1.0))  # while it settles, is claimed, or queued
        elif moment == "conversion":
            wait_for(lambda: any(t["status"] == "processing" for t in box.tasks()), 30, interval=0.05,
                     what="a conversion running")
            time.sleep(rng.uniform(0.0, 0.9))  # in the pause, or loading, building, exporting or delivering
        else:
            time.sleep(rng.uniform(1.5, 3.0))  # workers still warming up, or done
        busy = any(t["status"] == "processing" for t in box.tasks())
        busy_at_kill += busy
        print(f"round {i}: kill at {moment}, converting: {busy}")
        box.kill9()
        assert_conserved(box.inbox, box.outbox, box.failed, entries[:i + 1])
        box.start()
    results = {name: box.wait_completed(name, timeout=120) for name in names}
    print(f"seed {seed}: {busy_at_kill} of 10 kills hit a running conversion")
    where = assert_conserved(box.inbox, box.outbox, box.failed, entries)
    assert all(w == f"outbox:{entries[i][:-5]}" for i, w in enumerate(where.values())), where
    assert sorted(os.listdir(box.outbox)) == sorted(names)  # no "-2" second delivery
    assert os.listdir(box.failed) == []
    assert len({r["task_id"] for r in results.values()}) == 10
    for name in names:
        assert (box.outbox / name / f"{name}.rknn").stat().st_size > 1000
        assert json.loads((box.outbox / name / "result.json").read_text())["status"] == "completed"
    tasks = box.tasks()
    assert sorted(t["name"] for t in tasks) == sorted(names) and {t["status"] for t in tasks} == {"completed"}
    assert busy_at_kill >= 3, "too few kills landed during a conversion: the test did not test what it says"
    # still converting afterwards
    drop(modelgen.write_onnx_conv(tmp_path / "src" / "after.onnx", seed=99), box.inbox / "after.onnx")
    box.wait_completed("after")

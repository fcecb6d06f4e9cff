"""Two daemons (two "hosts") on one shared inbox: every bundle converted exactly once; a dead host's claims are
taken over by the other after stale_claim_seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import modelgen
from conftest import wait_for
from relhelpers import FAULTS, assert_conserved, box_factory, drop  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_two_daemons_one_inbox_twenty_bundles_each_converted_once(box_factory, tmp_path: Path) -> None:
    share = tmp_path / "share"
    a = box_factory("host-a", workers=1, shared=share, settings={"host_id": "a"}).start()
    b = box_factory("host-b", workers=1, shared=share, settings={"host_id": "b"}).start()
    src = tmp_path / "src"
    names = [f"net{i:02d}" for i in range(20)]
    entries = []
    for i, name in enumerate(names):
        drop(modelgen.write_onnx_conv(src / f"{name}.onnx", seed=i), share / "inbox" / f"{name}.onnx")
        entries.append(f"{name}.onnx")
        if i % 2:  # half are two-file bundles: a split claim would show as a sidecar converted alone
            (src / f"{name}.yaml").write_text("target_platform: rk3566\n")
            drop(src / f"{name}.yaml", share / "inbox" / f"{name}.yaml")
            entries.append(f"{name}.yaml")
    results = {n: a.wait_completed(n, timeout=150) for n in names}
    assert sorted(os.listdir(share / "outbox")) == sorted(names)  # no "-2" folder: nothing delivered twice
    assert os.listdir(share / "failed") == []
    for i, name in enumerate(names):
        assert results[name]["target_platform"] == (["rk3566"] if i % 2 else ["rk3588"]), name
        got = sorted(os.listdir(share / "outbox" / name / "input"))
        assert got == ([f"{name}.onnx", f"{name}.yaml"] if i % 2 else [f"{name}.onnx"]), got
    assert_conserved(share / "inbox", share / "outbox", share / "failed", entries)
    # each host's store and status endpoint shows its own jobs, and together they are the 20, once each
    ta = {t["task_id"]: t for t in a.tasks()}
    tb = {t["task_id"]: t for t in b.tasks()}
    assert not set(ta) & set(tb)
    assert sorted(t["name"] for t in [*ta.values(), *tb.values()]) == names
    assert {t["status"] for t in [*ta.values(), *tb.values()]} == {"completed"}
    assert {r["task_id"] for r in results.values()} == set(ta) | set(tb)
    print(f"host a converted {len(ta)}, host b {len(tb)}")
    assert ta and tb, "one host did all the work: the race was never run"
    assert (share / "inbox" / ".rknn-dropbox" / "a" / ".heartbeat").is_file()
    assert (share / "inbox" / ".rknn-dropbox" / "b" / ".heartbeat").is_file()


def test_claims_of_a_dead_host_are_taken_over(box_factory, tmp_path: Path) -> None:
    share = tmp_path / "share"
    a = box_factory("host-a", workers=1, shared=share, env={**FAULTS, "RKNN_DROPBOX_FAULTS": "orphan=slow",
                                                               "RKNN_DROPBOX_FAULT_SLOW_SECONDS": "60"},
                    settings={"host_id": "a", "stale_claim_seconds": 3}).start()
    src = tmp_path / "src"
    (src).mkdir()
    (src / "orphan.yaml").write_text("verify: true\n")
    drop(src / "orphan.yaml", share / "inbox" / "orphan.yaml")
    drop(modelgen.write_onnx_conv(src / "orphan.onnx"), share / "inbox" / "orphan.onnx")
    drop(modelgen.write_onnx_conv(src / "queued.onnx", seed=1), share / "inbox" / "queued.onnx")
    wait_for(lambda: any(t["status"] == "processing" for t in a.tasks()), 30, what="host a converting")
    wait_for(lambda: len(a.tasks()) == 2, 10, what="host a claimed both")
    a.kill9()  # host a dies holding one job in conversion and one queued
    claims_a = share / "inbox" / ".rknn-dropbox" / "a"
    assert len([p for p in claims_a.iterdir() if p.is_dir()]) == 2
    b = box_factory("host-b", workers=1, shared=share, env={**FAULTS, "RKNN_DROPBOX_FAULTS": "orphan=slow",
                                                               "RKNN_DROPBOX_FAULT_SLOW_SECONDS": "0.1"},
                    settings={"host_id": "b", "stale_claim_seconds": 3}).start()
    b.wait_completed("orphan", timeout=60)
    b.wait_completed("queued", timeout=60)
    assert "took over job" in b.log()
    assert [p for p in claims_a.iterdir() if p.is_dir()] == []
    assert sorted(t["name"] for t in b.tasks()) == ["orphan", "queued"]
    # host a comes back: it does not convert them a second time
    a.start()
    # host b delivered them to the shared outbox, so host a's store finds them there and records them as done
    assert {t["status"] for t in a.tasks()} == {"completed"}
    assert {t["output_dir"] for t in a.tasks()} == {"orphan", "queued"}
    assert "resuming" not in a.log()
    drop(modelgen.write_onnx_conv(src / "later.onnx", seed=2), share / "inbox" / "later.onnx")
    a.wait_completed("later", timeout=60)
    assert sorted(os.listdir(share / "outbox")) == ["later", "orphan", "queued"]
    assert_conserved(share / "inbox", share / "outbox", share / "failed",
                     ["orphan.onnx", "orphan.yaml", "queued.onnx", "later.onnx"])
    assert json.loads((share / "outbox" / "orphan" / "result.json").read_text())["status"] == "completed"

"""Issue 13, in-process: the pages render accuracy repair, per-sample cosines and provenance when result.json has
them, degrade when it does not, page the list; the API finds jobs by name and serves single outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from browser import Rendered, browser_or_skip
from rknn_dropbox.status.server import StatusServer
from rknn_dropbox.store import JobRecord, JobStore
from test_status_server import request, start_server

REPAIRED, BELOW, RUNNING = "20261201-100000-aaaaaa", "20261201-100001-bbbbbb", "20261201-100002-cccccc"


def result_json(name: str, cosines: dict[str, list[float]], threshold: float, **extra: Any) -> dict[str, Any]:
    """A result.json as the accuracy and toolkit-version work writes it: per-sample cosines, the samples used, the
    repair attempts per target, and what the .rknn says about itself."""
    return {
        "name": name, "status": "completed", "format": "onnx", "target_platform": ["rk3588"],
        "targets": [{"platform": "rk3588", "ok": True, "file": f"{name}.rknn", "size": 3000, "sha256": "ab" * 32,
                     "rknn": RKNN_FILE, **extra.pop("target_extra", {})}],
        "quantization": {"quantized": True, "dtype": "w8a8", "dataset_size": 8,
                         "reason": "int8 (w8a8): a calibration dataset was found"},
        "quantized": True, "toolkit_version": "2.3.2",
        "outputs": [{"name": f"{name}.rknn", "size": 3000, "sha256": "ab" * 32}],
        "inputs": [{"name": f"{name}/model.onnx", "size": 686, "sha256": "cd" * 32}],
        "warnings": extra.pop("warnings", []), "config": {"target_platform": ["rk3588"], "verify_min_cosine": None},
        "verification": {"rk3588": {
            "status": "passed" if min(min(c) for c in cosines.values()) >= threshold else "below_threshold",
            "reference": "onnxruntime", "samples": {"source": "verify_dataset", "names": ["a.jpg", "b.jpg"]},
            "input": "2 samples of verify_dataset", "min_cosine": threshold,
            "outputs": [{"name": out, "shape": [1, 4], "cosine": min(c), "cosines": c} for out, c in cosines.items()]}},
        **extra,
    }


REPAIR = {
    "attempts": [{"label": "first build", "settings": {"do_quantization": True}, "build_seconds": 2.1,
                  "passed": False, "min_cosine": 0.8511, "cosines": {"boxes": 0.9931, "proto": 0.8511}},
                 {"label": "auto_hybrid", "settings": {"do_quantization": True, "auto_hybrid": True},
                  "build_seconds": 3.4, "passed": True, "min_cosine": 0.9812,
                  "cosines": {"boxes": 0.9931, "proto": 0.9812}}],
    "delivered": 1, "delivered_label": "auto_hybrid", "passed": True, "report": "accuracy/error_analysis.txt",
    "worst_layers": [{"name": "Conv_/model.22/proto/cv3/conv", "op": "Conv", "cosine": 0.8511,
                      "single_cosine": 0.9902}],
}
RKNN_FILE = {"format_version": 6, "toolkit_version": "2.3.2", "compiler": "2.3.2 (e045de294f@2025-04-07)",
             "target_platform": ["rk3588"], "inputs": [{"name": "images", "shape": [1, 3, 640, 640], "dtype": "int8",
                                                        "layout": "NHWC", "quant": {"type": "affine", "scale": 0.0039}}],
             "outputs": [], "loads_on": "librknnrt 2.3.2 or newer"}


def deliver(store: JobStore, root: Path, job_id: str, name: str, doc: dict[str, Any], created: float) -> None:
    folder = root / "outbox" / name
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(doc))
    (folder / f"{name}.rknn").write_bytes(name.encode() * 100)
    (folder / "conversion.log").write_text("".join(f"log line {i}\n" for i in range(300)))
    store.add(JobRecord(id=job_id, name=name, status="completed", format="onnx", target="rk3588",
                        created_at=created, started_at=created, finished_at=created + 5, output_dir=str(folder),
                        outputs=[f"{name}.rknn"], warnings=doc["warnings"], progress=100.0))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[StatusServer, JobStore]]:
    store = JobStore(tmp_path / "jobs.sqlite3")
    deliver(store, tmp_path, REPAIRED, "seg", result_json(
        "seg", {"boxes": [0.9931, 0.9957], "proto": [0.9812, 0.9866]}, 0.98, accuracy={"rk3588": REPAIR},
        target_extra={"build_settings": REPAIR["attempts"][1]["settings"]},
        timings={"build": 2.1, "verify": 0.4, "repair": 3.4}, peak_rss_mb=812.5,
        warnings=["rk3588: int8 accuracy repaired: auto_hybrid"]), 1000.0)
    deliver(store, tmp_path, BELOW, "mbv2", result_json("mbv2", {"logits": [0.9689, 0.9702]}, 0.98), 1001.0)
    store.add(JobRecord(id=RUNNING, name="busy", status="processing", progress=42.0, stage="build",
                        created_at=1002.0, started_at=time.time()))
    server = start_server(store, {"workers_alive": 2, "workers": 2, "in_progress": 1, "queue_depth": 3,
                                  "waiting_in_inbox": 4, "memory_mb": 1234.0, "published_at": time.monotonic()})
    yield server, store
    server.stop()


def test_repair_samples_and_provenance_render_when_result_json_has_them(served: tuple[StatusServer, JobStore],
                                                                         tmp_path: Path) -> None:
    browser = browser_or_skip()
    server, _ = served
    base = f"http://127.0.0.1:{server.port}"
    listing = Rendered(browser.dom(base + "/"))
    assert "3 queued" in listing.text and "1,234 MB memory in use" in listing.text and "4 waiting in inbox" in listing.text
    assert "int8 repaired 0.9812" in listing.text and "0.9689" in listing.text and "2.3.2" in listing.text
    assert listing.dom.count('class="cos bad"') == 1 and listing.dom.count('class="cos ok"') == 1
    assert "processing 42% build" in listing.text

    page = Rendered(browser.dom(f"{base}/tasks/{REPAIRED}"))
    browser.screenshot(f"{base}/tasks/{REPAIRED}", tmp_path / "repaired.png", 1800)
    print(f"screenshots: {tmp_path}")
    assert "Accuracy repair: attempts (repaired)" in page.text
    assert "first build" in page.text and "delivered auto_hybrid" in page.text and "0.8511" in page.text
    assert "built with do_quantization=yes; auto_hybrid=yes" in page.text
    assert "Conv_/model.22/proto/cv3/conv" in page.text and "accuracy/error_analysis.txt" in page.text
    assert page.count("circle") == 4  # a dot per sample and output
    assert "on a.jpg, b.jpg" in page.text
    assert "compiler: 2.3.2 (e045de294f@2025-04-07)" in page.text and "librknnrt 2.3.2 or newer" in page.text
    assert "images 1, 3, 640, 640 int8 NHWC" in page.text and "peak_rss_mb 812.5" in page.text
    assert "log line 299" in page.text and "log line 99" not in page.text  # the last 200 lines

    running = Rendered(request(server.port, f"/tasks/{RUNNING}")[2].decode())  # no result.json yet: still a page
    assert "processing" in running.text and "42%" in running.text and "no log yet" in running.text


def test_name_query_single_downloads_result_route_and_paging(served: tuple[StatusServer, JobStore]) -> None:
    server, store = served
    for i in range(3):
        store.add(JobRecord(id=f"20261201-11000{i}-dddddd", name="again", status="queued", created_at=2000.0 + i))
    tasks = json.loads(request(server.port, "/api/tasks?name=again")[2])["tasks"]
    assert [t["task_id"] for t in tasks] == [f"20261201-11000{i}-dddddd" for i in (2, 1, 0)]  # newest first
    assert json.loads(request(server.port, "/api/tasks?name=again&limit=1")[2])["count"] == 1
    assert json.loads(request(server.port, "/api/tasks?name=nobody")[2])["tasks"] == []
    code, _, body = request(server.port, f"/api/download/{REPAIRED}/seg.rknn")
    assert code == 200 and body == b"seg" * 100
    assert request(server.port, f"/api/download/{REPAIRED}/..%2Fresult.json")[0] == 404
    assert json.loads(request(server.port, f"/api/tasks/{REPAIRED}/result")[2])["accuracy"] == {"rk3588": REPAIR}
    assert request(server.port, f"/api/tasks/{RUNNING}/result")[0] == 409
    task = json.loads(request(server.port, f"/api/tasks/{REPAIRED}")[2])
    assert task["output_dir"] == "seg" and "work_path" not in task
    for i in range(120):
        store.add(JobRecord(id=f"20261201-12{i:04d}-eeeeee", name=f"bulk{i}", status="failed", created_at=3000.0 + i))
    first = request(server.port, "/")[2].decode()
    assert "page 1 of 2" in first and "bulk119" in first and "bulk19<" not in first and 'href="/?page=2"' in first
    second = request(server.port, "/?page=2")[2].decode()
    assert "bulk19<" in second and "bulk20<" not in second and "seg<" in second
    failed = request(server.port, "/?status=failed&page=2")[2].decode()
    assert "page 2 of 2" in failed and "bulk0<" in failed and "seg<" not in failed
    assert request(server.port, "/?status=nope")[0] == 400


@pytest.mark.parametrize("doc", [
    {},
    {"verification": "oops", "targets": "x", "accuracy": [], "outputs": None, "warnings": "one"},
    {"outputs": "x", "targets": [None, "y"], "verification": {"rk3588": None}},
    {"target_platform": ["rk3588"], "verification": {"rk3588": {"outputs": [1, {"name": 3}], "min_cosine": "high"}},
     "accuracy": {"rk3588": {"attempts": [1, {"label": None}], "delivered": 7, "worst_layers": ["x"]}},
     "quantization": "int8", "config": ["a"], "inputs": [None, {"name": "m.onnx"}], "rknn": {"error": "bad"}},
])
def test_odd_or_missing_result_fields_still_render(doc: dict[str, Any]) -> None:
    from rknn_dropbox.status.jobpage import render_job
    from rknn_dropbox.status.jobview import JobView
    from rknn_dropbox.status.page import ListRequest, render_list
    job = JobRecord(id=REPAIRED, name="odd", status="completed", target="rk3588", outputs=["odd.rknn"])
    view = JobView(job, doc)
    page = render_job(view, [f for f in doc.get("inputs") or [] if isinstance(f, dict)], "", "0")
    listing = render_list([view], {}, "0", ListRequest(counts={"completed": 1}))
    assert "odd" in page and "odd" in listing

"""A hostile bundle on the share cannot read the daemon's files through its dataset keys: `dataset: /proc/self/environ`
and a dataset.txt listing a file outside fail the job, and neither error.json, the task JSON nor the job's page
holds a byte of what lies outside (a real daemon, real workers)."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

import modelgen

pytestmark = pytest.mark.slow
SECRET = "hunter2-d41d8cd98f00"


def _everything_shown(d, name: str) -> str:
    folder = d.wait_outcome(name)
    assert folder.parent == d.failed, f"{name} was not refused"
    task = next(t for t in d.get("/api/tasks")["tasks"] if t["name"] == name)
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/tasks/{task['task_id']}", timeout=10) as resp:
        page = resp.read().decode()
    return "\n".join([(folder / "error.json").read_text(), json.dumps(task), page])


def test_dataset_keys_cannot_read_outside_the_bundle(daemon_factory, tmp_path: Path) -> None:
    outside = tmp_path / "private" / "secrets.txt"
    outside.parent.mkdir()
    outside.write_text(f"TOKEN={SECRET}\n")
    d = daemon_factory(workers=1, env={"RKNN_DROPBOX_TEST_SECRET": SECRET}).start()
    model = modelgen.write_onnx_conv(tmp_path / "m.onnx")
    (d.inbox / "environ.yaml").write_text("dataset: /proc/self/environ\n")
    shutil.copy(model, d.inbox / "environ.onnx")
    listed = tmp_path / "src" / "listed"
    listed.mkdir(parents=True)
    shutil.copy(model, listed / "model.onnx")
    (listed / "dataset.txt").write_text(f"{outside}\n")
    shutil.copytree(listed, d.inbox / "listed")
    for name in ("environ", "listed"):
        shown = _everything_shown(d, name)
        assert "outside the bundle" in shown
        assert SECRET not in shown

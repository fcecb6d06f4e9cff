"""README claims with a real conversion each: `rknn-dropbox convert` writes the .rknn to -o, `cache = false`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import modelgen
from conftest import DaemonProcess

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def test_convert_command_writes_the_rknn_and_result_to_the_output_folder(tmp_path: Path) -> None:
    model = modelgen.write_onnx_conv(tmp_path / "src" / "clinet.onnx")
    (tmp_path / "src" / "clinet.yaml").write_text("optimization_level: 2\n")  # its sidecar comes along
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RKNN_DROPBOX_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "rknn_dropbox", "convert", str(model), "--target", "rk3566",
                           "-o", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "clinet.rknn").stat().st_size > 1000
    result = json.loads((out / "clinet.result.json").read_text())
    assert [t["platform"] for t in result["targets"] if t["ok"]] == ["rk3566"]
    assert result["options"]["optimization_level"] == 2


def test_cache_false_converts_the_same_model_again(daemon_factory, tmp_path: Path) -> None:
    d: DaemonProcess = daemon_factory(extra_config="cache = false\n", workers=1).start()
    model = modelgen.write_onnx_conv(tmp_path / "m.onnx", seed=3)
    shutil.copy(model, d.inbox / "first.onnx")
    assert d.wait_completed("first")["cached"] is False
    shutil.copy(model, d.inbox / "second.onnx")  # the same bytes and options: a cache hit if the cache were on
    second = d.wait_completed("second")
    assert second["cached"] is False and "cache_of" not in second
    assert not (d.state / "cache").exists() or not any((d.state / "cache").iterdir())

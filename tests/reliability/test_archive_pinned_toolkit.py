"""A .zip whose sidecar pins an older toolkit: the default worker unpacks it, hands it over to a worker of the
pinned version, which unpacks it again (once failed on every try with "internal error: FileExistsError")."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import modelgen
from conftest import DaemonProcess

pytestmark = pytest.mark.slow


def test_an_archive_pinned_to_an_older_toolkit_converts(daemon_factory, extra_toolkits, tmp_path: Path) -> None:
    daemon: DaemonProcess = daemon_factory(workers=1).start()
    model = modelgen.write_onnx_conv(tmp_path / "src" / "net.onnx")
    staged = tmp_path / "old.zip"
    with zipfile.ZipFile(staged, "w") as zf:
        zf.write(model, "net.onnx")
    (daemon.inbox / "old.yaml").write_text("toolkit_version: 2.3.2\n")
    staged.rename(daemon.inbox / "old.zip")
    result = daemon.wait_completed("old", timeout=300)
    assert result["toolkit_version"] == "2.3.2"
    assert [o["name"] for o in result["outputs"]] and "needs rknn-toolkit2 2.3.2" in daemon.log()

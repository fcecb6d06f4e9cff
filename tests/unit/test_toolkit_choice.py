"""Which toolkit a job builds with, and which one a fallback tries: the documented runtime rule, in words."""

from __future__ import annotations

from pathlib import Path

import pytest

from rknn_dropbox.config import ConfigError, config_from_mapping
from rknn_dropbox.convert.model_config import model_config_to_options
from rknn_dropbox.options import OptionsError, parse_convert_options
from rknn_dropbox.toolkits import (
    Toolkit, ToolkitError, choose_toolkit, fallback_exhausted, loads_on, next_fallback, runtime_candidates,
)

INSTALLED = [Toolkit("2.5.0", None), Toolkit("2.3.2", Path("/t/2.3.2")), Toolkit("2.3.0", Path("/t/2.3.0"))]


def test_runtime_version_picks_the_newest_toolkit_the_board_can_load() -> None:
    assert choose_toolkit(INSTALLED, None, "2.3.0").version == "2.3.0"
    assert choose_toolkit(INSTALLED, None, "2.4.1").version == "2.3.2"
    assert choose_toolkit(INSTALLED, None, "2.5.0 (74ea630ce@2026-09-29)").version == "2.5.0"


def test_a_board_older_than_every_toolkit_is_refused_naming_the_installed_ones() -> None:
    with pytest.raises(ToolkitError) as err:
        choose_toolkit(INSTALLED[:2], None, "2.3.0")
    assert "librknnrt 2.3.0" in str(err.value) and "installed: 2.5.0, 2.3.2" in str(err.value)


def test_toolkit_version_is_exact_and_a_missing_one_names_the_installed_ones() -> None:
    assert choose_toolkit(INSTALLED, "2.3.2", None).folder == Path("/t/2.3.2")
    with pytest.raises(ToolkitError) as err:
        choose_toolkit(INSTALLED, "2.2.0", None)
    assert "2.2.0 is not installed (installed: 2.5.0, 2.3.2, 2.3.0)" in str(err.value)
    assert "rknn-dropbox toolkits install 2.2.0" in str(err.value)
    with pytest.raises(ToolkitError, match="librknnrt 2.3.0 cannot load"):
        choose_toolkit(INSTALLED, "2.5.0", "2.3.0")


def test_without_a_choice_the_first_listed_version_is_the_default() -> None:
    assert choose_toolkit(INSTALLED, None, None, default="2.3.2").version == "2.3.2"
    assert choose_toolkit(INSTALLED, None, None).version == "2.5.0"


def test_the_documented_rule_toolkit_1_5_0_loads_only_on_1_5_0() -> None:
    old = [Toolkit("1.6.0", None), Toolkit("1.5.0", Path("/t/1.5.0")), Toolkit("1.4.0", Path("/t/1.4.0"))]
    assert [t.version for t in runtime_candidates(old, "1.5.2")] == ["1.4.0"]
    assert [t.version for t in runtime_candidates(old, "1.5.0")] == ["1.5.0", "1.4.0"]
    assert loads_on("1.5.0").startswith("librknnrt 1.5.0 exactly")
    assert loads_on("2.3.2") == "librknnrt >= 2.3.2"


def test_fallback_tries_the_other_fitting_versions_newest_first_and_never_a_pinned_job() -> None:
    crash = {"toolkit": "2.5.0", "toolkit_version": None, "runtime_version": None, "error": "building failed: X"}
    nxt, crashed = next_fallback(crash, [], INSTALLED)
    assert nxt is not None and nxt.version == "2.3.2"
    assert crashed == [{"toolkit": "2.5.0", "error": "building failed: X"}]
    nxt, crashed = next_fallback({**crash, "toolkit": "2.3.2"}, crashed, INSTALLED)
    assert nxt is not None and nxt.version == "2.3.0"
    nxt, crashed = next_fallback({**crash, "toolkit": "2.3.0"}, crashed, INSTALLED)
    assert nxt is None and "2.5.0, 2.3.2, 2.3.0 all crashed" in fallback_exhausted("building failed: X", crashed)
    assert next_fallback({**crash, "runtime_version": "2.3.1"}, [], INSTALLED)[0].version == "2.3.0"  # type: ignore
    assert next_fallback({**crash, "toolkit_version": "2.5.0"}, [], INSTALLED)[0] is None


def test_versions_are_read_from_sidecars_the_toml_and_model_config() -> None:
    opts = parse_convert_options({"toolkit_version": "2.3.2", "runtime_version": 2.3}, "net.yaml")
    assert (opts.toolkit_version, opts.runtime_version) == ("2.3.2", "2.3")
    with pytest.raises(OptionsError, match="net.yaml: toolkit_version: expected a version like"):
        parse_convert_options({"toolkit_version": "latest"}, "net.yaml")
    native, _ = model_config_to_options({"models": {"platform": "onnx", "runtime_version": "2.3.0"}}, "m.yml")
    assert native["runtime_version"] == "2.3.0"
    cfg = config_from_mapping({"toolkits": {"versions": ["2.3.2", "2.5.0"]}, "convert": {"runtime_version": "2.3.0"}},
                              Path("/tmp"))
    assert cfg.toolkits.default == "2.3.2" and cfg.convert.runtime_version == "2.3.0"
    with pytest.raises(ConfigError, match="toolkits.versions"):
        config_from_mapping({"toolkits": {"versions": []}}, Path("/tmp"))


def test_a_fallback_survives_a_daemon_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job was sent to 2.3.2 after 2.5.0 crashed; the daemon restarts before it ran: it still goes to 2.3.2,
    naming the crash, instead of crashing 2.5.0 once more."""
    from rknn_dropbox.service import routing
    from rknn_dropbox.service.messages import JobDone
    from rknn_dropbox.store import JobRecord, JobStore
    monkeypatch.setattr(routing, "next_fallback", lambda crash, before: next_fallback(crash, before, INSTALLED))
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.add(JobRecord(id="j1", name="yolo"))
    crash = {"toolkit": "2.5.0", "toolkit_version": None, "runtime_version": None, "error": "building failed: X"}
    before = routing.ToolkitRouter("2.5.0", store)
    retry = before.retry("j1", JobDone("j1", False, error="building failed: X", crash=crash))
    assert retry is not None and retry.toolkit == "2.3.2"
    after = routing.ToolkitRouter("2.5.0", JobStore(tmp_path / "jobs.sqlite3"))  # a new daemon, the same store
    assert after.toolkit_of("j1") == "2.3.2"
    assert after.order_fields("j1")["crashed"] == ({"toolkit": "2.5.0", "error": "building failed: X"},)
    assert "toolkit_plan" not in store.get("j1").to_task()
    assert routing.ToolkitRouter("2.5.0", store).toolkit_of("other") == "2.5.0"

"""Issue 13: the status pages as a person sees them in headless chromium, against a daemon with real conversions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

import modelgen
from browser import Browser, Rendered, browser_or_skip
from conftest import DaemonProcess

pytestmark = pytest.mark.slow

HOSTILE = 'x<script>document.title="PWNED"</script\n<img src=x onerror="document.body.innerHTML=1">\'q'
HOSTILE_FILE = HOSTILE.replace("</script", "<\\script")  # a file name cannot hold "/"


@pytest.fixture(scope="module")
def browser() -> Browser:
    return browser_or_skip()


@pytest.fixture(scope="module")
def jobs(shared_daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """fp16 single target, int8 folder, two targets, a failure and a hostile name: their task JSON by name."""
    d = shared_daemon
    src = tmp_path_factory.mktemp("page-src")
    modelgen.write_onnx_variant(src / "plain.onnx", seed=31)
    modelgen.write_int8_folder(src / "quant8", 2, "mean_values: [0, 0, 0]\nstd_values: [1, 1, 1]\n")
    modelgen.write_onnx_variant(src / "twin.onnx", seed=32)
    (src / "twin.yaml").write_text("target_platform: [rk3588, rk3566]\n")
    modelgen.write_onnx_unsupported(src / "broken.onnx")
    modelgen.write_onnx_variant(src / f"{HOSTILE_FILE}.onnx", seed=33)
    for entry in src.iterdir():
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, d.inbox / entry.name)
    results = {n: d.wait_completed(n) for n in ("plain", "quant8", "twin", HOSTILE_FILE)}
    results["broken"] = d.wait_failed("broken")
    tasks = {t["name"]: t for t in d.get("/api/tasks?limit=1000")["tasks"]}
    yield {"results": results, "tasks": tasks, "url": f"http://127.0.0.1:{d.port}"}


def cosines(result: dict[str, Any], platform: str) -> list[float]:
    return [o["cosine"] for o in result["verification"][platform]["outputs"]]


def shown(result: dict[str, Any], platform: str) -> str:
    """What the list says of a verified target: the task checks' verdict, or (result.json from before them) the
    lowest cosine."""
    verdict = result["verification"][platform].get("verdict")
    return verdict["summary"] if isinstance(verdict, dict) else figure(min(cosines(result, platform)))


def figure(value: float) -> str:
    text = f"{value:.4f}"
    return f"{value:.6f}" if text == "1.0000" and value < 1 else text


def test_the_list_shows_builds_verdicts_warnings_and_failures(jobs: dict[str, Any], browser: Browser,
                                                              tmp_path: Path) -> None:
    page = Rendered(browser.dom(jobs["url"] + "/"))
    browser.screenshot(jobs["url"] + "/", tmp_path / "list.png", 1000)
    print(f"screenshot: {tmp_path / 'list.png'}")
    text = page.text
    for name in ("plain", "quant8", "twin", "broken"):
        assert name in text
    assert "int8" in text and "fp16" in text
    quant8 = jobs["results"]["quant8"]
    assert shown(quant8, "rk3588") in text
    twin = jobs["results"]["twin"]
    assert f"rk3566 {shown(twin, 'rk3566')}" in text
    assert "building failed: the toolkit does not support operator Dropout at opset 9" in text
    assert "converting" in text and "waiting in inbox" in text and "workers" in text
    assert "2.5.0" in text  # the toolkit that built them
    newest_first = [t["name"] for t in jobs["tasks"].values() if t["name"] != HOSTILE_FILE]
    assert sorted(newest_first, key=text.index) == newest_first
    failed_only = Rendered(browser.dom(jobs["url"] + "/?status=failed")).text
    assert "broken" in failed_only and "quant8" not in failed_only
    assert 'href="/?status=failed"' in page.dom


def _job_page(jobs: dict[str, Any], browser: Browser, tmp_path: Path, name: str, height: int = 2000
              ) -> tuple[dict[str, Any], Rendered]:
    """The job's task JSON and its rendered page (a screenshot of it kept in tmp_path)."""
    task = jobs["tasks"][name]
    url = f"{jobs['url']}/tasks/{task['task_id']}"
    page = Rendered(browser.dom(url))
    print(f"screenshot: {browser.screenshot(url, tmp_path / f'{name}.png', height)}")
    return task, page


def test_a_two_target_job_page_shows_each_targets_cosines_as_bars(jobs: dict[str, Any], browser: Browser,
                                                                 tmp_path: Path) -> None:
    task, page = _job_page(jobs, browser, tmp_path, "twin")
    result = jobs["results"]["twin"]
    for platform in ("rk3588", "rk3566"):
        assert f"{platform} built" in page.text
        assert figure(min(cosines(result, platform))) in page.text
    assert page.count("svg") == 2 and page.count("rect") >= 4  # one chart per target, a bar per output
    assert "fp16 build: no calibration dataset was found (give one for an int8 model)" in page.text
    assert "threshold 0.9990" in page.text
    for out in result["outputs"]:
        assert out["name"] in page.text and out["sha256"] in page.text
        assert f'href="/api/download/{task["task_id"]}/{out["name"]}"' in page.dom
    for dropped in result["inputs"]:
        assert dropped["sha256"] in page.text
    assert "target_platform" in page.text and "rk3588, rk3566" in page.text  # the effective options
    assert "conversion.log (last 200 lines)" in page.text and "rknn-toolkit2 version" in page.text


def test_an_int8_job_page_shows_its_calibration_and_verification(jobs: dict[str, Any], browser: Browser,
                                                                tmp_path: Path) -> None:
    _, page = _job_page(jobs, browser, tmp_path, "quant8")
    result = jobs["results"]["quant8"]
    assert "int8" in page.text and result["quantization"]["reason"] in page.text
    assert "verification passed" in page.text and "threshold 0.9800" in page.text
    assert figure(min(cosines(result, "rk3588"))) in page.text
    assert "quant8/calib/calib_000.npy" in page.text


def test_a_failed_job_page_shows_the_error_and_the_hint_in_full(jobs: dict[str, Any], browser: Browser,
                                                               tmp_path: Path) -> None:
    _, page = _job_page(jobs, browser, tmp_path, "broken", 1400)
    error = jobs["results"]["broken"]
    assert error["error"] in page.text and error["hint"] in page.text
    assert "format onnx (by its extension)" in page.text
    assert "broken.onnx" in page.text and "E build: Not support 'Dropout' of opset-9!" in page.raw_text


def test_a_hostile_job_name_renders_as_text(jobs: dict[str, Any], browser: Browser, tmp_path: Path) -> None:
    task = jobs["tasks"][HOSTILE_FILE]
    for url in (jobs["url"] + "/", f"{jobs['url']}/tasks/{task['task_id']}"):
        page = Rendered(browser.dom(url))
        assert page.count("script") == 0 and page.count("img") == 0
        assert page.title in ("rknn-dropbox", f"{HOSTILE_FILE} – rknn-dropbox")  # no script set it
        assert page.count("table") >= 1  # nor replaced the body
        assert HOSTILE_FILE in page.raw_text  # quotes, angle brackets and the newline, as text
    browser.screenshot(f"{jobs['url']}/tasks/{task['task_id']}", tmp_path / "hostile.png", 900)


def test_no_task_json_field_holds_an_absolute_path(jobs: dict[str, Any], shared_daemon: DaemonProcess) -> None:
    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
    listed = shared_daemon.get("/api/tasks?limit=1000")["tasks"]
    single = [shared_daemon.get(f"/api/tasks/{t['task_id']}") for t in listed]
    found = [s for s in strings(listed + single) if s.startswith("/") or str(shared_daemon.root) in s]
    assert found == []
    twin = next(t for t in single if t["name"] == "twin")
    assert twin["output_dir"] == "twin" and "work_path" not in twin
    by_name = shared_daemon.get("/api/tasks?name=twin")["tasks"]
    assert [t["task_id"] for t in by_name] == [twin["task_id"]]
    assert json.loads(json.dumps(by_name))[0]["status"] == "completed"

"""Headless Debian chromium for the status page tests: find it (or skip saying why), dump a page's DOM, screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def find_chromium() -> str | None:
    given = os.environ.get("RKNN_DROPBOX_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return next((path for path in map(shutil.which, NAMES) if path), None)


class Browser:
    """One headless chromium run per call, each on a fresh profile."""

    def __init__(self, executable: str) -> None:
        self.executable = executable

    def _run(self, *args: str) -> str:
        with tempfile.TemporaryDirectory(prefix="rknn-dropbox-chromium-") as profile:
            done = subprocess.run([self.executable, *FLAGS, f"--user-data-dir={profile}", *args],
                                  capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
        return done.stdout

    def dom(self, url: str) -> str:
        """The DOM after chromium loaded the page (and would have run any script on it)."""
        return self._run("--dump-dom", url)

    def screenshot(self, url: str, path: Path, height: int = 2000) -> Path:
        self._run(f"--screenshot={path}", f"--window-size=1280,{height}", "--hide-scrollbars", url)
        assert path.is_file() and path.stat().st_size > 10_000, "chromium wrote no screenshot"
        return path


def browser_or_skip() -> Browser:
    executable = find_chromium()
    if executable is None and os.environ.get("RKNN_DROPBOX_REQUIRE_CHROMIUM") == "1":  # CI: never skip quietly
        pytest.fail("chromium is required here (RKNN_DROPBOX_REQUIRE_CHROMIUM=1) but not installed")
    if executable is None:
        pytest.skip("chromium is not installed: `apt-get install chromium` (scripts/test.sh does it when run as "
                    "root), or point RKNN_DROPBOX_CHROMIUM at a chromium binary")
    return Browser(executable)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: dict[str, int] = {}
        self.skip = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.skip += tag in ("style", "script")
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self.skip -= tag in ("style", "script") and self.skip > 0
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and self.tags.get("title") == 1:  # the page's <title>, not an SVG element's
            self.title += data
        elif not self.skip:
            self.text.append(data)


class Rendered:
    """What a person sees of a DOM: its text (without styles), its title, and how many of each element it has."""

    def __init__(self, dom: str) -> None:
        parser = _Page()
        parser.feed(dom)
        self.dom = dom
        self.raw_text = "".join(parser.text)
        self.text = " ".join(" ".join(parser.text).split())
        self.title = parser.title
        self.tags = parser.tags

    def count(self, tag: str) -> int:
        return self.tags.get(tag, 0)

"""The attempt journal: each build of a target (the first and every accuracy-repair candidate) with its `.rknn` and
verdict, on disk before the next candidate starts, so a candidate that kills the worker never loses the builds made
before it.  One JSON file in the job's work area (intake/workarea.py ATTEMPTS), written atomically; the daemon only
reads it (`unfinished_repair`) to tell a death in the repair from any other."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rknn_dropbox.filehash import sha256_file
from rknn_dropbox.intake.workarea import ATTEMPTS, read_attempts, write_json_atomic

JOURNAL_VERSION = 1
STARTED, FINISHED, CRASHED = "started", "finished", "crashed"
ANALYSIS = "accuracy_analysis"  # the toolkit's per-layer report: native code too, run before any candidate


@dataclass(frozen=True)
class RepairCrash:
    """What the daemon says about the previous run of this job: the repair candidate its worker died building."""
    platform: str
    candidate: str
    cause: str

    @classmethod
    def from_order(cls, data: dict[str, Any] | None) -> "RepairCrash | None":
        if not data:
            return None
        return cls(str(data.get("platform", "")), str(data.get("candidate", "")), str(data.get("cause", "")))


class AttemptJournal:
    """The job's journal file, one section per target platform."""

    def __init__(self, job_root: Path) -> None:
        self.root = job_root
        self.path = job_root / ATTEMPTS

    @classmethod
    def open(cls, job_root: Path, crash: RepairCrash | None) -> "AttemptJournal":
        """The journal for a new run of the job: after a repair crash, the previous run's, with the candidate the
        worker died in marked crashed (and why); otherwise a fresh one."""
        journal = cls(job_root)
        data = journal.read()
        section = data["targets"].get(crash.platform) if crash else None
        unfinished = [e for e in (section or {}).get("attempts", []) + [(section or {}).get("analysis") or {}]
                      if e.get("state") == STARTED]
        if crash is None or not unfinished:
            journal.path.unlink(missing_ok=True)
            return journal
        for entry in unfinished:
            entry.update(state=CRASHED, cause=crash.cause)
        journal.write(data)
        return journal

    def read(self) -> dict[str, Any]:
        data = read_attempts(self.root) or {}
        if data.get("version") != JOURNAL_VERSION or not isinstance(data.get("targets"), dict):
            return {"version": JOURNAL_VERSION, "targets": {}}
        return data

    def write(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.path, data)

    def target(self, platform: str) -> "TargetJournal":
        return TargetJournal(self, platform)


@dataclass
class TargetJournal:
    """One target platform's section of the journal: its attempts in order (index 0: the first build)."""
    journal: AttemptJournal
    platform: str

    def section(self) -> dict[str, Any]:
        return self.journal.read()["targets"].get(self.platform) or {"attempts": []}

    def _update(self, change: Any) -> None:
        data = self.journal.read()
        section = data["targets"].setdefault(self.platform, {"attempts": []})
        change(section)
        self.journal.write(data)

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.journal.root))

    def reset(self) -> None:
        """A fresh build of this target: whatever an earlier run left is forgotten."""
        data = self.journal.read()
        if data["targets"].pop(self.platform, None) is not None:
            self.journal.write(data)

    def crash(self) -> dict[str, Any] | None:
        """The candidate (or the per-layer analysis: "step") a worker died in during an earlier run, or None."""
        section = self.section()
        analysis = section.get("analysis") or {}
        if analysis.get("state") == CRASHED:
            return {**analysis, "label": ANALYSIS, "step": True}
        return next((e for e in section["attempts"] if e.get("state") == CRASHED), None)

    def record_analysis(self, started: bool) -> None:
        """The toolkit's per-layer analysis starts (True) or has finished (False)."""
        state = {"state": STARTED, "started_at": time.time()} if started else {"state": FINISHED}
        self._update(lambda s: s.__setitem__("analysis", state))

    def record_started(self, candidate: Any, file: Path) -> None:
        """A repair candidate is about to be built into `file`."""
        entry = {"label": candidate.label, "settings": candidate.settings(), "state": STARTED,
                 "file": self.relative(file), "started_at": time.time()}
        self._update(lambda s: s["attempts"].append(entry))

    def record_finished(self, attempt: Any, verification: dict[str, Any] | None, file: Path | None) -> None:
        """An attempt built and verified (its `.rknn` in `file`), or refused (file None): its verdict on disk."""
        entry: dict[str, Any] = {"label": attempt.candidate.label, "settings": attempt.candidate.settings(),
                                 "state": FINISHED, "attempt": attempt.to_json(), "verification": verification,
                                 "finished_at": time.time()}
        if file is not None and Path(file).is_file():
            path = Path(file)
            entry.update(file=self.relative(path), built_file=path.name, size=path.stat().st_size,
                         sha256=sha256_file(path))

        def change(section: dict[str, Any]) -> None:
            attempts = section["attempts"]
            started = next((e for e in reversed(attempts) if e.get("state") == STARTED
                            and e.get("label") == entry["label"]), None)
            if started is None:
                attempts.append(entry)
            else:
                started.pop("file", None)
                started.update(entry)
        self._update(change)

    def record_context(self, accuracy: dict[str, Any], seconds: dict[str, float]) -> None:
        """What the accuracy step found before its repair search (the per-layer report, timings so far)."""
        def change(section: dict[str, Any]) -> None:
            section.update(accuracy=accuracy, seconds=seconds, repair_started_at=time.time())
        self._update(change)

    def record_workaround(self, file: Path, workaround: Any) -> None:
        """The toolkit workaround (disable_rules) the build in `file` needed, if any."""
        if workaround is not None:
            self._update(lambda s: s.setdefault("workarounds", {}).__setitem__(Path(file).name, workaround.to_json()))

    def record_delivered(self, index: int, final: Path) -> None:
        """Attempt `index` now lives in `final` (moved there); the other attempts' files are gone."""
        def change(section: dict[str, Any]) -> None:
            for i, entry in enumerate(section["attempts"]):
                if i == index:
                    entry["file"] = self.relative(final)
                elif entry.get("file"):
                    entry["file_gone"] = True
        self._update(change)

    def usable(self, entry: dict[str, Any]) -> Path | None:
        """The attempt's `.rknn` when it is still on disk as it was recorded (size and sha256), else None."""
        if entry.get("state") != FINISHED or not entry.get("file") or entry.get("file_gone"):
            return None
        path = self.journal.root / entry["file"]
        try:
            if path.stat().st_size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
                return None
        except OSError:
            return None
        return path


class NoJournal:
    """No journal (a caller that keeps none): every record is dropped, no crash is ever found."""

    def reset(self) -> None:
        pass

    def crash(self) -> dict[str, Any] | None:
        return None

    def record_started(self, candidate: Any, file: Path) -> None:
        pass

    def record_finished(self, attempt: Any, verification: dict[str, Any] | None, file: Path | None) -> None:
        pass

    def record_analysis(self, started: bool) -> None:
        pass

    def record_context(self, accuracy: dict[str, Any], seconds: dict[str, float]) -> None:
        pass

    def record_workaround(self, file: Path, workaround: Any) -> None:
        pass

"""A target whose accuracy repair killed the worker, delivered on the job's retry from the attempt journal: the best
build made before the crash (the first build included), the candidate that crashed named, nothing rebuilt."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rknn_dropbox.convert import repair as rp
from rknn_dropbox.convert.accuracy import TargetAccuracy
from rknn_dropbox.convert.attempts import CRASHED, NoJournal, TargetJournal
from rknn_dropbox.convert.rulefix import Workaround
from rknn_dropbox.convert.toolkit_log import ConversionError


def _score(entry: dict[str, Any]) -> float:
    score = (entry.get("attempt") or {}).get("score")
    return float(score) if isinstance(score, (int, float)) else -1.0


def _chosen(entries: list[dict[str, Any]], usable: list[int]) -> tuple[int, str]:
    """The attempt delivered, as the repair search picks when none passed: a passing one, else the first build unless
    another is clearly better (repair.CLEARLY_BETTER); and why."""
    passed = [i for i in usable if (entries[i].get("attempt") or {}).get("passed")]
    if passed:
        return passed[0], f"{entries[passed[0]]['label']} passed its check before the crash"
    best = max(usable, key=lambda i: (_score(entries[i]), -i))
    if 0 not in usable:
        return best, "the first build's .rknn is gone; this is the best attempt left"
    if best and _score(entries[best]) >= _score(entries[0]) + rp.CLEARLY_BETTER:
        return best, f"no attempt passed; {entries[best]['label']} came closest before the crash"
    return 0, "no attempt passed and none was clearly better than the build as configured, which is kept"


def _attempt_json(entry: dict[str, Any]) -> dict[str, Any]:
    """result.json's accuracy.attempts item: as recorded, or the crashed candidate's."""
    if entry.get("state") == CRASHED:
        return {"label": entry["label"], "settings": entry.get("settings", {}), "build_seconds": 0.0,
                "passed": False, "crashed": True, "error": f"the worker died building it: {entry.get('cause')}"}
    return dict(entry.get("attempt") or {"label": entry.get("label"), "passed": False})


def _no_build_left(platform: str, crash: dict[str, Any], entries: list[dict[str, Any]]) -> ConversionError:
    listed = "; ".join(f"{e.get('label')}: " + ("crashed the worker" if e.get("state") == CRASHED else
                       f"{(e.get('attempt') or {}).get('verdict') or 'not verified'}, its .rknn is gone")
                       for e in entries)
    return ConversionError(
        f"{platform}: the accuracy-repair candidate {crash['label']} killed the worker ({crash.get('cause')}) and no "
        f"earlier build is left to deliver (attempts: {listed})",
        "set accuracy_repair = \"off\" to deliver the first build as it verifies, or see conversion.log")


def _move_into_place(journal: TargetJournal, usable: dict[int, Path], best: int, final: Path) -> None:
    """The chosen attempt's .rknn becomes `final`; the other attempts' files go."""
    if usable[best] != final:
        os.replace(usable[best], final)
    for i, path in usable.items():
        if i != best and path != final:
            path.unlink(missing_ok=True)
    journal.record_delivered(best, final)


def _accuracy(section: dict[str, Any], crash: dict[str, Any], best: int, because: str) -> dict[str, Any]:
    """result.json's accuracy.<platform>: what the step found, every attempt, the delivered one, the crash."""
    entries = section["attempts"]
    chosen = entries[best].get("attempt") or {}
    accuracy = {**section.get("accuracy", {}), "attempts": [_attempt_json(e) for e in entries], "delivered": best,
                "delivered_label": entries[best]["label"], "passed": bool(chosen.get("passed")),
                "delivered_because": because,
                "repair_crashed": {"candidate": crash["label"], "cause": str(crash.get("cause") or "the worker died")}}
    cost = rp.npu_cost(entries[best].get("settings") or {}, ((entries[0].get("attempt") or {}).get("size"),
                                                             chosen.get("size"))) if best else None
    if cost:
        accuracy["npu_cost"] = cost
    if crash.get("step"):  # the per-layer analysis itself: no report, no candidate tried
        accuracy["analysis_error"] = f"the worker died in the toolkit's accuracy_analysis: {crash.get('cause')}"
    return accuracy


def _crash_warning(platform: str, crash: dict[str, Any], cause: str, chosen: dict[str, Any]) -> str:
    verdict = (chosen.get("attempt") or {}).get("verdict") or "unverified"
    if crash.get("step"):
        return (f"{platform}: the toolkit's per-layer accuracy analysis killed the worker ({cause}); delivered the "
                f"build as configured ({verdict}), not repaired")
    return (f"{platform}: the accuracy-repair candidate {crash['label']} killed the worker ({cause}); delivered the "
            f"best build before it ({chosen['label']}: {verdict}) without trying the candidates after it")


def _seconds(section: dict[str, Any], crash: dict[str, Any]) -> dict[str, float]:
    """The earlier run's timings: verify and analysis, the first build, the repair until the crash."""
    seconds = dict(section.get("seconds") or {})
    seconds["build"] = (section["attempts"][0].get("attempt") or {}).get("build_seconds", 0.0)
    if section.get("repair_started_at") and crash.get("started_at"):
        seconds["repair"] = round(max(0.0, crash["started_at"] - section["repair_started_at"]), 3)
    return seconds


def resume_target(journal: TargetJournal | NoJournal, platform: str, final: Path
                  ) -> tuple[TargetAccuracy, Workaround | None] | None:
    """The target delivered from the journal when an earlier run's repair candidate crashed the worker (None: no
    such crash, build it). The best usable attempt ends in `final`; ConversionError when none is usable."""
    crash = journal.crash()
    if crash is None or not isinstance(journal, TargetJournal):
        return None
    section = journal.section()
    entries = section["attempts"]
    usable = {i: path for i, e in enumerate(entries) if (path := journal.usable(e)) is not None}
    if not usable:
        raise _no_build_left(platform, crash, entries)
    best, because = _chosen(entries, sorted(usable))
    _move_into_place(journal, usable, best, final)
    accuracy = _accuracy(section, crash, best, because)
    chosen = entries[best]
    warning = _crash_warning(platform, crash, accuracy["repair_crashed"]["cause"], chosen)
    acc = TargetAccuracy(chosen.get("verification"), accuracy, [warning], _seconds(section, crash))
    workaround = (section.get("workarounds") or {}).get(chosen.get("built_file") or final.name)
    return acc, Workaround(**workaround) if workaround else None

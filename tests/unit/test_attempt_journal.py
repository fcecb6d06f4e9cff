"""The attempt journal: what a worker that died in a repair candidate leaves on disk, what the daemon reads of it,
and what the retry delivers from it (issue 17: a crashing candidate never loses the job)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rknn_dropbox.convert import repair as rp
from rknn_dropbox.convert.attempts import AttemptJournal, RepairCrash
from rknn_dropbox.convert.resume import resume_target
from rknn_dropbox.convert.rulefix import Workaround
from rknn_dropbox.convert.toolkit_log import ConversionError
from rknn_dropbox.intake.workarea import JobDir, unfinished_repair

SEGV = "worker crashed with signal 11 (SIGSEGV) in the toolkit's native code"


def _verified(label: str, score: float, **config: str) -> tuple[rp.Attempt, dict]:
    """An attempt whose verdict margin is `score` (>= 1: passed), its cosine the same number."""
    passed = score >= 1.0
    verification = {"status": "passed" if passed else "below_threshold", "outputs": [{"name": "y", "cosine": score}]}
    return rp.Attempt(rp.Candidate(label, dict(config)), score, {"y": score}, 1.5, passed, score=score,
                      summary=f"agrees {score:.2f}"), verification


def _died_in_repair(root: Path, second: float | None) -> Path:
    """A job whose first build scored 0.90, then (with `second`) one candidate at that score, then a w16a16i_dfp
    candidate that killed the worker; its final .rknn."""
    (root / "out").mkdir(parents=True)
    (root / "tmp").mkdir()
    final = root / "out" / "net.rknn"
    final.write_bytes(b"first build")
    journal = AttemptJournal.open(root, None).target("rk3588")
    journal.reset()
    journal.record_workaround(final, Workaround(["fuse_x"], "a toolkit rule crashed"))
    journal.record_finished(*_verified("as configured", 0.90), final)
    journal.record_context({"worst_layers": [{"name": "d"}]}, {"verify": 0.5, "analysis": 2.0})
    if second is not None:
        path = root / "tmp" / "net.rknn.attempt1"
        cand, verification = _verified("kl_divergence", second, quantized_algorithm="kl_divergence")
        journal.record_started(cand.candidate, path)
        path.write_bytes(b"kl build")
        journal.record_finished(cand, verification, path)
    crashed = rp.Candidate("w16a16i_dfp", {"quantized_dtype": "w16a16i_dfp"})
    journal.record_started(crashed, root / "tmp" / "net.rknn.attempt2")
    return final


def test_the_daemon_reads_which_candidate_was_unfinished_and_nothing_else(tmp_path: Path) -> None:
    job = JobDir(tmp_path / "job")
    assert unfinished_repair(job) is None  # no journal: a death anywhere else
    _died_in_repair(job.root, None)
    assert unfinished_repair(job) == ("rk3588", "w16a16i_dfp")
    (job.root / "attempts.json").write_text("{not json")
    assert unfinished_repair(job) is None


def test_the_retry_delivers_the_first_build_and_names_the_crash(tmp_path: Path) -> None:
    final = _died_in_repair(tmp_path, None)
    journal = AttemptJournal.open(tmp_path, RepairCrash("rk3588", "w16a16i_dfp", SEGV))
    assert unfinished_repair(JobDir(tmp_path)) is None  # marked crashed: a later death is not this one again
    acc, workaround = resume_target(journal.target("rk3588"), "rk3588", final)
    assert final.read_bytes() == b"first build"
    assert acc.accuracy["repair_crashed"] == {"candidate": "w16a16i_dfp", "cause": SEGV}
    assert acc.accuracy["delivered"] == 0 and acc.accuracy["worst_layers"] == [{"name": "d"}]
    assert [a["label"] for a in acc.accuracy["attempts"]] == ["as configured", "w16a16i_dfp"]
    assert acc.accuracy["attempts"][1]["crashed"] and SEGV in acc.accuracy["attempts"][1]["error"]
    assert acc.verification["outputs"][0]["cosine"] == 0.90
    assert "w16a16i_dfp killed the worker" in acc.warnings[0] and SEGV in acc.warnings[0]
    assert workaround == Workaround(["fuse_x"], "a toolkit rule crashed")  # the first build needed it
    assert acc.seconds["analysis"] == 2.0 and acc.seconds["build"] == 1.5


def test_a_better_candidate_before_the_crash_is_the_one_delivered(tmp_path: Path) -> None:
    final = _died_in_repair(tmp_path, 0.97)
    journal = AttemptJournal.open(tmp_path, RepairCrash("rk3588", "w16a16i_dfp", SEGV)).target("rk3588")
    acc, workaround = resume_target(journal, "rk3588", final)
    assert final.read_bytes() == b"kl build" and not (tmp_path / "tmp" / "net.rknn.attempt1").exists()
    assert acc.accuracy["delivered"] == 1 and acc.accuracy["delivered_label"] == "kl_divergence"
    assert acc.accuracy["attempts"][1]["settings"]["quantized_algorithm"] == "kl_divergence"
    assert workaround is None
    assert "came closest" in acc.accuracy["delivered_because"]
    # a second retry (another target died later) delivers the same again, from the file it was moved to
    again, _ = resume_target(journal, "rk3588", final)
    assert again.accuracy["delivered"] == 1 and final.read_bytes() == b"kl build"


def test_a_candidate_not_clearly_better_leaves_the_first_build_delivered(tmp_path: Path) -> None:
    final = _died_in_repair(tmp_path, 0.92)  # better, but by less than repair.CLEARLY_BETTER
    journal = AttemptJournal.open(tmp_path, RepairCrash("rk3588", "w16a16i_dfp", SEGV)).target("rk3588")
    acc, _ = resume_target(journal, "rk3588", final)
    assert acc.accuracy["delivered"] == 0 and final.read_bytes() == b"first build"
    assert not (tmp_path / "tmp" / "net.rknn.attempt1").exists()  # the candidate not delivered is removed


def test_nothing_left_to_deliver_fails_listing_every_attempt(tmp_path: Path) -> None:
    final = _died_in_repair(tmp_path, None)
    final.write_bytes(b"damaged")  # not what was recorded (size and sha256)
    journal = AttemptJournal.open(tmp_path, RepairCrash("rk3588", "w16a16i_dfp", SEGV)).target("rk3588")
    with pytest.raises(ConversionError) as failed:
        resume_target(journal, "rk3588", final)
    assert "w16a16i_dfp killed the worker" in failed.value.error and "as configured" in failed.value.error
    assert failed.value.hint


def test_a_run_without_a_repair_crash_starts_a_fresh_journal(tmp_path: Path) -> None:
    final = _died_in_repair(tmp_path, None)
    journal = AttemptJournal.open(tmp_path, None)  # e.g. the daemon restarted: not a crash in the candidate
    assert not (tmp_path / "attempts.json").exists()
    assert resume_target(journal.target("rk3588"), "rk3588", final) is None
    data = json.dumps(AttemptJournal(tmp_path).read())
    assert "w16a16i_dfp" not in data


def test_a_death_in_the_per_layer_analysis_delivers_the_first_build_unrepaired(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    final = tmp_path / "out" / "net.rknn"
    final.write_bytes(b"first build")
    journal = AttemptJournal.open(tmp_path, None).target("rk3588")
    journal.record_finished(*_verified("as configured", 0.5), final)
    journal.record_analysis(started=True)  # the toolkit's accuracy_analysis: the worker dies in it
    assert unfinished_repair(JobDir(tmp_path)) == ("rk3588", "accuracy_analysis")
    journal = AttemptJournal.open(tmp_path, RepairCrash("rk3588", "accuracy_analysis", SEGV)).target("rk3588")
    acc, _ = resume_target(journal, "rk3588", final)
    assert acc.accuracy["repair_crashed"] == {"candidate": "accuracy_analysis", "cause": SEGV}
    assert acc.accuracy["delivered"] == 0 and [a["label"] for a in acc.accuracy["attempts"]] == ["as configured"]
    assert SEGV in acc.accuracy["analysis_error"] and "per-layer accuracy analysis killed" in acc.warnings[0]
    assert final.read_bytes() == b"first build"


def test_a_finished_analysis_is_no_crash(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    final = tmp_path / "out" / "net.rknn"
    final.write_bytes(b"first build")
    journal = AttemptJournal.open(tmp_path, None).target("rk3588")
    journal.record_finished(*_verified("as configured", 0.5), final)
    journal.record_analysis(started=True)
    journal.record_analysis(started=False)  # no candidate followed (accuracy_repair off): a later death is elsewhere
    assert unfinished_repair(JobDir(tmp_path)) is None

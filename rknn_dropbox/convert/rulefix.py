"""The toolkit's own disable_rules advice: read from its log after a failed build, applied over bounded rounds."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

MAX_RULE_ROUNDS = 3  # retries after the first build; each may add the rules the toolkit names next
_ADVICE = re.compile(r"add disable_rules=\[([^\]]*)\] in rknn\.config\(\)")
_QUOTED = re.compile(r"['\"](\w+)['\"]")
_RULE_EXCEPTION = re.compile(r"\._p_\w+\n\s*(\w+(?:Error|Exception)\b[^\n]*)")
T = TypeVar("T")
_RULE_FRAME = re.compile(r"rules/(\w+)\.py\", line \d+, in [\w.]+\._p_(\w+)")


@dataclass
class Workaround:
    """What result.json records under "workarounds" for a build that needed the toolkit's advice."""
    disable_rules: list[str]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"disable_rules": list(self.disable_rules), "reason": self.reason}

    def warning(self) -> str:
        return (f"built with disable_rules {self.disable_rules}: {self.reason}; the result was verified against "
                "the source model's runtime (see verification)")


@dataclass
class RuleCrash(Exception):
    """A build that failed in a toolkit rule, and kept failing after every rule the toolkit advised was disabled."""
    rule: str
    where: str
    exception: str
    tried: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"rule {self.rule} ({self.where}) crashed: {self.exception}"


@dataclass
class AdvisedBuild(Generic[T]):
    value: T
    workaround: Workaround | None = None


class LogWindow:
    """The part of the job's raw log (one file, appended to) written since mark()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        try:
            self.offset = self.path.stat().st_size
        except OSError:
            self.offset = 0

    def text(self) -> str:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return ""
        return re.sub(r"\x1b\[[0-9;]*m", "", data.decode("utf-8", errors="replace"))


def advised_rules(log_text: str) -> list[str]:
    """The rules the toolkit's log says to disable ("You can add disable_rules=['x'] in rknn.config() ...")."""
    rules: list[str] = []
    for m in _ADVICE.finditer(log_text):
        rules.extend(_QUOTED.findall(m.group(1)))
    return list(dict.fromkeys(rules))


def crashed_rule(log_text: str) -> tuple[str, str] | None:
    """(rule, file) of the toolkit optimisation rule whose code raised, from the last traceback in the log."""
    found = _RULE_FRAME.findall(log_text)
    if not found:
        return None
    module, rule = found[-1]
    return rule, f"rules/{module}.py"


def rule_crash_error(rule: str, where: str, exception: str, tried: list[str]) -> tuple[str, str]:
    """The sentence for a toolkit rule that crashed and that no retry fixed."""
    if tried:
        said = (f"; the build was retried with disable_rules {tried} (the toolkit's own advice) and rule {rule} "
                "still crashed" if rule in tried else f"; retried with disable_rules {tried} (the toolkit's own "
                "advice), the build then crashed in rule {rule}")
    else:
        said = ""
    error = f"the toolkit's graph optimisation rule {rule} ({where}) crashed: {exception}{said}"
    hint = (f"this is a bug in rknn-toolkit2's optimiser, not in your model: add `disable_rules: [{rule}]` to the "
            "sidecar to skip that rule, try optimization_level: 2, or simplify the graph (e.g. onnxslim) and drop "
            "it again")
    return error, hint


def rule_exception(log_text: str) -> str:
    """The exception a rule raised (e.g. "IndexError: list index out of range"), from its traceback in the log."""
    found = _RULE_EXCEPTION.findall(log_text)
    return found[-1].strip() if found else "an internal error"


def _reason(crashes: list[tuple[str, str, str]], version: str) -> str:
    parts = [f"rule {rule} ({where}) crashed with {exc}" for rule, where, exc in crashes]
    return (f"rknn-toolkit2 {version}'s graph optimiser failed to build this model ({'; then '.join(parts)}); "
            "its log advised disabling the rule each time, which skips only that optimisation")


def build_with_advice(attempt: Callable[[list[str]], T], log: LogWindow, user_rules: list[str] | None,
                      failure: type[BaseException], toolkit_version: str,
                      max_rounds: int = MAX_RULE_ROUNDS, say: Callable[[str], None] = print) -> AdvisedBuild[T]:
    """Run attempt(disable_rules); when it raises `failure` and the toolkit's log names rules to disable, run it
    again with those added (accumulating, at most max_rounds retries). A crash in a rule that no retry fixed
    raises RuleCrash (from the last failure); any other failure is re-raised as it was."""
    base = list(user_rules or [])
    added: list[str] = []
    crashes: list[tuple[str, str, str]] = []
    for round_no in range(max_rounds + 1):
        log.mark()
        try:
            value = attempt([*base, *added])
        except failure as exc:
            text = log.text()
            crash = crashed_rule(text)
            if crash is not None:
                crashes.append((crash[0], crash[1], rule_exception(text)))
            advice = [r for r in advised_rules(text) if r not in base and r not in added]
            if not advice or round_no == max_rounds:
                if crash is not None:
                    raise RuleCrash(crash[0], crash[1], crashes[-1][2], added) from exc
                raise
            added.extend(advice)
            say(f"rknn-dropbox: the build failed in a toolkit rule; retrying with disable_rules={[*base, *added]} "
                "as the toolkit's log advises")
            continue
        workaround = Workaround(added, _reason(crashes, toolkit_version)) if added else None
        return AdvisedBuild(value, workaround)
    raise AssertionError("unreachable")  # pragma: no cover


def failed_verification_story(workaround: Workaround, verification: dict[str, Any]) -> tuple[str, str]:
    """Both stories for error.json: why the rules were disabled, and how the result then failed verification."""
    verdict = verification.get("verdict") or {}
    found = verdict.get("summary") or verification.get("reason") or "no comparison"
    error = (f"the first build failed: {workaround.reason}; the build with disable_rules {workaround.disable_rules} "
             f"succeeded but fails its task check against the source model ({found}), so it is not delivered")
    hint = ("the toolkit's workaround may have changed what the model computes: try another rknn-toolkit2 version, "
            "optimization_level: 2, or simplify the graph (e.g. onnxslim) and drop it again; for an int8 build, an "
            "fp16 build (do_quantization: false) tells quantization loss from the workaround")
    return error, hint

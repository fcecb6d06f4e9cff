"""What a daemon made of a batch of drops: each job's folder in outbox/ (result.json) or failed/ (error.json)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    folder: Path
    delivered: bool
    data: dict[str, Any]   # result.json or error.json

    def __repr__(self) -> str:
        return f"{self.folder.parent.name}/{self.folder.name}: {json.dumps(self.data)[:2500]}"


def collect_outcomes(daemon: Any, names: list[str], seconds: float) -> dict[str, Outcome]:
    """Every named job's outcome, waited for (the daemon must keep running, all within `seconds`)."""
    deadline = time.monotonic() + seconds
    found: dict[str, Outcome] = {}
    while len(found) < len(names):
        for name in names:
            for parent, ok, fname in ((daemon.outbox, True, "result.json"), (daemon.failed, False, "error.json")):
                if name not in found and (parent / name / fname).exists():
                    found[name] = Outcome(parent / name, ok, json.loads((parent / name / fname).read_text()))
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()[-3000:]
        assert time.monotonic() < deadline, f"not done: {sorted(set(names) - set(found))}"
        time.sleep(0.5)
    return found

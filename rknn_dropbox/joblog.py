"""A job's conversion log: the raw captured output turned into a clean conversion.log (no colours, last bar state)."""

from __future__ import annotations

import re
from pathlib import Path

from rknn_dropbox.intake.workarea import JobDir

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def clean_log_text(raw: str) -> str:
    """Strip ANSI colours and keep only the last state of each carriage-return progress bar."""
    out = []
    for line in ANSI_RE.sub("", raw).split("\n"):
        if "\r" in line:
            parts = [p for p in line.split("\r") if p.strip()]
            line = parts[-1] if parts else ""
        out.append(line.rstrip())
    return "\n".join(out)


def finish_log(job: JobDir) -> None:
    """Turn the job's raw captured output into conversion.log (also after a worker died mid-job)."""
    raw_log, log = job.root / "conversion.raw", job.log
    try:
        text = raw_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:  # appended: a job retried with another toolkit keeps both logs
        fh.write(clean_log_text(text))
    raw_log.unlink(missing_ok=True)

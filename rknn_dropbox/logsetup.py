"""Logging: loguru to stderr, journald-friendly (no colour and no timestamp when not on a terminal)."""

from __future__ import annotations

import sys

from loguru import logger


# Control characters in a message (a dropped file's name may hold a newline) are escaped: one record, one line,
# and no forged lines in the journal.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 0x7f) if c != ord("\t")} | {ord("\n"): "\\n", ord("\r"): "\\r"}


def escape_controls(record: dict) -> None:  # type: ignore[type-arg]
    record["message"] = record["message"].translate(_CONTROLS)


def setup_logging(level: str = "INFO") -> None:
    logger.remove()
    logger.configure(patcher=escape_controls)
    tty = sys.stderr.isatty()
    fmt = ("<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}" if tty
           else "{level: <7} {message}")
    logger.add(sys.stderr, level=level.upper(), format=fmt, colorize=tty, backtrace=False, diagnose=False)

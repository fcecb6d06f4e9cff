"""Logging: loguru to stderr, journald-friendly (no colour and no timestamp when not on a terminal)."""

from __future__ import annotations

import sys

from loguru import logger


def setup_logging(level: str = "INFO") -> None:
    logger.remove()
    tty = sys.stderr.isatty()
    fmt = ("<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}" if tty
           else "{level: <7} {message}")
    logger.add(sys.stderr, level=level.upper(), format=fmt, colorize=tty, backtrace=False, diagnose=False)

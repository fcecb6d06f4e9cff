"""Inbox entries the daemon could not claim: left where they are and not tried again until they change."""

from __future__ import annotations

import json
import os
from pathlib import Path

from loguru import logger

from rknn_dropbox.intake.scanner import entry_signature
from rknn_dropbox.intake.workarea import write_json_atomic

PARKED_FILE = "unclaimable.json"


def parked_signature(path: Path) -> str | None:
    """Inode, mode and owner, plus size/mtime/mode of every file (a folder's too): what must change before a claim is tried again."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    sig = entry_signature(path)
    return None if sig is None else json.dumps([st.st_ino, st.st_mode, st.st_uid, st.st_gid, sig])


class ParkedEntries:
    """name -> signature at the failed claim, persisted in the state dir so a restart does not retry (or crash
    on) the same entry; an entry that changes or disappears is forgotten, and claimed as usual."""

    def __init__(self, inbox: Path, state_dir: Path) -> None:
        self.inbox = inbox
        self.path = state_dir / PARKED_FILE
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries: dict[str, str] = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        except (OSError, ValueError):
            self.entries = {}

    def park(self, names: list[str]) -> None:
        for name in names:
            sig = parked_signature(self.inbox / name)
            if sig is not None:
                self.entries[name] = sig
        self._save()

    def holds(self, name: str) -> bool:
        """True while `name` is parked and unchanged; a changed or vanished entry is released."""
        if name not in self.entries:
            return False
        if parked_signature(self.inbox / name) == self.entries[name]:
            return True
        del self.entries[name]
        logger.info("{} changed since it could not be claimed: trying it again", name)
        self._save()
        return False

    def _save(self) -> None:
        try:
            write_json_atomic(self.path, self.entries)
        except OSError as exc:  # a full state disk: parked for this run only
            logger.warning("cannot record unclaimable entries in {}: {}", self.path, exc.strerror)

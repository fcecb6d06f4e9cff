"""sha256 of files, read in blocks: the converter's outputs and inputs, the cache's keys and copies."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, BinaryIO

BLOCK = 1 << 20


def hash_into(h: Any, path: Path) -> None:
    """Feed the file's bytes to the hash object `h`."""
    with open(path, "rb") as fh:
        copy_hashing(fh, h)


def copy_hashing(src: BinaryIO, h: Any, dest: BinaryIO | None = None) -> None:
    """Read `src` to its end into `h`, writing each block to `dest` too when given."""
    for block in iter(lambda: src.read(BLOCK), b""):
        h.update(block)
        if dest is not None:
            dest.write(block)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    hash_into(h, path)
    return h.hexdigest()

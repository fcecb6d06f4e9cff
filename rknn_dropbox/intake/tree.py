"""Walking a dropped folder tree without recursion (a folder nested thousands deep never ends the loop)."""

from __future__ import annotations

import os
from typing import Callable, Iterator

MAX_DEPTH = 64  # folder levels a bundle may have; deeper trees are rejected in words, never walked


class TooDeep(Exception):
    """The tree holds folders nested deeper than MAX_DEPTH levels."""


def walk_tree(root: str | os.PathLike[str], skip: Callable[[str], bool] = lambda name: False,
              max_depth: int = MAX_DEPTH) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk(root) top-down with sorted names, iterative, never following links; `skip` drops names.

    Yields (folder, sub-folders, files) like os.walk; raises TooDeep past `max_depth` levels. Folders that cannot
    be listed (gone meanwhile, no permission) are passed over, as os.walk does."""
    stack: list[tuple[str, int]] = [(os.fspath(root), 0)]
    while stack:
        folder, depth = stack.pop()
        if depth > max_depth:
            raise TooDeep(folder)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        dirs, files = [], []
        for entry in entries:
            if skip(entry.name):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(entry.name)
        yield folder, dirs, files
        stack.extend((os.path.join(folder, d), depth + 1) for d in reversed(dirs))

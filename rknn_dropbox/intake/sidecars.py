"""Where a bundle's sidecars are: its own `<model>.yaml` and a folder config (config.yaml, model_config.yml).

One rule for the daemon (callback_url at claim time) and the worker (every option); no heavy imports."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from rknn_dropbox.intake.scanner import SIDECAR_EXTS, is_ignored, split_name
from rknn_dropbox.intake.tree import walk_tree

FOLDER_CONFIG_NAMES = ("config.yaml", "config.yml", "model_config.yml", "model_config.yaml")


@dataclass(frozen=True)
class Sidecars:
    """A bundle's option files; precedence: own sidecar > folder config > the TOML's [convert]."""
    folder: Path | None     # config.yaml / model_config.yml (the first one found)
    own: Path | None        # <model stem>.yaml or <bundle name>.yaml
    every: tuple[Path, ...]  # every .yaml/.yml of the bundle (none of them is a model file)


def bundle_files(root: Path) -> list[Path]:
    """Every file under `root` in a stable order, without OS litter and partial downloads (links included: see
    `linked_files`). Raises TooDeep for a tree nested deeper than the scanner accepts."""
    out = []
    for base, _, files in walk_tree(root, is_ignored):
        out.extend(Path(base) / f for f in files)
    return out


def linked_files(files: list[Path]) -> list[Path]:
    """The symbolic links among `files`: the scanner's rule (links are not followed) applied again by whoever reads
    a claimed bundle, since a link may be swapped into a claimed input/ after the scanner looked."""
    return [f for f in files if f.is_symlink()]


def is_sidecar(path: Path) -> bool:
    return path.suffix.lower() in SIDECAR_EXTS


def is_folder_config(path: Path) -> bool:
    return path.name.lower() in FOLDER_CONFIG_NAMES


def find_sidecars(files: list[Path], own_stems: Collection[str] | None = None) -> Sidecars:
    """The folder config and the own sidecar among `files`.  `own_stems`: the names an own sidecar may have
    (the model's stem, the bundle's name); None (the daemon, before the model is known): any other .yaml."""
    every = [f for f in files if is_sidecar(f)]
    folder = [f for f in every if is_folder_config(f)]
    own = [f for f in every if f not in folder and (own_stems is None or split_name(f.name)[0] in own_stems)]
    return Sidecars(folder[0] if folder else None, own[0] if own else None, tuple(every))

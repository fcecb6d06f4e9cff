"""The calibration set of a bundle: the sidecar's dataset, the folder's dataset.txt, its images, else the TOML's.

A bundle is untrusted: every path it names (a sidecar's `dataset:` / `verify_dataset:`, each dataset.txt line,
each image) must resolve inside the bundle, links followed; errors never quote a file's contents nor tell whether
a path outside exists. Only the daemon's own TOML may name a dataset elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rknn_dropbox.formats import FormatError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
CALIBRATION_EXTS = (*IMAGE_EXTS, ".npy")
_OUTSIDE_HINT = "give paths relative to the model's folder, to files inside the bundle (links out are refused)"


@dataclass(frozen=True)
class BundlePlace:
    """Where a bundle's files are: relative paths start at `root`; every path must resolve inside `within`."""
    root: Path
    within: tuple[Path, ...]

    def contains(self, path: Path) -> bool:
        real = path.resolve()
        return any(real.is_relative_to(w.resolve()) for w in self.within)


@dataclass(frozen=True)
class DatasetChoice:
    """The dataset keys: what the bundle's sidecars say, and the daemon TOML's fallback."""
    bundle: str | None = None
    toml: str | None = None


def is_calibration_file(f: Path) -> bool:
    return f.suffix.lower() in CALIBRATION_EXTS or f.name.lower() == "dataset.txt"


def read_dataset_lines(dataset: Path) -> list[list[Path]]:
    """A dataset.txt's lines: one path per model input, relative paths taken from the file's folder."""
    lines: list[list[Path]] = []
    for text in dataset.read_text(encoding="utf-8", errors="replace").splitlines():
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        lines.append([p if p.is_absolute() else dataset.parent / p for p in map(Path, text.split())])
    return lines


def _shown(text: str) -> str:
    """A bundle's own text in a message: printable, at most 80 characters."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= 80 else clean[:77] + "..."


def _named_dataset(key: str, value: str, place: BundlePlace | None) -> Path:
    """The dataset.txt a key names; `place` None: the TOML's (trusted, anywhere)."""
    if place is None:
        ds = Path(value)
        if not ds.is_file():
            raise FormatError(f"[convert] {key} = {value} was not found", "fix the path in the daemon's TOML")
        return ds
    ds = place.root / value
    if Path(value).is_absolute() or not place.contains(ds):
        raise FormatError(f"{key}: {_shown(value)} points outside the bundle", _OUTSIDE_HINT)
    if not ds.is_file():
        raise FormatError(f"{key}: {_shown(value)} was not found in the bundle", _OUTSIDE_HINT)
    return ds


def verification_dataset(place: BundlePlace, choice: DatasetChoice, work: Path) -> Path | None:
    """The held-out verify_dataset (the bundle's, else the TOML's), its lines made absolute; None when not given."""
    if choice.bundle:
        ds = _named_dataset("verify_dataset", choice.bundle, place)
        return _rewrite_dataset(ds, work, "verify_dataset.txt", place)[0]
    if choice.toml:
        return _rewrite_dataset(_named_dataset("verify_dataset", choice.toml, None), work, "verify_dataset.txt")[0]
    return None


def _listed(dataset: Path | None) -> set[Path]:
    if dataset is None:
        return set()
    return {p.resolve() for line in read_dataset_lines(dataset) for p in line}


def calibration_dataset(place: BundlePlace, choice: DatasetChoice, files: list[Path], work: Path,
                        held_out: Path | None = None) -> tuple[Path | None, int]:
    """The dataset.txt to build with: the sidecar's, the folder's dataset.txt, its images (but not the held-out
    verify_dataset's); the TOML's only when the bundle brings none."""
    if choice.bundle:
        return _rewrite_dataset(_named_dataset("dataset", choice.bundle, place), work, place=place)
    listed = [f for f in files if f.name.lower() == "dataset.txt"]
    if listed:
        if not place.contains(listed[0]) or not listed[0].is_file():
            raise FormatError(f"{listed[0].name} points outside the bundle", _OUTSIDE_HINT)
        return _rewrite_dataset(listed[0], work, place=place)
    excluded = _listed(held_out)
    samples = [f for f in files if f.suffix.lower() in CALIBRATION_EXTS and f.resolve() not in excluded
               and place.contains(f)]
    if samples:
        work.mkdir(parents=True, exist_ok=True)
        out = work / "dataset.txt"
        out.write_text("".join(f"{p.resolve()}\n" for p in samples), encoding="utf-8")
        return out, len(samples)
    if choice.toml:
        return _rewrite_dataset(_named_dataset("dataset", choice.toml, None), work)
    return None, 0


def _checked_line(ds: Path, number: int, line: list[Path], place: BundlePlace | None) -> str:
    """One dataset.txt line, its paths resolved; inside the bundle unless the TOML named the file."""
    parts = []
    for p in line:
        if place is not None and not place.contains(p):
            raise FormatError(f"{ds.name} sample {number} names a path outside the bundle", _OUTSIDE_HINT)
        if not p.is_file():
            where = "in the bundle" if place is not None else "(listed by the daemon's [convert] dataset)"
            raise FormatError(f"{ds.name} sample {number}: {_shown(p.name)} is not a file {where}",
                              "dataset.txt lines are paths relative to dataset.txt itself")
        parts.append(str(p.resolve()))
    return " ".join(parts)


def _rewrite_dataset(ds: Path, work: Path, out_name: str = "dataset.txt",
                     place: BundlePlace | None = None) -> tuple[Path, int]:
    """Make every line of a dataset.txt absolute (relative to the file itself) and check each sample exists."""
    lines = [_checked_line(ds, n, line, place) for n, line in enumerate(read_dataset_lines(ds), 1)]
    if not lines:
        raise FormatError(f"{ds.name} lists no calibration samples")
    work.mkdir(parents=True, exist_ok=True)
    out = work / out_name
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out, len(lines)

"""The calibration set of a bundle: the sidecar's dataset, the folder's dataset.txt, or its images."""

from __future__ import annotations

from pathlib import Path

from rknn_dropbox.options import ConvertOptions
from rknn_dropbox.formats import FormatError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
CALIBRATION_EXTS = (*IMAGE_EXTS, ".npy")


def is_calibration_file(f: Path) -> bool:
    return f.suffix.lower() in CALIBRATION_EXTS or f.name.lower() == "dataset.txt"


def _named_dataset(key: str, value: str, bundle_root: Path) -> Path:
    ds = Path(value)
    if not ds.is_absolute():
        ds = bundle_root / ds
        if not ds.resolve().is_relative_to(bundle_root.resolve()):
            raise FormatError(f"{key}: {value} points outside the bundle", "give a path relative to the model's folder")
    if not ds.is_file():
        raise FormatError(f"{key}: {value} was not found next to the model")
    return ds


def verification_dataset(bundle_root: Path, opts: ConvertOptions, work: Path) -> Path | None:
    """The sidecar's verify_dataset (held-out samples), its lines made absolute; None when not given."""
    if not opts.verify_dataset:
        return None
    ds = _named_dataset("verify_dataset", opts.verify_dataset, bundle_root)
    return _rewrite_dataset(ds, work, "verify_dataset.txt")[0]


def _listed(dataset: Path | None) -> set[Path]:
    if dataset is None:
        return set()
    return {Path(item).resolve() for line in dataset.read_text(encoding="utf-8").splitlines() for item in line.split()}


def calibration_dataset(bundle_root: Path, opts: ConvertOptions, files: list[Path], work: Path,
                        held_out: Path | None = None) -> tuple[Path | None, int]:
    """The dataset.txt to build with: the sidecar's, the folder's dataset.txt, its images (but not the held-out
    verify_dataset's), or the TOML's."""
    if opts.dataset:
        return _rewrite_dataset(_named_dataset("dataset", opts.dataset, bundle_root), work)
    listed = [f for f in files if f.name.lower() == "dataset.txt"]
    if listed:
        return _rewrite_dataset(listed[0], work)
    excluded = _listed(held_out)
    samples = [f for f in files if f.suffix.lower() in CALIBRATION_EXTS and f.resolve() not in excluded]
    if samples:
        work.mkdir(parents=True, exist_ok=True)
        out = work / "dataset.txt"
        out.write_text("".join(f"{p.resolve()}\n" for p in samples), encoding="utf-8")
        return out, len(samples)
    return None, 0


def _rewrite_dataset(ds: Path, work: Path, out_name: str = "dataset.txt") -> tuple[Path, int]:
    """Make every line of a dataset.txt absolute (relative to the file itself) and check each sample exists."""
    lines = []
    for raw in ds.read_text(encoding="utf-8", errors="replace").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = []
        for item in raw.split():
            p = Path(item)
            if not p.is_absolute():
                p = ds.parent / p
            if not p.is_file():
                raise FormatError(f"{ds.name} lists {item}, which is not in the bundle",
                                  "dataset.txt lines are paths relative to dataset.txt itself")
            parts.append(str(p.resolve()))
        lines.append(" ".join(parts))
    if not lines:
        raise FormatError(f"{ds.name} lists no calibration samples")
    work.mkdir(parents=True, exist_ok=True)
    out = work / out_name
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out, len(lines)

"""What a claimed bundle holds: its model files and their format (by content), sidecar options, calibration set."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rknn_dropbox.convert.calibration import (
    BundlePlace, DatasetChoice, calibration_dataset, is_calibration_file, read_dataset_lines, verification_dataset,
)
from rknn_dropbox.convert.model_config import ModelConfigRefs, is_model_config, model_config_to_options
from rknn_dropbox.options import ConvertOptions, OptionsError, parse_convert_options, read_yaml_mapping
from rknn_dropbox.formats import (
    FORMATS, PAIR_FORMATS, SUPPORTED_HINT, Format, FormatError, IntegrityError, by_name, find_sets,
    format_for_extension, sniff,
)
from rknn_dropbox.intake.archives import ArchiveError, is_archive, strip_single_folder, unpack_archive
from rknn_dropbox.intake.scanner import is_ignored, split_name
from rknn_dropbox.intake.sidecars import bundle_files, find_sidecars, is_sidecar, linked_files
from rknn_dropbox.intake.tree import MAX_DEPTH, TooDeep

FORMAT_NAMES = {f.name: f.display for f in FORMATS}
Found = tuple[str, Path, "Path | None"]  # (format name, model, weights)


class BundleError(FormatError):
    """The bundle cannot be converted; `error` says what was found and what is missing."""


@dataclass
class ModelSpec:
    format: str                       # onnx | tflite | pytorch | tensorflow | darknet | caffe | savedmodel | checkpoint
    model: Path                       # the main model file (a SavedModel: its folder; a checkpoint: its .meta)
    weights: Path | None = None       # .weights / .caffemodel
    options: ConvertOptions = field(default_factory=ConvertOptions)
    dataset: Path | None = None       # a dataset.txt (written by us for a folder of images)
    dataset_size: int = 0
    sidecar: Path | None = None
    files: list[Path] = field(default_factory=list)  # every input file, for result.json
    model_files: list[Path] = field(default_factory=list)  # the files that make the model (the cache key)
    root: Path | None = None          # where the bundle's files are (an archive: where it was unpacked)
    facts: Any = None                 # what the format's check read (an ONNX graph's shapes, outputs, QDQ nodes)
    verify_dataset: Path | None = None  # held-out samples verification runs on first (a dataset.txt)

    @property
    def fmt(self) -> Format:
        return by_name(self.format)

    @property
    def dataset_samples(self) -> list[Path]:
        if self.dataset is None:
            return []
        return [p for line in read_dataset_lines(self.dataset) for p in line]


def _pairs(fmt: Format, files: list[Path]) -> list[Found]:
    """Two-file models of `fmt` (description + weights, matched by stem, or the only two)."""
    assert fmt.pair is not None
    desc_ext, weights_ext = fmt.pair
    descs = {split_name(f.name)[0]: f for f in files
             if f.suffix.lower() == desc_ext or (f.suffix.lower() not in fmt.sniff_skips_exts and sniff(f) is fmt)}
    weights = {split_name(f.name)[0]: f for f in files if f.suffix.lower() == weights_ext}
    found: list[Found] = []
    for stem, desc in descs.items():
        w = weights.get(stem) or (next(iter(weights.values())) if len(weights) == 1 and len(descs) == 1 else None)
        if w is None:
            raise BundleError(f"incomplete {fmt.display} model: found {desc.name} but no {stem}{weights_ext}",
                              f"put the {desc_ext} and its {weights_ext} side by side")
        found.append((fmt.name, desc, w))
    return found


def _single(f: Path) -> str | None:
    """The format of a one-file model: its extension, corrected by its content (ONNX named .pb, TFLite as .bin)."""
    by_ext = format_for_extension(f.suffix)
    sniffed = sniff(f)
    if by_ext is None:
        # a TFLite flatbuffer whatever its name says
        return "tflite" if sniffed is by_name("tflite") and not is_calibration_file(f) else None
    if sniffed is by_name("tflite"):
        return "tflite"
    if sniffed is by_name("ultralytics") and by_ext.name == "pytorch":
        return "ultralytics"  # a best.pt from training: exported to ONNX in the worker
    if sniffed is by_name("onnx") and by_ext.name in ("tensorflow", "tflite"):
        return "onnx"  # an ONNX protobuf named .pb or .tflite
    return by_ext.name


def _pick_model(files: list[Path], bundle_name: str) -> Found:
    """Find the one model of the bundle; BundleError lists what was found when it is not exactly one."""
    found, tf_used = find_sets(files)
    files = [f for f in files if f not in tf_used]
    for fmt in PAIR_FORMATS:
        found += _pairs(fmt, [f for f in files if f not in {p for _, a, b in found for p in (a, b)}])
    used = {p for _, a, b in found for p in (a, b) if p}
    if not found:
        for fmt in PAIR_FORMATS:
            orphans = [f for f in files if f.suffix.lower() == fmt.pair[1]]  # type: ignore[index]
            if orphans:
                raise BundleError(f"incomplete {fmt.display} model: found {orphans[0].name} but no "
                                  f"{fmt.pair[0]} file")  # type: ignore[index]
    for f in files:
        single = None if f in used else _single(f)
        if single is not None:
            found.append((single, f, None))
    if not found:
        names = ", ".join(f.name for f in files[:10]) or "nothing"
        raise BundleError(f"no model file in {bundle_name} (found: {names})", SUPPORTED_HINT)
    if len(found) > 1:
        listing = "; ".join(f"{FORMAT_NAMES[fmt]} {m.name}" for fmt, m, _ in found)
        raise BundleError(f"{bundle_name} holds more than one model: {listing}",
                          "drop each model as its own file or folder")
    return found[0]


def _unpack_archives(files: list[Path], work: Path) -> tuple[list[Path], Path | None]:
    """An archive bundle: unpack it (checked member by member) into the work area and list what it holds."""
    archives = [f for f in files if is_archive(f)]
    if not archives:
        return files, None
    if len(archives) > 1:
        raise BundleError(f"more than one archive in one bundle: {', '.join(a.name for a in archives)}")
    dest = work / "unpacked"
    try:
        unpack_archive(archives[0], dest)
    except ArchiveError as exc:
        raise BundleError(str(exc), "re-create the archive from plain files with relative paths") from None
    inner = strip_single_folder(dest)
    unpacked = bundle_files(inner)
    if not unpacked:
        raise BundleError(f"{archives[0].name} holds no files")
    # a sidecar dropped next to the archive (net.zip + net.yaml) still applies
    return unpacked + files, inner  # the archive itself stays listed (result.json inputs)


def _read_sidecar(cfg: Path, base: ConvertOptions) -> tuple[ConvertOptions, ModelConfigRefs | None]:
    raw = read_yaml_mapping(cfg)
    if is_model_config(raw):
        native, refs = model_config_to_options(raw, cfg.name)
        return parse_convert_options(native, where=cfg.name, base=base), refs
    return parse_convert_options(raw, where=cfg.name, base=base), None


def _restrict_to(refs: ModelConfigRefs, cfg: Path, files: list[Path]) -> list[Path]:
    """model_config.yml names its model files: pick the model among exactly those (plus calibration data)."""
    named = []
    for rel in refs.files:
        p = (cfg.parent / rel).resolve()
        match = [f for f in files if f.resolve() == p]
        if not match:
            raise BundleError(f"{cfg.name} names {rel}, which is not in the bundle")
        named.extend(match)
    if not named:
        return files
    keep = set(named)
    for f in named:  # a SavedModel / checkpoint named by its folder or .meta keeps its companion files
        keep.update(g for g in files if g.parent == f.parent and (f.suffix == ".meta" or f.name == "saved_model.pb"))
    return [f for f in files if f in keep or is_calibration_file(f)]


def _bundle_root(input_dir: Path) -> Path:
    top = [p for p in input_dir.iterdir() if not is_ignored(p.name)]
    return top[0] if len(top) == 1 and top[0].is_dir() else input_dir  # a folder bundle: paths are relative to it


def _options_and_model(files: list[Path], bundle_name: str, defaults: ConvertOptions
                       ) -> tuple[Found, ConvertOptions, Path | None, list[tuple[ModelConfigRefs, Path]]]:
    """Pick the model and apply the sidecars; precedence: own sidecar > folder config.yaml > TOML [convert].
    The TOML's dataset keys are left out: only what the bundle's own sidecars name is in the returned options."""
    opts, sidecar = replace(defaults, dataset=None, verify_dataset=None), None
    refs: list[tuple[ModelConfigRefs, Path]] = []
    try:
        folder_cfg = find_sidecars(files).folder
        candidates = [f for f in files if not is_sidecar(f)]
        if folder_cfg is not None:
            opts, ref = _read_sidecar(folder_cfg, opts)
            sidecar = folder_cfg
            if ref:
                refs.append((ref, folder_cfg))
                candidates = _restrict_to(ref, folder_cfg, candidates)
        found = _pick_model(candidates, bundle_name)
        own = find_sidecars(files, (split_name(found[1].name)[0], bundle_name)).own
        if own is not None:
            opts, ref = _read_sidecar(own, opts)
            sidecar = own
            if ref:
                refs.append((ref, own))
    except OptionsError as exc:
        raise BundleError(str(exc), "see config.example.toml [convert] for every key and its allowed values") from None
    return found, opts, sidecar, refs


def inspect_bundle(input_dir: Path, bundle_name: str, defaults: ConvertOptions, work: Path) -> ModelSpec:
    """Read a claimed bundle: pick its model, apply sidecar/config.yaml over the defaults, find calibration data."""
    try:
        files = bundle_files(input_dir)
    except TooDeep:
        raise BundleError(f"{bundle_name} is nested more than {MAX_DEPTH} folders deep",
                          "flatten it: a bundle needs only a few levels") from None
    if not files:
        raise BundleError(f"{bundle_name} holds no files")
    links = linked_files(files)
    if links:  # swapped into the claimed input/ after the scanner looked: never followed
        raise BundleError(f"{links[0].relative_to(input_dir)} is a symbolic link; links are not followed",
                          "copy the file itself into the inbox")
    root = _bundle_root(input_dir)
    files, unpacked_root = _unpack_archives(files, work)
    root = unpacked_root or root
    (fmt_name, model, weights), opts, sidecar, refs = _options_and_model(files, bundle_name, defaults)
    fmt = by_name(fmt_name)
    for ref, cfg in refs:
        if ref.platform and ref.platform != fmt.family:
            raise BundleError(f"{cfg.name} says platform: {ref.platform}, but the bundle's model {model.name} is "
                              f"{fmt.display}")
    facts = _check_model_file(fmt, model, weights)
    place = BundlePlace(root, (input_dir, root))
    try:
        held_out = verification_dataset(place, DatasetChoice(opts.verify_dataset, defaults.verify_dataset), work)
        dataset, n = calibration_dataset(place, DatasetChoice(opts.dataset, defaults.dataset), files, work, held_out)
    except FormatError as exc:
        raise BundleError(exc.error, exc.hint) from None
    return ModelSpec(fmt_name, model, weights, opts, dataset, n, sidecar, files,
                     fmt.model_files(model, weights, files), root, facts, held_out)


def _check_model_file(fmt: Format, model: Path, weights: Path | None) -> Any:
    """Cheap content checks that give a clearer error than the toolkit would; the facts the format read."""
    for f in (model, weights):
        if f is None or f.is_dir():
            continue
        try:
            size = f.stat().st_size
            with open(f, "rb"):
                pass
        except PermissionError:
            raise BundleError(f"{f.name} cannot be read (permission denied)",
                              "make the file readable by the rknn-dropbox user") from None
        if size == 0:
            raise BundleError(f"{f.name} is empty (0 bytes)", "the copy may have failed; copy the model again")
    try:
        return fmt.check(model, weights)
    except IntegrityError as exc:
        raise BundleError(str(exc), "copy the weights file again, or drop the network description that belongs "
                          "to it") from None
    except FormatError as exc:
        raise BundleError(exc.error, exc.hint) from None

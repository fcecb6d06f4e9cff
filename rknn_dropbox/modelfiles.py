"""What a claimed bundle holds: its model files and their format (by content), sidecar options, calibration set."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .analyzer import is_ignored, split_name
from .options import ConvertOptions, OptionsError, parse_convert_options, read_yaml_mapping

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
CALIBRATION_EXTS = (*IMAGE_EXTS, ".npy")
FORMAT_NAMES = {
    "onnx": "ONNX", "tflite": "TFLite", "pytorch": "TorchScript", "tensorflow": "TensorFlow frozen graph",
    "darknet": "Darknet", "caffe": "Caffe",
}


class BundleError(ValueError):
    """The bundle cannot be converted; `error` says what was found and what is missing."""

    def __init__(self, error: str, hint: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


@dataclass
class ModelSpec:
    format: str                       # onnx | tflite | pytorch | tensorflow | darknet | caffe
    model: Path                       # the main model file
    weights: Path | None = None       # .weights / .caffemodel
    options: ConvertOptions = field(default_factory=ConvertOptions)
    dataset: Path | None = None       # a dataset.txt (written by us for a folder of images)
    dataset_size: int = 0
    sidecar: Path | None = None
    files: list[Path] = field(default_factory=list)  # every input file, for result.json


def sniff_format(path: Path) -> str | None:
    """Recognise a model file by its first bytes, whatever its extension says."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if head[:2] == b"PK" and path.suffix.lower() in (".pt", ".pth", ".pytorch", ".torchscript"):
        return "pytorch"
    text = head.decode("utf-8", "ignore")
    stripped = "\n".join(line.split("#", 1)[0] for line in text.splitlines()).strip()
    if stripped.startswith("[net]") or stripped.startswith("[network]"):
        return "darknet-cfg"
    if ("layer" in stripped or "input" in stripped) and "{" in stripped and "\0" not in head[:256]:
        if stripped.startswith(("name:", "layer", "input", "layers")):
            return "caffe-prototxt"
    if head[:1] == b"\x08" and b"\x12" in head[:64]:  # ModelProto: field 1 (ir_version) varint first
        return "onnx"
    return None


_EXT_FORMAT = {".onnx": "onnx", ".tflite": "tflite", ".pt": "pytorch", ".pth": "pytorch", ".pytorch": "pytorch",
               ".torchscript": "pytorch", ".pb": "tensorflow"}


def _files_of(input_dir: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if not is_ignored(d))
        for fname in sorted(files):
            if not is_ignored(fname):
                out.append(Path(root) / fname)
    return out


def _calibration_dataset(bundle_root: Path, opts: ConvertOptions, files: list[Path], work: Path) -> tuple[Path | None, int]:
    """The dataset.txt to build with: the sidecar's, the folder's dataset.txt, its images, or the TOML's."""
    if opts.dataset:
        ds = Path(opts.dataset)
        if not ds.is_absolute():
            ds = bundle_root / ds
            if not ds.resolve().is_relative_to(bundle_root.resolve()):
                raise BundleError(f"dataset: {opts.dataset} points outside the bundle",
                                  "give a path relative to the model's folder")
        if not ds.is_file():
            raise BundleError(f"dataset: {opts.dataset} was not found next to the model")
        return _rewrite_dataset(ds, work)
    listed = [f for f in files if f.name.lower() == "dataset.txt"]
    if listed:
        return _rewrite_dataset(listed[0], work)
    samples = [f for f in files if f.suffix.lower() in CALIBRATION_EXTS]
    if samples:
        work.mkdir(parents=True, exist_ok=True)
        out = work / "dataset.txt"
        out.write_text("".join(f"{p.resolve()}\n" for p in samples), encoding="utf-8")
        return out, len(samples)
    return None, 0


def _rewrite_dataset(ds: Path, work: Path) -> tuple[Path, int]:
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
                raise BundleError(f"{ds.name} lists {item}, which is not in the bundle",
                                  "dataset.txt lines are paths relative to dataset.txt itself")
            parts.append(str(p.resolve()))
        lines.append(" ".join(parts))
    if not lines:
        raise BundleError(f"{ds.name} lists no calibration samples")
    work.mkdir(parents=True, exist_ok=True)
    out = work / "dataset.txt"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out, len(lines)


def _pick_model(files: list[Path], bundle_name: str) -> tuple[str, Path, Path | None]:
    """Find the one model of the bundle; BundleError lists what was found when it is not exactly one."""
    found: list[tuple[str, Path, Path | None]] = []
    cfgs = {split_name(f.name)[0]: f for f in files if sniff_format(f) == "darknet-cfg" or f.suffix.lower() == ".cfg"}
    protos = {split_name(f.name)[0]: f for f in files if f.suffix.lower() == ".prototxt"}
    weights = {split_name(f.name)[0]: f for f in files if f.suffix.lower() == ".weights"}
    caffemodels = {split_name(f.name)[0]: f for f in files if f.suffix.lower() == ".caffemodel"}
    for stem, cfg in cfgs.items():
        w = weights.get(stem) or (next(iter(weights.values())) if len(weights) == 1 and len(cfgs) == 1 else None)
        if w is None:
            raise BundleError(f"incomplete Darknet model: found {cfg.name} but no {stem}.weights",
                              "put the .cfg and its .weights side by side")
        found.append(("darknet", cfg, w))
    for stem, proto in protos.items():
        cm = caffemodels.get(stem) or (next(iter(caffemodels.values()))
                                       if len(caffemodels) == 1 and len(protos) == 1 else None)
        if cm is None:
            raise BundleError(f"incomplete Caffe model: found {proto.name} but no {stem}.caffemodel",
                              "put the .prototxt and its .caffemodel side by side")
        found.append(("caffe", proto, cm))
    used = {p for _, a, b in found for p in (a, b) if p}
    orphans = [f for f in list(weights.values()) + list(caffemodels.values()) if f not in used]
    if orphans and not found:
        partner = ".cfg" if orphans[0].suffix.lower() == ".weights" else ".prototxt"
        family = "Darknet" if partner == ".cfg" else "Caffe"
        raise BundleError(f"incomplete {family} model: found {orphans[0].name} but no {partner} file")
    for f in files:
        if f in used:
            continue
        ext = f.suffix.lower()
        fmt = _EXT_FORMAT.get(ext)
        if fmt is None:
            continue
        sniffed = sniff_format(f)
        if sniffed == "tflite":
            fmt = "tflite"
        elif sniffed == "onnx" and fmt == "tensorflow":
            fmt = "onnx"  # an ONNX protobuf named .pb
        found.append((fmt, f, None))
    if not found:
        names = ", ".join(f.name for f in files[:10]) or "nothing"
        raise BundleError(f"no model file in {bundle_name} (found: {names})",
                          "rknn-dropbox converts .onnx, .tflite, .pt/.pth (TorchScript), .pb, .cfg+.weights, "
                          ".prototxt+.caffemodel")
    if len(found) > 1:
        listing = "; ".join(f"{FORMAT_NAMES[fmt]} {m.name}" for fmt, m, _ in found)
        raise BundleError(f"{bundle_name} holds more than one model: {listing}",
                          "drop each model as its own file or folder")
    return found[0]


def inspect_bundle(input_dir: Path, bundle_name: str, defaults: ConvertOptions, work: Path) -> ModelSpec:
    """Read a claimed bundle: pick its model, apply sidecar/config.yaml over the defaults, find calibration data."""
    files = _files_of(input_dir)
    if not files:
        raise BundleError(f"{bundle_name} holds no files")
    root = input_dir
    top = [p for p in input_dir.iterdir() if not is_ignored(p.name)]
    if len(top) == 1 and top[0].is_dir():
        root = top[0]  # a folder bundle: paths are relative to the folder
    sidecars = [f for f in files if f.suffix.lower() in (".yaml", ".yml")]
    models_files = [f for f in files if f not in sidecars]
    fmt, model, weights = _pick_model(models_files, bundle_name)
    opts = defaults
    sidecar = None
    folder_cfg = [f for f in sidecars if f.name.lower() in ("config.yaml", "config.yml")]
    own = [f for f in sidecars if f not in folder_cfg and split_name(f.name)[0] == split_name(model.name)[0]]
    try:
        for cfg in folder_cfg[:1] + own[:1]:  # precedence: sidecar > folder config.yaml > TOML [convert]
            opts = parse_convert_options(read_yaml_mapping(cfg), where=cfg.name, base=opts)
            sidecar = cfg
    except OptionsError as exc:
        raise BundleError(str(exc), "see config.example.toml [convert] for every key and its allowed values") from None
    _check_model_file(fmt, model, weights)
    dataset, n = _calibration_dataset(root, opts, files, work)
    return ModelSpec(fmt, model, weights, opts, dataset, n, sidecar, files)


def _check_model_file(fmt: str, model: Path, weights: Path | None) -> None:
    """Cheap content checks that give a clearer error than the toolkit would."""
    for f in (model, weights):
        if f is None:
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
    if fmt == "onnx":
        import onnx  # the worker has onnx (a toolkit dependency); the daemon never calls this
        try:
            m = onnx.load(str(model), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any decode failure means "not a valid ONNX file"
            raise BundleError(f"{model.name} is not a valid ONNX model ({type(exc).__name__}: "
                              f"{str(exc)[:200] or 'cannot parse'})",
                              "the file may be truncated or not ONNX at all: export or copy it again") from None
        if not m.graph.node:
            raise BundleError(f"{model.name} is not a valid ONNX model: its graph has no nodes",
                              "the file may be truncated or not ONNX at all: export or copy it again")

"""What a claimed bundle holds: its model files and their format (by content), sidecar options, calibration set."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rknn_dropbox.intake.scanner import is_ignored, split_name
from rknn_dropbox.intake.archives import ArchiveError, is_archive, strip_single_folder, unpack_archive
from rknn_dropbox.formats.integrity import IntegrityError, check_caffe, check_darknet
from rknn_dropbox.convert.options import (
    ConvertOptions, ModelConfigRefs, OptionsError, is_model_config, model_config_to_options, parse_convert_options,
    read_yaml_mapping,
)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
CALIBRATION_EXTS = (*IMAGE_EXTS, ".npy")
FORMAT_NAMES = {
    "onnx": "ONNX", "tflite": "TFLite", "pytorch": "TorchScript", "tensorflow": "TensorFlow frozen graph",
    "darknet": "Darknet", "caffe": "Caffe", "savedmodel": "TensorFlow SavedModel", "checkpoint": "TensorFlow checkpoint",
}


class BundleError(ValueError):
    """The bundle cannot be converted; `error` says what was found and what is missing."""

    def __init__(self, error: str, hint: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


@dataclass
class OnnxFacts:
    """What the converter needs to know of an ONNX graph, read once when the file is checked."""
    input_shapes: list[list[int]]     # graph inputs that are not initializers
    output_names: list[str]
    prequantized: bool                # QuantizeLinear/DequantizeLinear/QLinear* nodes


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
    onnx: OnnxFacts | None = None     # set for ONNX models

    @property
    def dataset_samples(self) -> list[Path]:
        if self.dataset is None:
            return []
        return [Path(item) for line in self.dataset.read_text(encoding="utf-8").splitlines() for item in line.split()]


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
    if ("layer" in stripped or "input" in stripped) and "{" in stripped and b"\0" not in head[:256]:
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


def _tf_sets(files: list[Path]) -> tuple[list[tuple[str, Path, Path | None]], set[Path]]:
    """SavedModel folders (saved_model.pb + variables/) and checkpoint sets (.meta + .index + .data-*)."""
    found: list[tuple[str, Path, Path | None]] = []
    used: set[Path] = set()
    for f in files:
        if f.name == "saved_model.pb":
            found.append(("savedmodel", f.parent, None))
            used.update(g for g in files if g.is_relative_to(f.parent))
    for f in files:
        if f in used or f.suffix.lower() != ".meta":
            continue
        prefix = f.name[: -len(".meta")]
        index = f.with_name(prefix + ".index")
        data = [g for g in files if g.parent == f.parent and g.name.startswith(prefix + ".data-")]
        if index not in files or not data:
            missing = [n for n, ok in ((f"{prefix}.index", index in files), (f"{prefix}.data-*", bool(data)))
                       if not ok]
            raise BundleError(f"incomplete TensorFlow checkpoint: found {f.name} but no {' and no '.join(missing)}",
                              "drop the .meta, .index and every .data-* file of the checkpoint together")
        shards = {g.name.rsplit("-of-", 1)[-1] for g in data}
        total = int(next(iter(shards))) if len(shards) == 1 and next(iter(shards)).isdigit() else len(data)
        if len(data) < total:
            raise BundleError(f"incomplete TensorFlow checkpoint {prefix}: {len(data)} of {total} .data-* shards")
        found.append(("checkpoint", f, None))
        used.update([f, index, *data])
        ckpt_state = f.with_name("checkpoint")
        if ckpt_state in files:
            used.add(ckpt_state)
    return found, used


def _pick_model(files: list[Path], bundle_name: str) -> tuple[str, Path, Path | None]:
    """Find the one model of the bundle; BundleError lists what was found when it is not exactly one."""
    found, tf_used = _tf_sets(files)
    files = [f for f in files if f not in tf_used]
    cfgs = {split_name(f.name)[0]: f for f in files if sniff_format(f) == "darknet-cfg" or f.suffix.lower() == ".cfg"}
    protos = {split_name(f.name)[0]: f for f in files
              if f.suffix.lower() == ".prototxt" or (f.suffix.lower() not in (".txt", ".yaml", ".yml")
                                                     and f not in cfgs.values()
                                                     and sniff_format(f) == "caffe-prototxt")}
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
        sniffed = sniff_format(f)
        if fmt is None:
            if sniffed == "tflite" and ext not in CALIBRATION_EXTS:
                found.append(("tflite", f, None))  # a TFLite flatbuffer whatever its name says
            continue
        if sniffed == "tflite":
            fmt = "tflite"
        elif sniffed == "onnx" and fmt in ("tensorflow", "tflite"):
            fmt = "onnx"  # an ONNX protobuf named .pb or .tflite
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


def _unpack_archives(input_dir: Path, files: list[Path], work: Path) -> tuple[list[Path], Path | None]:
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
    unpacked = _files_of(inner)
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
    return [f for f in files if f in keep or f.suffix.lower() in CALIBRATION_EXTS or f.name.lower() == "dataset.txt"]


def inspect_bundle(input_dir: Path, bundle_name: str, defaults: ConvertOptions, work: Path) -> ModelSpec:
    """Read a claimed bundle: pick its model, apply sidecar/config.yaml over the defaults, find calibration data."""
    files = _files_of(input_dir)
    if not files:
        raise BundleError(f"{bundle_name} holds no files")
    root = input_dir
    top = [p for p in input_dir.iterdir() if not is_ignored(p.name)]
    if len(top) == 1 and top[0].is_dir():
        root = top[0]  # a folder bundle: paths are relative to the folder
    files, unpacked_root = _unpack_archives(input_dir, files, work)
    if unpacked_root is not None:
        root = unpacked_root
    sidecars = [f for f in files if f.suffix.lower() in (".yaml", ".yml")]
    models_files = [f for f in files if f not in sidecars]
    folder_cfg = [f for f in sidecars if f.name.lower() in ("config.yaml", "config.yml", "model_config.yml",
                                                            "model_config.yaml")]
    opts = defaults
    sidecar = None
    refs: list[tuple[ModelConfigRefs, Path]] = []
    try:
        for cfg in folder_cfg[:1]:  # precedence: sidecar > folder config.yaml > TOML [convert]
            opts, ref = _read_sidecar(cfg, opts)
            sidecar = cfg
            if ref:
                refs.append((ref, cfg))
        candidates = models_files
        for ref, cfg in refs:
            candidates = _restrict_to(ref, cfg, candidates)
        fmt, model, weights = _pick_model(candidates, bundle_name)
        own = [f for f in sidecars if f not in folder_cfg and split_name(f.name)[0] in
               (split_name(model.name)[0], bundle_name)]
        for cfg in own[:1]:
            opts, ref = _read_sidecar(cfg, opts)
            sidecar = cfg
            if ref:
                refs.append((ref, cfg))
    except OptionsError as exc:
        raise BundleError(str(exc), "see config.example.toml [convert] for every key and its allowed values") from None
    for ref, cfg in refs:
        family = {"savedmodel": "tensorflow", "checkpoint": "tensorflow"}.get(fmt, fmt)
        if ref.platform and ref.platform != family:
            raise BundleError(f"{cfg.name} says platform: {ref.platform}, but the bundle's model {model.name} is "
                              f"{FORMAT_NAMES[fmt]}")
    onnx_facts = _check_model_file(fmt, model, weights)
    dataset, n = _calibration_dataset(root, opts, files, work)
    if fmt == "savedmodel":
        model_files = sorted(f for f in files if f.is_relative_to(model))
    elif fmt == "checkpoint":
        prefix = model.name[: -len(".meta")]
        model_files = sorted(f for f in files if f.parent == model.parent and f.name.startswith(prefix + "."))
    else:
        model_files = [f for f in (model, weights) if f is not None]
    return ModelSpec(fmt, model, weights, opts, dataset, n, sidecar, files, model_files, root, onnx_facts)


def _check_model_file(fmt: str, model: Path, weights: Path | None) -> OnnxFacts | None:
    """Cheap content checks that give a clearer error than the toolkit would; an ONNX graph's facts."""
    facts = None
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
        initializers = {i.name for i in m.graph.initializer}
        facts = OnnxFacts(
            input_shapes=[[d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input
                          if i.name not in initializers],
            output_names=[o.name for o in m.graph.output],
            prequantized=any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul")
                             for n in m.graph.node))
    if fmt == "pytorch":
        _check_torchscript(model)
    if fmt == "tflite" and sniff_format(model) != "tflite":
        raise BundleError(f"{model.name} is not a TFLite model (no TFL3 flatbuffer identifier)",
                          "the file may be truncated or of another format: export or copy it again")
    try:
        if fmt == "darknet" and weights is not None:
            check_darknet(model, weights)
        elif fmt == "caffe" and weights is not None:
            check_caffe(model, weights)
    except IntegrityError as exc:
        raise BundleError(str(exc), "copy the weights file again, or drop the network description that belongs "
                          "to it") from None
    return facts


def _check_torchscript(model: Path) -> None:
    """A traced TorchScript file is a zip with code/ and constants.pkl; torch.save of a state_dict has neither."""
    import zipfile
    try:
        with zipfile.ZipFile(model) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise BundleError(f"{model.name} is not a TorchScript archive (not a zip file: truncated, or not PyTorch?)",
                          "save the model with torch.jit.trace(model, example).save('model.pt')") from None
    if not any("/code/" in n or n.endswith("constants.pkl") for n in names):
        raise BundleError(f"{model.name} holds weights (a state_dict or a pickled module), not a TorchScript model",
                          "the toolkit needs a traced model: torch.jit.trace(model, example).save('model.pt')")

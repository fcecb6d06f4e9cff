"""A real-architecture model corpus built from code (random weights, nothing downloaded), cached per package versions.

    from zoo import build_corpus, make_calibration_set
    corpus = build_corpus(Path("/some/cache/dir"))        # {name: ModelInfo}
    corpus["yolov8n"].path                                # a stock Ultralytics ONNX export
    make_calibration_set(folder, corpus["resnet18"].input_shape, n=8)   # jpgs + dataset.txt

Random weights hide what trained ones show; the `-spread` YOLO recipes (built on request, from real photos:
`build_corpus(dir, ["yolov8n-spread"], photos=[...])`) give the head trained-like class scores, so that int8's
loss of them in the stock layout shows (see _spread_class_scores).

The models are exported in a child process (`python zoo.py build DIR NAME...`): torchvision, Ultralytics and the
op registration below stay out of the caller (a pytest process or a bench script). Build-only packages:
torchvision and ultralytics (requirements/test-models.txt), never the daemon's runtime.

torchvision 0.28.0 for torch 2.13 is a CUDA wheel whose native ops library cannot load next to the CPU torch, so
`import torchvision` fails with `operator torchvision::nms does not exist`; `register_torchvision_ops()` defines
torchvision::nms (a plain CPU implementation, enough for tracing ssdlite) before the import.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from calibimages import make_calibration_set, natural_image  # noqa: F401 (part of this module's API)

CORPUS_VERSION = 2  # bump when an export below changes
SPREAD_PHOTOS_ENV = "ZOO_SPREAD_PHOTOS"  # the export child's photos for the spread recipes (os.pathsep-joined)
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
YOLO_MEAN = [0.0, 0.0, 0.0]
YOLO_STD = [255.0, 255.0, 255.0]


@dataclass(frozen=True)
class ModelInfo:
    """One corpus model: its ONNX file, NCHW input shape, the mean/std its training used, and what it is."""
    name: str
    path: Path
    input_shape: tuple[int, ...]
    mean: list[float]
    std: list[float]
    kind: str       # classification | segmentation | yolo-detect | yolo-seg | yolo-pose | yolo-obb | detection-nms
    expect: str     # converts | rule-retry (the toolkit's own disable_rules advice) | data-dependent (fails)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelInfo":
        return cls(**{**d, "path": Path(d["path"]), "input_shape": tuple(d["input_shape"])})


@dataclass(frozen=True)
class Recipe:
    """How to build one corpus model."""
    source: str     # torchvision | torchvision-detection | ultralytics
    builder: str    # the torchvision function name, or the Ultralytics yaml
    size: int       # square input side
    kind: str
    expect: str
    spread: bool = False  # YOLO: BatchNorm and class scores set from real photos (see _spread_class_scores)


RECIPES: dict[str, Recipe] = {
    "resnet18": Recipe("torchvision", "resnet18", 224, "classification", "converts"),
    "mobilenet_v2": Recipe("torchvision", "mobilenet_v2", 224, "classification", "converts"),
    "shufflenet_v2": Recipe("torchvision", "shufflenet_v2_x1_0", 224, "classification", "converts"),
    "lraspp_mobilenet_v3": Recipe("torchvision", "lraspp_mobilenet_v3_large", 224, "segmentation", "converts"),
    "yolov8n": Recipe("ultralytics", "yolov8n.yaml", 320, "yolo-detect", "rule-retry"),
    "yolov8n-seg": Recipe("ultralytics", "yolov8n-seg.yaml", 320, "yolo-seg", "rule-retry"),
    "yolov8n-pose": Recipe("ultralytics", "yolov8n-pose.yaml", 320, "yolo-pose", "rule-retry"),
    "ssdlite320": Recipe("torchvision-detection", "ssdlite320_mobilenet_v3_large", 320, "detection-nms",
                         "data-dependent"),
}
# Not built unless asked for by name (slower, or the same story as a default one).
EXTRA_RECIPES: dict[str, Recipe] = {
    "yolo11n": Recipe("ultralytics", "yolo11n.yaml", 320, "yolo-detect", "rule-retry"),
    "yolov8n-640": Recipe("ultralytics", "yolov8n.yaml", 640, "yolo-detect", "rule-retry"),
    "yolov8n-obb": Recipe("ultralytics", "yolov8n-obb.yaml", 320, "yolo-obb", "rule-retry"),
    "yolov10n": Recipe("ultralytics", "yolov10n.yaml", 320, "yolo-detect", "rule-retry"),
    "yolov5nu": Recipe("ultralytics", "yolov5nu.yaml", 320, "yolo-detect", "rule-retry"),  # end2end: its own top-k
    # small; rknn-toolkit2 2.5.0 dies of SIGILL building it as w16a16i_dfp (a real repair-candidate crash)
    "yolov8n-160": Recipe("ultralytics", "yolov8n.yaml", 160, "yolo-detect", "rule-retry"),
    # trained-like class scores (most anchors near 0, some well above 0.5 on a real photo), so that int8's loss of
    # them in the stock layout shows as it does on trained weights; built from real photos (build_corpus(photos=))
    "yolov8n-spread": Recipe("ultralytics", "yolov8n.yaml", 320, "yolo-detect", "rule-retry", spread=True),
    "yolo11n-spread": Recipe("ultralytics", "yolo11n.yaml", 320, "yolo-detect", "rule-retry", spread=True),
    "yolov8n-seg-spread": Recipe("ultralytics", "yolov8n-seg.yaml", 320, "yolo-seg", "rule-retry", spread=True),
    "yolov8n-pose-spread": Recipe("ultralytics", "yolov8n-pose.yaml", 320, "yolo-pose", "rule-retry",
                                  spread=True),
    "yolov8n-obb-spread": Recipe("ultralytics", "yolov8n-obb.yaml", 320, "yolo-obb", "rule-retry", spread=True),
    "deeplabv3_mobilenet_v3": Recipe("torchvision", "deeplabv3_mobilenet_v3_large", 256, "segmentation",
                                     "converts"),
    "deeplabv3_mobilenet_v3-512": Recipe("torchvision", "deeplabv3_mobilenet_v3_large", 512, "segmentation",
                                         "converts"),  # ~9 GB at its peak: what memory admission is for
    "mobilenet_v3_large": Recipe("torchvision", "mobilenet_v3_large", 224, "classification", "converts"),
    "efficientnet_b0": Recipe("torchvision", "efficientnet_b0", 224, "classification", "converts"),
}
DEFAULT_NAMES = tuple(RECIPES)


def recipe(name: str) -> Recipe:
    try:
        return {**RECIPES, **EXTRA_RECIPES}[name]
    except KeyError:
        raise KeyError(f"no corpus model {name!r} (known: {', '.join([*RECIPES, *EXTRA_RECIPES])})") from None


def model_info(name: str, folder: Path) -> ModelInfo:
    r = recipe(name)
    unit_range = r.source != "torchvision"  # YOLO and torchvision detectors take 0..1 pixels (they normalize inside)
    return ModelInfo(name, folder / f"{name}.onnx", (1, 3, r.size, r.size),
                     YOLO_MEAN if unit_range else IMAGENET_MEAN, YOLO_STD if unit_range else IMAGENET_STD, r.kind,
                     r.expect)


def versions_key() -> str:
    """What the exports depend on: a cached corpus is reused only for the same packages."""
    parts = [f"v{CORPUS_VERSION}"]
    for pkg in ("torch", "torchvision", "ultralytics", "onnx"):
        try:
            parts.append(f"{pkg}-{md.version(pkg)}")
        except md.PackageNotFoundError:
            parts.append(f"{pkg}-none")
    return "_".join(parts).replace("+", "-")


def corpus_available() -> str | None:
    """None when the corpus can be built here, else why not (for pytest.skip)."""
    for pkg in ("torchvision", "ultralytics"):
        try:
            md.version(pkg)
        except md.PackageNotFoundError:
            return f"{pkg} is not installed (scripts/setup-venv.sh --test installs requirements/test-models.txt)"
    return None


def build_corpus(cache_dir: Path, names: tuple[str, ...] | list[str] = DEFAULT_NAMES,
                 timeout: float = 900, photos: tuple[Path, ...] | list[Path] = ()) -> dict[str, ModelInfo]:
    """The named models as ONNX files under cache_dir/<versions key>/, exported once and reused afterwards.
    photos: the real photos a spread recipe is set from (tests/trained.py real_photos; always the same ones, as
    the cached export does not record them)."""
    folder = Path(cache_dir) / versions_key()
    folder.mkdir(parents=True, exist_ok=True)
    missing = [n for n in names if not model_info(n, folder).path.exists()]
    if any(recipe(n).spread for n in missing) and not photos:
        raise ValueError(f"{', '.join(n for n in missing if recipe(n).spread)}: a spread recipe is set from real "
                         "photos (hint: build_corpus(..., photos=[...]) with tests/trained.py real_photos)")
    if missing:
        env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(folder / "ultralytics-config"),
               "YOLO_VERBOSE": "False", "PYTHONUNBUFFERED": "1",
               SPREAD_PHOTOS_ENV: os.pathsep.join(str(Path(p).resolve()) for p in photos)}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "build", str(folder), *missing],
                              env=env, cwd=folder, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"building the corpus ({', '.join(missing)}) failed:\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-5000:]}")
    infos = {n: model_info(n, folder) for n in names}
    (folder / "manifest.json").write_text(json.dumps({n: i.to_json() for n, i in infos.items()}, indent=1))
    return infos


MODES = ("fp16", "int8")


def write_drops(corpus: dict[str, ModelInfo], folder: Path, modes: tuple[str, ...] = MODES,
                calibration_images: int = 8) -> list[str]:
    """What a user drops, per model: fp16 is <name>-fp16.onnx + <name>-fp16.yaml (mean/std, do_quantization:
    false); int8 is a folder <name>-int8/ with the model, config.yaml (mean/std) and calibration jpgs + dataset.txt.
    Returns the job names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, info in corpus.items():
        norm = f"mean_values: {info.mean}\nstd_values: {info.std}\n"
        if "fp16" in modes:
            shutil.copy(info.path, folder / f"{name}-fp16.onnx")
            (folder / f"{name}-fp16.yaml").write_text(norm + "do_quantization: false\n")
            names.append(f"{name}-fp16")
        if "int8" in modes:
            bundle = folder / f"{name}-int8"
            bundle.mkdir()
            shutil.copy(info.path, bundle / f"{name}.onnx")
            (bundle / "config.yaml").write_text(norm)
            make_calibration_set(bundle, info.input_shape, calibration_images)
            names.append(bundle.name)
    return names


def write_symbolic_conv(path: Path, input_dims: list[Any], size: int = 16) -> Path:
    """A tiny Conv+Relu ONNX whose input (and output) dims are input_dims: ints, or names for symbolic dims."""
    import onnx
    import modelgen
    model = modelgen._onnx_conv_model(size, seed=3)
    for value, channels in ((model.graph.input[0], None), (model.graph.output[0], 4)):
        for i, (dim, want) in enumerate(zip(value.type.tensor_type.shape.dim, input_dims)):
            if isinstance(want, str):
                dim.dim_param = want
            elif i != 1:
                dim.dim_value = want
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# ---- the exports (run in the child process only) --------------------------------------------------------------------

def register_torchvision_ops() -> bool:
    """Define torchvision::nms / qnms when torchvision's own ops library cannot load (see above); True if defined."""
    import importlib.util

    import torch
    spec = importlib.util.find_spec("torchvision")
    native = next(Path(list(spec.submodule_search_locations or [])[0]).glob("_C*.so"), None) if spec else None
    try:
        if native is not None:
            torch.ops.load_library(str(native))
            return False  # a torchvision built for this torch: its ops are there
    except (OSError, RuntimeError):
        pass
    schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    torch.library.define("torchvision::nms", schema)
    torch.library.define("torchvision::qnms", schema)
    torch.library.impl("torchvision::nms", "CPU")(_nms_cpu)
    return True


def _torchvision_has_ops() -> bool:
    return True


def _nms_cpu(dets: Any, scores: Any, iou_threshold: float) -> Any:
    import torch
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(len(dets), dtype=torch.bool)
    keep = []
    for i in scores.argsort(descending=True).tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        inter = ((torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
                 * (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0))
        suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _BatchedDetector(detector: Any) -> Any:
    """A torchvision detector (a list of CHW images in, a list of dicts out) as NCHW in, (boxes, scores, labels) out."""
    import torch

    class BatchedDetector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, x: Any) -> Any:
            found = self.detector([x[0]])[0]
            return found["boxes"], found["scores"], found["labels"]
    return BatchedDetector()


def _calibrate_batchnorm(model: Any, size: int) -> None:
    """Give random weights trained-like activation scales: BatchNorm statistics from a few normalized images.

    With the default statistics (mean 0, var 1) activations shrink layer by layer; mobilenet_v2's logits end near
    1e-9, below fp16's smallest number, so its fp16 build outputs zeros, which no real model does."""
    import torch
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) / 255
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model((torch.rand(4, 3, size, size) - mean) / std)


def _export_torchvision(r: Recipe, out: Path) -> None:
    import torch
    import torchvision
    torch.manual_seed(0)
    if r.source == "torchvision-detection":
        model = _BatchedDetector(getattr(torchvision.models.detection, r.builder)(weights=None,
                                                                                  weights_backbone=None))
    elif r.kind == "segmentation":
        model = getattr(torchvision.models.segmentation, r.builder)(weights=None, weights_backbone=None)
    else:
        model = getattr(torchvision.models, r.builder)(weights=None)
    if r.source == "torchvision":
        _calibrate_batchnorm(model, r.size)
    model.eval()
    x = torch.rand(1, 3, r.size, r.size)
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=13 if r.kind != "detection-nms"
                          else 11, input_names=["input"], do_constant_folding=True)


def _photo_batch(photos: list[Path], size: int) -> Any:
    """Photos as Ultralytics takes them: RGB, resized, 0..1 NCHW float."""
    import cv2
    import numpy as np
    import torch
    images = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (size, size)) for p in photos]
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()).float() / 255


def _calibrate_yolo_batchnorm(net: Any, batch: Any) -> None:
    """BatchNorm statistics from real photos: with the default ones (mean 0, var 1) a random YOLO's features fade
    to nothing by the head, so every anchor's class logit is its bias whatever the image."""
    import torch
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    net.train()
    with torch.no_grad():
        for chunk in batch.split(4):
            net(chunk)
    net.eval()


def _spread_class_scores(net: Any, batch: Any, top_logit: float = 0.0, median_logit: float = -5.0) -> None:
    """Rescale each scale's last class conv (head.cv3[i][-1]: weights x k, bias) so that sigmoid scores span 0..1
    on real photos as a trained head's do: per class the logits standardized over the photos' anchors, a typical
    photo's 99.9th percentile (the median over the photos: one photo's outliers do not set it) set to top_logit
    (score 0.5) and the median to median_logit (0.007). Random features are heavy-tailed, so some photos still
    score hundreds of anchors near 1.0 (horse, and bus for yolo11n): pick verification photos that do not.

    Why: Ultralytics' Detect.bias_init sets the class bias to log(5 / nc / (640 / stride)^2), so a random-weight
    head scores every anchor ~1e-4; int8 reads that as 0 in any layout, which hides the collapse of the stock
    layout's scores (one int8 step of ~2.6 shared with the box coordinates) that trained weights show."""
    import torch
    convs = [seq[-1] for seq in net.model[-1].cv3]
    logits: list[Any] = []
    hooks = [c.register_forward_hook(lambda _m, _i, out: logits.append(out.detach())) for c in convs]
    with torch.no_grad():
        net(batch)
    for h in hooks:
        h.remove()
    per_photo = torch.cat([z.reshape(z.shape[0], z.shape[1], -1) for z in logits], 2)  # [photos, classes, anchors]
    flat = per_photo.permute(1, 0, 2).reshape(per_photo.shape[1], -1)
    mean, std = flat.mean(1), flat.std(1).clamp(min=1e-6)
    u = (per_photo - mean[None, :, None]) / std[None, :, None]
    hi = float(torch.quantile(u.flatten(1), 0.999, dim=1).median())
    med = float(u.flatten().median())
    slope = (top_logit - median_logit) / (hi - med)
    with torch.no_grad():
        for c in convs:
            k = slope / std
            c.weight.mul_(k.view(-1, 1, 1, 1))
            c.bias.copy_((c.bias - mean) * k + top_logit - slope * hi)


def _export_ultralytics(r: Recipe, out: Path) -> None:
    import torch
    from ultralytics import YOLO
    if r.spread:
        torch.manual_seed(0)  # the same weights in every fresh cache (the tests' photos are picked for them)
    model = YOLO(r.builder)
    if r.spread:
        photos = [Path(p) for p in os.environ.get(SPREAD_PHOTOS_ENV, "").split(os.pathsep) if p]
        batch = _photo_batch(photos, r.size)
        _calibrate_yolo_batchnorm(model.model, batch)
        _spread_class_scores(model.model, batch)
    exported = Path(model.export(format="onnx", imgsz=r.size))
    os.replace(exported, out)


def export_model(name: str, folder: Path) -> Path:
    """Export one corpus model into folder (in this process: needs torchvision/ultralytics importable)."""
    r = recipe(name)
    out = model_info(name, folder).path
    tmp = out.with_suffix(".part.onnx")
    if r.source == "ultralytics":
        _export_ultralytics(r, tmp)
    else:
        _export_torchvision(r, tmp)
    os.replace(tmp, out)
    return out


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "build":
        print("usage: zoo.py build DIR [NAME...]", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    if register_torchvision_ops():
        import torchvision.extension
        torchvision.extension._has_ops = _torchvision_has_ops  # its nms wrappers check this before calling the op
    for name in argv[2:] or DEFAULT_NAMES:
        print(f"exporting {name}", flush=True)
        os.chdir(folder)  # Ultralytics writes its export next to the yaml's name in the cwd
        export_model(name, folder)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

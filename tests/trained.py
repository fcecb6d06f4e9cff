"""Trained networks and real photographs from PyPI wheels (downloaded once with pip, unzipped, never installed).

    from trained import trained_models, real_photos
    models = trained_models(cache_dir)          # {name: TrainedModel}
    photos = real_photos(cache_dir)             # {name: Path}, e.g. photos["bus"]

Random weights hide accuracy problems that trained weights show (an int8 YOLO whose class scores collapse still has a
cosine of 0.9995), so the accuracy tests and bench/accuracy.py use these. `python trained.py DIR` fetches them all.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

# wheel spec -> {member inside the wheel: local name}
MODEL_WHEELS = {
    "nudenet==3.4.2": {"nudenet/320n.onnx": "nudenet_yolov8n_320.onnx"},
    "rapidocr-onnxruntime==1.4.4": {
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": "ppocr_det.onnx",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": "ppocr_rec.onnx",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": "ppocr_cls.onnx",
    },
}
PHOTO_WHEELS = {
    "scikit-image==0.26.0": {f"skimage/data/{n}": n for n in (
        "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
        "text.png", "page.png", "camera.png", "coins.png", "immunohistochemistry.png", "ihc.png", "retina.jpg",
        "hubble_deep_field.jpg", "brick.png", "grass.png", "gravel.png", "color.png", "logo.png", "horse.png")},
    "scikit-learn==1.9.1": {"sklearn/datasets/images/china.jpg": "china.jpg",
                            "sklearn/datasets/images/flower.jpg": "flower.jpg"},
    "matplotlib==3.11.2": {"matplotlib/mpl-data/sample_data/grace_hopper.jpg": "grace_hopper.jpg"},
    "ultralytics==8.4.190": {"ultralytics/assets/bus.jpg": "bus.jpg", "ultralytics/assets/zidane.jpg": "zidane.jpg"},
}
# photos of scenes (people, animals, objects, streets): calibration and held-out sets for the image models
SCENE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "china", "flower", "grace_hopper",
                "bus", "zidane", "motorcycle_right", "retina", "ihc", "color", "horse", "logo")


@dataclass(frozen=True)
class TrainedModel:
    """One trained network: its ONNX file, the NCHW input shape it is built at, its preprocessing, what it is."""
    name: str
    path: Path
    input_shape: tuple[int, int, int, int]
    mean: list[float]
    std: list[float]
    kind: str          # yolo-detect | text-detect (probability map) | text-recognise (CTC) | direction (2 classes)

    def sidecar(self) -> str:
        """The sidecar lines a user writes for it (mean/std, the input size for its dynamic dims)."""
        return (f"mean_values: [{', '.join(map(str, self.mean))}]\nstd_values: [{', '.join(map(str, self.std))}]\n"
                f"input_size_list: [[{', '.join(map(str, self.input_shape))}]]\n")


def _wheel(spec: str, cache: Path) -> Path:
    """The wheel for `spec` in cache/wheels, downloaded once (pip download --no-deps)."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    project = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1]
    for found in folder.glob("*.whl"):
        if found.name.lower().startswith(f"{project}-{version}-"):
            return found
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                    "-d", str(folder), spec], check=True, capture_output=True, timeout=900)
    return _wheel(spec, cache)


def _extract(wheels: dict[str, dict[str, str]], cache: Path, sub: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    folder = cache / sub
    folder.mkdir(parents=True, exist_ok=True)
    for spec, members in wheels.items():
        missing = {m: n for m, n in members.items() if not (folder / n).exists()}
        if missing:
            with zipfile.ZipFile(_wheel(spec, cache)) as zf:
                names = set(zf.namelist())
                for member, local in missing.items():
                    if member in names:
                        tmp = folder / f".{local}.part"
                        tmp.write_bytes(zf.read(member))
                        tmp.replace(folder / local)
        out.update({Path(n).stem: folder / n for n in members.values() if (folder / n).exists()})
    return out


def trained_models(cache: Path) -> dict[str, TrainedModel]:
    """The trained networks, keyed by name."""
    files = _extract(MODEL_WHEELS, Path(cache), "models")
    ocr_mean, ocr_std = [127.5] * 3, [127.5] * 3
    return {m.name: m for m in (
        TrainedModel("nudenet", files["nudenet_yolov8n_320"], (1, 3, 320, 320), [0.0] * 3, [255.0] * 3,
                     "yolo-detect"),
        TrainedModel("ppocr_det", files["ppocr_det"], (1, 3, 320, 320), ocr_mean, ocr_std, "text-detect"),
        TrainedModel("ppocr_rec", files["ppocr_rec"], (1, 3, 48, 320), ocr_mean, ocr_std, "text-recognise"),
        TrainedModel("ppocr_cls", files["ppocr_cls"], (1, 3, 48, 192), ocr_mean, ocr_std, "direction"),
    )}


def real_photos(cache: Path) -> dict[str, Path]:
    """Real photographs shipped in wheels, keyed by their stem (astronaut, bus, china, grace_hopper, ...)."""
    return _extract(PHOTO_WHEELS, Path(cache), "photos")


LINES = ("Rockchip NPU 2026", "rknn dropbox convert", "The quick brown fox", "jumps over 13 lazy dogs",
         "Invoice No. 4711-B", "Total: 128.50 EUR", "Model zoo yolov8n", "Shanghai 200120", "hello world",
         "calibration image", "Verified on board", "SMB share inbox")


def text_lines(cache: Path, out: Path, n: int = 8, rotate_odd: bool = False) -> list[Path]:
    """Printed text lines (48 px high, dark ink on paper, a little blur and grain) for the OCR recogniser and the
    direction classifier (rotate_odd: every other line upside down)."""
    import cv2
    import numpy as np
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    crops: list[Path] = []
    fonts = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX)
    for i in range(n):
        text = LINES[i % len(LINES)]
        font = fonts[i % len(fonts)]
        (w, h), base = cv2.getTextSize(text, font, 1.0, 2)
        img = np.full((h + base + 16, w + 16, 3), rng.uniform(200, 245), np.float32)
        cv2.putText(img, text, (8, h + 8), font, 1.0, tuple(float(v) for v in rng.uniform(10, 60, 3)), 2,
                    cv2.LINE_AA)
        img = cv2.GaussianBlur(img, (0, 0), 0.7) + rng.normal(0, 4, img.shape)
        img = img.clip(0, 255).astype(np.uint8)
        if rotate_odd and i % 2:
            img = cv2.rotate(img, cv2.ROTATE_180)
        path = out / f"line{i}.png"
        cv2.imwrite(str(path), img)
        crops.append(path)
    return crops


if __name__ == "__main__":
    target = Path(sys.argv[1])
    print({k: str(v.path) for k, v in trained_models(target).items()})
    print(sorted(real_photos(target)))


def photo_drop(folder: Path, model: Path, photos: dict[str, Path], calibration: tuple[str, ...],
               held_out: tuple[str, ...], sidecar: str, name: str = "") -> Path:
    """A model dropped for int8 with real photos: the model (as `name`), calibration photos + dataset.txt, held-out
    photos in heldout/ + verify.txt, and config.yaml: `sidecar` with verify_dataset pointing at them."""
    import shutil
    folder.mkdir(parents=True)
    shutil.copy(model, folder / (name or model.name))
    for n in calibration:
        shutil.copy(photos[n], folder / photos[n].name)
    (folder / "dataset.txt").write_text("\n".join(photos[n].name for n in calibration) + "\n")
    (folder / "heldout").mkdir()
    for n in held_out:
        shutil.copy(photos[n], folder / "heldout" / photos[n].name)
    (folder / "heldout" / "verify.txt").write_text("\n".join(photos[n].name for n in held_out) + "\n")
    (folder / "config.yaml").write_text(sidecar + "verify_dataset: heldout/verify.txt\n")
    return folder

"""Verification inputs: real samples decoded the way rknn-toolkit2 decodes calibration data, else structured
synthetic images (seeded random for inputs that are no image)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rknn_dropbox.convert.calibration import IMAGE_EXTS, read_dataset_lines

SEED = 20240601
DEFAULT_COUNT = 4
SYNTHETIC = "synthetic images"   # SampleSet.source when the bundle brings no real samples


@dataclass
class Sample:
    """One verification input set: one array per model input."""
    name: str                                   # the dataset line's file names, or "seeded random #n"
    raw: list[np.ndarray]                       # what the .rknn takes (before mean/std), in the source layout
    norm: list[np.ndarray]                      # what the source model takes (mean/std applied)
    files: list[Path] = field(default_factory=list)  # the files of the line (accuracy_analysis reads them)


@dataclass
class SampleSet:
    """The samples verification runs on and where they came from."""
    samples: list[Sample]
    source: str                                 # verify_dataset | calibration set | synthetic images | seeded random

    @property
    def synthetic(self) -> bool:
        """No real samples: a shortfall is a warning, never a repair."""
        return self.source in (SYNTHETIC, "seeded random")
    skipped: list[str] = field(default_factory=list)  # lines that could not be decoded, with why

    def to_json(self, count: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "names": [s.name for s in self.samples[:count]]}
        if self.skipped:
            d["skipped"] = self.skipped
        return d


@dataclass(frozen=True)
class InputLayout:
    """What the model's inputs look like and how the toolkit preprocesses calibration images for it."""
    shapes: list[list[int]]
    channels_last: bool                         # the source model takes NHWC (TensorFlow / TFLite)
    mean: list[list[float]] | None = None
    std: list[list[float]] | None = None
    rgb2bgr: bool = False                       # config(quant_img_RGB2BGR=True)


def spread(n_items: int, count: int) -> list[int]:
    """`count` indices spread evenly over n_items (all of them when there are fewer)."""
    if n_items <= count:
        return list(range(n_items))
    return sorted({round(i * (n_items - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


def decode_image(path: Path, shape: list[int], channels_last: bool, rgb2bgr: bool) -> np.ndarray:
    """As rknn-toolkit2 2.5.0 loads a quantization image (traced): cv2.imread, BGR->RGB, cv2.resize to the
    input's (w, h), RGB->BGR again when quant_img_RGB2BGR; returned in the source layout with a batch axis."""
    import cv2
    img = cv2.imread(str(path))
    if img is None:
        raise ValueError("cv2 cannot decode it")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if len(shape) != 4:
        raise ValueError(f"an image for an input of shape {shape}")
    h, w, c = (shape[1], shape[2], shape[3]) if channels_last else (shape[2], shape[3], shape[1])
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h))
    if rgb2bgr:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if c == 1:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None]
    elif c != 3:
        raise ValueError(f"a 3-channel image for an input with {c} channels")
    arr = img.astype(np.float32)[None]
    return arr if channels_last else arr.transpose(0, 3, 1, 2)


def decode_npy(path: Path, shape: list[int], channels_last: bool) -> np.ndarray:
    """A .npy sample as is: reshaped to the input's shape (or transposed when it holds the other layout)."""
    arr = np.load(path, allow_pickle=False).astype(np.float32)
    if list(arr.shape) == list(shape):
        return arr
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"holds {list(arr.shape)}, the input is {shape}")
    if arr.ndim in (3, 4) and len(shape) == 4:
        a4 = arr.reshape((1, *arr.shape[-3:]))
        other = a4.transpose(0, 2, 3, 1) if channels_last else a4.transpose(0, 3, 1, 2)
        if list(other.shape) == list(shape):
            return np.ascontiguousarray(other)
    return arr.reshape(shape)


def _channel_values(values: list[list[float]] | None, i: int, channels: int, channels_last: bool
                    ) -> np.ndarray | None:
    if not values:
        return None
    row = np.asarray(values[i] if i < len(values) else values[-1], dtype=np.float32)
    if row.size == 1:
        return row.reshape(())
    if row.size != channels:
        return None
    return row.reshape((1, 1, 1, channels) if channels_last else (1, channels, 1, 1))


def normalize(raw: list[np.ndarray], layout: InputLayout) -> list[np.ndarray]:
    """(x - mean) / std per channel: what the source model takes for what the .rknn takes."""
    out = []
    for i, x in enumerate(raw):
        y = x.astype(np.float32)
        if x.ndim == 4:
            channels = x.shape[-1] if layout.channels_last else x.shape[1]
            m = _channel_values(layout.mean, i, channels, layout.channels_last)
            s = _channel_values(layout.std, i, channels, layout.channels_last)
            y = y - m if m is not None else y
            y = y / s if s is not None else y
        out.append(y.astype(np.float32))
    return out


def eight_bit_range(layout: InputLayout) -> bool:
    """mean/std that describe 8-bit images (a value above 1.5) make 0-255 the input range."""
    values = [v for rows in (layout.mean or [], layout.std or []) for row in rows for v in row]
    return any(abs(v) > 1.5 for v in values)


def random_samples(layout: InputLayout, count: int) -> list[Sample]:
    """Seeded uniform noise: for inputs that are no image (a sequence, a feature vector)."""
    rng = np.random.default_rng(SEED)
    scale = 255.0 if eight_bit_range(layout) else 1.0
    samples = []
    for n in range(count):
        raw = [(rng.random(tuple(shape), dtype=np.float32) * scale).astype(np.float32) for shape in layout.shapes]
        samples.append(Sample(f"seeded random #{n + 1}", raw, normalize(raw, layout)))
    return samples


SYNTHETIC_KINDS = ("colour field", "edges", "texture", "shapes")


def _image_dims(shape: list[int], channels_last: bool) -> tuple[int, int, int] | None:
    """(height, width, channels) of an image input (1 or 3 channels, at least 8x8), else None."""
    if len(shape) != 4:
        return None
    h, w, c = (shape[1], shape[2], shape[3]) if channels_last else (shape[2], shape[3], shape[1])
    return (h, w, c) if c in (1, 3) and h >= 8 and w >= 8 else None


def synthetic_image(kind: str, seed: int, h: int, w: int) -> np.ndarray:
    """A structured RGB image in 0..1 (not uniform noise): a smooth colour field, edges, a texture or soft shapes,
    the statistics real photos have (large smooth regions, strong edges, repeated detail)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / max(h - 1, 1), xx / max(w - 1, 1)
    c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    t = np.clip(xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1) + 0.5, 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    if kind == "edges":
        for _ in range(6):
            y0, x0 = rng.uniform(0, 0.8, 2)
            y1, x1 = y0 + rng.uniform(0.1, 0.5), x0 + rng.uniform(0.1, 0.5)
            img[(yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)] = rng.uniform(0, 1, 3)
    elif kind == "texture":
        f = rng.uniform(4, 24, 2)
        wave = 0.5 + 0.25 * np.sin(2 * np.pi * f[0] * xx + rng.uniform(0, 6)) * np.cos(2 * np.pi * f[1] * yy)
        img = img * 0.5 + wave[..., None] * rng.uniform(0.3, 1.0, 3) * 0.5 + rng.normal(0, 0.02, (h, w, 3))
    elif kind == "shapes":
        for _ in range(5):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))[..., None]
            img = img * (1 - blob) + rng.uniform(0, 1, 3) * blob
    return np.clip(img, 0, 1).astype(np.float32)


def synthetic_samples(layout: InputLayout, count: int) -> list[Sample]:
    """Structured synthetic images for image inputs (seeded random for the others): what verification runs on
    when the bundle brings no real samples."""
    samples = []
    scale = 255.0 if eight_bit_range(layout) else 1.0
    noise = random_samples(layout, count)
    for n in range(count):
        kind = SYNTHETIC_KINDS[n % len(SYNTHETIC_KINDS)]
        raw = []
        for i, shape in enumerate(layout.shapes):
            dims = _image_dims(shape, layout.channels_last)
            if dims is None:
                raw.append(noise[n].raw[i])
                continue
            h, w, c = dims
            img = synthetic_image(kind, SEED + n, h, w) * scale
            img = img.mean(axis=2, keepdims=True) if c == 1 else img
            arr = img[None].astype(np.float32)
            raw.append(arr if layout.channels_last else np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
        samples.append(Sample(f"synthetic {kind}", raw, normalize(raw, layout)))
    return samples


def has_image_inputs(layout: InputLayout) -> bool:
    return any(_image_dims(s, layout.channels_last) for s in layout.shapes)


def decode_line(files: list[Path], layout: InputLayout) -> Sample:
    """One dataset line: one file per model input (ValueError says what does not fit)."""
    if len(files) != len(layout.shapes):
        raise ValueError(f"{len(files)} files for {len(layout.shapes)} model inputs")
    raw = []
    for f, shape in zip(files, layout.shapes):
        try:
            if f.suffix.lower() == ".npy":
                raw.append(decode_npy(f, shape, layout.channels_last))
            elif f.suffix.lower() in IMAGE_EXTS:
                raw.append(decode_image(f, shape, layout.channels_last, layout.rgb2bgr))
            else:
                raise ValueError("not an image (jpg/png/bmp) or .npy")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{f.name}: {exc}") from None
    return Sample(" ".join(f.name for f in files), raw, normalize(raw, layout), list(files))


def collect_samples(layout: InputLayout, verify_dataset: Path | None, calibration: Path | None,
                    count: int = DEFAULT_COUNT) -> SampleSet:
    """Up to `count` samples: the verify_dataset's lines first, else the calibration set's, else seeded random."""
    skipped: list[str] = []
    for source, dataset in (("verify_dataset", verify_dataset), ("calibration set", calibration)):
        if dataset is None:
            continue
        try:
            lines = read_dataset_lines(dataset)
        except OSError as exc:
            skipped.append(f"{dataset.name}: cannot read ({exc.strerror})")
            continue
        first = spread(len(lines), count)  # spread over the set; other lines stand in for undecodable ones
        samples = []
        for i in first + [i for i in range(len(lines)) if i not in first]:
            if len(samples) >= count:
                break
            try:
                samples.append(decode_line(lines[i], layout))
            except ValueError as exc:
                skipped.append(str(exc))
        if samples:
            return SampleSet(samples, source, skipped)
        if source == "verify_dataset":  # held-out samples were asked for: none fitting is an error, not a fallback
            raise ValueError(f"none of the {len(lines)} verify_dataset lines fits the model: {'; '.join(skipped[:3])}")
    if has_image_inputs(layout):
        return SampleSet(synthetic_samples(layout, min(count, len(SYNTHETIC_KINDS))), SYNTHETIC, skipped)
    return SampleSet(random_samples(layout, min(count, 2)), "seeded random", skipped)

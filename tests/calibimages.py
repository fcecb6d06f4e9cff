"""Calibration images that look like photos (smooth gradients, soft shapes, a little noise), written as jpgs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def natural_image(seed: int, height: int, width: int) -> Any:
    """A smooth, photo-like RGB uint8 image: a lit gradient background, soft shapes, a little sensor noise."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    angle = rng.uniform(0, np.pi)
    t = ((xx * np.cos(angle) + yy * np.sin(angle)) / (width + height) + 0.5).clip(0, 1)[..., None]
    img = (c0 * (1 - t) + c1 * t).astype(np.float32)
    for _ in range(int(rng.integers(3, 7))):
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(width // 12, width // 3)), int(rng.integers(height // 12, height // 3)))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
        else:
            w, h = int(rng.integers(width // 10, width // 2)), int(rng.integers(height // 10, height // 2))
            cv2.rectangle(img, center, (center[0] + w, center[1] + h), color, -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(1.0, width / 150))
    light = 0.75 + 0.25 * np.exp(-(((xx - width * rng.random()) ** 2 + (yy - height * rng.random()) ** 2)
                                   / (2 * (0.6 * max(width, height)) ** 2)))[..., None]
    img = img * light + rng.normal(0, 3, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def make_calibration_set(folder: Path, input_shape: tuple[int, ...] | list[int], n: int = 8,
                         seed: int = 7) -> Path:
    """n jpgs at the model's input size in folder, listed in folder/dataset.txt (names relative to it)."""
    import cv2
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    height, width = int(input_shape[-2]), int(input_shape[-1])
    names = []
    for i in range(n):
        name = f"calib_{i:02d}.jpg"
        rgb = natural_image(seed + i, height, width)
        cv2.imwrite(str(folder / name), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        names.append(name)
    dataset = folder / "dataset.txt"
    dataset.write_text("".join(f"{n}\n" for n in names))
    return dataset

"""A stand-in for rknn-toolkit-lite2's RKNNLite (tests only): instead of the .rknn on an NPU it runs the ONNX the
build loaded in onnxruntime, with the build's mean/std applied to the NHWC uint8 images the board script feeds.

Set RKNNLITE_STANDIN_ONNX (the ONNX) and RKNNLITE_STANDIN_MEAN / _STD ("0,0,0" / "255,255,255") in the environment."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class RKNNLite:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.session: Any = None
        self.loaded = ""

    def load_rknn(self, path: str) -> int:
        self.loaded = path
        return 0 if os.path.exists(path) else -1

    def init_runtime(self, *args: Any, **kwargs: Any) -> int:
        import onnxruntime as ort
        self.session = ort.InferenceSession(os.environ["RKNNLITE_STANDIN_ONNX"], providers=["CPUExecutionProvider"])
        return 0

    def inference(self, inputs: list[np.ndarray], data_format: Any = None, **kwargs: Any) -> list[np.ndarray]:
        mean = np.array([float(v) for v in os.environ.get("RKNNLITE_STANDIN_MEAN", "0,0,0").split(",")], np.float32)
        std = np.array([float(v) for v in os.environ.get("RKNNLITE_STANDIN_STD", "1,1,1").split(",")], np.float32)
        feeds = {}
        for inp, x in zip(self.session.get_inputs(), inputs):
            x = (np.asarray(x, np.float32) - mean) / std   # NHWC, as the board's runtime takes images
            feeds[inp.name] = x.transpose(0, 3, 1, 2)
        return list(self.session.run(None, feeds))

    def release(self) -> None:
        self.session = None

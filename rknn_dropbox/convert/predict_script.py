"""The board-side predict.py written beside every delivered model: its settings, the decoders and the body inlined."""

from __future__ import annotations

import inspect
import pprint
from pathlib import Path
from typing import Any

from rknn_dropbox import __version__
from rknn_dropbox.convert import predict_board
from rknn_dropbox.convert.yolo import decode

HEADER = '''#!/usr/bin/env python3
"""Run {model} on the board (rknn-toolkit-lite2's RKNNLite) and print what it finds, as JSON.

    python3 predict.py photo.jpg [--model {model}] [--conf 0.25] [--iou 0.45]

Written by rknn-dropbox {version} for this build: input {shape}{image};
mean/std are inside the model. {what}
Needs numpy and opencv-python (or Pillow) beside rknn-toolkit-lite2.
"""
'''


def _input_config(shape: list[int], bgr: bool) -> dict[str, Any]:
    """Whether the input is an image (NCHW or NHWC with 1 or 3 channels) and its height and width."""
    image = len(shape) == 4 and (shape[1] in (1, 3) or shape[3] in (1, 3))
    hw = (shape[2:4] if shape[1] in (1, 3) else shape[1:3]) if image else []
    return {"shape": shape, "image": image, "hw": list(hw), "bgr": bgr}


def predict_config(targets: list[dict[str, Any]], input_shape: list[int], layout: dict[str, Any] | None,
                   output_shapes: list[list[int]], bgr: bool) -> dict[str, Any]:
    """What predict.py needs of the build: the .rknn files, the input, the YOLO layout or the output kind."""
    built = [t for t in targets if t.get("ok")]
    kind = "yolo" if layout else ("class_scores" if len(output_shapes) == 1 and len(output_shapes[0]) == 2
                                  and output_shapes[0][-1] >= 2 else "raw")
    return {"models": [t["file"] for t in built], "platforms": [t["platform"] for t in built],
            "input": _input_config(list(input_shape), bgr), "yolo": layout, "kind": kind}


def _body(module: Any) -> str:
    """A module's source without its docstring, its __future__ import and the lines marked `# inlined`."""
    lines = inspect.getsource(module).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("from __future__")) + 1
    return "\n".join(line for line in lines[start:] if not line.rstrip().endswith("# inlined")).strip() + "\n"


def write_predict_script(folder: Path, config: dict[str, Any]) -> Path:
    """folder/predict.py for this build."""
    what = {"yolo": f"It decodes the YOLO head ({(config['yolo'] or {}).get('layout')} layout: DFL, boxes, NMS)\n"
                    "and prints the detections in the photo's pixels (with a pose head's keypoints,\n"
                    "an OBB head's rotated box).",
            "class_scores": "It prints the top-5 class scores.",
            "raw": "It prints each output's shape and first values."}[config["kind"]]
    shape = config["input"]["shape"]
    image = " (an RGB photo, resized to it)" if config["input"]["image"] and not config["input"]["bgr"] else \
        " (a BGR photo, resized to it: quant_img_RGB2BGR)" if config["input"]["image"] else " (an .npy)"
    text = (HEADER.format(model=config["models"][0], version=__version__, shape=shape, image=image, what=what)
            + "\nfrom __future__ import annotations\n\n" + _body(decode)
            + f"\n\nCONFIG = {pprint.pformat(config, width=110, sort_dicts=False)}\n\n" + _body(predict_board))
    path = folder / "predict.py"
    tmp = folder / ".predict.py.part"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path

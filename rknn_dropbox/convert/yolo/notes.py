"""What result.json says about a YOLO head's delivered layout: what was done and why, in sentences."""

from __future__ import annotations

from rknn_dropbox.convert.yolo.head import UltralyticsHead
from rknn_dropbox.convert.yolo.layouts import YoloLayout

TASK_WORDS = {"segment": "segmentation", "pose": "pose", "obb": "oriented-box", "detect": "detection"}


def _what(head: UltralyticsHead) -> str:
    version = f", Ultralytics {head.version}" if head.version else ""
    return f"a stock {head.family} {TASK_WORDS.get(head.task, head.task)} export{version}"


def _listed(layout: YoloLayout, limit: int = 4) -> str:
    shown = [f"{n} {s}" for n, s in zip(layout.outputs, layout.shapes)][:limit]
    more = len(layout.outputs) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def layout_notes(head: UltralyticsHead, layout: YoloLayout, quantize: bool, asked: bool) -> list[str]:
    """The sentences for result.json's warnings (asked: the sidecar's yolo_outputs chose the layout)."""
    original = f"{layout.original.get('name')} {layout.original.get('shape')}"
    why = "yolo_outputs" if asked else ("the default for int8" if quantize else "the default for fp16")
    notes = _layout_sentence(head, layout, quantize, why, original)
    if layout.float_ranges and quantize:
        notes.append(f"{_what(head)}: its keypoint branch ({len(layout.float_ranges)} ranges, from "
                     f"{layout.float_ranges[0][0]} to {layout.float_ranges[0][1]}) is kept in float16 (the toolkit's "
                     "custom_hybrid, as the model zoo's pose demo builds it): the keypoints' pixel coordinates and "
                     "their 0-1 visibility would otherwise share one int8 scale")
    return notes


def _layout_sentence(head: UltralyticsHead, layout: YoloLayout, quantize: bool, why: str, original: str
                     ) -> list[str]:
    if layout.layout == "split":
        return [f"{_what(head)}: built with its final Concat's parts as separate outputs ({_listed(layout)}; "
                f"{why}), so that int8 gives box coordinates and class scores a quantization scale each instead of "
                f"one shared scale that leaves the 0-1 scores almost no step; {layout.reassemble} "
                "(outputs_layout in result.json; yolo_outputs: keep builds the stock layout)"]
    if layout.layout == "rknn_model_zoo" and head.task in ("pose", "obb"):
        last = "the decoded keypoints" if head.task == "pose" else "the angles' sigmoid"
        return [f"{_what(head)}: cut to the Rockchip model zoo's {head.task} layout ({why}): per scale the DFL box "
                f"logits and the class logits in one tensor, then {last} ({len(layout.outputs)} outputs: "
                f"{_listed(layout, 4)}); DFL, box decoding and NMS run on the CPU as in the zoo's demos and "
                f"predict.py beside the model (outputs_layout in result.json; the original was {original})"]
    if layout.layout == "rknn_model_zoo":
        return [f"{_what(head)}: cut to the Rockchip model zoo's layout ({why}): per scale the DFL box logits, "
                f"the sigmoid class scores and their sum clamped to 0-1 ({len(layout.outputs)} outputs: "
                f"{_listed(layout, 3)}); DFL, box decoding and NMS run on the CPU as in the zoo's demos and "
                f"predict.py beside the model (outputs_layout in result.json; the original was {original})"]
    if quantize:
        return [f"{_what(head)}: kept as exported ({why}): its one output {original} holds box coordinates (up to "
                "the input size) and class scores (0 to 1) under one int8 scale, which usually loses the scores; "
                "check the detections, or use yolo_outputs: split (the default) or rknn_model_zoo"]
    return [f"{_what(head)}: kept as exported ({why}: float16 keeps the scores' precision); yolo_outputs: split or "
            "rknn_model_zoo give the layouts an int8 build needs (the model zoo's: DFL and decoding on the CPU)"]

"""Sentences about model shapes the toolkit handles badly: data-dependent outputs, rule crashes, memory, YOLO heads."""

from __future__ import annotations

import re

from rknn_dropbox.formats.graphtraits import YoloHead

DATA_DEPENDENT_ERROR = ("the model computes an output shape from its data (NMS / TopK / NonZero), which the NPU "
                        "cannot run: {nodes}")
DATA_DEPENDENT_HINT = ("export it without post-processing, e.g. a torchvision detector's backbone and head only "
                       "(raw boxes and scores as outputs), and run box decoding and NMS on the CPU; or cut the graph "
                       "before NonMaxSuppression with the sidecar key `outputs: [...]`")
# the toolkit's own words for the same thing, seen when the graph check above could not tell
_DATA_DEPENDENT_LOG = re.compile(
    r"(?:input 0 of (?:NonZero|NonMaxSuppression|TopK)\('([^']*)'\) need to be constant"
    r"|It will cause the graph to be a dynamic graph"
    r"|Reshape[^\n]*Input shape:\{[\d,]+\}, requested shape:\{[\d,]+\})")
_RULE_FRAME = re.compile(r"rules/(\w+)\.py\", line \d+, in [\w.]+\._p_(\w+)")
_MEMORY = re.compile(r"MemoryError|std::bad_alloc|Cannot allocate memory|out of memory|Unable to allocate",
                     re.IGNORECASE)


def data_dependent_error(nodes: list[str]) -> tuple[str, str]:
    """The sentence for a graph whose output shapes depend on its input values (nodes: what was found)."""
    shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
    return DATA_DEPENDENT_ERROR.format(nodes=shown or "the toolkit's constant folding failed on it"), \
        DATA_DEPENDENT_HINT


def data_dependent_in_log(log_text: str) -> str | None:
    """The node the toolkit's log blames for a dynamic graph, or "" for its Reshape folding error; None: no sign."""
    m = _DATA_DEPENDENT_LOG.search(log_text)
    if m is None:
        return None
    return m.group(1) or ""


def crashed_rule(log_text: str) -> tuple[str, str] | None:
    """(rule, file) of the toolkit optimisation rule whose code raised, from the last traceback in the log."""
    found = _RULE_FRAME.findall(log_text)
    if not found:
        return None
    module, rule = found[-1]
    return rule, f"rules/{module}.py"


def rule_crash_error(rule: str, where: str, exception: str, tried: list[str]) -> tuple[str, str]:
    """The sentence for a toolkit rule that crashed and that no retry fixed."""
    if tried:
        said = (f"; the build was retried with disable_rules {tried} (the toolkit's own advice) and rule {rule} "
                "still crashed" if rule in tried else f"; retried with disable_rules {tried} (the toolkit's own "
                "advice), the build then crashed in rule {rule}")
    else:
        said = ""
    error = f"the toolkit's graph optimisation rule {rule} ({where}) crashed: {exception}{said}"
    hint = (f"this is a bug in rknn-toolkit2's optimiser, not in your model: add `disable_rules: [{rule}]` to the "
            "sidecar to skip that rule, try optimization_level: 2, or simplify the graph (e.g. onnxslim) and drop "
            "it again")
    return error, hint


def memory_error(step: str) -> tuple[str, str]:
    return (f"{step} ran out of memory in the toolkit",
            "large inputs (e.g. 512x512 segmentation) need several GB for one build: export at a smaller input "
            "size, run fewer workers, or give the machine (or worker_memory_limit_mb) more memory")


def is_memory_exhaustion(text: str) -> bool:
    return bool(_MEMORY.search(text))


def yolo_warnings(head: YoloHead, quantized: bool) -> list[str]:
    """What result.json says about a stock Ultralytics head; the graph itself is never rewritten."""
    task = {"segment": "segmentation", "pose": "pose", "obb": "oriented-box"}.get(head.task, "detection")
    outputs = ", ".join(head.concat_outputs)
    notes = [
        f"this is a stock Ultralytics YOLO {task} export ({head.source}): its output {outputs} holds the decoded "
        "boxes (DFL softmax and box decoding inside the graph) concatenated with the class scores. The Rockchip "
        "model zoo exports YOLO differently for the NPU: one output per scale (boxes and scores split), with DFL "
        "and the post-processing (decoding, NMS) left to the CPU; this model was converted as dropped, without "
        "rewriting its graph",
    ]
    if quantized:
        notes.append(
            "int8 on a concatenated box+score output loses accuracy: box coordinates (up to the input size, "
            "hundreds) and scores (0 to 1) share one tensor and so one quantization scale, which leaves the scores "
            "only a few of the 256 steps; check the detections, or build fp16 (do_quantization: false), or export "
            "as the Rockchip model zoo does (split outputs, DFL and decoding on the CPU)")
    return notes

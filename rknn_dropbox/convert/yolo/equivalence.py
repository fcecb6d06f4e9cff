"""Proof that an edited YOLO head is the stock one: both graphs run on the same inputs and decoded, every difference
within float rounding (else the job fails in words)."""

from __future__ import annotations

from typing import Any

from rknn_dropbox.convert.yolo import decode
from rknn_dropbox.convert.yolo.onnxedit import fixed_inputs, input_dims, run_graph


# the edited head decoded must give the stock head's output back to within these (float rounding of a reordered sum)
EQUIVALENCE_TOLERANCE = {"boxes_px": 0.05, "scores": 1e-4, "keypoints_px": 0.05, "angle": 1e-4}


def decoded_differences(edited: dict[str, Any], stock_layout: dict[str, Any], stock: Any, edited_path: Any,
                        input_shapes: list[list[int]] | None) -> dict[str, Any]:
    """Run the stock graph and the edited one on two inputs (seeded noise, mid-grey), decode each by its layout
    (result.json's outputs_layout) and give the largest difference of each thing decoded, with the inputs' count."""
    import numpy as np
    import onnx
    fixed, changed = fixed_inputs(stock, input_shapes), onnx.load(str(edited_path))
    dims = input_dims(fixed)
    rng = np.random.default_rng(0)
    inputs = [[rng.random(d, dtype=np.float32) for d in dims], [np.full(d, 0.5, np.float32) for d in dims]]
    worst: dict[str, float] = {}
    for x in inputs:
        want = decode.head_outputs(run_graph(fixed, x), stock_layout)
        got = decode.head_outputs(run_graph(changed, x), edited)
        for key, a, b in (("boxes_px", want[0], got[0]), ("scores", want[1], got[1]),
                          ("keypoints_px", want[2].get("keypoints"), got[2].get("keypoints")),
                          ("angle", want[2].get("angle"), got[2].get("angle"))):
            if a is not None and b is not None:
                worst[key] = max(worst.get(key, 0.0), float(np.abs(np.asarray(a) - np.asarray(b)).max()))
    return {"inputs": len(inputs), **{k: round(v, 6) for k, v in worst.items()}}


def beyond_tolerance(differences: dict[str, Any]) -> list[str]:
    """The decoded things that differ by more than EQUIVALENCE_TOLERANCE, in words ("scores differs by 1")."""
    return [f"{k} differs by {v:.4g}" for k, v in differences.items()
            if k in EQUIVALENCE_TOLERANCE and not v <= EQUIVALENCE_TOLERANCE[k]]

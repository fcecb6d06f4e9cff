"""The ONNX graph surgery the YOLO layouts are made of: fixed input shapes, renamed and pruned tensors, new outputs,
the tensors a pose / OBB head's zoo outputs are cut at, and running a graph once in onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fixed_inputs(model: Any, input_shapes: list[list[int]] | None) -> Any:
    """A copy with the planned input shapes, its value shapes inferred (the layout's shapes are concrete)."""
    import onnx
    m = onnx.ModelProto()
    m.CopyFrom(model)
    initializers = {i.name for i in m.graph.initializer}
    real = [i for i in m.graph.input if i.name not in initializers]
    for inp, shape in zip(real, input_shapes or []):
        for d, size in zip(inp.type.tensor_type.shape.dim, shape):
            d.Clear()
            d.dim_value = int(size)
    return onnx.shape_inference.infer_shapes(m)


def value_shapes(model: Any) -> dict[str, list[int]]:
    known = [*model.graph.value_info, *model.graph.output, *model.graph.input]
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in known}


def rename(model: Any, old: str, new: str) -> None:
    for node in model.graph.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name == old:
                    seq[i] = new


def prune(model: Any) -> None:
    """Drop the nodes no graph output needs (the final Concat and the decoding after the cut)."""
    made_by = producers(model)
    needed, stack, keep = set(), [o.name for o in model.graph.output], set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = made_by.get(name)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(i for i in node.input if i)
    kept = [n for n in model.graph.node if id(n) in keep]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    del model.graph.value_info[:]


def set_outputs(model: Any, names: list[str], shapes: list[list[int]]) -> None:
    import onnx
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
                              for n, s in zip(names, shapes))


def input_dims(model: Any) -> list[list[int]]:
    initializers = {i.name for i in model.graph.initializer}
    return [[d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input
            if i.name not in initializers]


def input_hw(model: Any) -> tuple[int, int]:
    first = input_dims(model)[0]
    return int(first[-2]), int(first[-1])


def run_graph(model: Any, inputs: list[Any] | None = None) -> list[Any]:
    """The graph (a ModelProto) run once in onnxruntime: on `inputs`, or on zeros of its input shapes."""
    import numpy as np
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    arrays = inputs or [np.zeros(dims, np.float32) for dims in input_dims(model)]
    return list(sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), arrays)}))


def output_shapes(model: Any) -> list[list[int]]:
    """The outputs' real shapes: the graph run once on zeros (shape inference leaves Reshape results open)."""
    return [list(o.shape) for o in run_graph(model)]


def save_graph(model: Any, scratch: Path, stem: str, layout: str) -> Path:
    import onnx
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"{stem}.{layout}.onnx"
    onnx.save(model, str(path))
    return path


def opset(model: Any) -> int:
    """The model's default-domain opset."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def producers(model: Any) -> dict[str, Any]:
    """Each tensor's producing node."""
    return {o: n for n in model.graph.node for o in n.output}


def keypoints_tensor(model: Any, part: str, kpt: tuple[int, int], shapes: dict[str, list[int]]) -> str:
    """The decoded keypoints as [1, K, D, N]: the tensor the stock head reshapes into its keypoints part, or (when
    the graph has none) a Reshape added after the part."""
    import numpy as np
    import onnx
    node = producers(model).get(part)
    if node is not None and node.op_type == "Reshape" and len(shapes.get(node.input[0], [])) == 4 \
            and shapes[node.input[0]][1:3] == list(kpt):
        return node.input[0]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, *kpt, -1], np.int64),
                                                                "/rknn_dropbox/keypoints_shape"))
    model.graph.node.append(onnx.helper.make_node("Reshape", [part, "/rknn_dropbox/keypoints_shape"],
                                                  ["/rknn_dropbox/keypoints"], name="/rknn_dropbox/Reshape_kpt"))
    return "/rknn_dropbox/keypoints"


def angle_sigmoid(model: Any, part: str) -> str:
    """An OBB head's angles as the sigmoid of their logits [1, 1, N] (the stock part is (sigmoid - 0.25) * pi):
    the Sigmoid the part is computed from, or the part mapped back when the graph has none."""
    import numpy as np
    import onnx
    made_by, name = producers(model), part
    for _ in range(4):
        node = made_by.get(name)
        if node is None:
            break
        if node.op_type == "Sigmoid":
            return node.output[0]
        if node.op_type not in ("Mul", "Sub", "Add", "Div"):
            break
        name = node.input[0]
    g, h = model.graph, onnx.helper
    g.initializer.extend([onnx.numpy_helper.from_array(np.array(np.pi, np.float32), "/rknn_dropbox/pi"),
                          onnx.numpy_helper.from_array(np.array(0.25, np.float32), "/rknn_dropbox/quarter")])
    g.node.extend([h.make_node("Div", [part, "/rknn_dropbox/pi"], ["/rknn_dropbox/angle_turns"]),
                   h.make_node("Add", ["/rknn_dropbox/angle_turns", "/rknn_dropbox/quarter"], ["/rknn_dropbox/angle"])])
    return "/rknn_dropbox/angle"


def keypoint_branches(model: Any, head: Any, end: str) -> list[tuple[str, str]]:
    """Per scale [the keypoint branch's first activation, `end`]: the custom_hybrid ranges the model zoo keeps in
    float16 for a pose head (/model.22/cv4.i/cv4.i.0/act/Mul_output_0 to the keypoints)."""
    made_by = producers(model)
    ranges = []
    for scale in head.scales:
        if not scale.mask:
            continue
        first = scale.mask.replace(".2/Conv_output_0", ".0/act/Mul_output_0")
        conv = made_by.get(scale.mask)
        ranges.append((first if first in made_by else conv.input[0] if conv is not None else scale.mask, end))
    return ranges

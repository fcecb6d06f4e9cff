"""TensorFlow graphs in the worker: freezing SavedModels and checkpoints to a .pb, finding a graph's inputs/outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NON_OUTPUT_OPS = {"NoOp", "Const", "Placeholder", "PlaceholderWithDefault", "VariableV2", "VarHandleOp", "Assign",
                   "AssignVariableOp", "SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename",
                   "StringJoin", "Variable", "ReadVariableOp", "StatefulPartitionedCall", "VarIsInitializedOp",
                   "IsVariableInitialized"}
_SKIP_SCOPES = ("save/", "save_", "init", "report_uninitialized", "gradients/", "global_step")


class TFGraphError(ValueError):
    """A TensorFlow model that cannot be prepared for the toolkit; the message says what is missing."""


@dataclass
class TFGraph:
    """A frozen graph ready for load_tensorflow, with the tensors it was cut at."""
    pb: Path
    inputs: list[str]
    outputs: list[str]
    input_size_list: list[list[int]]
    found: str  # how inputs/outputs were decided, for the log and result.json


def _tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError:
        raise TFGraphError("TensorFlow models need TensorFlow, which is not installed: "
                           "install rknn-dropbox[tensorflow]") from None
    return tf


def _shape_of(node: Any) -> list[int] | None:
    if "shape" not in node.attr:
        return None
    shape = node.attr["shape"].shape
    if shape.unknown_rank:
        return None
    return [d.size for d in shape.dim]


def graph_io(graph_def: Any) -> tuple[list[str], list[str], dict[str, list[int] | None]]:
    """Placeholders (with their shapes) and the nodes nothing consumes (the outputs), by node name."""
    consumed: set[str] = set()
    for node in graph_def.node:
        for inp in node.input:
            consumed.add(inp.lstrip("^").split(":")[0])
    inputs = [n.name for n in graph_def.node if n.op == "Placeholder"]
    shapes = {n.name: _shape_of(n) for n in graph_def.node if n.op == "Placeholder"}
    outputs = [n.name for n in graph_def.node
               if n.name not in consumed and n.op not in _NON_OUTPUT_OPS and not n.name.startswith(_SKIP_SCOPES)]
    return inputs, outputs, shapes


def _sizes(inputs: list[str], shapes: dict[str, list[int] | None], given: list[list[int]] | None) -> list[list[int]]:
    if given:
        if len(given) != len(inputs):
            raise TFGraphError(f"input_size_list has {len(given)} shapes but the graph has {len(inputs)} inputs "
                               f"({', '.join(inputs)})")
        return given
    out = []
    for name in inputs:
        shape = shapes.get(name)
        if shape is None:
            raise TFGraphError(f"input {name!r} has no fixed shape in the graph: add `input_size_list: "
                               "[[1, 224, 224, 3]]` (one shape per input) to the sidecar")
        dims = [1 if (i == 0 and d < 0) else d for i, d in enumerate(shape)]
        if any(d < 0 for d in dims):
            raise TFGraphError(f"input {name!r} has shape {shape} with unknown dimensions: add `input_size_list` "
                               f"(e.g. [{[1 if d < 0 else d for d in shape]}]) to the sidecar")
        out.append(dims)
    return out


def _decide(graph_def: Any, inputs: list[str] | None, outputs: list[str] | None,
            sizes: list[list[int]] | None, what: str) -> tuple[list[str], list[str], list[list[int]], str]:
    found_in, found_out, shapes = graph_io(graph_def)
    notes = []
    if not inputs:
        if not found_in:
            raise TFGraphError(f"{what}: no Placeholder input found in the graph: name the input tensors with "
                               "`inputs: [name]` in the sidecar")
        inputs = found_in
        notes.append(f"inputs {inputs} found from the graph")
    if not outputs:
        if len(found_out) != 1:
            listing = ", ".join(found_out[:10]) or "none"
            raise TFGraphError(f"{what}: cannot tell the output: candidates are {listing}; name them with "
                               "`outputs: [name]` in the sidecar")
        outputs = found_out
        notes.append(f"outputs {outputs} found from the graph")
    names = {n.name for n in graph_def.node}
    for name in [*inputs, *outputs]:
        if name.split(":")[0] not in names:
            raise TFGraphError(f"{what}: the graph has no node {name!r} (named in the sidecar)")
    return inputs, outputs, _sizes(inputs, shapes, sizes), "; ".join(notes) or "inputs/outputs from the sidecar"


def prepare_frozen(pb: Path, inputs: list[str] | None, outputs: list[str] | None,
                   sizes: list[list[int]] | None) -> TFGraph:
    """A frozen .pb as is, with inputs/outputs/shapes from the sidecar or, where it omits them, from the graph."""
    tf = _tf()
    gd = tf.compat.v1.GraphDef()
    try:
        gd.ParseFromString(pb.read_bytes())
    except Exception as exc:  # noqa: BLE001 - DecodeError and friends
        raise TFGraphError(f"{pb.name} is not a TensorFlow GraphDef ({type(exc).__name__})") from None
    if not gd.node:
        raise TFGraphError(f"{pb.name} is not a TensorFlow GraphDef (no nodes)")
    ins, outs, shapes, found = _decide(gd, inputs, outputs, sizes, pb.name)
    return TFGraph(pb, ins, outs, shapes, found)


def freeze_saved_model(folder: Path, out_pb: Path, inputs: list[str] | None, outputs: list[str] | None,
                       sizes: list[list[int]] | None) -> TFGraph:
    """Freeze a SavedModel's serving signature (or its only one) into out_pb."""
    tf = _tf()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:  # noqa: BLE001
        raise TFGraphError(f"SavedModel {folder.name} cannot be loaded: {str(exc).splitlines()[0][:300]}") from None
    sigs = dict(loaded.signatures)
    if not sigs:
        raise TFGraphError(f"SavedModel {folder.name} has no signatures: save it with "
                           "tf.saved_model.save(model, path, signatures=...)")
    key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
    frozen = convert_variables_to_constants_v2(sigs[key])
    gd = frozen.graph.as_graph_def()
    out_pb.write_bytes(gd.SerializeToString())
    found = "inputs/outputs from the sidecar"
    if not outputs or not inputs:
        found = f"inputs/outputs from signature {key!r}"
    if not outputs:
        outputs = [t.name.split(":")[0] for t in frozen.outputs]
    if not inputs:
        inputs = [t.name.split(":")[0] for t in frozen.inputs if t.dtype != tf.resource]
    ins, outs, shapes, _ = _decide(gd, inputs, outputs, sizes, folder.name)
    return TFGraph(out_pb, ins, outs, shapes, f"SavedModel signature {key!r} frozen; {found}")


def freeze_checkpoint(meta: Path, out_pb: Path, inputs: list[str] | None, outputs: list[str] | None,
                      sizes: list[list[int]] | None) -> TFGraph:
    """Restore a TF1 checkpoint (<prefix>.meta + .index + .data-*) and freeze it at `outputs` into out_pb."""
    tf = _tf()
    prefix = str(meta)[: -len(".meta")]
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=True)
        except Exception as exc:  # noqa: BLE001
            raise TFGraphError(f"{meta.name} is not a TensorFlow MetaGraph ({str(exc).splitlines()[0][:200]})") \
                from None
        gd = graph.as_graph_def()
        ins, outs, shapes, found = _decide(gd, inputs, outputs, sizes, meta.name)
        with tf.compat.v1.Session(graph=graph) as sess:
            try:
                saver.restore(sess, prefix)
            except Exception as exc:  # noqa: BLE001
                raise TFGraphError(f"checkpoint {Path(prefix).name} cannot be restored: "
                                   f"{str(exc).splitlines()[0][:300]}") from None
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, gd, [o.split(":")[0] for o in outs])
    out_pb.write_bytes(frozen.SerializeToString())
    return TFGraph(out_pb, ins, outs, shapes, "checkpoint restored and frozen; " + found)

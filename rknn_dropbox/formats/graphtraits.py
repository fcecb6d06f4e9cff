"""What an ONNX graph's structure says before a build: symbolic input dims, data-dependent shapes, a YOLO head's DFL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Union

Dim = Union[int, str]  # a fixed size, or the name of a symbolic one ("batch", "height", "?")
# ops whose output shape comes from the values of their input, not only from its shape
DATA_DEPENDENT_OPS = ("NonMaxSuppression", "NonZero")
SHAPE_ONLY_OPS = ("Shape", "Size")  # their output depends on an input's shape, which is fixed once inputs are
SUBGRAPH_OPS = ("If", "Loop", "Scan")
DATA_DEPENDENT_ERROR = ("the model computes an output shape from its data (NMS / TopK / NonZero), which the NPU "
                        "cannot run")
DATA_DEPENDENT_HINT = ("export it without post-processing, e.g. a torchvision detector's backbone and head only "
                       "(raw boxes and scores as outputs), and run box decoding and NMS on the CPU; or cut the graph "
                       "before NonMaxSuppression with the sidecar key `outputs: [...]`")


@dataclass(frozen=True)
class GraphInput:
    name: str
    dims: list[Dim]

    @property
    def symbolic(self) -> list[int]:
        """Positions of the dims that are not a fixed positive size."""
        return [i for i, d in enumerate(self.dims) if not (isinstance(d, int) and d > 0)]

    def describe(self) -> str:
        return f"{self.name} [{', '.join(str(d) for d in self.dims)}]"


@dataclass(frozen=True)
class YoloHead:
    """An Ultralytics-style head: DFL (softmax over 16 bins, then a 1x1 conv) and box+score outputs concatenated."""
    task: str                       # detect | segment | pose | obb | (unknown: "detect")
    source: str                     # "Ultralytics <version>" from the export's metadata, or "graph structure"
    concat_outputs: list[str]       # graph outputs that a Concat produces (boxes and scores in one tensor)


@dataclass(frozen=True)
class GraphTraits:
    inputs: list[GraphInput]
    data_dependent: list[str] = field(default_factory=list)  # "NonZero '/detector/NonZero'"
    yolo: YoloHead | None = None


def _dims(value_info: Any) -> list[Dim]:
    out: list[Dim] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def graph_inputs(model: Any) -> list[GraphInput]:
    """The graph's real inputs (not initializers listed as inputs, as old exporters did)."""
    initializers = {i.name for i in model.graph.initializer}
    return [GraphInput(i.name, _dims(i)) for i in model.graph.input if i.name not in initializers]


def _subgraphs(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.g is not None and attr.HasField("g"):
            yield attr.g
        for g in attr.graphs:
            yield g


def _outer_names(graph: Any) -> set[str]:
    """Names a subgraph reads that it does not define: values of the enclosing graph."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        defined.update(node.output)
        for sub in _subgraphs(node):
            used |= _outer_names(sub)
    return used - defined


def _all_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _all_nodes(sub)


def data_dependent_nodes(model: Any) -> list[str]:
    """NonMaxSuppression / NonZero nodes (in subgraphs too) whose inputs depend on the model's input values."""
    dynamic = {i.name for i in graph_inputs(model)}
    found: list[str] = []
    for node in model.graph.node:
        inputs = [n for n in node.input if n]
        if node.op_type in SUBGRAPH_OPS:
            reads = set(inputs) | set().union(*(_outer_names(g) for g in _subgraphs(node)))
            if reads & dynamic:
                dynamic.update(node.output)
                found += [_label(n) for g in _subgraphs(node) for n in _all_nodes(g)
                          if n.op_type in DATA_DEPENDENT_OPS]
            continue
        if node.op_type in SHAPE_ONLY_OPS or not set(inputs) & dynamic:
            continue
        dynamic.update(node.output)
        if node.op_type in DATA_DEPENDENT_OPS:
            found.append(_label(node))
    return list(dict.fromkeys(found))


def _label(node: Any) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else node.op_type


def yolo_head(model: Any) -> YoloHead | None:
    """An Ultralytics head: a Softmax feeding a 1x1 Conv with a [1, bins, 1, 1] weight (DFL), and a Concat output."""
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    softmax_out = {o for n in model.graph.node if n.op_type == "Softmax" for o in n.output}
    dfl = any(n.op_type == "Conv" and n.input and n.input[0] in softmax_out and len(n.input) > 1
              and len(weights.get(n.input[1], [])) == 4 and weights[n.input[1]][0] == 1
              and weights[n.input[1]][2:] == [1, 1] for n in model.graph.node)
    if not dfl:
        return None
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    concat_outputs = [o.name for o in model.graph.output if producer.get(o.name) == "Concat"]
    if not concat_outputs:
        return None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("author") == "Ultralytics":
        return YoloHead(meta.get("task") or "detect", f"Ultralytics {meta.get('version', '')}".strip(),
                        concat_outputs)
    return YoloHead("detect", "graph structure", concat_outputs)


def graph_traits(model: Any) -> GraphTraits:
    """Everything above for one loaded onnx.ModelProto (load it with load_external_data=False)."""
    return GraphTraits(graph_inputs(model), data_dependent_nodes(model), yolo_head(model))


def data_dependent_error(nodes: list[str]) -> tuple[str, str]:
    """The sentence for a graph whose output shapes depend on its input values (nodes: what was found)."""
    nodes = sorted(nodes, key=lambda n: not n.startswith("NonMaxSuppression"))  # the telling one first
    shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
    return DATA_DEPENDENT_ERROR + (f": {shown}" if shown else ""), DATA_DEPENDENT_HINT


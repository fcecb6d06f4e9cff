"""Darknet (.cfg + .weights): recognising the pair, the weights-size check the toolkit skips, loading."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rknn_dropbox.formats.base import Format, IntegrityError, ToolkitCall


def darknet_header_bytes(major: int = 0, minor: int = 2) -> int:
    """Header size as darknet's load_weights reads it: 3 x int32 + `seen` (int64 from version 0.2 on, else int32)."""
    if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000:
        return 12 + 8
    return 12 + 4


def parse_darknet_cfg(cfg_text: str) -> list[tuple[str, dict[str, str]]]:
    """The [section] / key=value list of a Darknet .cfg; ValueError on a malformed line."""
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in cfg_text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"bad section header: {raw!r}")
            sections.append((line[1:-1].strip().lower(), {}))
            continue
        if "=" not in line:
            raise ValueError(f"bad cfg line: {raw!r}")
        if not sections:
            raise ValueError("option before first section")
        k, v = line.split("=", 1)
        sections[-1][1][k.strip()] = v.strip()
    return sections


def _int(opts: dict[str, str], key: str, default: int | None = None) -> int:
    if key in opts:
        return int(opts[key])
    if default is None:
        raise ValueError(f"missing required option {key!r}")
    return default


# layers with no weights that keep (h, w, c) of the previous layer
_DARKNET_PASSTHROUGH = {
    "yolo", "region", "detection", "gaussian_yolo", "dropout", "softmax", "cost",
    "shortcut", "scale_channels", "sam", "activation", "logistic", "l2norm",
    "contrastive",
}


@dataclass(frozen=True)
class DarknetLayerWeights:
    index: int       # layer index as darknet counts it (0 = first section after [net])
    kind: str        # convolutional / connected
    floats: int      # float32 values this layer reads from the .weights file


Shape = tuple[int, int, int]  # h, w, c after a layer


def _conv_layer(idx: int, o: dict[str, str], hwc: Shape, shapes: list[Shape]) -> tuple[Shape, int | None]:
    h, w, c = hwc
    filters, size = _int(o, "filters", 1), _int(o, "size", 1)
    stride, groups = _int(o, "stride", 1), _int(o, "groups", 1)
    if filters <= 0 or size <= 0 or stride <= 0 or groups <= 0 or c % groups:
        raise ValueError(f"layer {idx}: bad convolutional params")
    padding = size // 2 if _int(o, "pad", 0) else _int(o, "padding", 0)
    n = filters + (3 * filters if _int(o, "batch_normalize", 0) else 0) + filters * (c // groups) * size * size
    return ((h + 2 * padding - size) // stride + 1, (w + 2 * padding - size) // stride + 1, filters), n


def _connected_layer(idx: int, o: dict[str, str], hwc: Shape, shapes: list[Shape]) -> tuple[Shape, int | None]:
    h, w, c = hwc
    outputs = _int(o, "output", 1)
    return (1, 1, outputs), outputs + h * w * c * outputs + (3 * outputs if _int(o, "batch_normalize", 0) else 0)


def _maxpool_layer(idx: int, o: dict[str, str], hwc: Shape, shapes: list[Shape]) -> tuple[Shape, int | None]:
    h, w, c = hwc
    stride = _int(o, "stride", 1)
    size = _int(o, "size", stride)
    padding = _int(o, "padding", size - 1)
    return ((h + padding - size) // stride + 1, (w + padding - size) // stride + 1, c), None


def _avgpool_layer(idx: int, o: dict[str, str], hwc: Shape, shapes: list[Shape]) -> tuple[Shape, int | None]:
    return (1, 1, hwc[2]), None


def _upsample_layer(idx: int, o: dict[str, str], hwc: Shape, shapes: list[Shape]) -> tuple[Shape, int | None]:
    h, w, c = hwc
    stride = _int(o, "stride", 2)
    if stride > 0:
        return (h * stride, w * stride, c), None
    return ((h // -stride, w // -stride, c) if stride < 0 else hwc), None


def _reorg_layer(idx: int, o: dict[str, str], hwc: Shape, shapes: list[Shape]) -> tuple[Shape, int | None]:
    h, w, c = hwc
    stride = _int(o, "stride", 1)
    if _int(o, "reverse", 0):
        return (h * stride, w * stride, c // (stride * stride)), None
    return (h // stride, w // stride, c * stride * stride), None


def _route_layer(idx: int, o: dict[str, str], hwc: Shape, shapes: list[Shape]) -> tuple[Shape, int | None]:
    if "layers" not in o:
        raise ValueError(f"layer {idx}: route without layers")
    refs = []
    for tok in o["layers"].split(","):
        j = int(tok)
        j = idx + j if j < 0 else j
        if not 0 <= j < idx:
            raise ValueError(f"layer {idx}: route to invalid layer {tok.strip()}")
        refs.append(shapes[j])
    return (refs[0][0], refs[0][1], sum(r[2] for r in refs) // _int(o, "groups", 1)), None


_LAYER_RULES = {
    "convolutional": _conv_layer, "conv": _conv_layer, "connected": _connected_layer, "fc": _connected_layer,
    "maxpool": _maxpool_layer, "max": _maxpool_layer, "upsample": _upsample_layer, "reorg": _reorg_layer,
    "route": _route_layer,
    "avgpool": _avgpool_layer, "avg": _avgpool_layer,
}
_WEIGHTED_KIND = {"convolutional": "convolutional", "conv": "convolutional",
                  "connected": "connected", "fc": "connected"}


def darknet_weight_layout(cfg_text: str) -> list[DarknetLayerWeights]:
    """The float32 count each weighted layer of `cfg_text` reads, in file order (pure; ValueError if malformed).

    Follows darknet's load_weights: [convolutional] biases, [scales, rolling mean, rolling var if batch_normalize],
    filters*(c/groups)*size*size weights; [connected] biases, inputs*outputs weights, [bn triple]. Tracks h/w/c
    through maxpool, avgpool, upsample, route (incl. groups), reorg and weightless pass-through layers.
    """
    sections = parse_darknet_cfg(cfg_text)
    if not sections or sections[0][0] not in ("net", "network"):
        raise ValueError("cfg must start with [net]")
    net = sections[0][1]
    hwc: Shape = (_int(net, "height", 0), _int(net, "width", 0), _int(net, "channels", 3))
    if hwc[2] <= 0:
        raise ValueError("net channels must be > 0")
    shapes: list[Shape] = []
    layout: list[DarknetLayerWeights] = []
    for idx, (kind, o) in enumerate(sections[1:]):
        rule = _LAYER_RULES.get(kind)
        if rule is None and kind not in _DARKNET_PASSTHROUGH:
            raise ValueError(f"layer {idx}: unsupported darknet layer type [{kind}]")
        if rule is not None:
            hwc, n = rule(idx, o, hwc, shapes)
            if n is not None:
                layout.append(DarknetLayerWeights(idx, _WEIGHTED_KIND[kind], n))
        shapes.append(hwc)
    return layout


def darknet_expected_weights_bytes(cfg_text: str, major: int = 0, minor: int = 2) -> int:
    """Exact byte size of the .weights file implied by `cfg_text` (header included); pure function."""
    return darknet_header_bytes(major, minor) + 4 * sum(layer.floats for layer in darknet_weight_layout(cfg_text))


def check_darknet(cfg: Path, weights: Path) -> None:
    """IntegrityError unless `weights` holds exactly the bytes `cfg` implies (naming the first layer that is short)."""
    try:
        layout = darknet_weight_layout(cfg.read_text(encoding="utf-8", errors="replace"))
    except ValueError as exc:
        raise IntegrityError(f"{cfg.name} is not a Darknet network description the checker understands: {exc}") \
            from None
    size = weights.stat().st_size
    with open(weights, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8:
        raise IntegrityError(f"{weights.name} has {size} bytes, too short even for a Darknet header")
    major, minor = struct.unpack("<ii", head)
    offset = darknet_header_bytes(major, minor)
    expected = offset + 4 * sum(layer.floats for layer in layout)
    if size == expected:
        return
    if size < expected:
        for layer in layout:
            end = offset + 4 * layer.floats
            if end > size:
                raise IntegrityError(
                    f"{weights.name} is truncated: {size} bytes, but {cfg.name} implies {expected} bytes; layer "
                    f"{layer.index} [{layer.kind}] needs bytes {offset}-{end} ({expected - size} bytes missing)")
            offset = end
    last = f"layer {layout[-1].index} [{layout[-1].kind}]" if layout else "the header"
    raise IntegrityError(
        f"{weights.name} has {size - expected} bytes more than {cfg.name} implies ({size} bytes instead of "
        f"{expected}; the last weighted layer is {last}): the weights belong to a different network")


class Darknet(Format):
    name, display, family = "darknet", "Darknet", "darknet"
    pair = (".cfg", ".weights")

    def sniff(self, head: bytes, text: str, path: Path) -> bool:
        return text.startswith("[net]") or text.startswith("[network]")

    def check(self, model: Path, weights: Path | None) -> Any:
        if weights is not None:
            check_darknet(model, weights)
        return None

    def load(self, rknn: Any, spec: Any, call: ToolkitCall, model: str, prepared: Any) -> None:
        call("loading", rknn.load_darknet, model=model, weight=str(spec.weights))

    def skip_verification(self) -> str | None:
        return "no Darknet runtime here; the weights were checked against the network description instead"


FORMAT = Darknet()

"""Caffe (.prototxt + .caffemodel): recognising the pair, the blob-shape check the toolkit skips, loading."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rknn_dropbox.formats.base import Format, IntegrityError, ToolkitCall


class _Truncated(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _Truncated()
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):  # noqa: ANN202 - a generator of (field, wire type, value, start, end)
    """Walk protobuf wire-format fields; a length running past the end raises _Truncated (value = partial bytes)."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value = buf[pos:pos + n]
            if pos + n > len(buf):
                exc = _Truncated()
                exc.partial = (field, value, start, pos + n)  # type: ignore[attr-defined]
                raise exc
            pos += n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise _Truncated()
        yield field, wire, value, start, pos


def _packed_varints(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(data):
        v, pos = _varint(data, pos)
        out.append(v)
    return out


@dataclass
class _Blob:
    shape: tuple[int, ...]
    count: int  # number of float values stored


def _decode_blob(buf: bytes) -> _Blob:
    dims: list[int] = []
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}  # num, channels, height, width
    count = 0
    for field, wire, value, _, _ in _fields(buf):
        if field == 7 and wire == 2:  # BlobShape
            for f2, w2, v2, _, _ in _fields(value):
                if f2 == 1:
                    dims.extend(_packed_varints(v2) if w2 == 2 else [v2])
        elif field in legacy and wire == 0:
            legacy[field] = value
        elif field == 5:  # data (packed float or repeated fixed32)
            count += len(value) // 4 if wire == 2 else 1
        elif field == 8:  # double_data
            count += len(value) // 8 if wire == 2 else 1
    if not dims and any(legacy.values()):
        dims = [legacy[1], legacy[2], legacy[3], legacy[4]]
    return _Blob(tuple(dims), count)


def _layer_name(buf: bytes) -> str:
    """Best effort: the name (field 1, or 4 for V1 layers) at the start of a possibly partial LayerParameter."""
    pos = 0
    try:
        key, pos = _varint(buf, pos)
        n, pos = _varint(buf, pos)
        if key >> 3 in (1, 4) and key & 7 == 2:
            return buf[pos:pos + n].decode("utf-8", "replace")
    except (_Truncated, ValueError):
        pass
    return "?"


@dataclass
class _CaffeLayer:
    name: str
    blobs: list[_Blob]


def _read_caffemodel(path: Path) -> dict[str, _CaffeLayer]:
    data = path.read_bytes()
    layers: dict[str, _CaffeLayer] = {}
    try:
        for field, wire, value, _, _ in _fields(data):
            if wire != 2 or field not in (100, 2):  # NetParameter.layer (100) / legacy layers (2)
                continue
            name_field, blob_field = (1, 7) if field == 100 else (4, 6)
            name, blobs = "?", []
            for f2, w2, v2, _, _ in _fields(value):
                if f2 == name_field and w2 == 2:
                    name = v2.decode("utf-8", "replace")
                elif f2 == blob_field and w2 == 2:
                    blobs.append(_decode_blob(v2))
            layers[name] = _CaffeLayer(name, blobs)
    except _Truncated as exc:
        partial = getattr(exc, "partial", None)
        if partial is not None and partial[0] in (100, 2):
            _, value, start, end = partial
            raise IntegrityError(
                f"{path.name} is truncated: layer {_layer_name(value)!r} is stored at bytes {start}-{end} but the "
                f"file has only {len(data)} bytes ({end - len(data)} bytes missing)") from None
        raise IntegrityError(f"{path.name} is truncated or not a .caffemodel: its protobuf ends mid-field at "
                             f"{len(data)} bytes") from None
    except ValueError as exc:
        raise IntegrityError(f"{path.name} is not a valid .caffemodel (protobuf: {exc})") from None
    return layers


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([A-Za-z_][\w.]*)\s*:?\s*(?=\{)|([A-Za-z_][\w.]*)\s*:\s*("(?:[^"\\]|\\.)*"|'
                    r"'(?:[^'\\]|\\.)*'|[^\s{}#]+)|(\{)|(\}))")


def parse_prototxt(text: str) -> dict[str, list]:
    """A protobuf text-format message as {field: [values...]} (nested messages are dicts); ValueError if malformed."""
    root: dict[str, list] = {}
    stack = [root]
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            snippet = text[pos:pos + 30].split("\n")[0]
            raise ValueError(f"cannot parse near {snippet!r}")
        pos = m.end()
        comment, msg_name, key, value, opening, closing = m.groups()
        if comment:
            continue
        if msg_name:
            m2 = re.compile(r"\s*\{").match(text, pos)
            assert m2
            pos = m2.end()
            child: dict[str, list] = {}
            stack[-1].setdefault(msg_name, []).append(child)
            stack.append(child)
        elif key:
            if value[:1] in "\"'":
                value = value[1:-1]
            stack[-1].setdefault(key, []).append(value)
        elif closing:
            if len(stack) == 1:
                raise ValueError("unbalanced '}'")
            stack.pop()
        elif opening:
            raise ValueError("'{' without a field name")
    if len(stack) != 1:
        raise ValueError("unbalanced '{'")
    return root


def _first(msg: dict[str, list], key: str, default: object = None) -> object:
    vals = msg.get(key)
    return vals[0] if vals else default


def _kernel(p: dict[str, list]) -> tuple[int, int] | None:
    if "kernel_h" in p and "kernel_w" in p:
        return int(_first(p, "kernel_h")), int(_first(p, "kernel_w"))  # type: ignore[arg-type]
    ks = [int(v) for v in p.get("kernel_size", [])]
    if not ks:
        return None
    return (ks[0], ks[0]) if len(ks) == 1 else (ks[0], ks[1])


def _truthy(v: object, default: bool = True) -> bool:
    if v is None:
        return default
    return str(v).lower() not in ("false", "0")


def _expected_blobs(layer: dict[str, list], channels: dict[str, int]) -> tuple[list[tuple[int | None, ...]] | None,
                                                                             int | None]:
    """The blob shapes a weighted layer must carry (None = a dim not checked) and its output channel count."""
    ltype = str(_first(layer, "type", ""))
    bottoms = [str(b) for b in layer.get("bottom", [])]
    c_in = channels.get(bottoms[0]) if bottoms else None
    if ltype in ("Convolution", "Deconvolution"):
        p = (layer.get("convolution_param") or [{}])[0]
        n = int(_first(p, "num_output", 0))  # type: ignore[arg-type]
        group = int(_first(p, "group", 1))  # type: ignore[arg-type]
        k = _kernel(p)
        kh, kw = k if k else (None, None)
        if ltype == "Convolution":
            w = (n, c_in // group if c_in else None, kh, kw)
        else:
            w = (c_in, n // group if n else None, kh, kw)
        shapes: list[tuple[int | None, ...]] = [w]
        if _truthy(_first(p, "bias_term")):
            shapes.append((n,))
        return shapes, n
    if ltype == "InnerProduct":
        p = (layer.get("inner_product_param") or [{}])[0]
        n = int(_first(p, "num_output", 0))  # type: ignore[arg-type]
        shapes = [(n, None)]
        if _truthy(_first(p, "bias_term")):
            shapes.append((n,))
        return shapes, n
    if ltype == "BatchNorm":
        return [(c_in,), (c_in,), (1,)], c_in
    if ltype == "Scale":
        p = (layer.get("scale_param") or [{}])[0]
        shapes = [(c_in,)]
        if _truthy(_first(p, "bias_term"), default=False):
            shapes.append((c_in,))
        return shapes, c_in
    if ltype == "PReLU":
        p = (layer.get("prelu_param") or [{}])[0]
        return [((1,) if _truthy(_first(p, "channel_shared"), default=False) else (c_in,))], c_in
    return None, c_in


def _track_channels(layer: dict[str, list], channels: dict[str, int], out_c: int | None) -> None:
    ltype = str(_first(layer, "type", ""))
    tops = [str(t) for t in layer.get("top", [])]
    bottoms = [str(b) for b in layer.get("bottom", [])]
    if ltype == "Input":
        p = (layer.get("input_param") or [{}])[0]
        for top, shape in zip(tops, p.get("shape", [])):
            dims = [int(d) for d in shape.get("dim", [])]
            if len(dims) >= 2:
                channels[top] = dims[1]
        return
    if ltype == "Concat":
        p = (layer.get("concat_param") or [{}])[0]
        if int(_first(p, "axis", 1)) == 1 and all(b in channels for b in bottoms):  # type: ignore[arg-type]
            for top in tops:
                channels[top] = sum(channels[b] for b in bottoms)
            return
    elif ltype in ("Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "Scale", "PReLU", "ReLU", "Sigmoid",
                   "TanH", "Pooling", "Dropout", "LRN", "Eltwise", "Softmax", "Power", "BN", "ReLU6", "Upsample",
                   "Interp", "Bias", "ELU", "AbsVal", "Split"):
        for top in tops:
            if out_c:
                channels[top] = out_c
            else:
                channels.pop(top, None)
        return
    for top in tops:  # anything else: shape unknown from here on
        channels.pop(top, None)


def check_caffe(prototxt: Path, caffemodel: Path) -> None:
    """IntegrityError unless every weighted layer of the prototxt has blobs of the expected shapes in the caffemodel."""
    try:
        net = parse_prototxt(prototxt.read_text(encoding="utf-8", errors="replace"))
    except ValueError as exc:
        raise IntegrityError(f"{prototxt.name} is not a Caffe network description: {exc}") from None
    stored = _read_caffemodel(caffemodel)
    channels: dict[str, int] = {}
    # legacy top-level `input:` + `input_dim:` / `input_shape`
    for i, name in enumerate(net.get("input", [])):
        dims = [int(d) for d in net.get("input_dim", [])[4 * i:4 * i + 4]]
        shapes = net.get("input_shape", [])
        if not dims and i < len(shapes):
            dims = [int(d) for d in shapes[i].get("dim", [])]
        if len(dims) >= 2:
            channels[str(name)] = dims[1]
    for layer in net.get("layer", []) or net.get("layers", []):
        name = str(_first(layer, "name", "?"))
        expected, out_c = _expected_blobs(layer, channels)
        if expected is not None:
            have = stored.get(name)
            if have is None or not have.blobs:
                raise IntegrityError(f"{caffemodel.name} has no weights for layer {name!r} "
                                     f"({_first(layer, 'type')}) of {prototxt.name}: the files do not belong together "
                                     "or the .caffemodel is incomplete")
            if len(have.blobs) != len(expected):
                raise IntegrityError(f"layer {name!r}: {caffemodel.name} holds {len(have.blobs)} blobs, "
                                     f"{prototxt.name} implies {len(expected)}")
            for i, (blob, want) in enumerate(zip(have.blobs, expected)):
                shape = blob.shape
                numel = 1
                for d in shape:
                    numel *= d
                if blob.count != numel:
                    raise IntegrityError(
                        f"layer {name!r} blob {i}: shape {list(shape)} needs {numel * 4} bytes of float data but "
                        f"{caffemodel.name} stores {blob.count * 4}")
                squeezed = shape
                if len(want) == 1 and len(shape) > 1:  # legacy 4-D blobs: 1x1x1xN
                    squeezed = tuple(d for d in shape if d != 1) or (1,)
                if len(squeezed) == 4 and len(want) == 2 and want[1] is None:
                    squeezed = (squeezed[-2], squeezed[-1]) if squeezed[0] == 1 and squeezed[1] == 1 else squeezed
                if len(squeezed) != len(want) or any(w is not None and w != s for w, s in zip(want, squeezed)):
                    shown = [("?" if w is None else w) for w in want]
                    raise IntegrityError(f"layer {name!r} blob {i}: {caffemodel.name} has shape {list(shape)}, "
                                         f"{prototxt.name} implies {shown}")
        _track_channels(layer, channels, out_c)


class Caffe(Format):
    name, display, family = "caffe", "Caffe", "caffe"
    pair = (".prototxt", ".caffemodel")
    sniff_skips_exts = (".txt", ".yaml", ".yml")

    def sniff(self, head: bytes, text: str, path: Path) -> bool:
        return (("layer" in text or "input" in text) and "{" in text and b"\0" not in head[:256]
                and text.startswith(("name:", "layer", "input", "layers")))

    def check(self, model: Path, weights: Path | None) -> Any:
        if weights is not None:
            check_caffe(model, weights)
        return None

    def load(self, rknn: Any, spec: Any, call: ToolkitCall, model: str, prepared: Any) -> None:
        call("loading", rknn.load_caffe, model=model, blobs=str(spec.weights))

    def skip_verification(self) -> str | None:
        return "no Caffe runtime here; the weights were checked against the network description instead"


FORMAT = Caffe()

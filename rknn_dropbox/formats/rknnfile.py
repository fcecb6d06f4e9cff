"""Reading a .rknn file without the toolkit: header, format version, compiler, target, input/output tensors.

Layout (rknn-toolkit2 1.x-2.5.0; the same the open-source `rknncli` reads): a header of 64 bytes (24 for format
version <= 1) -- `RKNN`, 4 zero bytes, the format version (uint64 LE, bytes 8-15), the length of the model block
(uint64 LE, bytes 16-23) -- then the model block, a flatbuffer with file identifier `RKNN`, then a uint64 length and a
JSON block (`version`, `target_platform`, `norm_tensor`, ...). The flatbuffer's root table holds, by field index:
7 the compiler string, 8 the target platform, 11 the custom string, 12/13 the input/output dtype and layout as JSON,
2 the graphs; a graph's tensors carry 5 name, 4 shape, 6 quantization method, 7 quantization type, 10 scales,
11 zero points. Fields were identified on files from toolkits 2.3.0-2.5.0; anything absent is reported as unknown.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"RKNN"
HEADER_SIZE = 64
MAX_READ = 2 * 1024 * 1024 * 1024


class RknnFileError(ValueError):
    """A file that is not a readable .rknn: the message says what is wrong in a sentence."""


@dataclass(frozen=True)
class RknnTensor:
    name: str
    shape: list[int]
    dtype: str = ""          # what the runtime hands over natively (input_json / output_json), e.g. int8, float16
    layout: str = ""         # NCHW / NHWC as the runtime stores it
    quant: dict[str, Any] | None = None  # {type, method, scale, zero_point} for quantized tensors


@dataclass(frozen=True)
class RknnFileInfo:
    format_version: int
    toolkit_version: str     # the rknn-toolkit2 that built it ("2.5.0")
    compiler: str            # the full compiler string, e.g. "2.5.0(compiler version: 2.5.0 (74ea630ce@...))"
    target_platform: list[str]
    inputs: list[RknnTensor] = field(default_factory=list)
    outputs: list[RknnTensor] = field(default_factory=list)
    custom_string: str = ""
    source_format: str = ""  # ONNX, TFLite, ... as the toolkit recorded it
    size: int = 0

    @property
    def loads_on(self) -> str:
        from rknn_dropbox.toolkits import loads_on
        return loads_on(self.toolkit_version) if self.toolkit_version else "unknown (no toolkit version recorded)"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["loads_on"] = self.loads_on
        return d


class _FlatBuffer:
    """Just enough of the flatbuffers wire format to walk tables, strings and vectors, every read bounds-checked."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _unpack(self, fmt: str, pos: int) -> Any:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.buf):
            raise RknnFileError("the model block is damaged (an offset points outside it)")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def root(self) -> int:
        return self._unpack("<I", 0)

    def field(self, table: int, index: int) -> int | None:
        vtable = table - self._unpack("<i", table)
        vlen = self._unpack("<H", vtable)
        if 4 + 2 * index + 2 > vlen:
            return None
        off = self._unpack("<H", vtable + 4 + 2 * index)
        return table + off if off else None

    def string(self, table: int, index: int) -> str:
        pos = self.field(table, index)
        if pos is None:
            return ""
        start = pos + self._unpack("<I", pos)
        n = self._unpack("<I", start)
        if start + 4 + n > len(self.buf):
            raise RknnFileError("the model block is damaged (a string runs past its end)")
        return self.buf[start + 4:start + 4 + n].decode("utf-8", errors="replace")

    def vector(self, table: int, index: int, fmt: str) -> list[Any]:
        pos = self.field(table, index)
        if pos is None:
            return []
        start = pos + self._unpack("<I", pos)
        n = self._unpack("<I", start)
        size = struct.calcsize(fmt)
        if start + 4 + n * size > len(self.buf):
            raise RknnFileError("the model block is damaged (a list runs past its end)")
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, start + 4))

    def tables(self, table: int, index: int) -> list[int]:
        pos = self.field(table, index)
        if pos is None:
            return []
        start = pos + self._unpack("<I", pos)
        return [start + 4 + 4 * i + self._unpack("<I", start + 4 + 4 * i) for i in range(self._unpack("<I", start))]


def _json_or_empty(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tensor(fb: _FlatBuffer, table: int, io_attrs: dict[str, Any]) -> RknnTensor:
    name = fb.string(table, 5)
    attrs = io_attrs.get(name) if isinstance(io_attrs.get(name), dict) else {}
    qtype, method = fb.string(table, 7), fb.string(table, 6)
    quant = None
    scales, zero_points = fb.vector(table, 10, "f"), fb.vector(table, 11, "i")
    if qtype or scales:
        quant = {"type": qtype, "method": method, "scale": [float(f"{s:.9g}") for s in scales],
                 "zero_point": zero_points}
    return RknnTensor(name, fb.vector(table, 4, "i"), str(attrs.get("dtype", "")), str(attrs.get("layout", "")),
                      quant)


def _tensors(fb: _FlatBuffer, graph: int, which: int, io_json: str) -> list[RknnTensor]:
    all_tensors = fb.tables(graph, 0)
    attrs = _json_or_empty(io_json)
    out = []
    for idx in fb.vector(graph, which, "i"):
        if not 0 <= idx < len(all_tensors):
            raise RknnFileError("the model block is damaged (an input/output names a tensor that is not there)")
        out.append(_tensor(fb, all_tensors[idx], attrs))
    return out


def _read_header(data: bytes, name: str) -> tuple[int, int, int]:
    """(format version, model block offset, model block length); RknnFileError for anything else."""
    if len(data) < 4 or data[:4] != MAGIC:
        start = data[:8]
        hint = "an empty file" if not data else f"it starts with {start!r}"
        raise RknnFileError(f"{name} is not an RKNN model file ({hint}; an .rknn starts with 'RKNN'): "
                            "give the file rknn-toolkit2's export_rknn() wrote")
    if len(data) < 24:
        raise RknnFileError(f"{name} is truncated: {len(data)} bytes is shorter than the RKNN header; "
                            "copy the file again")
    version, length = struct.unpack_from("<QQ", data, 8)
    offset = 24 if version <= 1 else HEADER_SIZE
    if len(data) < offset + length:
        raise RknnFileError(f"{name} is truncated: the header announces a {length}-byte model block after byte "
                            f"{offset}, but the file has only {len(data)} bytes; copy the file again")
    return version, offset, length


def _json_block(data: bytes, start: int) -> dict[str, Any]:
    if len(data) < start + 8:
        return {}
    n = struct.unpack_from("<Q", data, start)[0]
    if n <= 0 or start + 8 + n > len(data):
        return {}
    return _json_or_empty(data[start + 8:start + 8 + n].decode("utf-8", errors="replace"))


def parse_rknn(data: bytes, name: str = "the file") -> RknnFileInfo:
    """Parse the bytes of a .rknn file; RknnFileError (a sentence naming `name`) when it is not one."""
    version, offset, length = _read_header(data, name)
    block = data[offset:offset + length]
    if len(block) < 8 or block[4:8] != MAGIC:
        raise RknnFileError(f"{name}: the model block after the header is not an RKNN flatbuffer (format version "
                            f"{version}); the file is damaged or from a toolkit this reader does not know")
    meta = _json_block(data, offset + length)
    fb = _FlatBuffer(block)
    try:
        root = fb.root()
        compiler = fb.string(root, 7)
        graphs = fb.tables(root, 2)
        inputs = _tensors(fb, graphs[0], 2, fb.string(root, 12)) if graphs else []
        outputs = _tensors(fb, graphs[0], 3, fb.string(root, 13)) if graphs else []
        platform = fb.string(root, 8)
        custom, source = fb.string(root, 11), fb.string(root, 9)
    except (RknnFileError, struct.error, IndexError) as exc:
        detail = str(exc) if isinstance(exc, RknnFileError) else "the model block is damaged"
        raise RknnFileError(f"{name}: {detail}; copy the file again or rebuild it") from None
    m = re.match(r"\s*(\d+(?:\.\d+)+)", compiler)
    toolkit = str(meta.get("version") or (m[1] if m else ""))
    targets = meta.get("target_platform")
    targets = [str(t) for t in targets] if isinstance(targets, list) else ([platform] if platform else [])
    return RknnFileInfo(int(version), toolkit, compiler, targets, inputs, outputs, custom, source, len(data))


def read_rknn_file(path: Path) -> RknnFileInfo:
    try:
        size = path.stat().st_size
        if size > MAX_READ:
            raise RknnFileError(f"{path.name}: {size} bytes is larger than any .rknn this reader accepts")
        data = path.read_bytes()
    except FileNotFoundError:
        raise RknnFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RknnFileError(f"{path} is a folder, not a .rknn file") from None
    except OSError as exc:
        raise RknnFileError(f"{path}: cannot read it ({exc.strerror})") from None
    return parse_rknn(data, path.name)


def _tensor_line(t: RknnTensor) -> str:
    q = ""
    if t.quant:
        q = f"  quant {t.quant['type'] or '?'}/{t.quant['method'] or '?'}"
        if t.quant["scale"]:
            q += f" scale {t.quant['scale']} zero_point {t.quant['zero_point']}"
    return f"    {t.name}: shape {t.shape} {t.dtype or '?'} {t.layout}{q}"


def format_report(name: str, info: RknnFileInfo) -> str:
    """The human-readable `inspect` output."""
    lines = [f"{name}: RKNN model, {info.size} bytes",
             f"  format version:  {info.format_version}",
             f"  built by:        rknn-toolkit2 {info.toolkit_version or 'unknown'}",
             f"  compiler:        {info.compiler or 'unknown'}",
             f"  target platform: {', '.join(info.target_platform) or 'unknown'}",
             f"  loads on:        {info.loads_on}"]
    if info.custom_string:
        lines.append(f"  custom string:   {info.custom_string}")
    lines.append(f"  inputs ({len(info.inputs)}):")
    lines += [_tensor_line(t) for t in info.inputs]
    lines.append(f"  outputs ({len(info.outputs)}):")
    lines += [_tensor_line(t) for t in info.outputs]
    return "\n".join(lines)

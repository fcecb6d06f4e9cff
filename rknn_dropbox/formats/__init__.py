"""The format registry: every model format rknn-dropbox converts, the one extension table, sniffing by content.

A new format is one module here with a Format subclass, added to FORMATS.  Nothing heavy is imported at module
level (the daemon's scanner uses the extension table): each format imports its libraries inside its methods."""

from __future__ import annotations

from pathlib import Path

from rknn_dropbox.formats.base import Format, FormatError, IntegrityError, ToolkitCall
from rknn_dropbox.formats.caffe import FORMAT as CAFFE
from rknn_dropbox.formats.darknet import FORMAT as DARKNET
from rknn_dropbox.formats.onnx import FORMAT as ONNX
from rknn_dropbox.formats.tensorflow import CHECKPOINT, FROZEN, SAVEDMODEL, find_sets, is_checkpoint_ext
from rknn_dropbox.formats.tflite import FORMAT as TFLITE
from rknn_dropbox.formats.torchscript import FORMAT as TORCHSCRIPT
from rknn_dropbox.formats.ultralytics import FORMAT as ULTRALYTICS

__all__ = ["Format", "FormatError", "IntegrityError", "ToolkitCall", "FORMATS", "by_name", "sniff",
           "SINGLE_MODEL_EXTS", "PAIR_EXTS", "SUPPORTED_HINT", "format_for_extension", "is_checkpoint_ext",
           "find_sets"]

# sniffing order matters: a TFLite flatbuffer first, an Ultralytics checkpoint before TorchScript (both .pt zips),
# ONNX's loose protobuf test last
FORMATS: tuple[Format, ...] = (TFLITE, ULTRALYTICS, TORCHSCRIPT, DARKNET, CAFFE, ONNX, FROZEN, SAVEDMODEL, CHECKPOINT)
_BY_NAME = {f.name: f for f in FORMATS}

# the one extension table: single-file model extensions, and each half of a two-file model
SINGLE_MODEL_EXTS: tuple[str, ...] = tuple(e for f in FORMATS for e in f.extensions)
# one half of a two-file model -> (the partner's extension, what the pair is called)
PAIR_EXTS: dict[str, tuple[str, str]] = {
    ext: (partner, f.display) for f in FORMATS if f.pair for ext, partner in (f.pair, f.pair[::-1])}
PAIR_FORMATS: tuple[Format, ...] = tuple(f for f in FORMATS if f.pair)
# the "not a model" hint, said once
SUPPORTED_HINT = ("rknn-dropbox converts .onnx, .tflite, .pt/.pth (TorchScript, or an Ultralytics checkpoint), .pb, "
                  ".cfg+.weights, .prototxt+.caffemodel, or a folder/archive holding one")


def by_name(name: str) -> Format:
    """The Format whose result.json name is `name` (KeyError for an unknown one)."""
    return _BY_NAME[name]


def format_for_extension(ext: str) -> Format | None:
    """The single-file format an extension says (before sniffing), or None."""
    return next((f for f in FORMATS if ext.lower() in f.extensions), None)


def sniff(path: Path) -> Format | None:
    """Recognise a model file by its first bytes, whatever its extension says."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    text = head.decode("utf-8", "ignore")
    stripped = "\n".join(line.split("#", 1)[0] for line in text.splitlines()).strip()
    return next((f for f in FORMATS if f.sniff(head, stripped, path)), None)

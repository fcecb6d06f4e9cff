"""Generators for tiny, real, deterministic model files used by the tests.

Every generator writes to the path(s) it is given (parent folders are created)
and returns the written path(s) as ``pathlib.Path``.  All random content comes
from a seeded ``numpy.random.default_rng`` so the same arguments always give
byte-identical files, except the torch .pt/.pth files: their tensor data is
deterministic but torch embeds a random ``.data/serialization_id`` (and name
mangling changes when tracing twice in one process), so compare those by
loading, not by hash.

Heavy imports (onnx, torch, cv2) are done lazily inside the functions so this
module can be imported cheaply; the Caffe generator hand-encodes the protobuf
wire format so it never imports any ``caffe_pb2`` (rknn-toolkit2 ships two
different ``caffe_pb2`` modules that both register ``caffe.proto`` in the
global descriptor pool, so importing one ourselves risks a clash).

Outcomes verified with rknn-toolkit2 2.5.0, target_platform='rk3588':
see the docstring of each function.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rknn_dropbox.formats.darknet import (  # noqa: F401  (re-exported for the tests)
    darknet_expected_weights_bytes, darknet_header_bytes, parse_darknet_cfg,
)

__all__ = [
    "write_onnx_conv",
    "write_onnx_variant",
    "write_onnx_unsupported",
    "write_onnx_prequantized",
    "write_calibration_npy",
    "write_calibration_images",
    "write_dataset_txt",
    "write_torchscript",
    "write_torchscript_scripted",
    "write_state_dict",
    "write_darknet",
    "darknet_cfg_text",
    "darknet_expected_weights_bytes",
    "darknet_header_bytes",
    "write_caffe",
    "write_random_bytes",
    "write_truncated",
]


def _prep(path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


# --------------------------------------------------------------------------- ONNX

def _onnx_conv_model(size: int, seed: int, out_ch: int = 4):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((out_ch, 3, 3, 3)) * 0.1).astype(np.float32)
    b = (rng.standard_normal((out_ch,)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv0",
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu0"),
        ],
        "tiny_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_ch, size, size])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="rknn-dropbox-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_onnx_conv(path, size: int = 16, seed: int = 0) -> Path:
    """Conv(3->4, 3x3, pad 1)+Relu, opset 13, ir_version 8.

    Input 'x' float32 [1,3,size,size], output 'y' [1,4,size,size].
    Builds with rknn-toolkit2 both fp16 and int8 (dataset of NCHW .npy or images).
    """
    import onnx

    p = _prep(path)
    onnx.save(_onnx_conv_model(size, seed), str(p))
    return p


def write_onnx_variant(path, seed: int) -> Path:
    """Same graph as write_onnx_conv(size=16) but weights drawn from ``seed``.

    Different seeds give different file bytes/hashes (for N-distinct-model benchmarks).
    """
    return write_onnx_conv(path, size=16, seed=1000 + int(seed))


def write_onnx_unsupported(path) -> Path:
    """Conv -> Dropout (opset 9): valid ONNX that rknn-toolkit2 refuses.

    Verified (toolkit 2.5.0): load_onnx() returns 0; build() logs
    ``E build: Not support 'Dropout' of opset-9!`` and RAISES ValueError (it does
    not return -1).  str(exc) is the whole formatted traceback, ending in
    ``ValueError: Not support 'Dropout' of opset-9!\n``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv0",
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            # the *mask* output is what the toolkit cannot convert; a Dropout-9
            # with only one output is silently removed and builds fine.
            helper.make_node("Dropout", ["c"], ["y", "mask"], name="drop0", ratio=0.5),
        ],
        "tiny_dropout9",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 4, 16, 16])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)],
                              producer_name="rknn-dropbox-tests")
    model.ir_version = 4
    onnx.checker.check_model(model)
    p = _prep(path)
    onnx.save(model, str(p))
    return p


def write_onnx_prequantized(path) -> Path:
    """QDQ-format ONNX (opset 13): x -> Q/DQ -> Conv(DQ(int8 w)) -> Relu -> Q/DQ -> y.

    Input 'x' [1,3,16,16].  Verified (toolkit 2.5.0):
      * build(do_quantization=False) -> 0 (warns "The QAT model is loaded ...";
        input/output dtypes become int8 in the .rknn).
      * build(do_quantization=True, dataset=...) -> -1 (no exception), log
        ``E build: If a quantized model has been import, please set do_quantization = False.``
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w_f = (rng.standard_normal((4, 3, 3, 3)) * 0.1).astype(np.float32)
    w_scale = np.float32(np.abs(w_f).max() / 127.0)
    w_q = np.clip(np.round(w_f / w_scale), -127, 127).astype(np.int8)
    b_f = (rng.standard_normal((4,)) * 0.1).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(np.array(w_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
        numpy_helper.from_array(b_f, "b"),
        numpy_helper.from_array(np.array(4.0 / 127.0, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w"),
        helper.make_node("Conv", ["x_dq", "w_dq", "b"], ["c"], name="conv0",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu0"),
        helper.make_node("QuantizeLinear", ["r", "y_scale", "y_zp"], ["r_q"], name="q_y"),
        helper.make_node("DequantizeLinear", ["r_q", "y_scale", "y_zp"], ["y"], name="dq_y"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="rknn-dropbox-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    p = _prep(path)
    onnx.save(model, str(p))
    return p


# ------------------------------------------------------------------ calibration

def write_calibration_npy(folder, n: int = 2, shape: Sequence[int] = (1, 3, 16, 16),
                          seed: int = 0) -> list[Path]:
    """Write ``n`` float32 .npy tensors of ``shape`` (calib_000.npy, ...).

    Verified for ONNX input [1,3,16,16]: (1,3,16,16) and (3,16,16) both work
    (batch dim optional); NHWC (1,16,16,3) or a wrong H/W makes build() RAISE
    ValueError "...The input('<path>') shape (1, 16, 16, 3) is wrong, expect
    'nchw' like (1, 3, 16, 16)!".
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = d / f"calib_{i:03d}.npy"
        np.save(p, rng.random(tuple(shape), dtype=np.float32))
        out.append(p)
    return out


def write_calibration_images(folder, n: int = 2, size: int = 16, ext: str = ".png",
                             seed: int = 0) -> list[Path]:
    """Write ``n`` size x size 3-channel 8-bit images via cv2 (ext '.png' or '.jpg').

    Both work in a dataset.txt for int8 builds; the toolkit resizes images whose
    size differs from the model input (a 32x32 PNG for a 16x16 model builds fine).
    """
    import cv2

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = d / f"calib_{i:03d}{ext}"
        img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        if not cv2.imwrite(str(p), img):
            raise OSError(f"cv2.imwrite failed for {p}")
        out.append(p)
    return out


def write_dataset_txt(path, files: Iterable) -> Path:
    """Write a toolkit dataset.txt (one absolute path per line)."""
    p = _prep(path)
    p.write_text("".join(f"{Path(f).resolve()}\n" for f in files))
    return p


# ----------------------------------------------------------------------- torch

def _torch_module(size: int):
    import torch

    class TinyConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.relu = torch.nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x))

    m = TinyConv().eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        m.conv.weight.copy_(torch.from_numpy(
            (rng.standard_normal((4, 3, 3, 3)) * 0.1).astype(np.float32)))
        m.conv.bias.copy_(torch.from_numpy(
            (rng.standard_normal((4,)) * 0.1).astype(np.float32)))
    return m


def write_torchscript(path, size: int = 16) -> Path:
    """torch.jit.trace of Conv2d(3,4,3,pad=1)+ReLU; load_pytorch(p, [[1,3,size,size]]).

    Verified: fp16 and int8 builds work.  Note the toolkit refuses a '.pth'
    suffix even for a valid traced file (see write_state_dict).
    """
    import torch

    m = _torch_module(size)
    with torch.no_grad():
        traced = torch.jit.trace(m, torch.zeros(1, 3, size, size))
    p = _prep(path)
    torch.jit.save(traced, str(p))
    return p


def write_torchscript_scripted(path) -> Path:
    """torch.jit.script of the same module (not traced).

    Verified (torch 2.13, no onnxscript installed): load_pytorch RAISES
    ValueError; its own converter first fails with "The following operators
    are not implemented: ['aten::conv2d']", it then falls back to
    torch.onnx.export, and str(exc) ends in
    ``ModuleNotFoundError: No module named 'onnxscript'``.
    """
    import torch

    scripted = torch.jit.script(_torch_module(16))
    p = _prep(path)
    torch.jit.save(scripted, str(p))
    return p


def write_state_dict(path) -> Path:
    """A plain ``torch.save(module.state_dict())`` (not TorchScript).

    Verified: with a '.pth' name load_pytorch RAISES ValueError ending in
    "The '.pth' suffix is not supported, please use 'torch.jit.trace' to save
    the model, and with '.pt' as the suffix name!"; with a '.pt' name it
    returns -1 (logs "PytorchStreamReader failed locating file constants.pkl").
    """
    import torch

    p = _prep(path)
    torch.save(_torch_module(16).state_dict(), str(p))
    return p


# --------------------------------------------------------------------- darknet

def darknet_cfg_text(size: int = 32, classes: int = 2) -> str:
    """cfg: [net] -> conv(bn,8,3x3) -> maxpool(2) -> conv(no bn,linear,1x1) -> [yolo]."""
    na = 3
    filters = na * (classes + 5)
    return f"""[net]
batch=1
subdivisions=1
width={size}
height={size}
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
size=1
stride=1
pad=1
filters={filters}
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes={classes}
num=3
jitter=.3
ignore_thresh=.7
truth_thresh=1
random=0
"""


# The .weights size arithmetic lives in the product (the analyzer checks dropped pairs with it).
_parse_cfg = parse_darknet_cfg


def write_darknet(cfg_path, weights_path, size: int = 32, seed: int = 0,
                  classes: int = 2) -> tuple[Path, Path]:
    """Tiny YOLO-style darknet cfg + matching .weights (header 0.2.0, seen int64 = 0).

    The weights size always equals darknet_expected_weights_bytes(cfg_text).
    Verified: builds fp16 and int8 (32x32 PNG dataset).  A truncated .weights
    makes load_darknet RAISE ValueError ending in
    "TypeError: buffer is too small for requested array"; extra trailing bytes
    are silently ignored (build succeeds).  The toolkit honours the header
    version (a 0.1.0 header with int32 ``seen`` also loads).
    """
    cfg_text = darknet_cfg_text(size, classes)
    rng = np.random.default_rng(seed)
    parts = [struct.pack("<iiiq", 0, 2, 0, 0)]
    c = 3
    for kind, o in _parse_cfg(cfg_text)[1:]:
        if kind != "convolutional":
            continue
        f, k = int(o["filters"]), int(o.get("size", 1))
        parts.append((rng.standard_normal(f) * 0.1).astype("<f4").tobytes())  # biases
        if int(o.get("batch_normalize", 0)):
            parts.append((1.0 + 0.1 * rng.standard_normal(f)).astype("<f4").tobytes())  # scales
            parts.append((rng.standard_normal(f) * 0.1).astype("<f4").tobytes())  # mean
            parts.append((1.0 + rng.random(f)).astype("<f4").tobytes())  # var > 0
        parts.append((rng.standard_normal(f * c * k * k) * 0.1).astype("<f4").tobytes())
        c = f
    blob = b"".join(parts)
    if len(blob) != darknet_expected_weights_bytes(cfg_text):
        raise AssertionError("darknet weights size mismatch (bug in modelgen)")
    cp, wp = _prep(cfg_path), _prep(weights_path)
    cp.write_text(cfg_text)
    wp.write_bytes(blob)
    return cp, wp


# ----------------------------------------------------------------------- caffe
# Minimal protobuf wire encoder for caffe.NetParameter / LayerParameter / BlobProto.

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:  # length-delimited field
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _str(field: int, s: str) -> bytes:
    return _ld(field, s.encode())


def _blob(arr: np.ndarray) -> bytes:
    # BlobProto: shape=7 (BlobShape{dim=1 packed int64}), data=5 (packed float)
    shape = _ld(1, b"".join(_varint(int(d)) for d in arr.shape))
    return _ld(7, shape) + _ld(5, np.ascontiguousarray(arr, "<f4").tobytes())


def _layer(name: str, type_: str, bottoms, tops, blobs=()) -> bytes:
    # LayerParameter: name=1, type=2, bottom=3, top=4, blobs=7
    body = _str(1, name) + _str(2, type_)
    body += b"".join(_str(3, b) for b in bottoms) + b"".join(_str(4, t) for t in tops)
    body += b"".join(_ld(7, _blob(b)) for b in blobs)
    return _ld(100, body)  # NetParameter.layer = 100


def write_caffe(prototxt_path, caffemodel_path, size: int = 16,
                seed: int = 0) -> tuple[Path, Path]:
    """Input(data 1x3xSxS) -> Convolution(4, 3x3, pad 1) -> ReLU (in place).

    prototxt is text; .caffemodel is a binary NetParameter carrying the conv
    blobs (weights [4,3,3,3], bias [4]), hand-encoded in protobuf wire format.
    Verified: builds fp16 and int8; simulator output matches the reference
    conv.  A truncated .caffemodel (50% or 90%) loads and builds with return
    code 0 and NO warning, but the weights are replaced (output differs from
    the reference exactly like blobs=None, which logs "Generate random blobs!").
    """
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.1).astype(np.float32)
    b = (rng.standard_normal((4,)) * 0.1).astype(np.float32)
    prototxt = f"""name: "tiny_caffe"
layer {{
  name: "data"
  type: "Input"
  top: "data"
  input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }}
}}
layer {{
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param {{
    num_output: 4
    kernel_size: 3
    pad: 1
    stride: 1
  }}
}}
layer {{
  name: "relu1"
  type: "ReLU"
  bottom: "conv1"
  top: "conv1"
}}
"""
    model = _str(1, "tiny_caffe")
    model += _layer("data", "Input", [], ["data"])
    model += _layer("conv1", "Convolution", ["data"], ["conv1"], [w, b])
    model += _layer("relu1", "ReLU", ["conv1"], ["conv1"])
    pp, mp = _prep(prototxt_path), _prep(caffemodel_path)
    pp.write_text(prototxt)
    mp.write_bytes(model)
    return pp, mp


# --------------------------------------------------------------------- garbage

def write_random_bytes(path, n: int, seed: int = 0) -> Path:
    """``n`` seeded random bytes."""
    p = _prep(path)
    p.write_bytes(np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes())
    return p


def write_truncated(src, dst, fraction: float) -> Path:
    """Copy the first int(len(src)*fraction) bytes of ``src`` to ``dst``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be in [0, 1]")
    data = Path(src).read_bytes()
    p = _prep(dst)
    p.write_bytes(data[: int(len(data) * fraction)])
    return p


# ------------------------------------------------------------------ TensorFlow
# Needs tensorflow (the optional extra).  The graph: x [1,16,16,3] NHWC -> Conv2D(4, 3x3, SAME) + bias -> Relu.

def _tf_weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((3, 3, 3, 4)) * 0.1).astype(np.float32)  # HWIO
    b = (rng.standard_normal((4,)) * 0.1).astype(np.float32)
    return w, b


def _tf_module(seed: int = 0):
    import tensorflow as tf

    w, b = _tf_weights(seed)

    class TinyConv(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(w, name="w")
            self.b = tf.Variable(b, name="b")

        @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32, name="x")])
        def __call__(self, x):
            y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, self.w, 1, "SAME"), self.b))
            return tf.identity(y, name="y")

    return TinyConv()


def write_tf_saved_model(folder, seed: int = 0) -> Path:
    """A SavedModel folder (saved_model.pb + variables/) with a serving_default signature x -> y."""
    import tensorflow as tf

    d = Path(folder)
    d.parent.mkdir(parents=True, exist_ok=True)
    m = _tf_module(seed)
    tf.saved_model.save(m, str(d), signatures=m.__call__.get_concrete_function())
    return d


def write_tf_frozen_pb(path, seed: int = 0) -> Path:
    """A frozen GraphDef: placeholder 'x' [1,16,16,3], output node 'y' (constants folded in)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    m = _tf_module(seed)
    frozen = convert_variables_to_constants_v2(m.__call__.get_concrete_function())
    gd = frozen.graph.as_graph_def()
    p = _prep(path)
    p.write_bytes(gd.SerializeToString())
    return p


def write_tf_checkpoint(folder, prefix: str = "model", seed: int = 0) -> Path:
    """A TF1 checkpoint set: <prefix>.meta + .index + .data-00000-of-00001 (+ 'checkpoint'), input 'x', output 'y'."""
    import tensorflow as tf

    w, b = _tf_weights(seed)
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 16, 16, 3], name="x")
        wv = tf.compat.v1.get_variable("w", initializer=w)
        bv = tf.compat.v1.get_variable("b", initializer=b)
        tf.identity(tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, wv, 1, "SAME"), bv)), name="y")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(d / prefix))
    return d


def write_tflite(path, seed: int = 0, int8: bool = False) -> Path:
    """The same conv as .tflite (float32, or full-integer int8 with a seeded representative dataset)."""
    import tensorflow as tf

    m = _tf_module(seed)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
    if int8:
        rng = np.random.default_rng(seed)

        def rep():
            for _ in range(4):
                yield [rng.random((1, 16, 16, 3), dtype=np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    p = _prep(path)
    p.write_bytes(conv.convert())
    return p


def write_int8_folder(folder, calibration_samples: int = 2, config_yaml: str = "") -> Path:
    """A folder bundle for an int8 build: model.onnx, calib/*.npy (NCHW) and, if given, config.yaml."""
    folder = Path(folder)
    write_onnx_conv(folder / "model.onnx")
    write_calibration_npy(folder / "calib", n=calibration_samples)
    if config_yaml:
        (folder / "config.yaml").write_text(config_yaml)
    return folder

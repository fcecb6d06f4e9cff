"""Models and images for the accuracy tests: natural-looking images, a two-output conv net, and a net that int8
really loses (one activation channel 300x the others: a per-tensor int8 scale crushes the rest).

Outcomes measured with rknn-toolkit2 2.5.0, rk3588, int8: the two-output net scores >= 0.999 on these images;
the outlier net 0.76 as configured, 0.9999 with that layer kept out of int8 (custom hybrid) or w16a16i_dfp."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_natural_images(folder: Path, n: int = 4, size: int = 32, seed: int = 0, prefix: str = "img") -> list[Path]:
    """Smooth 8-bit images (gradients and soft blobs, like photos at low resolution), written as PNG."""
    import cv2
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32)
        for c in range(3):
            img[..., c] = 60 + 120 * (rng.random() * xx + rng.random() * yy)
            for _ in range(3):
                cx, cy, r = rng.random(), rng.random(), 0.05 + 0.2 * rng.random()
                img[..., c] += rng.uniform(-80, 80) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += rng.normal(0, 3, img.shape)
        p = folder / f"{prefix}_{i:02d}.png"
        cv2.imwrite(str(p), np.clip(img, 0, 255).astype(np.uint8))
        out.append(p)
    return out


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray]) -> Path:
    import onnx
    from onnx import helper, numpy_helper
    graph = helper.make_graph(nodes, path.stem, inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def write_two_output_net(path: Path, size: int = 32, seed: int = 3) -> Path:
    """x (1,3,size,size, 0-255 pixels) -> conv 3x3 -> relu -> {conv 3x3 "feat", conv 1x1 + relu "score"}."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(seed)
    inits = {"w0": (rng.standard_normal((8, 3, 3, 3)) * 0.02).astype(np.float32),
             "w1": (rng.standard_normal((6, 8, 3, 3)) * 0.1).astype(np.float32),
             "w2": (rng.standard_normal((2, 8, 1, 1)) * 0.2).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["feat"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "w2"], ["s"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["s"], ["score"])]
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                 [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 6, size, size]),
                  helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 2, size, size])], inits)


def write_outlier_channel_net(path: Path, size: int = 32, factor: float = 300.0) -> Path:
    """conv(3->16, channel 0 x factor) -> relu -> conv 1x1 (channel 0 / factor) -> relu -> conv 3x3: the same
    function as without the factor in float, but int8's one scale per activation tensor loses channels 1-15."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((16, 3, 3, 3)) * 0.2).astype(np.float32)
    w1[0] *= factor
    w2 = (rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32)
    w2[:, 0] /= factor
    w3 = (rng.standard_normal((4, 8, 3, 3)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Conv", ["d", "w3"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, size, size])],
                 {"w1": w1, "w2": w2, "w3": w3})


def write_dataset(path: Path, files: list[Path]) -> Path:
    """A dataset.txt with paths relative to itself."""
    path.write_text("".join(f"{f.relative_to(path.parent)}\n" for f in files))
    return path


def write_fp16_overflow_net(path: Path, size: int = 16) -> Path:
    """conv (weights x300) -> x50 -> conv 1x1 (x0.001): activations near 1e5 on 0-255 inputs, past float16's 65504.
    Measured: the fp16 build's simulator returns inf/NaN (cosine NaN); auto_hybrid with a dataset names the
    tensors it moves to int16 ("Tensor name:'b' value range exceeds Fp16 Max")."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    inits = {"w1": (rng.standard_normal((8, 3, 3, 3)) * 300).astype(np.float32),
             "w2": (rng.standard_normal((4, 8, 1, 1)) * 0.001).astype(np.float32),
             "k": np.array(50.0, dtype=np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "k"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["y"], kernel_shape=[1, 1])]
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, size, size])], inits)


def write_conv_stack(path: Path, layers: int = 8, channels: int = 256, size: int = 224) -> Path:
    """x (1,3,size,size) -> conv 3x3 to `channels` -> (layers - 1) x [conv 3x3 channels->channels, relu]: large
    activations (51 MB each at 256 x 224 x 224), what verification's memory is measured on."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(5)
    inits: dict[str, np.ndarray] = {}
    nodes, prev = [], "x"
    for i in range(layers):
        cin = 3 if i == 0 else channels
        inits[f"w{i}"] = (rng.standard_normal((channels, cin, 3, 3)) * (2.0 / (9 * cin)) ** 0.5).astype(np.float32)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                 [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, channels, size, size])], inits)

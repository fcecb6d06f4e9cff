"""Ultralytics YOLO heads: recognising them in an ONNX graph, NPU-friendly output layouts, decoding them on the CPU."""

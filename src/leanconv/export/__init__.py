"""Deployment exports. ``onnx``: ONNX export checked against onnxruntime (extra ``onnx``)."""

from leanconv.export.onnx import export_onnx

__all__ = ["export_onnx"]

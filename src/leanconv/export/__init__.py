"""Deployment exports. ``onnx``: ONNX export checked against onnxruntime (extra ``onnx``)."""

from leanconv.export.onnx import export_onnx, export_onnx_bytes

__all__ = ["export_onnx", "export_onnx_bytes"]

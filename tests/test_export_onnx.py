"""ONNX export of leanconv layers and converted models matches PyTorch in onnxruntime."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import leanconv  # noqa: E402
from leanconv.export import export_onnx  # noqa: E402


def test_converted_model_exports_and_matches(tmp_path):
    model = leanconv.models.create("digits_cnn").eval()
    converted = leanconv.convert(model, to="dsconv", rank=1, exclude=["features.conv1*"]).model
    x = torch.randn(2, 1, 32, 32)
    assert export_onnx(converted, (x,), tmp_path / "m.onnx") < 1e-4
    with pytest.raises(FileExistsError, match="pass force=True"):
        export_onnx(converted, (x,), tmp_path / "m.onnx")
    for kwargs in (dict(to="dsconv", order="pointwise_first", rank=1), dict(to="tucker2", core="asymmetric", rank=8),
                   dict(to="grouped", permute=True, rank=2), dict(to="asymmetric", rank=4)):
        other = leanconv.convert(model, exclude=["features.conv1*"], **kwargs).model
        assert export_onnx(other, (x,), tmp_path / f"{kwargs['to']}.onnx") < 1e-4, kwargs


def test_layers_with_dynamic_same_padding_export(tmp_path):
    model = nn.Sequential(
        leanconv.Conv2d(3, 8, 3, 2, "same"),
        leanconv.DepthwiseSeparableConv2d(8, 8, 3, padding="same", dilation=2),
        leanconv.AsymmetricConv2d(8, 8, 3, padding=1),
        leanconv.ACBlock(8, 8, 3, padding=1),
        leanconv.DepthwiseSeparableConvTranspose2d(8, 4, 3, stride=2, padding="same"),
    ).eval()
    assert export_onnx(model, (torch.randn(1, 3, 17, 15),), tmp_path / "layers.onnx") < 1e-4

"""Entry points that need eval mode give every module its own train flag back, also on error
(``model.train(was_training)`` restored only the root: a frozen BatchNorm inside a training
model came back in train mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import leanconv
from leanconv.conversion.refitting import reestimate_bn
from leanconv.train import distill


def mixed() -> nn.Module:
    """A model in training mode with a frozen (eval) BatchNorm inside."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    model.train()
    model[1].eval()
    return model


def flags(model: nn.Module):
    return [m.training for m in model.modules()]


CALIB = [torch.randn(4, 3, 8, 8) for _ in range(2)]


@pytest.mark.parametrize("run", [
    lambda m: leanconv.convert(m, to="dsconv", rank=1, calib=CALIB, input_size=(4, 3, 8, 8)),
    lambda m: leanconv.convert(m, to="dsconv", mac_budget=10**6, calib=CALIB, input_size=(4, 3, 8, 8)),
    lambda m: leanconv.profile(m, (1, 3, 8, 8), device="cpu", measure_latency=True),
    lambda m: reestimate_bn(m, CALIB),
    lambda m: distill(leanconv.convert(m, to="dsconv", rank=1).model, m,
                      TensorDataset(torch.cat(CALIB), torch.zeros(8, dtype=torch.long)), epochs=1, progress=False),
], ids=["convert-calib", "convert-mac-budget", "profile-latency", "reestimate-bn", "distill-teacher"])
def test_each_module_keeps_its_own_train_flag(run):
    model = mixed()
    before = flags(model)
    run(model)
    assert flags(model) == before


def test_flags_come_back_when_the_work_raises():
    model = mixed()
    before = flags(model)
    with pytest.raises(ValueError, match="mac_budget=10 is below"):
        leanconv.convert(model, to="dsconv", mac_budget=10, calib=CALIB, input_size=(4, 3, 8, 8))
    assert flags(model) == before


def test_export_onnx_keeps_the_flags(tmp_path):
    pytest.importorskip("onnxruntime")
    from leanconv.export.onnx import export_onnx

    model = mixed()
    before = flags(model)
    export_onnx(model, [torch.randn(1, 3, 8, 8)], tmp_path / "m.onnx")
    assert flags(model) == before

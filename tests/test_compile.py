"""torch.compile with the default (inductor) backend on a model made of every layer family.

Other tests compile single layers with the cheaper aot_eager backend; this one runs inductor
once to prove the real code path works.
"""

from __future__ import annotations

import torch
from torch import nn

import leanconv


def test_inductor_compiles_a_mixed_model():
    model = nn.Sequential(
        leanconv.Conv2d(3, 16, 3, stride=2, padding="same"),
        leanconv.DepthwiseSeparableConv2d(16, 16, 3, padding="same", norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU),
        leanconv.AsymmetricConv2d(16, 16, 3, padding=1),
        leanconv.ACBlock(16, 16, 3, padding=1),
        leanconv.CBAM(16, reduction=4),
        leanconv.ResizeConv2d(16, 8, 3, conv="dsconv"),
        leanconv.DepthwiseSeparableConvTranspose2d(8, 4, 3, stride=2, padding="same"),
    ).eval()
    x = torch.randn(2, 3, 17, 19)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-4)
    assert expected.shape == (2, 4, 36, 40)

"""S1 (seed 000): replace a 3x3 conv with a 3x1 conv followed by a 1x3 conv.

Shows the shapes of each stage, the saving (2k instead of k*k weights per channel pair), and
that the pair is exactly one 3x3 conv of low rank: it keeps the 3x3's output size for any
stride, padding and dilation, but cannot represent every 3x3 kernel.
"""

import torch

import leanconv
from _show import compare_table, console, stage_table

C, O, H, W = 64, 64, 32, 96  # an elongated feature map, as the seed suggests

dense_spec = leanconv.ConvSpec.create(C, O, 3, padding=1)
stage_table("dense 3x3", "dense", dense_spec, (H, W))
asym_spec = leanconv.ConvSpec.create(C, O, 3, padding=1, order="kx1_first")
stage_table("3x1 then 1x3", "asymmetric", asym_spec, (H, W))

layer = leanconv.AsymmetricConv2d(C, O, 3, padding=1)
reference = torch.nn.Conv2d(C, O, 3, padding=1)
x = torch.randn(1, C, H, W)
assert layer(x).shape == reference(x).shape == (1, O, H, W)
console.print(f"AsymmetricConv2d output {tuple(layer(x).shape)} == nn.Conv2d 3x3 output {tuple(reference(x).shape)}")

# Stride 2 and 'same' padding work as for the 3x3 conv they replace.
strided = leanconv.AsymmetricConv2d(C, O, 3, stride=2, padding="same")
console.print(f"stride 2, padding='same': {tuple(x.shape)} -> {tuple(strided(x).shape)}")

# The pair is one 3x3 conv whose kernel is sum_m B[o,m,w] * A[m,c,h]: compose and compare.
with torch.no_grad():
    a = layer.conv_kx1.weight[:, :, :, 0]  # (K, C, kh)
    b = layer.conv_1xk.weight[:, :, 0, :]  # (O, K, kw)
    kernel = torch.einsum("omw,mch->ochw", b, a)
    composed = torch.nn.functional.conv2d(x, kernel, layer.conv_1xk.bias, padding=1)
    assert torch.allclose(layer(x), composed, atol=1e-4)
console.print("3x1 then 1x3 == one 3x3 conv with the composed (low-rank) kernel: checked")

compare_table(
    f"cost of one layer, {C}->{O} channels at {H}x{W}",
    [
        ("dense 3x3", leanconv.get_kind("dense").params(dense_spec), leanconv.get_kind("dense").macs(dense_spec, (H, W))),
        ("3x1 + 1x3", leanconv.get_kind("asymmetric").params(asym_spec), leanconv.get_kind("asymmetric").macs(asym_spec, (H, W))),
    ],
    baseline="dense 3x3",
)
console.print("Weights per (in, out) channel pair: 3x3 -> 9, 3x1 + 1x3 -> 6 (2k vs k*k).")

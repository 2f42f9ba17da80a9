"""S4 (seed 001): a 1x1 conv raises or lowers the channel count and mixes channels.

It is a per-pixel linear map across channels: the spatial size is unchanged (at stride 1),
every output channel is a weighted sum of all input channels at the same pixel.
"""

import torch

import leanconv
from _show import compare_table, console, stage_table

H = W = 56
reduce = leanconv.PointwiseConv2d(256, 64)   # lower: 256 -> 64 channels
expand = leanconv.PointwiseConv2d(64, 256)   # raise: 64 -> 256 channels
x = torch.randn(1, 256, H, W)
console.print(f"reduce: {tuple(x.shape)} -> {tuple(reduce(x).shape)}; expand back -> {tuple(expand(reduce(x)).shape)}")

# A 1x1 conv is a matrix product over the channel axis at every pixel.
with torch.no_grad():
    as_matmul = torch.einsum("oc,nchw->nohw", reduce.weight[:, :, 0, 0], x) + reduce.bias.view(1, -1, 1, 1)
    assert torch.allclose(reduce(x), as_matmul, atol=1e-4)
console.print("1x1 conv == per-pixel matrix product across channels: checked")

stage_table("1x1 conv 256 -> 64", "pointwise", leanconv.ConvSpec.create(256, 64, 1), (H, W))
dense = leanconv.get_kind("dense")
specs = {
    "3x3 conv 256 -> 256": ("dense", leanconv.ConvSpec.create(256, 256, 3, padding=1)),
    "1x1 256 -> 64, 3x3 64 -> 64, 1x1 64 -> 256": ("tucker2", leanconv.ConvSpec.create(256, 256, 3, padding=1, ranks=(64, 64))),
}
compare_table(
    "why bottlenecks use 1x1 convs (at 56x56)",
    [(name, leanconv.get_kind(k).params(s), leanconv.get_kind(k).macs(s, (H, W))) for name, (k, s) in specs.items()],
    baseline="3x3 conv 256 -> 256",
)

"""S8 (seed 002): how a depthwise conv differs from a standard conv; how to write it in PyTorch.

A depthwise conv is ``nn.Conv2d(C, C*m, k, groups=C)``: each input channel gets its own m
filters, no information crosses channels. Two statements in the seed are wrong and are checked
here: a depthwise conv does not halve the output height (only stride does, for any conv), and a
depthwise conv is not a special case of a pointwise conv.
"""

import torch

import leanconv
from _show import compare_table, console, stage_table

C, H, W = 32, 32, 32
x = torch.randn(1, C, H, W)
dw = leanconv.DepthwiseConv2d(C, C, 3, padding=1)
console.print(f"DepthwiseConv2d(32, 32, 3, padding=1): {tuple(x.shape)} -> {tuple(dw(x).shape)} "
              f"(height kept: the seed's 'height halves' is wrong)")
dw2 = leanconv.DepthwiseConv2d(C, C, 3, stride=2, padding=1)
console.print(f"with stride=2: -> {tuple(dw2(x).shape)} (stride halves it, as for any conv)")
console.print(f"in plain PyTorch: nn.Conv2d(32, 32, 3, padding=1, groups=32); weight {tuple(dw.weight.shape)}")

# No channel mixing: changing channel 5 of the input changes only channel 5 of the output.
x2 = x.clone()
x2[:, 5] += 1
changed = ((dw(x2) - dw(x)).abs().sum(dim=(0, 2, 3)) > 0).nonzero().flatten().tolist()
console.print(f"output channels affected by input channel 5: {changed}")
assert changed == [5]

# Not a special case of pointwise: a pointwise conv mixes channels and has no spatial extent.
pw = leanconv.PointwiseConv2d(C, C)
console.print(f"pointwise weight {tuple(pw.weight.shape)} (1x1, all channels) vs depthwise {tuple(dw.weight.shape)} "
              "(3x3, one channel each): different axes, neither contains the other")

mult = leanconv.DepthwiseConv2d(C, 2 * C, 3, padding=1)
console.print(f"depth multiplier 2: {tuple(x.shape)} -> {tuple(mult(x).shape)}, weight {tuple(mult.weight.shape)}")

spec = leanconv.ConvSpec.create(C, C, 3, padding=1)
stage_table("depthwise 3x3", "depthwise", spec, (H, W))
compare_table(
    "standard vs depthwise 3x3, 32 -> 32 channels at 32x32",
    [(k, leanconv.get_kind(k).params(spec), leanconv.get_kind(k).macs(spec, (H, W))) for k in ("dense", "depthwise", "dsconv")],
    baseline="dense",
)
console.print("Pros: ~C times fewer params and MACs. Cons: no cross-channel mixing (pair it with a 1x1), "
              "low arithmetic intensity, so real speedups are smaller than the MAC ratio.")

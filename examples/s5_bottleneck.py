"""S5 (seed 001): the ResNet bottleneck -- reduce, 3x3 (stride 2 to downsample), expand, shortcut.

ResNet v1.5 puts the stride on the 3x3 conv; when the shape changes, the shortcut is a 1x1
projection (with BN), otherwise the identity.
"""

import torch

import leanconv
from _show import compare_table, conv_macs, console, count_params

x = torch.randn(1, 256, 56, 56)
downsample = leanconv.Bottleneck(256, 512, stride=2)  # mid = 512 // 4 = 128
keep = leanconv.Bottleneck(512, 512)
y = downsample(x)
console.print(f"Bottleneck(256, 512, stride=2): {tuple(x.shape)} -> {tuple(y.shape)}; shortcut = {downsample.shortcut}")
console.print(f"Bottleneck(512, 512): {tuple(y.shape)} -> {tuple(keep(y).shape)}; shortcut = {keep.shortcut}")

# Trace the shapes stage by stage.
h = x
for name in ("reduce", "conv", "expand"):
    h = getattr(downsample, name)(h)
    console.print(f"  {name:<7} -> {tuple(h.shape)}")

separable = leanconv.Bottleneck(256, 512, stride=2, conv="dsconv")
shape = (1, 256, 56, 56)
compare_table(
    "Bottleneck 256 -> 512, stride 2, at 56x56",
    [
        ("3x3 dense (ResNet-50)", count_params(downsample), conv_macs(downsample, shape)),
        ("3x3 depthwise separable", count_params(separable), conv_macs(separable, shape)),
    ],
    baseline="3x3 dense (ResNet-50)",
)

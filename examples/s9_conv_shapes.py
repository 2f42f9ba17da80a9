"""S9 (seed 003): standard, grouped, depthwise, pointwise and depthwise separable convs --
the input, kernel (weight) and output shapes of each, and what each costs.

Weight layout in PyTorch: (out_channels, in_channels / groups, kh, kw).
"""

import torch

import leanconv
from _show import compare_table, console, stage_table

N, C, O, H, W = 8, 64, 128, 56, 56
cases = {
    "dense": leanconv.ConvSpec.create(C, O, 3, padding=1),
    "grouped": leanconv.ConvSpec.create(C, O, 3, padding=1, groups=4),
    "depthwise": leanconv.ConvSpec.create(C, C, 3, padding=1),
    "pointwise": leanconv.ConvSpec.create(C, O, 1),
    "dsconv": leanconv.ConvSpec.create(C, O, 3, padding=1),
}
rows = []
for kind, spec in cases.items():
    stage_table(f"{kind}: input (N, C, H, W) = {(N, C, H, W)}", kind, spec, (H, W), batch=N)
    module = leanconv.create_conv2d(kind, spec.in_channels, spec.out_channels, spec.kernel_size,
                                    padding=spec.padding, **spec.options)
    y = module(torch.randn(N, C, H, W))
    assert tuple(y.shape) == (N, *leanconv.get_kind(kind).output_shape(spec, (H, W)))
    rows.append((kind, leanconv.get_kind(kind).params(spec), leanconv.get_kind(kind).macs(spec, (H, W)) * N))

compare_table(f"costs at batch {N}, {H}x{W}", rows, baseline="dense")
console.print("The seed's own DepthwiseSeparableConv2d does not parse and ignores stride/padding; "
              "leanconv.DepthwiseSeparableConv2d takes every nn.Conv2d argument:")
sep = leanconv.DepthwiseSeparableConv2d(C, O, 3, stride=2, padding="same")
console.print(f"  DepthwiseSeparableConv2d(64, 128, 3, stride=2, padding='same'): "
              f"{(N, C, H, W)} -> {tuple(sep(torch.randn(N, C, H, W)).shape)}")

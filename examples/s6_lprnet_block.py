"""S6 (seed 001): LPRNet's small_basic_block -- 1x1 to out/4, 3x1, 1x3, 1x1 to out, ReLUs between.

``SmallBasicBlock`` is exactly the seed's module (same structure, named stages). It replaces a
3x3 conv: a Tucker-2 bottleneck whose core is itself spatially separable.
"""

import torch

import leanconv
from _show import compare_table, conv_macs, console, count_params

ch_in, ch_out, H, W = 64, 256, 24, 94  # LPRNet feature maps are wide: 24 x 94 plates
block = leanconv.SmallBasicBlock(ch_in, ch_out)
x = torch.randn(1, ch_in, H, W)
h = x
for name in ("reduce", "conv_kx1", "conv_1xk", "expand"):
    h = getattr(block, name)(h)
    console.print(f"  {name:<8} weight {tuple(getattr(block, name).weight.shape)} -> output {tuple(h.shape)}")
assert block(x).shape == (1, ch_out, H, W)

dense = torch.nn.Conv2d(ch_in, ch_out, 3, padding=1)
shape = (1, ch_in, H, W)
compare_table(
    f"small_basic_block {ch_in} -> {ch_out} at {H}x{W}",
    [
        ("dense 3x3", count_params(dense), conv_macs(dense, shape)),
        ("small_basic_block", count_params(block), conv_macs(block, shape)),
    ],
    baseline="dense 3x3",
)

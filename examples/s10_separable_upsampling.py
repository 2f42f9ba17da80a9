"""S10 (seed 004): depthwise separable convs for upsampling -- transposed, resize-then-conv,
and max-unpool with the recorded indices -- and why a dilated conv does not upsample.
"""

import torch
from torch import nn

import leanconv
from _show import compare_table, console, stage_table

C, O, H, W = 64, 32, 16, 16
x = torch.randn(1, C, H, W)

transposed = nn.ConvTranspose2d(C, O, 4, stride=2, padding=1)
sep_t = leanconv.DepthwiseSeparableConvTranspose2d(C, O, 4, stride=2, padding=1)
sep_t_pw = leanconv.DepthwiseSeparableConvTranspose2d(C, O, 4, stride=2, padding=1, order="pointwise_first")
resize = leanconv.ResizeConv2d(C, O, 3, scale_factor=2, conv="dsconv")
for name, layer in [("ConvTranspose2d 4x4/2", transposed), ("separable transposed", sep_t),
                    ("separable transposed, 1x1 first", sep_t_pw), ("resize x2 + separable 3x3", resize)]:
    console.print(f"{name:<34} {tuple(x.shape)} -> {tuple(layer(x).shape)}")

same = leanconv.DepthwiseSeparableConvTranspose2d(C, O, 3, stride=2, padding="same")
console.print(f"padding='same' on a transposed conv gives in*stride: {tuple(x.shape)} -> {tuple(same(x).shape)}")

# Max-unpool path: record the indices when pooling, put values back, fill in with a conv.
pool = nn.MaxPool2d(2, return_indices=True)
features = torch.randn(1, C, 2 * H, 2 * W)
pooled, indices = pool(features)
unpool_conv = leanconv.MaxUnpoolConv2d(C, O, 3, conv="dsconv")
console.print(f"max-pool {tuple(features.shape)} -> {tuple(pooled.shape)}; "
              f"MaxUnpoolConv2d(x, indices) -> {tuple(unpool_conv(pooled, indices).shape)}")

# A dilated conv enlarges the receptive field, not the output.
dilated = nn.Conv2d(C, C, 3, padding=2, dilation=2)
console.print(f"dilated 3x3 (d=2, p=2): {tuple(x.shape)} -> {tuple(dilated(x).shape)}: "
              "same size, receptive field 5x5 -- dilation does not upsample")

t_spec = leanconv.ConvSpec.create(C, O, 4, 2, 1)
stage_table("separable transposed conv", "dsconv_transpose", t_spec, (H, W))
r_spec = leanconv.ConvSpec.create(C, O, 3, padding="same", conv="dsconv")
dense_t_macs = C * O * 16 * H * W  # transposed conv MACs count input positions: C*O*kh*kw*H*W
compare_table(
    f"upsampling {C}->{O} channels, {H}x{W} -> {2 * H}x{2 * W}",
    [
        ("ConvTranspose2d 4x4/2", sum(p.numel() for p in transposed.parameters()), dense_t_macs),
        ("separable transposed", leanconv.get_kind("dsconv_transpose").params(t_spec),
         leanconv.get_kind("dsconv_transpose").macs(t_spec, (H, W))),
        ("separable transposed, 1x1 first",
         leanconv.get_kind("dsconv_transpose").params(leanconv.ConvSpec.create(C, O, 4, 2, 1, order="pointwise_first")),
         leanconv.get_kind("dsconv_transpose").macs(leanconv.ConvSpec.create(C, O, 4, 2, 1, order="pointwise_first"), (H, W))),
        ("resize x2 + separable 3x3", leanconv.get_kind("resize_conv").params(r_spec),
         leanconv.get_kind("resize_conv").macs(r_spec, (H, W))),
    ],
    baseline="ConvTranspose2d 4x4/2",
)

"""S3 (seed 000): the page's 8-branch ASPP, and the same ASPP with depthwise separable convs.

``ASPP.from_seed`` builds exactly the module the user wrote (1x1 branch, six atrous 3x3
branches with dilation 4r..24r, image pooling, concat of 8 branches, 1x1 projection).
``conv='dsconv'`` replaces each atrous 3x3 with an atrous separable conv (DeepLabv3+).
"""

import torch

import leanconv
from _show import compare_table, conv_macs, console, count_params

dim_in, dim_out, rate = 2048, 256, 1
H = W = 32  # e.g. a 512x512 image at output stride 16

seed_aspp = leanconv.ASPP.from_seed(dim_in, dim_out, rate=rate)
separable_aspp = leanconv.ASPP(dim_in, dim_out, rates=tuple(r * rate for r in (4, 8, 12, 16, 20, 24)),
                               conv="dsconv", image_pooling=True, bias=True)
console.print(f"seed ASPP branches: {list(seed_aspp.branches.keys())}")
console.print(f"separable ASPP, branch atrous4: {separable_aspp.branches['atrous4']}")

shape = (1, dim_in, H, W)
x = torch.randn(1, 64, 17, 23)
small = leanconv.ASPP(64, 32, rates=(4, 8), conv="dsconv").eval()
console.print(f"output shape is kept: {tuple(x.shape)} -> {tuple(small(x).shape)}")

compare_table(
    f"ASPP {dim_in}->{dim_out} at {H}x{W}",
    [
        ("seed ASPP (dense 3x3)", count_params(seed_aspp), conv_macs(seed_aspp, shape)),
        ("atrous separable ASPP", count_params(separable_aspp), conv_macs(separable_aspp, shape)),
    ],
    baseline="seed ASPP (dense 3x3)",
)

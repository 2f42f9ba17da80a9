"""LPRNet (licence plate recognition, Zherzdev & Gruzdev 2018) built on leanconv's SmallBasicBlock.

Input ``(N, 3, 24, 94)``, output ``(N, class_num, 18)``: class scores for 18 horizontal
positions, decoded with CTC. The backbone is the paper's Table 1 as the widely used
PyTorch reference implementation (sirius-ai/LPRNet_Pytorch) realises it, including its
global-context head, which the paper only sketches: a 3x3 stem, three small basic blocks and
two rectangular convs, each followed by BN + ReLU, with max pools between them that also
subsample channels. Four intermediate maps are average-pooled to 4x18, each divided by its
mean square, concatenated ("global context", ``64 + 128 + 256 + class_num`` channels) and
mixed by a 1x1 conv; the mean over the 4 rows gives the output.

Shapes at 24x94 (channels, height, width), ``*`` marks a global-context tap::

    stage1  conv 3x3 (no pad)  64 x 22 x 92 *   pool1 (3x3, stride 1)         64 x 20 x 90
    stage2  small block       128 x 20 x 90 *   pool2 (3x3, stride (1, 2))    64 x 18 x 44  (channels / 2)
    stage3  small block       256 x 18 x 44
    stage4  small block       256 x 18 x 44 *   pool4 (3x3, stride (1, 2))    64 x 16 x 21  (channels / 4)
    stage5  dropout, conv 1x4 256 x 16 x 18
    stage6  dropout, conv 13x1  C x  4 x 18 *

Two documented choices: the reference's channel-subsampling ``nn.MaxPool3d((1, 3, 3),
(cs, 1, 2))`` on a 4-D tensor is written as an explicit channel stride then a 2-D max pool
(same numbers); and the mean-square normalisation of each context map is taken per image
(the reference averages over the whole batch, so an image's output depended on its batch).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from leanconv._validate import check_input, check_positive_int, check_probability
from leanconv.layers import Conv2d, SmallBasicBlock
from leanconv.layers.conv import make_act, make_norm

INPUT_SIZE: Tuple[int, int] = (24, 94)


class LPRRow(NamedTuple):
    """One LPRNet stage: ``block`` ('conv' with ``kernel``, or 'small' for a SmallBasicBlock)
    to ``out_channels`` (None: the class count) + BN + ReLU; ``dropout`` before it; ``pool``
    after it as (channel stride, (stride_h, stride_w)) of a 3x3 max pool, or None;
    ``context`` the (kernel, stride) of the average pool bringing its output to 4x18 for the
    global context, or None when it is not a context tap."""

    name: str
    block: str
    out_channels: Optional[int]
    kernel: Optional[Tuple[int, int]]
    dropout: bool
    pool: Optional[Tuple[int, Tuple[int, int]]]
    context: Optional[Tuple[Tuple[int, int], Tuple[int, int]]]


LPRNET_SETTING: List[LPRRow] = [
    LPRRow("stage1", "conv", 64, (3, 3), False, (1, (1, 1)), ((5, 5), (5, 5))),
    LPRRow("stage2", "small", 128, None, False, (2, (1, 2)), ((5, 5), (5, 5))),
    LPRRow("stage3", "small", 256, None, False, None, None),
    LPRRow("stage4", "small", 256, None, False, (4, (1, 2)), ((4, 10), (4, 2))),
    LPRRow("stage5", "conv", 256, (1, 4), True, None, None),
    LPRRow("stage6", "conv", None, (13, 1), True, None, ((1, 1), (1, 1))),
]


class ChannelStridedMaxPool2d(nn.Module):
    """Keep every ``channel_stride``-th channel, then a ``kernel_size`` max pool with ``stride``.

    LPRNet's ``MaxPool3d((1, k, k), (cs, sh, sw))`` applied to an (N, C, H, W) tensor: a
    kernel of 1 over channels with stride ``cs`` just picks channels ``0, cs, 2cs, ...``.
    """

    def __init__(self, channel_stride: int, kernel_size: int = 3, stride: Tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.channel_stride = check_positive_int(channel_stride, "channel_stride")
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_stride > 1:
            x = x[:, :: self.channel_stride]
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"channel_stride={self.channel_stride}, kernel_size={self.kernel_size}, stride={self.stride}"


class LPRNetStage(nn.Module):
    """Optional dropout, then a block (plain conv, bias on, or SmallBasicBlock), BN and ReLU."""

    def __init__(self, block: str, in_channels: int, out_channels: int,
                 kernel: Optional[Tuple[int, int]], dropout: float) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.block: nn.Module
        if block == "conv":
            self.block = Conv2d(in_channels, out_channels, kernel, padding=0)  # type: ignore[arg-type]
            self.conv_norm_pairs = (("block", "norm"),)
        else:
            self.block = SmallBasicBlock(in_channels, out_channels)
            self.conv_norm_pairs = (("block.expand", "norm"),)
        self.norm = make_norm(nn.BatchNorm2d, out_channels)
        self.act = make_act(nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.act(self.norm(self.block(self.dropout(x))))


class LPRNet(nn.Module):
    """LPRNet: ``stages`` from :data:`LPRNET_SETTING`, ``pools`` between them, ``context_pools``
    for the global-context taps, and ``context_conv`` (1x1) mixing the concatenated taps.

    Input ``(N, 3, 24, 94)`` only (the four taps must all reach 4x18); output
    ``(N, class_num, 18)``.
    """

    def __init__(self, class_num: int = 68, dropout: float = 0.5, eps: float = 1e-12) -> None:
        super().__init__()
        check_positive_int(class_num, "class_num")
        p = check_probability(dropout, "dropout")
        self.class_num = class_num
        self.in_channels = 3
        self.eps = eps
        stages: Dict[str, nn.Module] = OrderedDict()
        pools: Dict[str, nn.Module] = OrderedDict()
        context_pools: Dict[str, nn.Module] = OrderedDict()
        channels, context_channels = self.in_channels, 0
        for row in LPRNET_SETTING:
            out = class_num if row.out_channels is None else row.out_channels
            stages[row.name] = LPRNetStage(row.block, channels, out, row.kernel, p if row.dropout else 0.0)
            channels = out
            if row.context is not None:
                kernel, stride = row.context
                context_pools[row.name] = nn.AvgPool2d(kernel, stride) if kernel != (1, 1) else nn.Identity()
                context_channels += out
            if row.pool is not None:
                channel_stride, stride = row.pool
                pools[row.name] = ChannelStridedMaxPool2d(channel_stride, 3, stride)
                channels //= channel_stride
        self.stages = nn.ModuleDict(stages)
        self.pools = nn.ModuleDict(pools)
        self.context_pools = nn.ModuleDict(context_pools)
        self.context_conv = Conv2d(context_channels, class_num, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        if not isinstance(x, torch.fx.Proxy) and tuple(x.shape[-2:]) != INPUT_SIZE:
            raise ValueError(
                f"LPRNet: input must be (N, 3, {INPUT_SIZE[0]}, {INPUT_SIZE[1]}), got shape {tuple(x.shape)}"
            )
        context: List[torch.Tensor] = []
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.context_pools:
                f = self.context_pools[name](x)
                scale = f.pow(2).mean(dim=(1, 2, 3), keepdim=True).clamp_min(self.eps)
                context.append(f / scale)
            if name in self.pools:
                x = self.pools[name](x)
        logits = self.context_conv(torch.cat(context, dim=1))
        return logits.mean(dim=2)


def lprnet(class_num: int = 68, dropout: float = 0.5) -> LPRNet:
    """LPRNet for ``(N, 3, 24, 94)`` plates; output ``(N, class_num, 18)`` for CTC decoding."""
    return LPRNet(class_num, dropout)


__all__ = ["ChannelStridedMaxPool2d", "LPRNET_SETTING", "LPRNet", "LPRNetStage", "LPRRow", "lprnet"]

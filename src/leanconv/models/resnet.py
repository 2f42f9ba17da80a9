"""ResNet-18 (basic blocks) and ResNet-50 v1.5 (bottlenecks, stride on the 3x3), as settings tables.

Both share one trunk: a 7x7/2 conv + BN + ReLU stem, a 3x3/2 max pool, four stages of blocks
(``layer{i}.block{j}``), global average pooling and a linear classifier. Every 3x3 conv in
the blocks is a :class:`~leanconv.layers.blocks.KindConvNormAct`, so ``conv='dsconv'`` (or any
other spatial kind) swaps all of them at once. Figures at 224x224, batch 1: ResNet-18 about
1,814 M MACs / 11,689,512 params, ResNet-50 4,089,184,256 MACs / 25,557,032 params.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import nn

from leanconv._validate import check_callable_or_none, check_choice, check_input, check_positive_int
from leanconv.layers import Bottleneck, ConvNormAct
from leanconv.layers.blocks import KindConvNormAct, residual_shortcut, check_conv_options, check_spatial_kind
from leanconv.layers.conv import make_act

ModuleFactory = Callable[..., nn.Module]


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3 conv (with the stride) + BN + act, 3x3 conv + BN, plus a shortcut.

    ``act(conv2(conv1(x)) + shortcut(x))``; the shortcut is the identity when the shape is
    kept, else a strided 1x1 conv + BN. Both 3x3s are of kind ``conv`` (``'dense'`` by
    default). Output ``(N, out, ceil(H/s), ceil(W/s))``; dense params
    ``9*in*out + 9*out^2`` plus norms (and ``in*out`` for a projection).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        conv: str = "dense",
        conv_options: Optional[Mapping[str, Any]] = None,
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(stride, "stride")
        check_spatial_kind(conv)
        options = check_conv_options(conv_options)
        check_callable_or_none(norm_layer, "norm_layer")
        check_callable_or_none(act_layer, "act_layer")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        factory = dict(device=device, dtype=dtype)
        self.conv1 = KindConvNormAct(conv, in_channels, out_channels, 3, stride, padding=1,
                                     conv_options=options, norm_layer=norm_layer, act_layer=act_layer,
                                     **factory)
        self.conv2 = KindConvNormAct(conv, out_channels, out_channels, 3, 1, padding=1,
                                     conv_options=options, norm_layer=norm_layer, act_layer=None,
                                     **factory)
        self.shortcut = residual_shortcut(in_channels, out_channels, stride, norm_layer, **factory)
        self.act = make_act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class StageRow(NamedTuple):
    """One ResNet stage: ``blocks`` blocks ending in ``out_channels``, the first with ``stride``."""

    blocks: int
    out_channels: int
    stride: int


# ResNet paper, Table 1 (after the 7x7/2 stem and 3x3/2 max pool: 224 -> 56).
RESNET18_SETTING: List[StageRow] = [
    StageRow(2, 64, 1),    # 56x56
    StageRow(2, 128, 2),   # 28x28
    StageRow(2, 256, 2),   # 14x14
    StageRow(2, 512, 2),   # 7x7
]
# Bottleneck stages: out_channels is the expanded width (4x the 3x3's width).
RESNET50_SETTING: List[StageRow] = [
    StageRow(3, 256, 1),
    StageRow(4, 512, 2),
    StageRow(6, 1024, 2),
    StageRow(3, 2048, 2),
]

BLOCKS = ("basic", "bottleneck")


class ResNet(nn.Module):
    """ResNet trunk: 7x7/2 stem, 3x3/2 max pool, stages from ``setting``, global pool, linear.

    ``block='basic'`` (two 3x3s) or ``'bottleneck'`` (v1.5: 1x1, 3x3 with the stride, 1x1 to
    ``out_channels``, width ``out_channels // 4``). ``conv`` picks the kind of every 3x3 in the
    blocks (the stem stays a dense 7x7). Input ``(N, C, H, W)``, output ``(N, num_classes)``.
    """

    def __init__(
        self,
        block: str,
        setting: Sequence[StageRow],
        num_classes: int = 1000,
        conv: str = "dense",
        conv_options: Optional[Mapping[str, Any]] = None,
        in_channels: int = 3,
        stem_channels: int = 64,
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
    ) -> None:
        super().__init__()
        check_choice(block, "block", BLOCKS)
        if isinstance(setting, (str, bytes)) or not isinstance(setting, Sequence) or len(setting) == 0:
            raise ValueError(
                f"setting={setting!r} must be a non-empty sequence of (blocks, out_channels, stride)"
            )
        try:
            rows = [StageRow(*row) for row in setting]
        except TypeError:
            raise ValueError(f"setting={setting!r} rows must be (blocks, out_channels, stride)") from None
        for row in rows:
            check_positive_int(row.blocks, "blocks")
            check_positive_int(row.out_channels, "out_channels")
            check_positive_int(row.stride, "stride")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(stem_channels, "stem_channels")
        check_spatial_kind(conv)
        options = check_conv_options(conv_options)
        self.in_channels = in_channels
        self.block_kind = block
        self.conv_kind = conv

        self.stem = ConvNormAct(in_channels, stem_channels, 7, 2, padding=3,
                                norm_layer=norm_layer, act_layer=act_layer)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        channels = stem_channels
        stages: List[nn.Sequential] = []
        for row in rows:
            blocks: Dict[str, nn.Module] = OrderedDict()
            for j in range(row.blocks):
                stride = row.stride if j == 0 else 1
                if block == "basic":
                    unit: nn.Module = BasicBlock(channels, row.out_channels, stride, conv, options,
                                                 norm_layer, act_layer)
                else:
                    unit = Bottleneck(channels, row.out_channels, stride, conv=conv, conv_options=options,
                                      norm_layer=norm_layer, act_layer=act_layer)
                blocks[f"block{j + 1}"] = unit
                channels = row.out_channels
            stages.append(nn.Sequential(blocks))
        self.num_stages = len(stages)
        for index, stage in enumerate(stages, start=1):
            self.add_module(f"layer{index}", stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        x = self.maxpool(self.stem(x))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(num_classes: int = 1000, conv: str = "dense", **kwargs: Any) -> ResNet:
    """ResNet-18: about 1,814 M MACs and 11,689,512 params at 224x224 (dense 3x3s)."""
    return ResNet("basic", RESNET18_SETTING, num_classes, conv, **kwargs)


def resnet50(num_classes: int = 1000, conv: str = "dense", **kwargs: Any) -> ResNet:
    """ResNet-50 v1.5: 4,089,184,256 MACs and 25,557,032 params at 224x224 (dense 3x3s)."""
    return ResNet("bottleneck", RESNET50_SETTING, num_classes, conv, **kwargs)


__all__ = ["BasicBlock", "RESNET18_SETTING", "RESNET50_SETTING", "ResNet", "StageRow", "resnet18", "resnet50"]

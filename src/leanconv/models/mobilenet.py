"""MobileNet v1, its full-conv twin ("Conv MobileNet") and MobileNet v2, as settings tables.

Each network is a table of rows read top to bottom, built from leanconv parts: v1's layers are
:class:`~leanconv.layers.blocks.KindConvNormAct` units (a depthwise separable conv with its
inner BN + ReLU, then BN + ReLU), v2's are :class:`~leanconv.layers.InvertedResidual` blocks.
Figures at 224x224, batch 1 (conv + linear MACs; params incl. biases and BN affine):
v1 568,740,352 MACs / 4,231,976 params, Conv MobileNet about 4,867 M / 29.29 M,
v2 about 300.8 M / 3,504,872.
"""

from __future__ import annotations

from collections import OrderedDict
from numbers import Real
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional

import torch
from torch import nn

from leanconv._validate import check_callable_or_none, check_input, check_positive_int, check_probability
from leanconv.layers import ConvNormAct, InvertedResidual
from leanconv.layers.blocks import KindConvNormAct, check_conv_options, check_spatial_kind

ModuleFactory = Callable[..., nn.Module]


class V1Row(NamedTuple):
    """One MobileNet v1 layer: a 3x3 (separable) conv to ``out_channels`` with ``stride``."""

    out_channels: int
    stride: int


# MobileNet v1 paper, Table 1, after the 3x3/2 stem conv to 32 channels (224 -> 112).
# The paper prints stride 2 for the 13th layer; the network (and its 7x7 pool) uses 1.
MOBILENET_V1_SETTING: List[V1Row] = [
    V1Row(64, 1),    # 112x112
    V1Row(128, 2),   # 56x56
    V1Row(128, 1),
    V1Row(256, 2),   # 28x28
    V1Row(256, 1),
    V1Row(512, 2),   # 14x14
    V1Row(512, 1),
    V1Row(512, 1),
    V1Row(512, 1),
    V1Row(512, 1),
    V1Row(512, 1),
    V1Row(1024, 2),  # 7x7
    V1Row(1024, 1),
]


class V2Row(NamedTuple):
    """One MobileNet v2 stage: ``repeats`` inverted residuals, the first with ``stride``."""

    expand_ratio: int
    out_channels: int
    repeats: int
    stride: int


# MobileNet v2 paper, Table 2, between the 3x3/2 stem (32 channels) and the 1x1 conv to 1280.
MOBILENET_V2_SETTING: List[V2Row] = [
    V2Row(1, 16, 1, 1),   # 112x112
    V2Row(6, 24, 2, 2),   # 56x56
    V2Row(6, 32, 3, 2),   # 28x28
    V2Row(6, 64, 4, 2),   # 14x14
    V2Row(6, 96, 3, 1),
    V2Row(6, 160, 3, 2),  # 7x7
    V2Row(6, 320, 1, 1),
]


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never
    more than 10% below ``value``: the channel rounding that width multipliers use."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _check_width_mult(width_mult: Any) -> float:
    if isinstance(width_mult, bool) or not isinstance(width_mult, Real) or not width_mult > 0:
        raise ValueError(f"width_mult={width_mult!r} must be a number > 0")
    return float(width_mult)


class MobileNetV1(nn.Module):
    """MobileNet v1: 3x3/2 conv stem, 13 depthwise separable layers, global pool, linear classifier.

    Each layer (``features.layer{i}``) is a conv of kind ``conv`` followed by BN + ReLU; with
    the default ``'dsconv'`` the conv is depthwise 3x3 + BN + ReLU then pointwise 1x1 (the
    paper's layer), with ``'dense'`` it is one full 3x3 conv ("Conv MobileNet"). ``conv_options``
    are the kind's own options (for 'dsconv' they default to the inner BN + ReLU). Conv biases
    are off (every conv is followed by a BN); the classifier has one. Input ``(N, C, H, W)``,
    output ``(N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        conv: str = "dsconv",
        conv_options: Optional[Mapping[str, Any]] = None,
        in_channels: int = 3,
        norm_layer: ModuleFactory = nn.BatchNorm2d,
        act_layer: ModuleFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        alpha = _check_width_mult(width_mult)
        check_spatial_kind(conv)
        options = check_conv_options(conv_options)
        check_callable_or_none(norm_layer, "norm_layer")
        check_callable_or_none(act_layer, "act_layer")
        if conv == "dsconv" and conv_options is None:
            options = {"norm_layer": norm_layer, "act_layer": act_layer}  # BN + ReLU after the depthwise
        self.in_channels = in_channels
        self.conv_kind = conv

        channels = make_divisible(32 * alpha)
        layers: Dict[str, nn.Module] = OrderedDict()
        layers["stem"] = ConvNormAct(in_channels, channels, 3, 2, padding=1,
                                     norm_layer=norm_layer, act_layer=act_layer)
        for index, row in enumerate(MOBILENET_V1_SETTING, start=1):
            out = make_divisible(row.out_channels * alpha)
            layers[f"layer{index}"] = KindConvNormAct(
                conv, channels, out, 3, row.stride, padding=1, bias=False, conv_options=options,
                norm_layer=norm_layer, act_layer=act_layer,
            )
            channels = out
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class MobileNetV2(nn.Module):
    """MobileNet v2: 3x3/2 stem, 17 inverted residuals (linear bottlenecks), 1x1 conv to 1280,
    global pool, dropout, linear classifier; ReLU6 throughout.

    Blocks are ``features.block{i}`` in settings-table order, the last conv ``features.head``.
    Input ``(N, C, H, W)``, output ``(N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_channels: int = 3,
        last_channels: int = 1280,
        norm_layer: ModuleFactory = nn.BatchNorm2d,
        act_layer: ModuleFactory = nn.ReLU6,
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(last_channels, "last_channels")
        alpha = _check_width_mult(width_mult)
        p = check_probability(dropout, "dropout")
        check_callable_or_none(norm_layer, "norm_layer")
        check_callable_or_none(act_layer, "act_layer")
        self.in_channels = in_channels

        channels = make_divisible(32 * alpha)
        last = make_divisible(last_channels * max(1.0, alpha))  # the head never shrinks below 1280
        layers: Dict[str, nn.Module] = OrderedDict()
        layers["stem"] = ConvNormAct(in_channels, channels, 3, 2, padding=1,
                                     norm_layer=norm_layer, act_layer=act_layer)
        index = 1
        for row in MOBILENET_V2_SETTING:
            out = make_divisible(row.out_channels * alpha)
            for repeat in range(row.repeats):
                layers[f"block{index}"] = InvertedResidual(
                    channels, out, row.stride if repeat == 0 else 1, expand_ratio=row.expand_ratio,
                    norm_layer=norm_layer, act_layer=act_layer,
                )
                channels = out
                index += 1
        layers["head"] = ConvNormAct(channels, last, 1, padding=0, norm_layer=norm_layer, act_layer=act_layer)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0, **kwargs: Any) -> MobileNetV1:
    """MobileNet v1 (paper Table 1): 568,740,352 MACs and 4,231,976 params at 224x224."""
    return MobileNetV1(num_classes, width_mult, **kwargs)


def conv_mobilenet(num_classes: int = 1000, width_mult: float = 1.0, **kwargs: Any) -> MobileNetV1:
    """MobileNet v1 with each depthwise + pointwise pair one full 3x3 conv (paper Table 4's
    "Conv MobileNet"): about 4,867 M MACs and 29.29 M params at 224x224."""
    return MobileNetV1(num_classes, width_mult, conv="dense", **kwargs)


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, **kwargs: Any) -> MobileNetV2:
    """MobileNet v2 1.0: about 300.8 M MACs and 3,504,872 params at 224x224."""
    return MobileNetV2(num_classes, width_mult, **kwargs)


__all__ = [
    "MOBILENET_V1_SETTING",
    "MOBILENET_V2_SETTING",
    "MobileNetV1",
    "MobileNetV2",
    "conv_mobilenet",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v2",
]

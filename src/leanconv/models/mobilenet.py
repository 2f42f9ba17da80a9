"""MobileNet v1 (and its full-conv twin) and MobileNet v2, as settings tables of leanconv parts."""

from __future__ import annotations

from typing import List, Tuple

from torch import nn

from leanconv.layers import ConvNormAct, DepthwiseSeparableConv2d, InvertedResidual

# MobileNet v1 body (paper Table 1): (out_channels, stride) of each depthwise separable layer.
MOBILENET_V1_SETTINGS: List[Tuple[int, int]] = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
]

# MobileNet v2 (paper Table 2): expansion t, out channels c, repeats n, first stride s.
MOBILENET_V2_SETTINGS: List[Tuple[int, int, int, int]] = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]


def _width(channels: int, width_mult: float) -> int:
    return max(8, int(channels * width_mult))


class SeparableUnit(nn.Sequential):
    """MobileNet v1 layer: depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU."""

    conv_norm_pairs = (("conv.pointwise", "norm"),)

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = DepthwiseSeparableConv2d(in_channels, out_channels, 3, stride, 1, bias=False,
                                             norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()


class MobileNetV1(nn.Module):
    """MobileNet v1: a 3x3 stem, 13 depthwise separable layers, global pool, classifier.

    ``full_conv=True`` makes each depthwise+pointwise pair one full 3x3 conv: the paper's
    "Conv MobileNet" (Table 4: 4866 M mult-adds and 29.3 M params vs 569 M and 4.2 M).
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, full_conv: bool = False,
                 in_channels: int = 3) -> None:
        super().__init__()
        channels = _width(32, width_mult)
        layers: List[nn.Module] = [ConvNormAct(in_channels, channels, 3, 2, 1)]
        for out, stride in MOBILENET_V1_SETTINGS:
            out = _width(out, width_mult)
            unit = ConvNormAct(channels, out, 3, stride, 1) if full_conv else SeparableUnit(channels, out, stride)
            layers.append(unit)
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


class MobileNetV2(nn.Module):
    """MobileNet v2: inverted residual blocks with linear bottlenecks, last conv 1280."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 in_channels: int = 3) -> None:
        super().__init__()
        channels = _width(32, width_mult)
        last = max(1280, _width(1280, width_mult))
        layers: List[nn.Module] = [ConvNormAct(in_channels, channels, 3, 2, 1, act_layer=nn.ReLU6)]
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            out = _width(c, width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, expand_ratio=t))
                channels = out
        layers.append(ConvNormAct(channels, last, 1, act_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0, **kw) -> MobileNetV1:
    return MobileNetV1(num_classes, width_mult, **kw)


def conv_mobilenet(num_classes: int = 1000, width_mult: float = 1.0, **kw) -> MobileNetV1:
    return MobileNetV1(num_classes, width_mult, full_conv=True, **kw)


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, **kw) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult, **kw)

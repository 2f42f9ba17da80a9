"""ResNet-18 and ResNet-50 v1.5 (stride on the 3x3), as settings tables of leanconv parts."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from torch import nn

from leanconv._validate import check_input
from leanconv.layers import Bottleneck, ConvNormAct
from leanconv.layers.blocks import KindConvNormAct

# (blocks, width) per stage; the first block of stages 2-4 has stride 2.
RESNET18_STAGES: List[Tuple[int, int]] = [(2, 64), (2, 128), (2, 256), (2, 512)]
RESNET50_STAGES: List[Tuple[int, int]] = [(3, 64), (4, 128), (6, 256), (3, 512)]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN (the first strided, any conv kind) plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, conv: str = "dense",
                 conv_options: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = KindConvNormAct(conv, in_channels, out_channels, 3, stride, 1, conv_options=conv_options)
        self.conv2 = KindConvNormAct(conv, out_channels, out_channels, 3, 1, 1, conv_options=conv_options, act_layer=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvNormAct(in_channels, out_channels, 1, stride, 0, act_layer=None)
        self.act = nn.ReLU()

    def forward(self, x):
        check_input(x, self.in_channels, type(self).__name__)
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet: 7x7/2 stem, 3x3/2 max pool, four stages, global pool, classifier."""

    def __init__(self, stages: List[Tuple[int, int]], bottleneck: bool, num_classes: int = 1000,
                 conv: str = "dense", conv_options: Optional[Mapping[str, Any]] = None, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvNormAct(in_channels, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1))
        expansion = 4 if bottleneck else 1
        channels = 64
        layers: List[nn.Module] = []
        for index, (blocks, width) in enumerate(stages):
            out = width * expansion
            stage = []
            for b in range(blocks):
                stride = 2 if (index > 0 and b == 0) else 1
                if bottleneck:
                    stage.append(Bottleneck(channels, out, stride, mid_channels=width, conv=conv, conv_options=conv_options))
                else:
                    stage.append(BasicBlock(channels, out, stride, conv=conv, conv_options=conv_options))
                channels = out
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


def resnet18(num_classes: int = 1000, **kw) -> ResNet:
    return ResNet(RESNET18_STAGES, bottleneck=False, num_classes=num_classes, **kw)


def resnet50(num_classes: int = 1000, **kw) -> ResNet:
    return ResNet(RESNET50_STAGES, bottleneck=True, num_classes=num_classes, **kw)

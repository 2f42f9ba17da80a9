"""VGG-16 (configuration D) as a settings table: five blocks of 3x3 conv + ReLU, each ending in a
2x2 max pool, then a 7x7 adaptive pool and three fully connected layers.

At 224x224, batch 1: about 15,470 M MACs (conv + linear) and 138,357,544 params. The 13 dense
3x3 convs carry about 99% of the MACs; the first fully connected layer about 74% of the params.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import torch
from torch import nn

from leanconv._validate import check_callable_or_none, check_input, check_positive_int, check_probability
from leanconv.layers import ConvNormAct

ModuleFactory = Callable[..., nn.Module]


class VGGBlock(NamedTuple):
    """``convs`` 3x3 convs (padding 1) to ``out_channels``, then a 2x2/2 max pool."""

    convs: int
    out_channels: int


# VGG paper, Table 1, column D.
VGG16_SETTING: List[VGGBlock] = [
    VGGBlock(2, 64),    # 224 -> 112
    VGGBlock(2, 128),   # -> 56
    VGGBlock(3, 256),   # -> 28
    VGGBlock(3, 512),   # -> 14
    VGGBlock(3, 512),   # -> 7
]


class VGG(nn.Module):
    """VGG: ``features.block{i}.conv{j}`` (3x3 conv with bias + ReLU) and ``.pool``, a 7x7
    adaptive average pool, classifier ``fc1 -> act1 -> drop1 -> fc2 -> act2 -> drop2 -> fc3``.

    ``norm_layer=nn.BatchNorm2d`` gives the BN variant (conv biases then off). Any input of at
    least 32x32 works; the adaptive pool always hands ``512*7*7`` features to ``fc1``.
    """

    def __init__(
        self,
        setting: List[VGGBlock],
        num_classes: int = 1000,
        dropout: float = 0.5,
        in_channels: int = 3,
        hidden: int = 4096,
        norm_layer: Optional[ModuleFactory] = None,
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(hidden, "hidden")
        p = check_probability(dropout, "dropout")
        check_callable_or_none(norm_layer, "norm_layer")
        self.in_channels = in_channels

        channels = in_channels
        blocks: Dict[str, nn.Module] = OrderedDict()
        for index, row in enumerate(setting, start=1):
            check_positive_int(row.convs, "convs")
            check_positive_int(row.out_channels, "out_channels")
            layers: Dict[str, nn.Module] = OrderedDict()
            for j in range(1, row.convs + 1):
                layers[f"conv{j}"] = ConvNormAct(channels, row.out_channels, 3, padding=1,
                                                 norm_layer=norm_layer, act_layer=nn.ReLU)
                channels = row.out_channels
            layers["pool"] = nn.MaxPool2d(2, 2)
            blocks[f"block{index}"] = nn.Sequential(layers)
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(channels * 7 * 7, hidden)),
            ("act1", nn.ReLU()),
            ("drop1", nn.Dropout(p)),
            ("fc2", nn.Linear(hidden, hidden)),
            ("act2", nn.ReLU()),
            ("drop2", nn.Dropout(p)),
            ("fc3", nn.Linear(hidden, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg16(num_classes: int = 1000, **kwargs: Any) -> VGG:
    """VGG-16: about 15,470 M MACs and 138,357,544 params at 224x224."""
    return VGG(VGG16_SETTING, num_classes, **kwargs)


__all__ = ["VGG", "VGG16_SETTING", "VGGBlock", "vgg16"]

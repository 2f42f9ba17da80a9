"""VGG-16 (configuration D): 3x3 conv + ReLU stacks, max pools, three fully connected layers."""

from __future__ import annotations

from typing import List, Union

from torch import nn

from leanconv.layers import Conv2d

# Channels of each 3x3 conv; "M" is a 2x2 max pool.
VGG16_SETTINGS: List[Union[int, str]] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                         512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, settings: List[Union[int, str]], num_classes: int = 1000, dropout: float = 0.5,
                 in_channels: int = 3) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        channels = in_channels
        for item in settings:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(channels * 49, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16(num_classes: int = 1000, **kw) -> VGG:
    return VGG(VGG16_SETTINGS, num_classes, **kw)

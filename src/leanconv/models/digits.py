"""The small CNN the demo trains on scikit-learn's digits (upsampled to 32x32, 1 channel).

Four dense 3x3 conv stages (BN + ReLU) that conversion can replace, global pooling and a
linear classifier; about 0.1 M params, trains in about a minute on 2 CPU cores.
"""

from __future__ import annotations

from typing import List, Tuple

from torch import nn

from leanconv.layers import ConvNormAct

# (out_channels as a multiple of width, stride) of each 3x3 conv stage.
DIGITS_CNN_SETTINGS: List[Tuple[int, int]] = [(1, 1), (2, 2), (2, 1), (4, 2)]


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        channels = in_channels
        for multiple, stride in DIGITS_CNN_SETTINGS:
            layers.append(ConvNormAct(channels, width * multiple, 3, stride, 1))
            channels = width * multiple
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> DigitsCNN:
    return DigitsCNN(num_classes, in_channels, width)

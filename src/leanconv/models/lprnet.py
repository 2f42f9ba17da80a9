"""LPRNet (license plate recognition) built from leanconv's SmallBasicBlock.

Input ``(N, 3, 24, 94)``; output ``(N, class_num, 18)``: per-column class scores for CTC
decoding. The backbone is LPRNet's: a 3x3 stem, three small basic blocks with channel-and-space
max pooling between them (3-D pooling over ``(C, H, W)`` halves or quarters the channels too),
a 1x4 and a 13x1 conv; four intermediate maps are pooled to 4x18, each normalised by its mean
square, concatenated ("global context") and mixed by a 1x1 conv.
"""

from __future__ import annotations

import torch
from torch import nn

from leanconv._validate import check_input
from leanconv.layers import Conv2d, SmallBasicBlock


class LPRNet(nn.Module):
    def __init__(self, class_num: int = 68, dropout: float = 0.5) -> None:
        super().__init__()
        self.class_num = class_num
        self.stem = nn.Sequential(Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU())          # -> context 0
        self.stage1 = nn.Sequential(nn.MaxPool3d((1, 3, 3), (1, 1, 1)), SmallBasicBlock(64, 128),
                                    nn.BatchNorm2d(128), nn.ReLU())                          # -> context 1
        self.stage2 = nn.Sequential(nn.MaxPool3d((1, 3, 3), (2, 1, 2)), SmallBasicBlock(64, 256),
                                    nn.BatchNorm2d(256), nn.ReLU(), SmallBasicBlock(256, 256),
                                    nn.BatchNorm2d(256), nn.ReLU())                          # -> context 2
        self.head = nn.Sequential(nn.MaxPool3d((1, 3, 3), (4, 1, 2)), nn.Dropout(dropout),
                                  Conv2d(64, 256, (1, 4)), nn.BatchNorm2d(256), nn.ReLU(), nn.Dropout(dropout),
                                  Conv2d(256, class_num, (13, 1)), nn.BatchNorm2d(class_num), nn.ReLU())  # -> 3
        self.pool_early = nn.AvgPool2d(5, 5)
        self.pool_mid = nn.AvgPool2d((4, 10), (4, 2))
        self.container = Conv2d(64 + 128 + 256 + class_num, class_num, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 3, type(self).__name__)
        c0 = self.stem(x)
        c1 = self.stage1(c0)
        c2 = self.stage2(c1)
        c3 = self.head(c2)
        context = []
        for feature, pool in ((c0, self.pool_early), (c1, self.pool_early), (c2, self.pool_mid), (c3, None)):
            f = pool(feature) if pool is not None else feature
            context.append(f / f.pow(2).mean())
        return self.container(torch.cat(context, 1)).mean(dim=2)


def lprnet(class_num: int = 68, dropout: float = 0.5) -> LPRNet:
    return LPRNet(class_num, dropout)

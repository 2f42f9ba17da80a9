"""A DeepLabv3+ decoder head: ASPP on the deep features, fused with projected low-level features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leanconv.layers import ASPP, ConvNormAct
from leanconv.layers.blocks import KindConvNormAct


class DeepLabV3PlusHead(nn.Module):
    """ASPP(rates 6, 12, 18, image pooling) -> upsample to the low-level map -> concat with its
    1x1 projection to 48 channels -> two 3x3 convs (of kind ``conv``) -> 1x1 classifier.

    ``conv='dsconv'`` (default) gives DeepLabv3+'s atrous separable convs; ``'dense'`` the
    original dense ones. ``forward(high, low)``: deep features (output stride 16) and
    low-level features (output stride 4).
    """

    def __init__(self, in_channels: int = 2048, low_level_channels: int = 256, num_classes: int = 21,
                 channels: int = 256, conv: str = "dsconv", rates=(6, 12, 18)) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, channels, rates=rates, conv=conv, image_pooling=True, dropout=0.1)
        self.low_level = ConvNormAct(low_level_channels, 48, 1)
        self.fuse1 = KindConvNormAct(conv, channels + 48, channels, 3, 1, 1)
        self.fuse2 = KindConvNormAct(conv, channels, channels, 3, 1, 1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        x = self.aspp(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, self.low_level(low)], dim=1)
        return self.classifier(self.fuse2(self.fuse1(x)))


def deeplabv3plus_head(in_channels: int = 2048, low_level_channels: int = 256, num_classes: int = 21,
                       conv: str = "dsconv", **kw) -> DeepLabV3PlusHead:
    return DeepLabV3PlusHead(in_channels, low_level_channels, num_classes, conv=conv, **kw)

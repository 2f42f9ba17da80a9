"""DeepLabv3+ segmentation head (Chen et al. 2018): ASPP encoder output + low-level decoder.

``forward(high, low)`` takes the backbone's deep features (output stride 16, e.g. ResNet-50
``layer4`` with dilation, 2048 channels) and its low-level features (output stride 4, e.g.
``layer1``, 256 channels) and returns class logits at the low-level resolution (stride 4);
upsample them x4 to the image. With ``conv='dsconv'`` every 3x3 (the atrous ASPP branches and
the two decoder convs) is a depthwise separable conv, the paper's "atrous separable" choice;
``conv='dense'`` gives the plain DeepLabv3+ head.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from leanconv._validate import check_input, check_positive_int, check_probability
from leanconv.layers import ASPP, Conv2d, ConvNormAct
from leanconv.layers.blocks import KindConvNormAct, check_conv_options, check_spatial_kind

ModuleFactory = Callable[..., nn.Module]


class DecoderRow(NamedTuple):
    """One decoder conv: ``kernel x kernel`` (of the head's kind when 3) to ``out_channels``."""

    name: str
    kernel: int
    out_channels: Optional[int]  # None: the ASPP width


# The head, top to bottom (ASPP rates and the low-level projection width are arguments).
#   aspp        1x1 + atrous 3x3 (rates 6, 12, 18) + image pooling -> concat -> 1x1 to 256
#   low_level   1x1 low-level projection to 48 (+ BN + ReLU)
#   upsample ASPP output bilinearly to the low-level size (x4), concat: 256 + 48 channels
DEEPLABV3PLUS_DECODER: Tuple[DecoderRow, ...] = (
    DecoderRow("refine1", 3, None),
    DecoderRow("refine2", 3, None),
)


class DeepLabV3PlusHead(nn.Module):
    """DeepLabv3+ head: ``aspp`` on ``high``, ``low_level`` 1x1 projection of ``low``, concat after
    bilinear upsampling, ``decoder.refine1``/``refine2`` 3x3 convs (+BN+ReLU), ``classifier`` 1x1.

    ``high``: ``(N, in_channels, H, W)``; ``low``: ``(N, low_level_channels, Hl, Wl)``, usually
    ``Hl = 4H``; output ``(N, num_classes, Hl, Wl)``. ``dropout`` applies after the ASPP
    projection.
    """

    def __init__(
        self,
        in_channels: int = 2048,
        low_level_channels: int = 256,
        num_classes: int = 21,
        conv: str = "dsconv",
        rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        low_level_out: int = 48,
        dropout: float = 0.1,
        conv_options: Optional[Mapping[str, Any]] = None,
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(low_level_channels, "low_level_channels")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(aspp_channels, "aspp_channels")
        check_positive_int(low_level_out, "low_level_out")
        check_spatial_kind(conv)
        options = check_conv_options(conv_options)
        p = check_probability(dropout, "dropout")
        self.in_channels, self.low_level_channels = in_channels, low_level_channels
        self.conv_kind = conv
        unit = dict(norm_layer=norm_layer, act_layer=act_layer)

        self.aspp = ASPP(in_channels, aspp_channels, rates=rates, conv=conv, image_pooling=True,
                         dropout=p, conv_options=options, **unit)
        self.low_level = ConvNormAct(low_level_channels, low_level_out, 1, padding=0, **unit)
        channels = aspp_channels + low_level_out
        layers = OrderedDict()
        for row in DEEPLABV3PLUS_DECODER:
            out = aspp_channels if row.out_channels is None else row.out_channels
            layers[row.name] = KindConvNormAct(conv, channels, out, row.kernel, padding=row.kernel // 2,
                                               conv_options=options, **unit)
            channels = out
        self.decoder = nn.Sequential(layers)
        self.classifier = Conv2d(channels, num_classes, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        check_input(high, self.in_channels, f"{type(self).__name__} (high)")
        check_input(low, self.low_level_channels, f"{type(self).__name__} (low)")
        x = self.aspp(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, self.low_level(low)], dim=1)
        return self.classifier(self.decoder(x))


def deeplabv3plus_head(
    in_channels: int = 2048,
    low_level_channels: int = 256,
    num_classes: int = 21,
    conv: str = "dsconv",
    **kwargs: Any,
) -> DeepLabV3PlusHead:
    """DeepLabv3+ head with atrous separable (``'dsconv'``) or dense 3x3s; ``forward(high, low)``."""
    return DeepLabV3PlusHead(in_channels, low_level_channels, num_classes, conv, **kwargs)


__all__ = ["DEEPLABV3PLUS_DECODER", "DecoderRow", "DeepLabV3PlusHead", "deeplabv3plus_head"]

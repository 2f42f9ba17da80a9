"""leanconv layers: every efficient conv kind and the blocks built from them.

One file per family: ``conv`` (padding-aware Conv2d/ConvTranspose2d, ConvNormAct),
``separable`` (depthwise, pointwise, depthwise separable, Tucker-2), ``asymmetric`` (kx1/1xk
serial and parallel, ACBlock), ``transposed`` (separable transposed conv, resize-conv,
unpool-conv), ``attention`` (SE, CBAM) and ``blocks`` (bottleneck, inverted residual, LPRNet
block, ASPP).
"""

from leanconv.layers.conv import Conv2d, ConvNormAct, ConvTranspose2d, PermutedGroupedConv2d
from leanconv.layers.separable import DepthwiseConv2d, DepthwiseSeparableConv2d, PointwiseConv2d, Tucker2Conv2d
from leanconv.layers.asymmetric import ACBlock, AsymmetricConv2d, ParallelAsymmetricConv2d
from leanconv.layers.transposed import DepthwiseSeparableConvTranspose2d, MaxUnpoolConv2d, ResizeConv2d, make_conv
from leanconv.layers.attention import CBAM, ChannelGate, SpatialGate, SqueezeExcite
from leanconv.layers.blocks import ASPP, ASPPPooling, Bottleneck, InvertedResidual, KindConvNormAct, SmallBasicBlock

__all__ = [
    "PermutedGroupedConv2d",
    "ASPP",
    "ASPPPooling",
    "ACBlock",
    "Bottleneck",
    "InvertedResidual",
    "KindConvNormAct",
    "SmallBasicBlock",
    "AsymmetricConv2d",
    "CBAM",
    "ChannelGate",
    "Conv2d",
    "ConvNormAct",
    "ConvTranspose2d",
    "DepthwiseConv2d",
    "DepthwiseSeparableConv2d",
    "DepthwiseSeparableConvTranspose2d",
    "MaxUnpoolConv2d",
    "ParallelAsymmetricConv2d",
    "PointwiseConv2d",
    "ResizeConv2d",
    "SpatialGate",
    "SqueezeExcite",
    "Tucker2Conv2d",
    "make_conv",
]

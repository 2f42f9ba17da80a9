"""leanconv layers: every efficient conv kind and the blocks built from them."""

from leanconv.layers.conv import Conv2d, ConvNormAct, ConvTranspose2d

__all__ = ["Conv2d", "ConvNormAct", "ConvTranspose2d"]

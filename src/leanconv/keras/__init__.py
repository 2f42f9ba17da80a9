"""leanconv layers for Keras 3: CBAM, asymmetric conv, ASPP, LPRNet block, separable upsampling.

Keras has ``DepthwiseConv2D`` and ``SeparableConv2D`` but no CBAM, no kx1/1xk block, no ASPP
and no separable transposed conv (``Conv2DTranspose`` has no groups). These layers fill that
gap with the same structure and arguments as their PyTorch twins in :mod:`leanconv.layers`,
in Keras' vocabulary (``filters``, ``kernel_size``, ``strides``, ``padding='same'|'valid'``,
``data_format``, channels_last by default). They use ``keras.ops`` only, so they run on any
Keras backend; the tests use the torch backend (``KERAS_BACKEND=torch`` set before Keras is
first imported). Every layer has ``get_config``, survives ``keras.saving`` serialization and a
``.keras`` save/load, and computes its output shape symbolically.

:func:`load_torch_weights` copies a trained PyTorch twin's weights into a built Keras layer
(OIHW kernels to HWIO, ``nn.Linear`` to ``Dense``, BatchNorm running statistics), after which
both give the same output.

Install with ``pip install -c constraints.txt 'leanconv[keras]'``.
"""

from leanconv.keras._base import require_keras

require_keras()

from leanconv.keras.attention import CBAM, ChannelGate, SpatialGate  # noqa: E402
from leanconv.keras.asymmetric import AsymmetricConv2D  # noqa: E402
from leanconv.keras.blocks import ASPP, ASPPPooling, ConvNormAct, SmallBasicBlock  # noqa: E402
from leanconv.keras.transposed import (  # noqa: E402
    DepthwiseConv2DTranspose,
    DepthwiseSeparableConv2DTranspose,
    ResizeConv2D,
)
from leanconv.keras.weights import load_torch_weights  # noqa: E402

__all__ = [
    "ASPP",
    "ASPPPooling",
    "AsymmetricConv2D",
    "CBAM",
    "ChannelGate",
    "ConvNormAct",
    "DepthwiseConv2DTranspose",
    "DepthwiseSeparableConv2DTranspose",
    "ResizeConv2D",
    "SmallBasicBlock",
    "SpatialGate",
    "load_torch_weights",
]

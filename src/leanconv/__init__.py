"""leanconv: make convolutional networks lean.

Efficient conv layers with exact ``nn.Conv2d`` semantics, one registry of conv kinds with their
shapes and costs, and fusion for deployment: ``leanconv.fuse(model)`` is the model-wide
function; the pure algebra lives beside it (``from leanconv.fuse import fold_bn, pad_kernel``).
Everything public is re-exported here.
"""

__version__ = "0.1.0"

from leanconv.kinds import KINDS, ConvKind, ConvSpec, Stage, create_conv2d, get_kind  # noqa: E402
from leanconv.padding import PaddingArg, conv_output_hw  # noqa: E402
from leanconv.fuse import fuse, fuse_conv_bn  # noqa: E402
from leanconv.analysis import compare, explain, profile  # noqa: E402
from leanconv.layers import *  # noqa: E402,F401,F403
from leanconv.layers import __all__ as _layer_names  # noqa: E402

__all__ = [
    "__version__",
    "KINDS",
    "ConvKind",
    "ConvSpec",
    "PaddingArg",
    "Stage",
    "conv_output_hw",
    "compare",
    "create_conv2d",
    "explain",
    "profile",
    "fuse",
    "fuse_conv_bn",
    "get_kind",
    *_layer_names,
]

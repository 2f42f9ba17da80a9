"""leanconv: make convolutional networks lean.

Efficient conv layers with exact ``nn.Conv2d`` semantics, one registry of conv kinds with their
shapes and costs, and fusion for deployment: ``leanconv.fuse(model)`` is the model-wide
function; the pure algebra lives beside it (``from leanconv.fuse import fold_bn, pad_kernel``).
Likewise ``leanconv.convert(model, ...)`` is the function; ``from leanconv.convert import refit``
reaches the package beside it, and ``leanconv.optimize(model, data, ...)`` the whole path
(convert, refit, distill, deploy, measure) whose helpers are in ``leanconv.optimize``'s module.
Everything public is re-exported here.
"""

__version__ = "0.1.0"

from leanconv.kinds import KINDS, ConvKind, ConvSpec, Stage, create_conv2d, get_kind  # noqa: E402
from leanconv.padding import PaddingArg, conv_output_hw  # noqa: E402
from leanconv.fuse import fuse, fuse_conv_bn  # noqa: E402
from leanconv.analysis import compare, explain, profile  # noqa: E402
from leanconv import models  # noqa: E402
from leanconv.convert import apply_plan, convert  # noqa: E402,F811
from leanconv import data  # noqa: E402
from leanconv.optimize import optimize  # noqa: E402,F811
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
    "apply_plan",
    "compare",
    "convert",
    "data",
    "optimize",
    "models",
    "create_conv2d",
    "explain",
    "profile",
    "fuse",
    "fuse_conv_bn",
    "get_kind",
    *_layer_names,
]

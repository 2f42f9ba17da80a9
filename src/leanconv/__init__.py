"""leanconv: make convolutional networks lean.

Efficient conv layers with exact ``nn.Conv2d`` semantics, one registry of conv kinds with their
shapes and costs, conversion, fusion, analysis and the whole optimization path.

Naming rule: modules and packages are named for a concept (a noun: ``leanconv.conversion``,
``leanconv.fusion``, ``leanconv.analysis.profiling``); the public functions are actions (verbs:
``leanconv.convert``, ``leanconv.fuse``, ``leanconv.profile``) re-exported here. No function
shares its name with a module beside it, so ``leanconv.convert`` is always the function and
``from leanconv.fusion import fold_bn`` reaches the algebra behind ``leanconv.fuse``.

The names below are loaded on first use (PEP 562), so ``import leanconv`` and the ``leanconv``
command's ``--help`` start without importing torch; ``leanconv.X`` and ``from leanconv import X``
work as for any module attribute.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: Dict[str, str] = {
    **dict.fromkeys(("KINDS", "ConvKind", "ConvSpec", "Stage", "create_conv2d", "get_kind", "register"), "leanconv.kinds"),
    **dict.fromkeys(("PaddingArg", "conv_output_hw"), "leanconv.padding"),
    **dict.fromkeys(("fuse", "fuse_conv_bn"), "leanconv.fusion"),
    **dict.fromkeys(("compare", "explain", "profile"), "leanconv.analysis"),
    **dict.fromkeys(("apply_plan", "save_plan"), "leanconv.conversion.plan"),
    "convert": "leanconv.conversion.pipeline",
    "optimize": "leanconv.optimization",
}
_SUBPACKAGES = ("data", "models")
_LAYERS = (
    "ACBlock", "ASPP", "ASPPPooling", "AsymmetricConv2d", "Bottleneck", "CBAM", "ChannelGate", "Conv2d",
    "ConvNormAct", "ConvTranspose2d", "DepthwiseConv2d", "DepthwiseSeparableConv2d",
    "DepthwiseSeparableConvTranspose2d", "InvertedResidual", "KindConvNormAct", "MaxUnpoolConv2d",
    "ParallelAsymmetricConv2d", "PermutedGroupedConv2d", "PointwiseConv2d", "ResizeConv2d", "SmallBasicBlock",
    "SpatialGate", "SqueezeExcite", "Tucker2Conv2d", "make_conv",
)
_EXPORTS.update(dict.fromkeys(_LAYERS, "leanconv.layers"))

__all__: List[str] = ["__version__", *_EXPORTS, *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"leanconv.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'leanconv' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static checkers and IDEs see
    from leanconv import data, models  # noqa: F401
    from leanconv.analysis import compare, explain, profile  # noqa: F401
    from leanconv.conversion.pipeline import convert  # noqa: F401
    from leanconv.conversion.plan import apply_plan, save_plan  # noqa: F401
    from leanconv.fusion import fuse, fuse_conv_bn  # noqa: F401
    from leanconv.kinds import KINDS, ConvKind, ConvSpec, Stage, create_conv2d, get_kind, register  # noqa: F401
    from leanconv.layers import *  # noqa: F401,F403
    from leanconv.optimization import optimize  # noqa: F401
    from leanconv.padding import PaddingArg, conv_output_hw  # noqa: F401

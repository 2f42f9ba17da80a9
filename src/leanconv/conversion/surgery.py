"""Build a replacement module for a trained conv and swap it into a model.

Surgery knows nothing of ranks or budgets: it is given a kind and its options (and, for a
conversion, the weights from the kind's factorization) and builds the module with the conv's
own arguments, or sets a module at a path with ``setattr`` on its parent.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from leanconv._validate import pair
from leanconv.analysis.counting import layer_macs
from leanconv.conversion.factorize import Factorization
from leanconv.kinds import ConvSpec, create_conv2d, get_kind
from leanconv.padding import PaddingArg
from leanconv.protocol import last_stage_name


def padding_arg(conv: nn.Conv2d) -> PaddingArg:
    """What the conv was asked for: 'same'/'valid' or an (h, w) pair (leanconv keeps the original)."""
    padding = getattr(conv, "padding_arg", conv.padding)
    return padding if isinstance(padding, str) else pair(padding, "padding")


def conv_spec(conv: nn.Conv2d, **options: Any) -> ConvSpec:
    """``conv``'s arguments as a :class:`ConvSpec` (with ``options`` for another kind; a grouped
    conv's ``groups`` ride along, which the dense kind and a kind that keeps groups read)."""
    return ConvSpec.create(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                           padding_arg(conv), conv.dilation, conv.bias is not None,
                           **{**kept_groups(conv), **options})


def kept_groups(conv: nn.Conv2d) -> Dict[str, int]:
    """``{'groups': g}`` for a grouped conv (what a kind with ``keeps_groups`` converts it with), else ``{}``."""
    return {"groups": conv.groups} if conv.groups > 1 else {}


def source_macs(conv: nn.Conv2d, hw: Optional[Tuple[int, int]]) -> int:
    """The MACs of ``conv`` itself at input size ``hw``, per output pixel without one (a grouped
    conv costs 1/groups of a dense one)."""
    return int(layer_macs("grouped" if conv.groups > 1 else "dense", conv_spec(conv), hw))


def min_hw(conv: nn.Conv2d) -> Tuple[int, int]:
    """A spatial size giving exactly one output pixel (MACs per output pixel)."""
    return tuple(d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation))  # type: ignore[return-value]


def factorize_conv(conv: nn.Conv2d, kind: str, options: Mapping[str, Any]) -> Factorization:
    """The optimal weights of ``kind`` with ``options`` for this conv (the kind's pure factorization)."""
    entry = get_kind(kind)
    if entry.conversion is None:
        raise ValueError(f"kind={kind!r} has no conversion: a trained conv cannot be factorized into it")
    if conv.groups > 1 and not entry.conversion.keeps_groups:
        raise ValueError(f"kind={kind!r} does not convert grouped convs (groups={conv.groups})")
    return entry.conversion.factorize(conv.weight.detach(), {**entry.options, **kept_groups(conv), **options})


def build_module(conv: nn.Conv2d, kind: str, options: Mapping[str, Any],
                 factors: Optional[Factorization] = None) -> nn.Module:
    """The leanconv module of ``kind`` standing in for ``conv`` (same arguments).

    With ``factors`` (from :func:`factorize_conv`) the stages get its weights (and buffers, the
    channel orders of a permuted grouped conv) and the last stage gets the conv's bias (in the
    stage's output order); without, the module is freshly initialized (to rebuild a plan).
    """
    module = create_conv2d(
        kind, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
        padding_arg(conv), conv.dilation, conv.bias is not None,
        conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype, **{**kept_groups(conv), **options},
    )
    if factors is not None:
        _load_factors(module, conv, factors)
    return module


@torch.no_grad()
def _load_factors(module: nn.Module, conv: nn.Conv2d, factors: Factorization) -> None:
    last = last_stage_name(module)
    for name, value in factors.weights.items():
        stage = last if name == "weight" else name  # a one-stage kind's weight is its last stage's
        module.get_parameter(f"{stage}.weight" if stage else "weight").copy_(value)
    for name, value in (factors.buffers or {}).items():
        module.get_buffer(name).copy_(value)
    if conv.bias is not None:
        bias = conv.bias if not factors.buffers else conv.bias[factors.buffers["output_order"]]
        module.get_parameter(f"{last}.bias" if last else "bias").copy_(bias)


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` in ``root`` (``setattr`` on the parent)."""
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, module)


def jsonable(options: Mapping[str, Any]) -> Dict[str, Any]:
    """``options`` with tuples as lists, as JSON has them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


__all__ = ["build_module", "conv_spec", "factorize_conv", "jsonable", "kept_groups", "min_hw", "source_macs", "padding_arg", "set_module"]

"""The layer protocol: what fusion and refit read from a leanconv layer, declared once.

A layer opts in by defining any of these attributes; nothing else is read by
:mod:`leanconv.fusion` (BN folding, block fusion) or :mod:`leanconv.conversion.refitting`
(least-squares refit), and they read them only through the functions below.

``output_stage: str``
    Submodule path (inside the layer) of the conv whose output *is* the layer's output. It
    carries the layer's bias, the refit solves its weights, and a BatchNorm that follows the
    layer folds into it (fusion descends through nested ``output_stage`` s until it reaches a
    plain conv). Two-stage layers set it per instance, since it depends on their ``order``.
``conv_norm_pairs: tuple[tuple[str, str], ...]``
    ``(conv_path, norm_path)`` pairs, relative to the layer, of a conv directly followed by a
    norm inside it. Fusion folds each pair whose norm is a BatchNorm with running statistics
    and replaces the norm by ``nn.Identity`` (so paths keep their meaning).
``reorders_output: bool``
    True when the layer permutes its ``output_stage`` 's output channels
    (:class:`~leanconv.layers.conv.PermutedGroupedConv2d`): output ``j`` of the stage is the
    layer's channel ``output_order[j]``, where ``output_order`` is a LongTensor buffer of the
    layer. A BatchNorm after such a layer does not fold into the stage; the refit permutes
    its targets by ``output_order`` instead.
``fuse() -> nn.Module``
    A method callable without arguments returning one module with the same output in eval
    mode (``ACBlock``: a single kxk conv). Fusion replaces the layer by the result.

The ``typing.Protocol`` classes state each part as a type; the functions below are the one
place that reads them, and check what they read. They look attributes up with ``getattr``
rather than ``isinstance(module, StagedLayer)``: from Python 3.12 a runtime protocol check
uses ``inspect.getattr_static``, which does not see an ``nn.Module``'s submodules and buffers.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import nn

ConvNormPairs = Tuple[Tuple[str, str], ...]


@runtime_checkable
class StagedLayer(Protocol):
    """A layer whose output is the output of one of its convs, ``output_stage``."""

    output_stage: str


@runtime_checkable
class ReorderingLayer(StagedLayer, Protocol):
    """A staged layer that permutes its output stage's channels; it also has an
    ``output_order`` LongTensor buffer (``output_order[j]`` is the layer channel of the
    stage's output ``j``)."""

    reorders_output: bool


@runtime_checkable
class NormPairsLayer(Protocol):
    """A layer with convs followed by norms inside it, listed in ``conv_norm_pairs``."""

    conv_norm_pairs: ConvNormPairs


@runtime_checkable
class FusableLayer(Protocol):
    """A layer with an exact single-module equivalent in eval mode."""

    def fuse(self) -> nn.Module:
        ...


def output_stage_of(module: nn.Module) -> Optional[str]:
    """``module.output_stage``, or None when the module declares none."""
    name = getattr(module, "output_stage", None)
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValueError(f"{type(module).__name__}.output_stage={name!r} must be a submodule path (str)")
    return name


def last_stage_name(module: nn.Module) -> str:
    """Path in ``module`` of the conv whose output is the module's output (it gets the bias, the
    refit solves it, a following BN folds into it): the layer's ``output_stage``, '' for a conv."""
    if isinstance(module, nn.Conv2d):
        return ""
    name = output_stage_of(module)
    if name is None:
        raise ValueError(f"{type(module).__name__} has no output_stage: its last linear stage is unknown")
    return name


def reorders_output(module: nn.Module) -> bool:
    """Whether ``module`` permutes its output stage's channels (``reorders_output`` is True)."""
    return getattr(module, "reorders_output", False) is True


def output_order_of(module: nn.Module) -> Optional[torch.Tensor]:
    """The layer channel of each output of the output stage, or None when not reordered."""
    if not reorders_output(module):
        return None
    order = getattr(module, "output_order", None)
    if not isinstance(order, torch.Tensor) or order.dim() != 1:
        raise ValueError(
            f"{type(module).__name__}.output_order must be a 1-D LongTensor when reorders_output is True"
        )
    return order


def conv_norm_pairs_of(module: nn.Module) -> ConvNormPairs:
    """``module.conv_norm_pairs`` (checked to be pairs of paths), ``()`` when it declares none."""
    pairs = getattr(module, "conv_norm_pairs", ())
    if not isinstance(pairs, (tuple, list)):
        raise ValueError(f"{type(module).__name__}.conv_norm_pairs={pairs!r} must be a tuple of pairs")
    pairs = tuple(pairs)
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(
                f"{type(module).__name__}.conv_norm_pairs has {pair!r}: each entry must be a "
                "(conv_path, norm_path) pair of str"
            )
    return pairs


def fuse_method_of(module: nn.Module) -> Optional[Callable[[], nn.Module]]:
    """``module.fuse`` when it is a method callable without arguments, else None.

    A child module that happens to be *named* ``fuse`` is callable too, but is no method.
    """
    method = getattr(module, "fuse", None)
    if not inspect.ismethod(method):
        return None
    try:
        inspect.signature(method).bind()
    except (TypeError, ValueError):
        return None
    return method


def norm_target_of(module: nn.Module) -> Optional[str]:
    """Path inside ``module`` of the plain conv a BatchNorm after ``module`` folds into.

    ``''`` for a conv itself; the chain of ``output_stage`` s down to a conv for a staged layer;
    None when there is no such conv (no ``output_stage``, a reordering layer, or a path that
    does not resolve to a conv).
    """
    path, current = "", module
    while not isinstance(current, (nn.Conv2d, nn.ConvTranspose2d)):
        stage = output_stage_of(current)
        if stage is None or reorders_output(current):
            return None
        path = f"{path}.{stage}" if path else stage
        try:
            current = module.get_submodule(path)
        except AttributeError:
            return None
    return path


__all__ = [
    "ConvNormPairs",
    "FusableLayer",
    "NormPairsLayer",
    "ReorderingLayer",
    "StagedLayer",
    "conv_norm_pairs_of",
    "last_stage_name",
    "fuse_method_of",
    "norm_target_of",
    "output_order_of",
    "output_stage_of",
    "reorders_output",
]

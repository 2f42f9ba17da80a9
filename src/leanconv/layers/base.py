"""The base of the two-stage layers: two convs in series with an optional norm and activation.

:class:`TwoStageConv` is shared by the depthwise separable conv, the serial asymmetric conv and
the separable transposed conv (as ``leanconv.keras._base.TwoStageLayer`` is on the Keras side).
Each of them can run its two named convs in either order; the base holds what follows from
the order: ``forward`` (first stage -> norm -> act -> second stage), ``output_stage`` (the
second stage: it has the bias, the refit solves it, a following BN folds into it),
``conv_norm_pairs`` (the inner norm folds into the first stage) and ``extra_repr``.
See :mod:`leanconv.protocol` for what fusion and refit read.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from leanconv._validate import check_input
from leanconv.layers.conv import ModuleFactory, make_act, make_norm
from leanconv.protocol import ConvNormPairs

Stages = Tuple[str, str]


class _ByOrder:
    """A read-only attribute computed from ``(first, second)``, the stage names of the
    instance's ``order``; read on the class, those of the default order (the first key of
    ``stage_orders``). Derived rather than stored, so a module pickled before the attribute
    existed still reads the right value."""

    def __init__(self, compute: Callable[[Stages], Any]) -> None:
        self.compute = compute
        self.__doc__ = compute.__doc__

    def __get__(self, obj: Optional["TwoStageConv"], owner: type) -> Any:
        orders = owner.stage_orders
        if obj is None and not orders:  # the base class itself: no stages to describe
            return self
        return self.compute(orders[next(iter(orders)) if obj is None else obj.order])


def _second(stages: Stages) -> str:
    """The conv whose output is the layer's output (see :mod:`leanconv.protocol`)."""
    return stages[1]


def _first_with_norm(stages: Stages) -> ConvNormPairs:
    """The inner norm folds into the first stage (see :mod:`leanconv.protocol`)."""
    return ((stages[0], "norm"),)


def swap_orders(orders: Tuple[str, str], first: str, second: str) -> Dict[str, Stages]:
    """``stage_orders`` of a layer whose two orders run ``first, second`` and the reverse."""
    return {orders[0]: (first, second), orders[1]: (second, first)}


class TwoStageConv(nn.Module):
    """Two named convs in series, ``first`` -> ``norm`` -> ``act`` -> ``second``.

    A subclass sets ``stage_orders``, ``{order: (first, second)}`` with its default order
    first, and ``repr_fields``, the attributes ``extra_repr`` shows. Its ``__init__`` sets
    ``in_channels`` and a validated ``order``, registers the two convs under their names and
    calls :meth:`_set_between` for ``norm`` and ``act``. ``output_stage`` and
    ``conv_norm_pairs`` follow ``order``; on the class they are the default order's.
    """

    stage_orders: Dict[str, Stages] = {}
    repr_fields: Tuple[str, ...] = ("order",)
    output_stage = _ByOrder(_second)
    conv_norm_pairs = _ByOrder(_first_with_norm)
    in_channels: int
    order: str

    def _set_between(self, norm_layer: Optional[ModuleFactory], act_layer: Optional[ModuleFactory],
                     channels: int, device=None, dtype=None) -> None:
        """The optional ``norm`` (on ``channels``) and ``act`` between the stages (``nn.Identity`` if None)."""
        self.norm = make_norm(norm_layer, channels, device, dtype)
        self.act = make_act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        first, second = self.stage_orders[self.order]
        return getattr(self, second)(self.act(self.norm(getattr(self, first)(x))))

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.repr_fields)


__all__ = ["TwoStageConv", "swap_orders"]

"""Channel-separable convolutions: depthwise, pointwise, depthwise separable and Tucker-2.

A dense ``kh x kw`` conv mixes space and channels at once (``O*C*kh*kw`` MACs per output
pixel). The layers here split that work: a depthwise conv filters space one channel at a time,
a pointwise (1x1) conv mixes channels, and a Tucker-2 bottleneck runs the spatial conv on fewer
channels between two 1x1 convs. Every stage is a :class:`leanconv.layers.conv.Conv2d`, so the
whole padding vocabulary (int, ``(h, w)``, ``'same'`` with any stride/dilation, ``'valid'``)
and every ``padding_mode`` work, and BN folding, analysis and conversion see plain convs.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from leanconv._validate import check_input
from leanconv.layers.base import TwoStageConv, swap_orders
from leanconv.layers.conv import Conv2d
from leanconv.rules import (
    SEPARABLE_ORDERS,
    check_conv_args,
    check_depth_multiplier,
    check_depthwise_channels,
    check_ranks,
    check_separable_order,
    check_tucker2_core,
)
from leanconv.padding import PaddingArg

IntPair = int | Tuple[int, int]
ModuleFactory = Callable[..., nn.Module]


class DepthwiseConv2d(Conv2d):
    """Depthwise conv: each input channel gets its own ``depth_multiplier`` spatial filters.

    ``groups=in_channels`` and ``out_channels = in_channels * depth_multiplier``; output channel
    ``c*m + j`` is filter ``j`` of input channel ``c``. It never mixes channels; stride (not the
    depthwise structure) decides the output size. Params ``O*kh*kw``, MACs ``O*kh*kw*H'*W'``:
    ``in_channels`` times fewer than the dense conv with the same channel counts.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: PaddingArg = 0,
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        check_depthwise_channels(in_channels, out_channels)
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, in_channels, bias,
            padding_mode, device=device, dtype=dtype,
        )
        self.depth_multiplier: int = out_channels // in_channels

    def extra_repr(self) -> str:
        return super().extra_repr() + f", depth_multiplier={self.depth_multiplier}"


class PointwiseConv2d(Conv2d):
    """1x1 conv: mixes (and re-counts) channels at each pixel, no spatial extent.

    Raises or lowers the channel count (``C -> O``) with ``O*C/groups`` params and
    ``O*(C/groups)*H'*W'`` MACs; a stride subsamples the grid without looking at neighbours.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, 1, stride, 0, 1, groups, bias, "zeros",
            device=device, dtype=dtype,
        )


class DepthwiseSeparableConv2d(TwoStageConv):
    """Depthwise ``kh x kw`` conv (C -> C*m) then pointwise 1x1 (C*m -> O), as in MobileNet.

    The depthwise stage takes stride, padding, dilation (a dilated one is the atrous separable
    conv of DeepLabv3+) and ``padding_mode``; the last stage takes the bias. An optional
    inner ``norm``/``act`` sits between the stages. MACs per output pixel ``C*m*(kh*kw + O)``
    instead of ``C*O*kh*kw`` for the dense conv.

    ``order='pointwise_first'`` is the dual: pointwise 1x1 (C -> O*m) at the input resolution,
    then a ``kh x kw`` conv (O*m -> O, groups O: each output filters its own ``m`` channels,
    a plain depthwise conv when ``m = 1``). It is what a conversion picks when the dense kernel
    is closer to low rank per output channel than per input channel (e.g. ``C > O``), and
    swaps ``output_stage`` and ``conv_norm_pairs`` (:class:`~leanconv.layers.base.TwoStageConv`).

    ``groups`` (default 1) splits the pointwise stage into groups: the separable form of a
    grouped conv (ResNeXt), whose channels mix only within their group.
    """

    stage_orders = swap_orders(SEPARABLE_ORDERS, "depthwise", "pointwise")
    repr_fields = ("order", "depth_multiplier")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: PaddingArg = 0,
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        depth_multiplier: int = 1,
        norm_layer: Optional[ModuleFactory] = None,
        act_layer: Optional[ModuleFactory] = None,
        device=None,
        dtype=None,
        order: str = "depthwise_first",
        groups: int = 1,
    ) -> None:
        super().__init__()
        kernel, strides, dilations = check_conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        check_depth_multiplier(depth_multiplier)
        check_separable_order(order)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel, strides, dilations
        self.padding: PaddingArg = padding
        self.padding_mode = padding_mode
        self.depth_multiplier = depth_multiplier
        self.order = order
        self.groups = groups
        spatial = dict(stride=strides, padding=padding, dilation=dilations, padding_mode=padding_mode,
                       device=device, dtype=dtype)
        if order == "depthwise_first":
            mid = in_channels * depth_multiplier
            self.depthwise = DepthwiseConv2d(in_channels, mid, kernel, bias=False, **spatial)
            self._set_between(norm_layer, act_layer, mid, device, dtype)
            self.pointwise = PointwiseConv2d(mid, out_channels, groups=groups, bias=bias, device=device, dtype=dtype)
        else:
            mid = out_channels * depth_multiplier
            self.pointwise = PointwiseConv2d(in_channels, mid, groups=groups, bias=False, device=device, dtype=dtype)
            self._set_between(norm_layer, act_layer, mid, device, dtype)
            self.depthwise = Conv2d(mid, out_channels, kernel, groups=out_channels, bias=bias, **spatial)


class Tucker2Conv2d(nn.Module):
    """Tucker-2 bottleneck: 1x1 reduce (C -> r_in), kxk core (r_in -> r_out), 1x1 expand (r_out -> O).

    The ResNet/LPRNet bottleneck shape, and the target of a Tucker-2 (HOSVD) factorization of a
    dense kernel; ``ranks=None`` means full rank ``(C, O)``. The core takes stride, padding,
    dilation and ``padding_mode``; only ``expand`` has a bias. MACs
    ``C*r_in*H*W + (r_in*r_out*kh*kw + r_out*O)*H'*W'``.

    ``core='asymmetric'`` makes the core a ``kh x 1`` then ``1 x kw`` pair through
    ``core_mid_channels`` (default ``r_out``): the linear form of LPRNet's small basic block
    (1x1 reduce, 3x1, 1x3, 1x1 expand).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: PaddingArg = 0,
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        ranks: Optional[Tuple[int, int]] = None,
        device=None,
        dtype=None,
        core: str = "dense",
        core_mid_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        kernel, strides, dilations = check_conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, 1, padding_mode
        )
        check_tucker2_core(core, core_mid_channels)
        r_in, r_out = check_ranks(ranks, in_channels, out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel, strides, dilations
        self.padding: PaddingArg = padding
        self.padding_mode = padding_mode
        self.ranks: Tuple[int, int] = (r_in, r_out)
        self.core_kind = core
        self.reduce = PointwiseConv2d(in_channels, r_in, bias=False, device=device, dtype=dtype)
        core_args = (r_in, r_out, kernel, strides, padding, dilations)
        if core == "dense":
            self.core: nn.Module = Conv2d(*core_args, 1, False, padding_mode, device=device, dtype=dtype)
        else:
            from leanconv.layers.asymmetric import AsymmetricConv2d  # imports this module's siblings

            self.core = AsymmetricConv2d(*core_args, False, padding_mode, mid_channels=core_mid_channels,
                                         device=device, dtype=dtype)
        self.expand = PointwiseConv2d(r_out, out_channels, bias=bias, device=device, dtype=dtype)

    output_stage = "expand"  # see leanconv.protocol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.expand(self.core(self.reduce(x)))

    def extra_repr(self) -> str:
        return f"ranks={self.ranks}" + (f", core={self.core_kind!r}" if self.core_kind != "dense" else "")


__all__ = [
    "DepthwiseConv2d",
    "DepthwiseSeparableConv2d",
    "PointwiseConv2d",
    "Tucker2Conv2d",
]

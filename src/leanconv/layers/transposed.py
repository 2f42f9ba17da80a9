"""Upsampling layers: separable transposed conv, resize-convolution, max-unpool + conv.

Three ways to make a feature map larger, all usable with efficient conv kinds (seed S10):

* :class:`DepthwiseSeparableConvTranspose2d` -- a learned upsampling split into a depthwise
  transposed conv and a 1x1 pointwise conv (either order).
* :class:`ResizeConv2d` -- fixed interpolation (nearest/bilinear/bicubic) then a conv of any
  kind: the "resize-convolution" that avoids the checkerboard artifacts a strided transposed conv
  produces when its kernel size is not a multiple of its stride.
* :class:`MaxUnpoolConv2d` -- SegNet's decoder step: put each value back where the encoder's
  max-pool found it (zeros elsewhere), then a conv of any kind fills in the gaps.

A dilated (atrous) conv does not upsample anything: it enlarges the receptive field at the same
resolution. Max-unpooling is not a dilated conv either: it scatters values to the recorded argmax
positions, which are data dependent, not on a regular grid.
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from leanconv._validate import (
    check_callable_or_none,
    check_input,
    check_positive_int,
    check_positive_pair,
    pair,
)
from leanconv.layers.base import TwoStageConv, swap_orders
from leanconv.layers.conv import Conv2d, ConvTranspose2d, IntPair, ModuleFactory
from leanconv.rules import (
    SEPARABLE_ORDERS,
    check_transpose_multiplier,
    check_upsample,
)
from leanconv.kinds import create_conv2d, get_kind
from leanconv.padding import PaddingArg

ConvFactory = Union[str, Callable[..., nn.Module]]
"""A conv kind name from :mod:`leanconv.kinds` or a callable with ``nn.Conv2d``'s keywords."""



def make_conv(
    conv: ConvFactory,
    in_channels: int,
    out_channels: int,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: PaddingArg = 0,
    dilation: IntPair = 1,
    bias: bool = True,
    padding_mode: str = "zeros",
    conv_options: Optional[Mapping[str, Any]] = None,
    device=None,
    dtype=None,
) -> nn.Module:
    """Build the conv stage of an upsampling layer from a kind name or a callable.

    A string is looked up in :mod:`leanconv.kinds` (``create_conv2d``); a callable is called as
    ``conv(in_channels, out_channels, kernel_size, stride=..., padding=..., dilation=...,
    bias=..., padding_mode=..., device=..., dtype=..., **conv_options)``, so
    :class:`leanconv.layers.Conv2d` itself qualifies.
    """
    if conv_options is not None and not isinstance(conv_options, Mapping):
        raise ValueError(f"conv_options={conv_options!r} must be a dict of keyword arguments or None")
    options = dict(conv_options or {})
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, bias=bias,
                  padding_mode=padding_mode, device=device, dtype=dtype, **options)
    if isinstance(conv, str):
        if get_kind(conv).upsamples:
            raise ValueError(f"conv={conv!r} must be a kind that does not upsample by itself")
        return create_conv2d(conv, in_channels, out_channels, kernel_size, **kwargs)
    if not callable(conv):
        raise ValueError(f"conv={conv!r} must be a conv kind name (str) or a callable returning an nn.Module")
    module = conv(in_channels, out_channels, kernel_size, **kwargs)
    if not isinstance(module, nn.Module):
        raise ValueError(f"conv={conv!r} returned {type(module).__name__}, expected an nn.Module")
    return module


class DepthwiseSeparableConvTranspose2d(TwoStageConv):
    """Transposed conv factorized into a depthwise transposed conv and a 1x1 pointwise conv.

    ``order='depthwise_first'`` (the usual form): ``depthwise`` = transposed kxk, ``C -> C*m``,
    ``groups=C``, with stride/padding/output_padding/dilation and no bias; then the optional
    ``norm``/``act``; then ``pointwise`` = 1x1, ``C*m -> O``, with the bias.
    ``order='pointwise_first'``: ``pointwise`` 1x1 ``C -> O`` (no bias) at the *input*
    resolution, optional ``norm``/``act``, then ``depthwise`` transposed kxk ``O -> O``,
    ``groups=O``, with the bias (``depth_multiplier`` must be 1).

    Input ``(N, C, H, W)``, output ``(N, O, H', W')`` with ``nn.ConvTranspose2d``'s ``H'`` for
    integer padding, or exactly ``H*stride`` for ``padding='same'``. MACs (transposed stages
    count input positions; dense: ``C*O*k*k*H*W``):
    depthwise_first ``C*m*k*k*H*W + C*m*O*H'*W'``, pointwise_first ``C*O*H*W + O*k*k*H*W``.
    When upsampling (``H' ~ s*H``) pointwise_first is cheaper because its 1x1 runs at the low
    resolution: ``s*s`` times fewer pointwise MACs. ``output_stage`` and ``conv_norm_pairs``
    follow the order (:class:`~leanconv.layers.base.TwoStageConv`): the class attributes are
    ``order='depthwise_first'`` 's, an instance built with ``'pointwise_first'`` swaps them.
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
        output_padding: IntPair = 0,
        bias: bool = True,
        dilation: IntPair = 1,
        padding_mode: str = "zeros",
        depth_multiplier: int = 1,
        order: str = "depthwise_first",
        norm_layer: Optional[ModuleFactory] = None,
        act_layer: Optional[ModuleFactory] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_transpose_multiplier(depth_multiplier, order)
        check_callable_or_none(norm_layer, "norm_layer")
        check_callable_or_none(act_layer, "act_layer")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth_multiplier = depth_multiplier
        self.order = order
        factory = dict(device=device, dtype=dtype)
        transposed = dict(stride=stride, padding=padding, output_padding=output_padding,
                          dilation=dilation, padding_mode=padding_mode, **factory)
        if order == "depthwise_first":
            mid = in_channels * depth_multiplier
            self.depthwise = ConvTranspose2d(in_channels, mid, kernel_size, groups=in_channels,
                                             bias=False, **transposed)
            self._set_between(norm_layer, act_layer, mid, device, dtype)
            self.pointwise = Conv2d(mid, out_channels, 1, bias=bias, **factory)
        else:
            self.pointwise = Conv2d(in_channels, out_channels, 1, bias=False, **factory)
            self._set_between(norm_layer, act_layer, out_channels, device, dtype)
            self.depthwise = ConvTranspose2d(out_channels, out_channels, kernel_size,
                                             groups=out_channels, bias=bias, **transposed)


class ResizeConv2d(nn.Module):
    """Resize-convolution: ``upsample`` (fixed interpolation) then ``conv`` (any kind).

    Input ``(N, C, H, W)``; ``upsample`` gives ``(N, C, s_h*H, s_w*W)``, then ``conv`` runs at that
    resolution, so it costs ``s_h*s_w`` times its MACs at ``H x W``. The default
    ``padding='same'`` with ``stride=1`` makes the output exactly ``scale_factor`` times the input
    (the reason to use it in a decoder). Unlike a strided transposed conv, every output pixel
    sees the same number of kernel taps, so no checkerboard pattern appears.

    ``conv`` is a kind name of :mod:`leanconv.kinds` (``'dense'``, ``'dsconv'``, ...) with its
    keyword options in ``conv_options``, or a callable taking ``nn.Conv2d``'s arguments.
    Convolving first and upsampling after is cheaper still, but gives an output that is constant
    on ``s x s`` blocks (nearest) -- a different layer, not a faster form of this one.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        padding: PaddingArg = "same",
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        scale_factor: IntPair = 2,
        mode: str = "nearest",
        align_corners: Optional[bool] = None,
        conv: ConvFactory = "dense",
        conv_options: Optional[Mapping[str, Any]] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        scale = check_upsample(scale_factor, mode, align_corners)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale_factor: Tuple[int, int] = scale
        self.upsample = nn.Upsample(scale_factor=tuple(float(s) for s in scale), mode=mode,
                                    align_corners=align_corners)
        self.conv = make_conv(conv, in_channels, out_channels, kernel_size, stride, padding, dilation,
                              bias, padding_mode, conv_options, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.conv(self.upsample(x))


def _check_indices(x: torch.Tensor, indices: torch.Tensor, layer: str) -> None:
    if isinstance(x, torch.fx.Proxy) or isinstance(indices, torch.fx.Proxy):
        return
    if tuple(indices.shape) != tuple(x.shape):
        raise ValueError(
            f"{layer}: indices shape {tuple(indices.shape)} must equal the input shape {tuple(x.shape)} "
            "(pass the indices nn.MaxPool2d(return_indices=True) returned with this tensor)"
        )
    if indices.dtype != torch.int64:
        raise ValueError(f"{layer}: indices dtype {indices.dtype} must be torch.int64")


class MaxUnpoolConv2d(nn.Module):
    """SegNet-style upsampling: ``unpool`` with recorded max-pool indices, then ``conv``.

    ``forward(x, indices, output_size=None)``: ``x`` and ``indices`` are ``(N, C, H, W)``, the
    indices as returned by ``nn.MaxPool2d(..., return_indices=True)`` in the encoder. ``unpool``
    writes each value at its argmax position in a zero map of size
    ``(H-1)*stride - 2*padding + kernel`` (or ``output_size``, e.g. to restore an odd size), and
    ``conv`` (any kind, as in :class:`ResizeConv2d`; ``padding='same'`` keeps that size) turns the
    sparse map into a dense one. Only the conv has parameters and MACs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        padding: PaddingArg = "same",
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        pool_kernel_size: IntPair = 2,
        pool_stride: Optional[IntPair] = None,
        pool_padding: IntPair = 0,
        conv: ConvFactory = "dense",
        conv_options: Optional[Mapping[str, Any]] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        pool_kernel = check_positive_pair(pool_kernel_size, "pool_kernel_size")
        pool_strides = pool_kernel if pool_stride is None else check_positive_pair(pool_stride, "pool_stride")
        pool_pads = pair(pool_padding, "pool_padding")
        if any(p < 0 or p > k // 2 for p, k in zip(pool_pads, pool_kernel)):
            raise ValueError(
                f"pool_padding={pool_padding!r} must be >= 0 and at most half of "
                f"pool_kernel_size={pool_kernel} (as in nn.MaxPool2d)"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.unpool = nn.MaxUnpool2d(pool_kernel, pool_strides, pool_pads)
        self.conv = make_conv(conv, in_channels, out_channels, kernel_size, stride, padding, dilation,
                              bias, padding_mode, conv_options, device, dtype)

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, output_size: Optional[List[int]] = None
    ) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        _check_indices(x, indices, type(self).__name__)
        return self.conv(self.unpool(x, indices, output_size))


__all__ = [
    "ConvFactory",
    "DepthwiseSeparableConvTranspose2d",
    "MaxUnpoolConv2d",
    "ResizeConv2d",
    "make_conv",
]

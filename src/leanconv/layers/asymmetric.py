"""Spatially separable (asymmetric) convolutions: kx1 and 1xk stages, serial or parallel.

Three ways to use a ``kh x 1`` and a ``1 x kw`` conv instead of a ``kh x kw`` one:

* :class:`AsymmetricConv2d` runs them one after the other. The composition is exactly a
  ``kh x kw`` conv whose kernel has rank <= ``mid_channels`` when reshaped to
  ``(C*kh) x (O*kw)``; it costs ``kh + kw`` instead of ``kh*kw`` multiplies per channel pair.
* :class:`ParallelAsymmetricConv2d` runs them side by side and concatenates (Inception-v3).
* :class:`ACBlock` adds them to a ``kh x kw`` conv (ACNet): more capacity while training, and
  :meth:`ACBlock.fuse` turns it into a single ``kh x kw`` conv for deployment.

The parallel forms pad the input once, exactly as the ``kh x kw`` conv would, and run each
1-wide branch unpadded on the centre rows or columns (:class:`CenterTapPad`), so every branch
gives exactly the ``kh x kw`` conv's output size for any stride, dilation and padding.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from leanconv._validate import check_input
from leanconv.fusion import add_branches, fold_bn, pad_kernel
from leanconv.layers.base import TwoStageConv, swap_orders
from leanconv.layers.conv import Conv2d, ConvNormAct
from leanconv.rules import (
    ASYMMETRIC_ORDERS,
    check_asymmetric_order,
    check_branch_split,
    check_conv_args,
    check_odd_kernel,
    check_optional_channels,
)
from leanconv.padding import PaddingArg, axis_padding, pad_same, resolve_padding

# pad_same reads input sizes; under torch.fx symbolic tracing it becomes one graph node.
torch.fx.wrap("pad_same")

IntPair = int | Tuple[int, int]
ModuleFactory = Callable[..., nn.Module]



# --------------------------------------------------------------------------------------------
# Shared by the parallel forms: pad once like the kxk conv, slice the centre rows / columns.
# --------------------------------------------------------------------------------------------


class CenterTapPad(nn.Module):
    """Pads an input once as a ``kh x kw`` conv with this stride/padding/dilation would.

    A branch conv run unpadded on ``forward(x)`` gives the kxk conv's output; a ``1 x kw``
    branch on ``center_rows(forward(x))`` (and ``kh x 1`` on ``center_cols``) gives the same
    output size and equals the kxk conv with its kernel zero except on the centre row (column).
    No parameters; ``padding_mode`` is honored and ``'same'`` follows the TF rule.
    """

    def __init__(
        self,
        kernel_size: Tuple[int, int],
        stride: Tuple[int, int],
        padding: PaddingArg,
        dilation: Tuple[int, int],
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.padding_mode = padding_mode
        static = resolve_padding(padding, kernel_size, stride, dilation)
        self.dynamic_same = static is None
        # F.pad order: (left, right, top, bottom)
        self.static_pad: Tuple[int, int, int, int] = (
            (0, 0, 0, 0) if static is None else (static[1], static[1], static[0], static[0])
        )
        self.row_offset = dilation[0] * (kernel_size[0] // 2)
        self.col_offset = dilation[1] * (kernel_size[1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_same:
            return pad_same(x, self.kernel_size, self.stride, self.dilation, self.padding_mode)
        if not any(self.static_pad):
            return x
        if self.padding_mode == "zeros":
            return F.pad(x, self.static_pad)
        return F.pad(x, self.static_pad, mode=self.padding_mode)

    def center_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Rows a ``1 x kw`` branch sees: drop ``dh*(kh//2)`` rows at the top and bottom."""
        off = self.row_offset
        return x[:, :, off:-off] if off else x

    def center_cols(self, x: torch.Tensor) -> torch.Tensor:
        """Columns a ``kh x 1`` branch sees: drop ``dw*(kw//2)`` columns left and right."""
        off = self.col_offset
        return x[:, :, :, off:-off] if off else x

    def extra_repr(self) -> str:
        pad = "'same' (dynamic)" if self.dynamic_same else str(self.static_pad)
        return f"pad={pad}, padding_mode={self.padding_mode!r}"


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


class AsymmetricConv2d(TwoStageConv):
    """Spatially separable conv: ``kh x 1`` then ``1 x kw`` (or the reverse), in series.

    ``conv_kx1`` gets the row parts of stride/padding/dilation, ``conv_1xk`` the column parts;
    only the second stage has a bias (a first-stage bias would leak into zero-padded borders).
    Optional inner ``norm``/``act`` between the stages. Without them the layer is exactly a
    ``kh x kw`` conv of rank <= ``mid_channels`` (default ``out_channels``). MACs
    ``C*mid*kh*H1*W1 + mid*O*kw*H'*W'`` vs ``C*O*kh*kw*H'*W'`` (H1, W1: size after stage 1).
    ``order='1xk_first'`` swaps the stages, ``output_stage`` and ``conv_norm_pairs``
    (:class:`~leanconv.layers.base.TwoStageConv`).
    """

    stage_orders = swap_orders(ASYMMETRIC_ORDERS, "conv_kx1", "conv_1xk")
    repr_fields = ("order", "mid_channels")

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
        mid_channels: Optional[int] = None,
        order: str = "kx1_first",
        norm_layer: Optional[ModuleFactory] = None,
        act_layer: Optional[ModuleFactory] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kernel, strides, dilations = check_conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, 1, padding_mode
        )
        mid = check_optional_channels(mid_channels, "mid_channels") or out_channels
        check_asymmetric_order(order)
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid
        self.kernel_size, self.stride, self.dilation = kernel, strides, dilations
        self.padding: PaddingArg = padding
        self.padding_mode = padding_mode
        self.order = order
        kx1_first = order == "kx1_first"
        kx1_io = (in_channels, mid) if kx1_first else (mid, out_channels)
        row_io = (mid, out_channels) if kx1_first else (in_channels, mid)
        self.conv_kx1 = Conv2d(
            *kx1_io, (kernel[0], 1), (strides[0], 1), axis_padding(padding, 0),
            (dilations[0], 1), 1, bias and not kx1_first, padding_mode, device=device, dtype=dtype,
        )
        self.conv_1xk = Conv2d(
            *row_io, (1, kernel[1]), (1, strides[1]), axis_padding(padding, 1),
            (1, dilations[1]), 1, bias and kx1_first, padding_mode, device=device, dtype=dtype,
        )
        self._set_between(norm_layer, act_layer, mid, device, dtype)


class ParallelAsymmetricConv2d(nn.Module):
    """``1 x kw`` and ``kh x 1`` convs side by side on one input, concatenated (Inception-v3).

    ``branches['1xk']`` gives the first ``ceil(O/2)`` output channels, ``branches['kx1']`` the
    other ``floor(O/2)``; each equals a ``kh x kw`` conv (same stride/padding/dilation, odd
    kernel) whose kernel is zero off its centre row / column, so both have its output size.
    MACs ``C*(ceil(O/2)*kw + floor(O/2)*kh)*H'*W'``.
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
        super().__init__()
        kernel, strides, dilations = check_conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, 1, padding_mode
        )
        check_odd_kernel(kernel_size)
        check_branch_split(out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel, strides, dilations
        self.padding: PaddingArg = padding
        self.padding_mode = padding_mode
        self.pad = CenterTapPad(kernel, strides, padding, dilations, padding_mode)
        wide, tall = out_channels - out_channels // 2, out_channels // 2
        self.branches = nn.ModuleDict({
            "1xk": Conv2d(in_channels, wide, (1, kernel[1]), strides, 0, (1, dilations[1]), 1, bias,
                          device=device, dtype=dtype),
            "kx1": Conv2d(in_channels, tall, (kernel[0], 1), strides, 0, (dilations[0], 1), 1, bias,
                          device=device, dtype=dtype),
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        x = self.pad(x)
        wide = self.branches["1xk"](self.pad.center_rows(x))
        tall = self.branches["kx1"](self.pad.center_cols(x))
        return torch.cat([wide, tall], dim=1)


class ACBlock(nn.Module):
    """ACNet asymmetric convolution block: ``kxk + 1xk + kx1`` branches, each conv + norm, summed.

    The extra branches strengthen the kernel's centre cross while training; since all three
    see the same padded input, :meth:`fuse` folds each norm into its conv and adds the centred
    kernels into one ``kh x kw`` conv with the same eval output. Odd kernels only. ``bias``
    goes to the kxk conv when ``norm_layer`` is None (a norm's shift supersedes it otherwise).
    """

    conv_norm_pairs = (
        ("branches.kxk.conv", "branches.kxk.norm"),
        ("branches.1xk.conv", "branches.1xk.norm"),
        ("branches.kx1.conv", "branches.kx1.norm"),
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        padding: PaddingArg = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kernel, strides, dilations = check_conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        check_odd_kernel(kernel_size)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = kernel, strides, dilations
        self.padding: PaddingArg = padding
        self.padding_mode = padding_mode
        self.pad = CenterTapPad(kernel, strides, padding, dilations, padding_mode)
        shapes = {
            "kxk": (kernel, dilations),
            "1xk": ((1, kernel[1]), (1, dilations[1])),
            "kx1": ((kernel[0], 1), (dilations[0], 1)),
        }
        self.branches = nn.ModuleDict({
            name: ConvNormAct(
                in_channels, out_channels, k, strides, 0, d, groups,
                bias=bias and norm_layer is None and name == "kxk", norm_layer=norm_layer,
                act_layer=None, device=device, dtype=dtype,
            )
            for name, (k, d) in shapes.items()
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        x = self.pad(x)
        out = self.branches["kxk"](x)
        out = out + self.branches["1xk"](self.pad.center_rows(x))
        return out + self.branches["kx1"](self.pad.center_cols(x))

    @torch.no_grad()
    def fuse(self) -> Conv2d:
        """One ``kh x kw`` :class:`Conv2d` (original padding, bias) equal to this block in eval mode.

        Norms are folded with their running statistics, so the match holds for ``eval()``;
        only BatchNorm-type norms (or none) can be folded.
        """
        weight, bias = add_branches(
            (pad_kernel(w, self.kernel_size), b)
            for w, b in (_fold_branch(self.branches[name], name) for name in ("kxk", "1xk", "kx1"))
        )
        ref = self.branches["kxk"].conv.weight
        fused = Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, True, self.padding_mode, device=ref.device, dtype=ref.dtype,
        )
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        return fused


def _fold_branch(branch: ConvNormAct, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one ACBlock branch with its norm folded in."""
    conv, norm = branch.conv, branch.norm
    if isinstance(norm, nn.Identity):
        bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
        return conv.weight, bias
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_mean is None:
        raise ValueError(
            f"branches.{name}.norm={type(norm).__name__} cannot be folded into a conv: "
            "fuse() needs a BatchNorm with running statistics, or norm_layer=None"
        )
    return fold_bn(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )


__all__ = [
    "ACBlock",
    "AsymmetricConv2d",
    "CenterTapPad",
    "ParallelAsymmetricConv2d",
]

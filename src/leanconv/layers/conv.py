"""Plain convolutions that speak leanconv's padding vocabulary, and the conv-norm-act unit.

:class:`Conv2d` and :class:`ConvTranspose2d` are drop-in subclasses of the PyTorch modules
(same arguments, same weight layout and ``state_dict`` keys) that also accept
``padding='same'`` with any stride and dilation. Every leanconv layer builds its conv stages
from them, so every kind speaks the same padding vocabulary, and BN folding, analysis and
conversion see ordinary ``nn.Conv2d`` / ``nn.ConvTranspose2d`` instances.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from leanconv._validate import check_callable_or_none, check_input
from leanconv.rules import check_conv_args
from leanconv.padding import PaddingArg, pad_same, resolve_padding, resolve_transposed_padding

# pad_same reads input sizes; under torch.fx symbolic tracing it becomes one graph node.
torch.fx.wrap("pad_same")

IntPair = int | Tuple[int, int]
ModuleFactory = Callable[..., nn.Module]


def _same_repr(text: str, padding_arg: PaddingArg, resolved) -> str:
    """Show ``padding='same'`` instead of the resolved numbers PyTorch's repr would print."""
    if padding_arg != "same":
        return text
    return text.replace(f", padding={resolved}", "") + ", padding='same'"


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that also takes ``padding='same'`` with any stride and dilation.

    When 'same' is static and symmetric it becomes ordinary integer padding; otherwise the
    TF-rule pad (extra pixel right/bottom, ``padding_mode`` honored) is applied in
    ``forward`` and the conv itself runs unpadded. ``padding_arg`` keeps what the user asked.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: PaddingArg = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        kernel, strides, dilations = check_conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        static = resolve_padding(padding, kernel, strides, dilations)
        super().__init__(
            in_channels, out_channels, kernel, strides, static if static is not None else 0,
            dilations, groups, bias, padding_mode, device=device, dtype=dtype,
        )
        self.padding_arg: PaddingArg = padding
        self.dynamic_same = static is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        if self.dynamic_same:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation, self.padding_mode)  # type: ignore[arg-type]
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return super().forward(x)

    def extra_repr(self) -> str:
        return _same_repr(super().extra_repr(), self.padding_arg, self.padding)


class PermutedGroupedConv2d(nn.Module):
    """A grouped conv between two channel reorderings: the target of a dense -> grouped
    conversion that first moves strongly coupled channels into the same group.

    ``input_order[i]`` is the input channel fed to position ``i`` of the grouped ``conv``;
    ``output_order[j]`` is the output channel that the conv's output ``j`` stands for. Both are
    buffers (saved in the ``state_dict``); identity orders make it a plain grouped conv. The
    reorderings move memory but cost no MACs. BatchNorm folding skips this module (its weight
    rows are in the reordered order).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: PaddingArg = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           padding_mode, device=device, dtype=dtype)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.register_buffer("input_order", torch.arange(in_channels, device=device))
        self.register_buffer("output_order", torch.arange(out_channels, device=device))

    # leanconv.protocol: the refit solves ``conv`` against targets permuted by
    # ``output_order``; a following BN does not fold into it (its outputs are reordered)
    output_stage = "conv"
    reorders_output = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        y = self.conv(x.index_select(1, self.input_order))
        return y.index_select(1, torch.argsort(self.output_order))


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` that also takes ``padding='same'`` (output ``in * stride``).

    'same' is the adjoint of a conv with 'same' padding: where that needs one more pixel
    cropped at the bottom/right than at the top/left, ``crop_end`` removes it after the conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: PaddingArg = 0,
        output_padding: IntPair = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntPair = 1,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        kernel, strides, dilations = check_conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode={padding_mode!r} must be 'zeros' for a transposed conv")
        resolved = resolve_transposed_padding(
            padding, output_padding, kernel, strides, dilations
        )
        super().__init__(
            in_channels, out_channels, kernel, strides, resolved.padding, resolved.output_padding,
            groups, bias, dilations, padding_mode, device=device, dtype=dtype,
        )
        self.padding_arg: PaddingArg = padding
        self.crop_end: Tuple[int, int] = resolved.crop_end

    def forward(self, x: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        y = super().forward(x, output_size)
        if any(self.crop_end):
            y = y[..., : y.shape[-2] - self.crop_end[0], : y.shape[-1] - self.crop_end[1]]
        return y

    def extra_repr(self) -> str:
        return _same_repr(super().extra_repr(), self.padding_arg, self.padding)


def make_norm(norm_layer: Optional[ModuleFactory], channels: int, device=None, dtype=None) -> nn.Module:
    """``norm_layer(channels)`` on the right device/dtype, or ``nn.Identity`` when None."""
    check_callable_or_none(norm_layer, "norm_layer")
    if norm_layer is None:
        return nn.Identity()
    return norm_layer(channels).to(device=device, dtype=dtype) if (device or dtype) else norm_layer(channels)


def make_act(act_layer: Optional[ModuleFactory]) -> nn.Module:
    """``act_layer()``, or ``nn.Identity`` when None."""
    check_callable_or_none(act_layer, "act_layer")
    return nn.Identity() if act_layer is None else act_layer()


class ConvNormAct(nn.Module):
    """A conv followed by an optional norm and activation: submodules ``conv``, ``norm``, ``act``.

    The conv gets a bias only when there is no norm (a norm's shift makes it redundant),
    unless ``bias`` says otherwise. ``leanconv.fuse`` folds ``norm`` into ``conv``.
    """

    conv_norm_pairs = (("conv", "norm"),)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = 1,
        stride: IntPair = 1,
        padding: PaddingArg = "same",
        dilation: IntPair = 1,
        groups: int = 1,
        bias: Optional[bool] = None,
        padding_mode: str = "zeros",
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        use_bias = norm_layer is None if bias is None else bias
        self.conv = Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, use_bias,
            padding_mode, device=device, dtype=dtype,
        )
        self.norm = make_norm(norm_layer, out_channels, device, dtype)
        self.act = make_act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


__all__ = [
    "Conv2d",
    "ConvNormAct",
    "ConvTranspose2d",
    "PermutedGroupedConv2d",
    "check_conv_args",
    "make_act",
    "make_norm",
]

"""Argument rules of the leanconv layers, each checked in one place.

Every layer (and every registry validator that describes the same kind) calls these instead
of restating a rule. Each raises one ``ValueError`` naming the argument, its value and the
rule, and returns the normalized value where there is one. The choice tuples are the one
spelling of each vocabulary (stage orders, Tucker-2 cores, interpolation modes, CBAM variants).
It lives outside :mod:`leanconv.layers` and imports no layer, so the kind registry can call the
same rules without importing the layers.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from leanconv._validate import (
    check_choice,
    check_divisible,
    check_positive_int,
    check_positive_pair,
)
from leanconv.padding import PaddingArg, check_padding, check_padding_mode

IntPair = int | Tuple[int, int]

SEPARABLE_ORDERS = ("depthwise_first", "pointwise_first")
"""Stage orders of the depthwise separable conv and its transposed form."""
ASYMMETRIC_ORDERS = ("kx1_first", "1xk_first")
"""Stage orders of the serial asymmetric (kx1, 1xk) conv."""
TUCKER2_CORES = ("dense", "asymmetric")
UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")
CBAM_VARIANTS = ("paper", "common")

CENTRE_CROSS = "the 1xk and kx1 branches sit on the kernel's centre row and column"


def check_groups(in_channels: int, out_channels: int, groups: int) -> int:
    """``groups`` is an int >= 1 dividing both channel counts."""
    check_positive_int(groups, "groups")
    check_divisible(in_channels, "in_channels", groups, "groups")
    check_divisible(out_channels, "out_channels", groups, "groups")
    return groups


def check_conv_args(
    in_channels: int,
    out_channels: int,
    kernel_size: IntPair,
    stride: IntPair,
    padding: PaddingArg,
    dilation: IntPair,
    groups: int,
    padding_mode: str,
) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    """Validate the arguments every conv shares; return normalized (kernel, stride, dilation)."""
    check_positive_int(in_channels, "in_channels")
    check_positive_int(out_channels, "out_channels")
    check_groups(in_channels, out_channels, groups)
    kernel = check_positive_pair(kernel_size, "kernel_size")
    strides = check_positive_pair(stride, "stride")
    dilations = check_positive_pair(dilation, "dilation")
    check_padding(padding)
    check_padding_mode(padding_mode)
    return kernel, strides, dilations


def check_depthwise_channels(in_channels: int, out_channels: int) -> int:
    """A depthwise conv's ``out_channels`` is a multiple of ``in_channels``; return the multiplier."""
    check_positive_int(in_channels, "in_channels")
    check_positive_int(out_channels, "out_channels")
    if out_channels % in_channels != 0:
        raise ValueError(
            f"out_channels={out_channels} must be a multiple of in_channels={in_channels} "
            "(depth multiplier = out/in)"
        )
    return out_channels // in_channels


def check_depth_multiplier(depth_multiplier: Any) -> int:
    """Depthwise output channels per input channel (Keras meaning): an int >= 1."""
    return check_positive_int(depth_multiplier, "depth_multiplier")


def check_separable_order(order: Any) -> str:
    """``order`` of a depthwise separable conv (plain or transposed): one of SEPARABLE_ORDERS."""
    check_choice(order, "order", SEPARABLE_ORDERS)
    return order


def check_transpose_multiplier(depth_multiplier: Any, order: Any) -> int:
    """A separable transposed conv's multiplier: >= 1, and 1 with ``order='pointwise_first'``
    (its depthwise stage maps out_channels to out_channels)."""
    check_depth_multiplier(depth_multiplier)
    check_separable_order(order)
    if order == "pointwise_first" and depth_multiplier != 1:
        raise ValueError(
            f"depth_multiplier={depth_multiplier} must be 1 with order='pointwise_first' "
            "(the depthwise stage maps out_channels to out_channels)"
        )
    return depth_multiplier


def check_asymmetric_order(order: Any) -> str:
    """``order`` of a serial asymmetric conv: one of ASYMMETRIC_ORDERS."""
    check_choice(order, "order", ASYMMETRIC_ORDERS)
    return order


def check_optional_channels(value: Any, name: str) -> Optional[int]:
    """An inner width that defaults when None (``mid_channels``, ``core_mid_channels``): else >= 1."""
    return None if value is None else check_positive_int(value, name)


def check_odd_kernel(kernel_size: Any, reason: str = CENTRE_CROSS) -> Tuple[int, int]:
    """``kernel_size`` is odd in both dimensions (``reason`` says why the layer needs it);
    return it as ``(kh, kw)``."""
    kernel = check_positive_pair(kernel_size, "kernel_size")
    if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size!r} must be odd in both dimensions ({reason})")
    return kernel


def check_branch_split(out_channels: Any) -> int:
    """Parallel kx1/1xk branches split the outputs between them: ``out_channels >= 2``."""
    check_positive_int(out_channels, "out_channels")
    if out_channels < 2:
        raise ValueError(
            f"out_channels={out_channels} must be >= 2 (split between the 1xk and kx1 branches)"
        )
    return out_channels


def check_ranks(ranks: Any, in_channels: int, out_channels: int) -> Tuple[int, int]:
    """Tucker-2 ``ranks``: None (full rank ``(in_channels, out_channels)``) or a pair of ints >= 1."""
    if ranks is None:
        return (in_channels, out_channels)
    rule = f"ranks={ranks!r} must be a pair (r_in, r_out) of ints >= 1"
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence) or len(ranks) != 2:
        raise ValueError(rule)
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
        raise ValueError(rule)
    return (int(ranks[0]), int(ranks[1]))


def check_tucker2_core(core: Any, core_mid_channels: Any) -> Optional[int]:
    """``core`` is one of TUCKER2_CORES; ``core_mid_channels`` (None or >= 1) only with 'asymmetric'."""
    check_choice(core, "core", TUCKER2_CORES)
    mid = check_optional_channels(core_mid_channels, "core_mid_channels")
    if mid is not None and core != "asymmetric":
        raise ValueError(f"core_mid_channels={mid} applies only to core='asymmetric'")
    return mid


def check_upsample(scale_factor: Any, mode: Any, align_corners: Any) -> Tuple[int, int]:
    """Interpolation upsampling: integer ``scale_factor`` >= 1, ``mode`` one of UPSAMPLE_MODES,
    ``align_corners`` None/True/False and None with 'nearest'; return the scale as ``(s_h, s_w)``."""
    scale = check_positive_pair(scale_factor, "scale_factor")
    check_choice(mode, "mode", UPSAMPLE_MODES)
    check_choice(align_corners, "align_corners", (None, True, False))
    if mode == "nearest" and align_corners is not None:
        raise ValueError(f"align_corners={align_corners!r} must be None with mode='nearest'")
    return scale


def check_cbam_variant(variant: Any) -> str:
    """CBAM ``variant``: one of CBAM_VARIANTS."""
    check_choice(variant, "variant", CBAM_VARIANTS)
    return variant


__all__ = [
    "ASYMMETRIC_ORDERS",
    "CBAM_VARIANTS",
    "SEPARABLE_ORDERS",
    "TUCKER2_CORES",
    "UPSAMPLE_MODES",
    "check_asymmetric_order",
    "check_branch_split",
    "check_cbam_variant",
    "check_conv_args",
    "check_depth_multiplier",
    "check_depthwise_channels",
    "check_groups",
    "check_odd_kernel",
    "check_optional_channels",
    "check_ranks",
    "check_separable_order",
    "check_transpose_multiplier",
    "check_tucker2_core",
    "check_upsample",
]

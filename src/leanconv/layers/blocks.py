"""Network blocks built from leanconv conv kinds: ResNet bottleneck, MobileNetV2 inverted
residual, LPRNet's small basic block and DeepLab's ASPP.

Each block names its stages (``reduce``, ``conv``, ``expand``, ``shortcut``, ``branches`` ...)
so ``state_dict`` keys explain themselves, validates its arguments up front, and checks the
input shape before any compute. Where a block has a spatial conv that could be made cheaper
(the bottleneck's 3x3, ASPP's atrous 3x3s), its ``conv`` argument picks any registered conv
kind (:func:`leanconv.kinds.create_conv2d`), e.g. ``conv='dsconv'`` for DeepLabv3+'s atrous
separable convs.
"""

from __future__ import annotations

from functools import partial
from numbers import Real
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from leanconv._validate import (
    check_callable_or_none,
    check_divisible,
    check_input,
    check_positive_int,
    check_positive_pair,
    check_probability,
)
from leanconv.kinds import KINDS, ConvSpec, create_conv2d, get_kind
from leanconv.layers.conv import Conv2d, ConvNormAct, make_act, make_norm
from leanconv.padding import PaddingArg

IntPair = int | Tuple[int, int]
ModuleFactory = Callable[..., nn.Module]

def _not_spatial_kinds() -> Tuple[str, ...]:
    """Kinds that cannot stand in for a plain kxk conv inside a block: 1x1-only kinds and the
    upsampling kinds (their output is larger than their input), as the registry says."""
    return tuple(name for name, kind in KINDS.items() if not kind.spatial or kind.upsamples)


def check_spatial_kind(conv: Any, name: str = "conv") -> str:
    if not isinstance(conv, str):
        raise ValueError(f"{name}={conv!r} must be the name of a conv kind (e.g. 'dense', 'dsconv')")
    get_kind(conv)  # ValueError listing the kinds when unknown
    if conv in _not_spatial_kinds():
        raise ValueError(
            f"{name}={conv!r} must be a kind that keeps the kxk conv's output size, not one of "
            f"{_not_spatial_kinds()}"
        )
    return conv


def check_conv_options(options: Any, name: str = "conv_options") -> Dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{name}={options!r} must be a mapping of the conv kind's options, or None")
    return dict(options)


def _output_conv_path(kind: str, spec: ConvSpec, module: nn.Module) -> Optional[str]:
    """Path (inside ``module``) of the conv whose output is the module's output, if there is one.

    None when the kind sums or concatenates parallel branches (no single conv to fold a
    following norm into) or when the registry's description does not match the module.
    """
    stages = get_kind(kind).stages(spec)
    if not stages or any(s.from_input or s.op == "upsample" for s in stages) or stages[-1].op not in ("conv", "conv_transpose"):
        return None
    path = stages[-1].name
    try:
        target = module.get_submodule(path) if path else module
    except AttributeError:
        return None
    return path if isinstance(target, (nn.Conv2d, nn.ConvTranspose2d)) else None


class KindConvNormAct(nn.Module):
    """A conv of any registered kind, then an optional norm and activation (``conv``/``norm``/``act``).

    The generalization of :class:`ConvNormAct` that blocks use for their swappable kxk stage:
    ``kind='dense'`` gives the same module tree as ``ConvNormAct``. Like it, the conv has a
    bias only when there is no norm unless ``bias`` says otherwise. ``conv_norm_pairs`` points
    at the kind's last conv (e.g. ``conv.pointwise`` for 'dsconv'), or is empty when the kind
    ends in parallel branches.
    """

    def __init__(
        self,
        kind: str,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: PaddingArg = 0,
        dilation: IntPair = 1,
        bias: Optional[bool] = None,
        padding_mode: str = "zeros",
        conv_options: Optional[Mapping[str, Any]] = None,
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not isinstance(kind, str):
            raise ValueError(f"kind={kind!r} must be the name of a conv kind (e.g. 'dense', 'dsconv')")
        options = check_conv_options(conv_options)
        check_callable_or_none(norm_layer, "norm_layer")
        check_callable_or_none(act_layer, "act_layer")
        use_bias = norm_layer is None if bias is None else bool(bias)
        self.kind = kind
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = create_conv2d(
            kind, in_channels, out_channels, kernel_size, stride, padding, dilation, use_bias,
            padding_mode, device=device, dtype=dtype, **options,
        )
        self.norm = make_norm(norm_layer, out_channels, device, dtype)
        self.act = make_act(act_layer)
        spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding, dilation,
                               use_bias, **options)
        self._output_conv = _output_conv_path(kind, spec, self.conv)

    @property
    def conv_norm_pairs(self) -> Tuple[Tuple[str, str], ...]:  # type: ignore[override]
        """Which conv the norm folds into: the kind's last conv, or ``conv`` itself once a block
        such as ACBlock has been fused into a single conv."""
        if isinstance(self.conv, (nn.Conv2d, nn.ConvTranspose2d)):
            return (("conv", "norm"),)
        path = self._output_conv
        return () if path is None else ((f"conv.{path}" if path else "conv", "norm"),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.act(self.norm(self.conv(x)))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def _bottleneck_kind(conv: str, options: Dict[str, Any], groups: int) -> Tuple[str, Dict[str, Any]]:
    """The kind and options of the bottleneck's kxk stage; ``groups`` only applies to dense/grouped."""
    if conv in ("dense", "grouped"):
        if "groups" in options and groups != 1 and options["groups"] != groups:
            raise ValueError(
                f"groups={groups} conflicts with conv_options['groups']={options['groups']}"
            )
        g = options.pop("groups", groups)
        if conv == "dense" and g == 1:
            return "dense", options
        return "grouped", {**options, "groups": g}
    if groups != 1:
        raise ValueError(f"groups={groups} applies only to conv='dense' or 'grouped', not conv={conv!r}")
    return conv, options


def residual_shortcut(in_channels: int, out_channels: int, stride: IntPair,
                      norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d, device=None, dtype=None) -> nn.Module:
    """ResNet's shortcut: the identity when the shape is kept, else a strided 1x1 conv + norm."""
    if check_positive_pair(stride, "stride") == (1, 1) and in_channels == out_channels:
        return nn.Identity()
    return ConvNormAct(in_channels, out_channels, 1, stride, padding=0, norm_layer=norm_layer, act_layer=None,
                       device=device, dtype=dtype)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, kxk (3x3) with the stride, 1x1 expand, plus a shortcut.

    ``in -> mid -> mid -> out`` channels (``mid = out // 4`` by default), then
    ``act(expand + shortcut(x))``; the shortcut is the identity when shapes allow, else a 1x1
    strided projection with a norm. Output ``(N, out, ceil(H/s), ceil(W/s))``. Params (dense,
    no shortcut) ``in*mid + mid^2*9/groups + mid*out`` plus norms; the 3x3 may be any kind.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: IntPair = 1,
        mid_channels: Optional[int] = None,
        groups: int = 1,
        dilation: int = 1,
        conv: str = "dense",
        conv_options: Optional[Mapping[str, Any]] = None,
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        if mid_channels is None:
            if out_channels < 4:
                raise ValueError(
                    f"out_channels={out_channels} must be >= 4 when mid_channels is None "
                    "(mid_channels defaults to out_channels // 4)"
                )
            mid_channels = out_channels // 4
        check_positive_int(mid_channels, "mid_channels")
        check_positive_int(groups, "groups")
        strides = check_positive_pair(stride, "stride")
        check_positive_int(dilation, "dilation")
        check_spatial_kind(conv)
        kind, options = _bottleneck_kind(conv, check_conv_options(conv_options), groups)
        if "groups" in options:
            check_positive_int(options["groups"], "groups")
            check_divisible(mid_channels, "mid_channels", options["groups"], "groups")
        check_callable_or_none(norm_layer, "norm_layer")
        check_callable_or_none(act_layer, "act_layer")

        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid_channels
        self.stride = strides
        factory = dict(device=device, dtype=dtype)
        self.reduce = ConvNormAct(in_channels, mid_channels, 1, padding=0, norm_layer=norm_layer,
                                  act_layer=act_layer, **factory)
        self.conv = KindConvNormAct(
            kind, mid_channels, mid_channels, 3, strides, padding=dilation, dilation=dilation,
            conv_options=options, norm_layer=norm_layer, act_layer=act_layer, **factory,
        )
        self.expand = ConvNormAct(mid_channels, out_channels, 1, padding=0, norm_layer=norm_layer,
                                  act_layer=None, **factory)
        self.shortcut = residual_shortcut(in_channels, out_channels, strides, norm_layer, **factory)
        self.act = make_act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        return self.act(self.expand(self.conv(self.reduce(x))) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, kxk depthwise (stride), linear 1x1 project.

    ``in -> hidden -> hidden -> out`` with ``hidden = round(in * expand_ratio)``; the input is
    added back when ``stride == 1`` and ``in == out`` (``use_residual``). Params (no norms)
    ``in*hidden + hidden*k*k + hidden*out``; the projection has no activation (linear bottleneck).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 6,
        kernel_size: int = 3,
        dilation: int = 1,
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        act_layer: Optional[ModuleFactory] = nn.ReLU6,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        if isinstance(stride, bool) or stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2")
        if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, Real) or not expand_ratio > 0:
            raise ValueError(f"expand_ratio={expand_ratio!r} must be a number > 0")
        check_positive_int(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be odd (the depthwise conv keeps the size at stride 1)")
        check_positive_int(dilation, "dilation")
        check_callable_or_none(norm_layer, "norm_layer")
        check_callable_or_none(act_layer, "act_layer")
        hidden = int(round(in_channels * expand_ratio))
        if hidden < 1:
            raise ValueError(
                f"expand_ratio={expand_ratio!r} gives round(in_channels * expand_ratio)={hidden} hidden "
                "channels; it must be >= 1"
            )

        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, hidden
        self.stride = stride
        self.use_residual = stride == 1 and in_channels == out_channels
        factory = dict(device=device, dtype=dtype)
        self.expand: nn.Module
        if expand_ratio == 1:
            self.expand = nn.Identity()
        else:
            self.expand = ConvNormAct(in_channels, hidden, 1, padding=0, norm_layer=norm_layer,
                                      act_layer=act_layer, **factory)
        self.depthwise = ConvNormAct(
            hidden, hidden, kernel_size, stride, padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation, groups=hidden, norm_layer=norm_layer, act_layer=act_layer, **factory,
        )
        self.project = ConvNormAct(hidden, out_channels, 1, padding=0, norm_layer=norm_layer,
                                   act_layer=None, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.use_residual else y


class SmallBasicBlock(nn.Module):
    """LPRNet's small basic block: 1x1 to out/4, 3x1, 1x3, 1x1 to out, with activations between.

    A cheap stand-in for a 3x3 conv (``in -> out``, size kept): the spatial work happens on a
    quarter of the channels and is split into 3x1 then 1x3. Params
    ``in*q + 3q^2 + 3q^2 + q*out`` (+ biases), ``q = out // 4``. No activation after
    ``expand``, as in the original. An optional norm follows each of the first three convs.
    """

    conv_norm_pairs = (("reduce", "norm1"), ("conv_kx1", "norm2"), ("conv_1xk", "norm3"))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_layer: Optional[ModuleFactory] = None,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_divisible(out_channels, "out_channels", 4, "4 (the inner width is out_channels // 4)")
        check_callable_or_none(norm_layer, "norm_layer")
        check_callable_or_none(act_layer, "act_layer")
        q = out_channels // 4
        inner_bias = norm_layer is None  # a norm's shift makes a conv bias redundant
        factory = dict(device=device, dtype=dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.reduce = Conv2d(in_channels, q, 1, bias=inner_bias, **factory)
        self.norm1 = make_norm(norm_layer, q, device, dtype)
        self.act1 = make_act(act_layer)
        self.conv_kx1 = Conv2d(q, q, (3, 1), padding=(1, 0), bias=inner_bias, **factory)
        self.norm2 = make_norm(norm_layer, q, device, dtype)
        self.act2 = make_act(act_layer)
        self.conv_1xk = Conv2d(q, q, (1, 3), padding=(0, 1), bias=inner_bias, **factory)
        self.norm3 = make_norm(norm_layer, q, device, dtype)
        self.act3 = make_act(act_layer)
        self.expand = Conv2d(q, out_channels, 1, bias=True, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        x = self.act1(self.norm1(self.reduce(x)))
        x = self.act2(self.norm2(self.conv_kx1(x)))
        x = self.act3(self.norm3(self.conv_1xk(x)))
        return self.expand(x)


class ASPPPooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv, norm, act, upsample to H x W.

    Upsampling a 1x1 map bilinearly gives a constant map whatever ``align_corners`` says.
    With a BatchNorm, training needs more than one image per batch (one value per channel).
    """

    conv_norm_pairs = (("conv", "norm"),)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = False,
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = Conv2d(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)
        self.norm = make_norm(norm_layer, out_channels, device, dtype)
        self.act = make_act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        y = self.act(self.norm(self.conv(self.pool(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab): parallel 1x1, atrous 3x3 and image-pool branches.

    Each branch maps ``in -> out`` channels at the input size; the ``1 + len(rates) (+1)``
    results are concatenated in the order conv1x1, atrous{rate}..., pooling, then projected
    1x1 back to ``out`` (and dropped out when ``dropout > 0``). ``conv='dsconv'`` makes every
    atrous branch a depthwise separable conv (DeepLabv3+), ``in*9 + in*out`` instead of
    ``in*out*9`` weights per branch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int] = (6, 12, 18),
        conv: str = "dense",
        image_pooling: bool = True,
        bias: bool = False,
        norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
        dropout: float = 0.0,
        conv_options: Optional[Mapping[str, Any]] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence) or len(rates) == 0:
            raise ValueError(f"rates={rates!r} must be a non-empty sequence of ints >= 1")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"rates={rates!r} must be a non-empty sequence of ints >= 1")
        if len(set(rates)) != len(rates):
            raise ValueError(f"rates={rates!r} must be distinct (one atrous branch per rate)")
        check_spatial_kind(conv)
        options = check_conv_options(conv_options)
        if not isinstance(image_pooling, bool):
            raise ValueError(f"image_pooling={image_pooling!r} must be a bool")
        if not isinstance(bias, bool):
            raise ValueError(f"bias={bias!r} must be a bool")
        check_callable_or_none(norm_layer, "norm_layer")
        check_callable_or_none(act_layer, "act_layer")
        p = check_probability(dropout, "dropout")

        self.in_channels, self.out_channels = in_channels, out_channels
        self.rates: Tuple[int, ...] = tuple(rates)
        self.conv_kind = conv
        unit = dict(norm_layer=norm_layer, act_layer=act_layer, device=device, dtype=dtype)
        branches: Dict[str, nn.Module] = {
            "conv1x1": ConvNormAct(in_channels, out_channels, 1, padding=0, bias=bias, **unit)
        }
        for rate in self.rates:
            branches[f"atrous{rate}"] = KindConvNormAct(
                conv, in_channels, out_channels, 3, padding=rate, dilation=rate, bias=bias,
                conv_options=options, **unit,
            )
        if image_pooling:
            branches["pooling"] = ASPPPooling(in_channels, out_channels, bias, **unit)
        self.branches = nn.ModuleDict(branches)
        self.project = ConvNormAct(out_channels * len(branches), out_channels, 1, padding=0,
                                   bias=bias, **unit)
        self.dropout: nn.Module = nn.Dropout(p) if p > 0 else nn.Identity()

    @classmethod
    def from_seed(cls, dim_in: int, dim_out: int, rate: int = 1, bn_mom: float = 0.1) -> "ASPP":
        """The ASPP of the seed page (``ASPP(dim_in, dim_out, rate, bn_mom)``), same weights layout.

        Rates ``4r, 8r, ..., 24r``, an image-pooling branch, conv biases everywhere and
        ``BatchNorm2d(momentum=bn_mom)``; eight branches concatenated, 1x1 projection with
        norm and ReLU.
        """
        check_positive_int(rate, "rate")
        return cls(
            dim_in, dim_out, rates=tuple(k * rate for k in (4, 8, 12, 16, 20, 24)), conv="dense",
            image_pooling=True, bias=True, norm_layer=partial(nn.BatchNorm2d, momentum=bn_mom),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        y = torch.cat([branch(x) for branch in self.branches.values()], dim=1)
        return self.dropout(self.project(y))


__all__ = [
    "ASPP",
    "ASPPPooling",
    "Bottleneck",
    "InvertedResidual",
    "KindConvNormAct",
    "SmallBasicBlock",
]

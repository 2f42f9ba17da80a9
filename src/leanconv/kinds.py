"""The registry of conv kinds: each kind described once.

A :class:`ConvKind` knows how to build its module (``build``), and describes the module as a
list of :class:`Stage` objects (``stages``): one per conv, norm or resampling step, named by
its path in the module's ``state_dict``. From the stages follow the parameter shapes, the
parameter count, the output shape and the MACs for any input size, so the layers, the
``leanconv kinds`` command, analysis and conversion all read the same description.

MAC = one multiply-accumulate. A conv stage costs ``O * (C/g) * kh * kw`` per output
position; a transposed conv stage ``C * (O/g) * kh * kw`` per *input* position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from leanconv._validate import check_choice, check_divisible, check_positive_int, check_positive_pair, pair
from leanconv.padding import (
    PaddingArg,
    axis_padding,
    check_padding,
    conv_output_hw,
    conv_transpose_output_size,
    resolve_transposed_padding,
)

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class ConvSpec:
    """The arguments of one conv layer, independent of its kind (normalized pairs)."""

    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    padding: PaddingArg = 0
    dilation: Tuple[int, int] = (1, 1)
    bias: bool = True
    output_padding: Tuple[int, int] = (0, 0)
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Tuple[int, int],
        stride: int | Tuple[int, int] = 1,
        padding: PaddingArg = 0,
        dilation: int | Tuple[int, int] = 1,
        bias: bool = True,
        output_padding: int | Tuple[int, int] = 0,
        **options: Any,
    ) -> "ConvSpec":
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_padding(padding)
        padding = padding if isinstance(padding, str) else pair(padding, "padding")
        return cls(
            in_channels,
            out_channels,
            check_positive_pair(kernel_size, "kernel_size"),
            check_positive_pair(stride, "stride"),
            padding,
            check_positive_pair(dilation, "dilation"),
            bool(bias),
            pair(output_padding, "output_padding"),
            dict(options),
        )


@dataclass(frozen=True)
class Stage:
    """One step of a kind: a conv, transposed conv, norm or upsample, at ``name`` in the module.

    ``from_input=True`` marks a parallel branch that reads the block input instead of the
    previous stage's output.
    """

    name: str
    op: str  # 'conv' | 'conv_transpose' | 'norm' | 'upsample'
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int] = (1, 1)
    stride: Tuple[int, int] = (1, 1)
    padding: PaddingArg = 0
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    output_padding: Tuple[int, int] = (0, 0)
    scale: Tuple[int, int] = (1, 1)
    from_input: bool = False

    def _key(self, leaf: str) -> str:
        return f"{self.name}.{leaf}" if self.name else leaf

    @property
    def weight_shape(self) -> Optional[Shape]:
        """``(O, C/g, kh, kw)`` for a conv, ``(C, O/g, kh, kw)`` for a transposed conv."""
        kh, kw = self.kernel_size
        if self.op == "conv":
            return (self.out_channels, self.in_channels // self.groups, kh, kw)
        if self.op == "conv_transpose":
            return (self.in_channels, self.out_channels // self.groups, kh, kw)
        return None

    def param_shapes(self) -> Dict[str, Shape]:
        """Learnable parameter shapes by ``state_dict`` key."""
        if self.op in ("conv", "conv_transpose"):
            shapes = {self._key("weight"): self.weight_shape}
            if self.bias:
                shapes[self._key("bias")] = (self.out_channels,)
            return shapes  # type: ignore[return-value]
        if self.op == "norm":
            return {self._key("weight"): (self.out_channels,), self._key("bias"): (self.out_channels,)}
        return {}

    def output_hw(self, in_hw: Sequence[int]) -> Tuple[int, int]:
        if self.op == "conv":
            return conv_output_hw(in_hw, self.kernel_size, self.stride, self.padding, self.dilation)
        if self.op == "conv_transpose":
            tp = resolve_transposed_padding(
                self.padding, self.output_padding, self.kernel_size, self.stride, self.dilation
            )
            return tuple(  # type: ignore[return-value]
                conv_transpose_output_size(n, k, s, p, d, o) - c
                for n, k, s, p, d, o, c in zip(
                    in_hw, self.kernel_size, self.stride, tp.padding, self.dilation,
                    tp.output_padding, tp.crop_end,
                )
            )
        if self.op == "upsample":
            return (in_hw[0] * self.scale[0], in_hw[1] * self.scale[1])
        return (in_hw[0], in_hw[1])

    def macs(self, in_hw: Sequence[int]) -> int:
        """Multiply-accumulates of this stage for one image of spatial size ``in_hw``."""
        kh, kw = self.kernel_size
        if self.op == "conv":
            oh, ow = self.output_hw(in_hw)
            return self.out_channels * (self.in_channels // self.groups) * kh * kw * oh * ow
        if self.op == "conv_transpose":
            return self.in_channels * (self.out_channels // self.groups) * kh * kw * in_hw[0] * in_hw[1]
        return 0


@dataclass(frozen=True)
class StageShape:
    """A stage with the concrete input and output shapes ``(C, H, W)`` it sees."""

    stage: Stage
    input_shape: Shape
    output_shape: Shape
    macs: int


@dataclass(frozen=True)
class ConvKind:
    """One conv kind: its builder, its stages, and its cost formulas in words."""

    name: str
    summary: str
    layer: str
    options: Mapping[str, Any]
    build_fn: Callable[[ConvSpec, Dict[str, Any]], nn.Module]
    stages_fn: Callable[[ConvSpec], List[Stage]]
    params_formula: str
    macs_formula: str
    validate_fn: Optional[Callable[[ConvSpec], None]] = None

    def _with_defaults(self, spec: ConvSpec) -> ConvSpec:
        unknown = sorted(set(spec.options) - set(self.options))
        if unknown:
            raise ValueError(
                f"kind={self.name!r} has no option {unknown[0]!r} (its options: {sorted(self.options) or 'none'})"
            )
        spec = replace(spec, options={**self.options, **spec.options})
        if self.validate_fn is not None:
            self.validate_fn(spec)
        return spec

    def stages(self, spec: ConvSpec) -> List[Stage]:
        """The kind's stages for these arguments (options filled with their defaults)."""
        return self.stages_fn(self._with_defaults(spec))

    def param_shapes(self, spec: ConvSpec) -> Dict[str, Shape]:
        """Every learnable parameter's shape by ``state_dict`` key, as the built module has it."""
        shapes: Dict[str, Shape] = {}
        for stage in self.stages(spec):
            shapes.update(stage.param_shapes())
        return shapes

    def params(self, spec: ConvSpec) -> int:
        return sum(math.prod(s) for s in self.param_shapes(spec).values())

    def walk(self, spec: ConvSpec, in_hw: Sequence[int]) -> List[StageShape]:
        """Each stage with its input/output shapes and MACs for an input of size ``in_hw``."""
        rows: List[StageShape] = []
        hw = tuple(in_hw)
        channels = spec.in_channels
        for stage in self.stages(spec):
            if stage.from_input:
                hw, channels = tuple(in_hw), spec.in_channels
            out_hw = stage.output_hw(hw)
            rows.append(StageShape(stage, (channels, *hw), (stage.out_channels, *out_hw), stage.macs(hw)))
            hw, channels = out_hw, stage.out_channels
        return rows

    def output_shape(self, spec: ConvSpec, in_hw: Sequence[int]) -> Shape:
        """``(C_out, H_out, W_out)`` of the layer."""
        return (spec.out_channels, *self.walk(spec, in_hw)[-1].output_shape[1:])

    def macs(self, spec: ConvSpec, in_hw: Sequence[int]) -> int:
        return sum(row.macs for row in self.walk(spec, in_hw))

    def build(self, spec: ConvSpec, device=None, dtype=None, padding_mode: str = "zeros") -> nn.Module:
        spec = self._with_defaults(spec)
        return self.build_fn(spec, dict(device=device, dtype=dtype, padding_mode=padding_mode))


# --------------------------------------------------------------------------- stage helpers


def _conv(name: str, cin: int, cout: int, kernel, *, spec: ConvSpec | None = None, **kw: Any) -> Stage:
    """A conv stage; with ``spec`` it inherits the spec's stride, padding and dilation."""
    if spec is not None:
        kw = {"stride": spec.stride, "padding": spec.padding, "dilation": spec.dilation, **kw}
    return Stage(name, "conv", cin, cout, pair(kernel, "kernel_size"), **kw)


def _norm(name: str, channels: int) -> Stage:
    return Stage(name, "norm", channels, channels)


def _has_norm(spec: ConvSpec) -> bool:
    return spec.options.get("norm_layer") is not None


def _axis_only(value: Tuple[int, int], axis: int) -> Tuple[int, int]:
    return (value[0], 1) if axis == 0 else (1, value[1])


def _branch_padding(spec: ConvSpec, collapsed_axis: int) -> PaddingArg:
    """Padding that gives a 1-wide branch the kxk conv's output size (may be negative: a crop)."""
    if spec.padding == "same":
        return spec.padding
    p = [0, 0] if spec.padding == "valid" else list(spec.padding)
    p[collapsed_axis] -= spec.dilation[collapsed_axis] * (spec.kernel_size[collapsed_axis] // 2)
    return tuple(p)  # type: ignore[return-value]


def _require_odd_kernel(spec: ConvSpec) -> None:
    if any(k % 2 == 0 for k in spec.kernel_size):
        raise ValueError(f"kernel_size={spec.kernel_size} must be odd in both dimensions for this kind")


# --------------------------------------------------------------------------- the kinds


def _dense_stages(spec: ConvSpec) -> List[Stage]:
    groups = spec.options.get("groups", 1)
    name = "conv" if spec.options.get("permute") else ""  # PermutedGroupedConv2d wraps its conv
    return [_conv(name, spec.in_channels, spec.out_channels, spec.kernel_size, spec=spec, groups=groups, bias=spec.bias)]


def _check_groups(spec: ConvSpec) -> None:
    g = check_positive_int(spec.options["groups"], "groups")
    check_divisible(spec.in_channels, "in_channels", g, "groups")
    check_divisible(spec.out_channels, "out_channels", g, "groups")


def _depthwise_stages(spec: ConvSpec) -> List[Stage]:
    return [_conv("", spec.in_channels, spec.out_channels, spec.kernel_size, spec=spec,
                  groups=spec.in_channels, bias=spec.bias)]


def _check_depthwise(spec: ConvSpec) -> None:
    if spec.out_channels % spec.in_channels:
        raise ValueError(
            f"out_channels={spec.out_channels} must be a multiple of in_channels={spec.in_channels} "
            "for a depthwise conv (depth multiplier = out/in)"
        )


def _check_pointwise(spec: ConvSpec) -> None:
    if spec.kernel_size != (1, 1):
        raise ValueError(f"kernel_size={spec.kernel_size} must be 1 for a pointwise conv")
    if spec.padding not in ((0, 0), "same", "valid"):
        raise ValueError(f"padding={spec.padding!r} must be 0, 'same' or 'valid' for a pointwise conv")
    _check_groups(spec)


def _pointwise_stages(spec: ConvSpec) -> List[Stage]:
    return [_conv("", spec.in_channels, spec.out_channels, 1, stride=spec.stride,
                  groups=spec.options["groups"], bias=spec.bias)]


def _dsconv_stages(spec: ConvSpec) -> List[Stage]:
    m, o = spec.options["depth_multiplier"], spec.out_channels
    if spec.options["order"] == "pointwise_first":
        stages = [_conv("pointwise", spec.in_channels, o * m, 1)]
        if _has_norm(spec):
            stages.append(_norm("norm", o * m))
        stages.append(_conv("depthwise", o * m, o, spec.kernel_size, spec=spec, groups=o, bias=spec.bias))
        return stages
    mid = spec.in_channels * m
    stages = [_conv("depthwise", spec.in_channels, mid, spec.kernel_size, spec=spec, groups=spec.in_channels)]
    if _has_norm(spec):
        stages.append(_norm("norm", mid))
    stages.append(_conv("pointwise", mid, o, 1, bias=spec.bias))
    return stages


def _check_depth_multiplier(spec: ConvSpec) -> None:
    check_positive_int(spec.options["depth_multiplier"], "depth_multiplier")


def _check_dsconv(spec: ConvSpec) -> None:
    _check_depth_multiplier(spec)
    check_choice(spec.options["order"], "order", ("depthwise_first", "pointwise_first"))


def _asymmetric_stages(spec: ConvSpec) -> List[Stage]:
    mid = spec.options["mid_channels"] or spec.out_channels
    axes = (0, 1) if spec.options["order"] == "kx1_first" else (1, 0)
    names = {0: "conv_kx1", 1: "conv_1xk"}
    stages = []
    for position, axis in enumerate(axes):
        cin, cout = (spec.in_channels, mid) if position == 0 else (mid, spec.out_channels)
        kernel = (spec.kernel_size[0], 1) if axis == 0 else (1, spec.kernel_size[1])
        stages.append(_conv(
            names[axis], cin, cout, kernel, stride=_axis_only(spec.stride, axis),
            padding=axis_padding(spec.padding, axis), dilation=_axis_only(spec.dilation, axis),
            bias=spec.bias and position == 1,
        ))
        if position == 0 and _has_norm(spec):
            stages.append(_norm("norm", mid))
    return stages


def _check_asymmetric(spec: ConvSpec) -> None:
    if spec.options["mid_channels"] is not None:
        check_positive_int(spec.options["mid_channels"], "mid_channels")
    check_choice(spec.options["order"], "order", ("kx1_first", "1xk_first"))


def _asym_parallel_stages(spec: ConvSpec) -> List[Stage]:
    o = spec.out_channels
    kh, kw = spec.kernel_size
    return [
        _conv("branches.1xk", spec.in_channels, o - o // 2, (1, kw), spec=spec,
              padding=_branch_padding(spec, 0), bias=spec.bias, from_input=True),
        _conv("branches.kx1", spec.in_channels, o // 2, (kh, 1), spec=spec,
              padding=_branch_padding(spec, 1), bias=spec.bias, from_input=True),
    ]


def _check_asym_parallel(spec: ConvSpec) -> None:
    _require_odd_kernel(spec)
    if spec.out_channels < 2:
        raise ValueError(f"out_channels={spec.out_channels} must be >= 2 (two concatenated branches)")


def _acblock_stages(spec: ConvSpec) -> List[Stage]:
    kh, kw = spec.kernel_size
    g = spec.options["groups"]
    has_norm = _has_norm(spec)
    stages = []
    for branch, kernel, axis in (("kxk", (kh, kw), None), ("1xk", (1, kw), 0), ("kx1", (kh, 1), 1)):
        padding = spec.padding if axis is None else _branch_padding(spec, axis)
        bias = spec.bias and not has_norm and branch == "kxk"
        stages.append(_conv(f"branches.{branch}.conv", spec.in_channels, spec.out_channels, kernel,
                            spec=spec, padding=padding, groups=g, bias=bias, from_input=True))
        if has_norm:
            stages.append(_norm(f"branches.{branch}.norm", spec.out_channels))
    return stages


def _check_acblock(spec: ConvSpec) -> None:
    _require_odd_kernel(spec)
    _check_groups(spec)


def _tucker2_stages(spec: ConvSpec) -> List[Stage]:
    r_in, r_out = spec.options["ranks"] or (spec.in_channels, spec.out_channels)
    if spec.options["core"] == "asymmetric":
        core_spec = replace(spec, in_channels=r_in, out_channels=r_out, bias=False,
                            options={"mid_channels": spec.options["core_mid_channels"], "order": "kx1_first"})
        core = [replace(stage, name=f"core.{stage.name}") for stage in _asymmetric_stages(core_spec)]
    else:
        core = [_conv("core", r_in, r_out, spec.kernel_size, spec=spec)]
    return [
        _conv("reduce", spec.in_channels, r_in, 1),
        *core,
        _conv("expand", r_out, spec.out_channels, 1, bias=spec.bias),
    ]


def _check_tucker2(spec: ConvSpec) -> None:
    check_choice(spec.options["core"], "core", ("dense", "asymmetric"))
    if spec.options["core_mid_channels"] is not None:
        check_positive_int(spec.options["core_mid_channels"], "core_mid_channels")
        if spec.options["core"] != "asymmetric":
            raise ValueError(f"core_mid_channels={spec.options['core_mid_channels']} applies only to core='asymmetric'")
    ranks = spec.options["ranks"]
    if ranks is None:
        return
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise ValueError(f"ranks={ranks!r} must be a pair (r_in, r_out) of ints >= 1")
    for r in ranks:
        check_positive_int(r, "ranks")


def _dsconv_transpose_stages(spec: ConvSpec) -> List[Stage]:
    m = spec.options["depth_multiplier"]
    conv_t = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                  output_padding=spec.output_padding)
    if spec.options["order"] == "pointwise_first":
        o = spec.out_channels
        stages = [_conv("pointwise", spec.in_channels, o, 1)]
        if _has_norm(spec):
            stages.append(_norm("norm", o))
        stages.append(Stage("depthwise", "conv_transpose", o, o, spec.kernel_size, groups=o, bias=spec.bias, **conv_t))
        return stages
    mid = spec.in_channels * m
    stages = [Stage("depthwise", "conv_transpose", spec.in_channels, mid, spec.kernel_size,
                    groups=spec.in_channels, **conv_t)]
    if _has_norm(spec):
        stages.append(_norm("norm", mid))
    stages.append(_conv("pointwise", mid, spec.out_channels, 1, bias=spec.bias))
    return stages


def _check_dsconv_transpose(spec: ConvSpec) -> None:
    _check_depth_multiplier(spec)
    check_choice(spec.options["order"], "order", ("depthwise_first", "pointwise_first"))
    if spec.options["order"] == "pointwise_first" and spec.options["depth_multiplier"] != 1:
        raise ValueError(
            f"depth_multiplier={spec.options['depth_multiplier']} must be 1 with order='pointwise_first'"
        )
    resolve_transposed_padding(spec.padding, spec.output_padding, spec.kernel_size, spec.stride, spec.dilation)


def _resize_conv_stages(spec: ConvSpec) -> List[Stage]:
    scale = check_positive_pair(spec.options["scale_factor"], "scale_factor")
    inner = get_kind(spec.options["conv"])
    inner_spec = replace(spec, options=dict(spec.options["conv_options"] or {}))
    channels = spec.in_channels
    stages = [Stage("upsample", "upsample", channels, channels, scale=scale)]
    for stage in inner.stages(inner_spec):
        prefix = f"conv.{stage.name}" if stage.name else "conv"
        stages.append(replace(stage, name=prefix, from_input=False))
    return stages


def _check_resize_conv(spec: ConvSpec) -> None:
    check_positive_pair(spec.options["scale_factor"], "scale_factor")
    if spec.options["conv"] in ("resize_conv", "dsconv_transpose"):
        raise ValueError(f"conv={spec.options['conv']!r} must be a non-upsampling kind")
    get_kind(spec.options["conv"])
    check_choice(spec.options["mode"], "mode", ("nearest", "bilinear", "bicubic"))


# ----------------------------------------------------------------------------- builders


def _layers():
    # Imported lazily: the layer modules import this registry to build inner convs.
    import leanconv.layers as layers

    return layers


def _conv_args(spec: ConvSpec) -> Tuple[Any, ...]:
    return (spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding, spec.dilation)


_NORM_ACT = {"norm_layer": None, "act_layer": None}

KINDS: Dict[str, ConvKind] = {}


def register(kind: ConvKind) -> ConvKind:
    """Add a kind to the registry (names are unique)."""
    if kind.name in KINDS:
        raise ValueError(f"kind name={kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


register(ConvKind(
    "dense", "standard convolution: every output channel sees every input channel",
    "leanconv.layers.Conv2d", {},
    lambda s, kw: _layers().Conv2d(*_conv_args(s), 1, s.bias, **kw),
    _dense_stages,
    "O*C*kh*kw (+O bias)", "O*C*kh*kw*H'*W'",
))
register(ConvKind(
    "grouped", "grouped convolution: channels split into g groups convolved separately",
    "leanconv.layers.Conv2d", {"groups": 2, "permute": False},
    lambda s, kw: (_layers().PermutedGroupedConv2d if s.options["permute"] else _layers().Conv2d)(
        *_conv_args(s), s.options["groups"], s.bias, **kw),
    _dense_stages,
    "O*(C/g)*kh*kw (+O)", "O*(C/g)*kh*kw*H'*W' (permute=True: channel reorderings, no MACs)",
    _check_groups,
))
register(ConvKind(
    "depthwise", "one kxk filter per input channel (groups=C); m = O/C filters each",
    "leanconv.layers.DepthwiseConv2d", {},
    lambda s, kw: _layers().DepthwiseConv2d(*_conv_args(s), s.bias, **kw),
    _depthwise_stages,
    "C*m*kh*kw (+C*m)", "C*m*kh*kw*H'*W'",
    _check_depthwise,
))
register(ConvKind(
    "pointwise", "1x1 convolution: mixes channels, changes the channel count, no spatial extent",
    "leanconv.layers.PointwiseConv2d", {"groups": 1},
    lambda s, kw: _layers().PointwiseConv2d(
        s.in_channels, s.out_channels, s.stride, s.options["groups"], s.bias,
        device=kw["device"], dtype=kw["dtype"]),
    _pointwise_stages,
    "O*C/g (+O)", "O*(C/g)*H'*W'",
    _check_pointwise,
))
register(ConvKind(
    "dsconv", "depthwise separable: depthwise kxk (C -> C*m) then pointwise 1x1 (C*m -> O)",
    "leanconv.layers.DepthwiseSeparableConv2d", {"depth_multiplier": 1, "order": "depthwise_first", **_NORM_ACT},
    lambda s, kw: _layers().DepthwiseSeparableConv2d(*_conv_args(s), s.bias, **kw, **s.options),
    _dsconv_stages,
    "C*m*kh*kw + C*m*O (+O); pointwise_first: C*O*m + O*m*kh*kw",
    "(C*m*kh*kw + C*m*O)*H'*W'; pointwise_first: C*O*m*H*W + O*m*kh*kw*H'*W'",
    _check_dsconv,
))
register(ConvKind(
    "asymmetric", "spatially separable: kx1 conv (C -> K) then 1xk conv (K -> O), or the reverse",
    "leanconv.layers.AsymmetricConv2d", {"mid_channels": None, "order": "kx1_first", **_NORM_ACT},
    lambda s, kw: _layers().AsymmetricConv2d(*_conv_args(s), s.bias, **kw, **s.options),
    _asymmetric_stages,
    "C*K*kh + K*O*kw (+O), K = mid_channels (default O)", "C*K*kh*H'*W1 + K*O*kw*H'*W' (W1: width after kx1)",
    _check_asymmetric,
))
register(ConvKind(
    "asym_parallel", "1xk and kx1 in parallel, concatenated (Inception-v3): ceil(O/2) + floor(O/2) channels",
    "leanconv.layers.ParallelAsymmetricConv2d", {},
    lambda s, kw: _layers().ParallelAsymmetricConv2d(*_conv_args(s), s.bias, **kw),
    _asym_parallel_stages,
    "C*(ceil(O/2)*kw + floor(O/2)*kh) (+O)", "C*(ceil(O/2)*kw + floor(O/2)*kh)*H'*W'",
    _check_asym_parallel,
))
register(ConvKind(
    "acblock", "ACNet block: kxk + 1xk + kx1 branches with BN each, summed; fuses to one kxk conv",
    "leanconv.layers.ACBlock", {"groups": 1, "norm_layer": nn.BatchNorm2d},
    lambda s, kw: _layers().ACBlock(*_conv_args(s), s.options["groups"], s.bias, **kw,
                                    norm_layer=s.options["norm_layer"]),
    _acblock_stages,
    "O*(C/g)*(kh*kw + kh + kw) + 6*O (BN)", "O*(C/g)*(kh*kw + kh + kw)*H'*W' (training form; kh*kw after fuse)",
    _check_acblock,
))
register(ConvKind(
    "tucker2", "Tucker-2 bottleneck: 1x1 reduce (C -> r1), kxk core (r1 -> r2), 1x1 expand (r2 -> O)",
    "leanconv.layers.Tucker2Conv2d", {"ranks": None, "core": "dense", "core_mid_channels": None},
    lambda s, kw: _layers().Tucker2Conv2d(*_conv_args(s), s.bias, **kw, **s.options),
    _tucker2_stages,
    "C*r1 + r1*r2*kh*kw + r2*O (+O); core='asymmetric': r1*K*kh + K*r2*kw for the core",
    "C*r1*H*W + (r1*r2*kh*kw + r2*O)*H'*W' (asymmetric core: as the asymmetric kind)",
    _check_tucker2,
))
register(ConvKind(
    "dsconv_transpose", "separable upsampling: depthwise transposed kxk (C -> C*m) then pointwise 1x1",
    "leanconv.layers.DepthwiseSeparableConvTranspose2d",
    {"depth_multiplier": 1, "order": "depthwise_first", **_NORM_ACT},
    lambda s, kw: _layers().DepthwiseSeparableConvTranspose2d(
        s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding, s.output_padding, s.bias,
        s.dilation, **kw, **s.options),
    _dsconv_transpose_stages,
    "C*m*kh*kw + C*m*O (+O)", "C*m*kh*kw*H*W + C*m*O*H'*W' (transposed: per input position)",
    _check_dsconv_transpose,
))
register(ConvKind(
    "resize_conv", "upsample (nearest/bilinear) then a conv of any kind: no checkerboard artifacts",
    "leanconv.layers.ResizeConv2d",
    {"scale_factor": 2, "mode": "nearest", "align_corners": None, "conv": "dense", "conv_options": None},
    lambda s, kw: _layers().ResizeConv2d(*_conv_args(s), s.bias, **kw, **s.options),
    _resize_conv_stages,
    "those of the inner kind", "the inner kind's MACs at the upsampled size (s*H, s*W)",
    _check_resize_conv,
))


def get_kind(name: str) -> ConvKind:
    """The registered kind called ``name`` (ValueError listing the kinds otherwise)."""
    if name not in KINDS:
        raise ValueError(f"kind={name!r} is not a conv kind; choose one of {sorted(KINDS)}")
    return KINDS[name]


def convertible_kinds() -> list:
    """Names of the kinds a trained dense conv can be converted to (``convert(to=...)``)."""
    return ["asymmetric", "dsconv", "grouped", "tucker2"]


def create_conv2d(
    kind: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Tuple[int, int],
    stride: int | Tuple[int, int] = 1,
    padding: PaddingArg = 0,
    dilation: int | Tuple[int, int] = 1,
    bias: bool = True,
    padding_mode: str = "zeros",
    device=None,
    dtype=None,
    output_padding: int | Tuple[int, int] = 0,
    **options: Any,
) -> nn.Module:
    """Build a conv of any registered kind with ``nn.Conv2d``'s arguments plus the kind's options.

    >>> create_conv2d("dsconv", 32, 64, 3, padding="same", depth_multiplier=2)  # doctest: +SKIP
    """
    spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                           output_padding, **options)
    kind = get_kind(kind)
    if any(spec.output_padding) and kind.name != "dsconv_transpose":
        raise ValueError(f"output_padding={output_padding!r} applies only to transposed kinds, not {kind.name!r}")
    return kind.build(spec, device=device, dtype=dtype, padding_mode=padding_mode)


__all__ = ["ConvKind", "ConvSpec", "KINDS", "Stage", "StageShape", "convertible_kinds", "create_conv2d", "get_kind", "register"]

"""The conv kinds leanconv knows, each described once: one :func:`register` call per kind.

Each entry says how to build the kind's module, its stages (from which its parameter shapes,
output shape and MACs follow for any input), its argument rules (from :mod:`leanconv.rules`,
the same functions the layers call), what ``explain`` and ``compare`` say about it, and, for
the kinds a trained conv converts to, its :class:`~leanconv.registry.Conversion`: rank option,
stage orders, full rank and the factorization in :mod:`leanconv.conversion.factorize`.
Layers, analysis, conversion, selection and the CLI all read these entries. The machinery
(:class:`ConvKind`, :class:`ConvSpec`, :func:`create_conv2d`, ...) is in
:mod:`leanconv.registry` and re-exported here: import it from this module, which guarantees
the built-in kinds are registered.

To add a kind: one :func:`register` call (here, or in your own code), one layer class, and,
if trained convs should convert to it, one factorization function. ``docs/architecture.md``
has the checklist.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from torch import nn

from leanconv import rules
from leanconv._validate import pair
from leanconv.conversion import factorize
from leanconv.padding import PaddingArg, axis_padding, resolve_transposed_padding
from leanconv.registry import (
    KINDS,
    Conversion,
    ConvKind,
    ConvSpec,
    Options,
    Rank,
    Stage,
    StageShape,
    convertible_kinds,
    create_conv2d,
    get_kind,
    kind_of_conv,
    load_layer,
    register,
    unregister,
)

LAYERS = "leanconv.layers"

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


def _is_kxk(spec: ConvSpec) -> bool:
    return spec.kernel_size[0] > 1 and spec.kernel_size[1] > 1


def _is_odd_kxk(spec: ConvSpec) -> bool:
    return _is_kxk(spec) and spec.kernel_size[0] % 2 == 1 and spec.kernel_size[1] % 2 == 1


def _one_row(label: str, applies: Callable[[ConvSpec], bool]) -> Callable[[ConvSpec], List[Tuple[str, Options]]]:
    """compare rows for a kind that appears once, with its defaults, where ``applies``."""
    return lambda spec: [(label, {})] if applies(spec) else []


def _check_groups(spec: ConvSpec) -> None:
    rules.check_groups(spec.in_channels, spec.out_channels, spec.options["groups"])


Rungs = Callable[[ConvSpec, Mapping[str, Any]], Iterable[Tuple[Rank, Options]]]


def _search(kind: str, rungs: Rungs) -> Callable[[ConvSpec, Mapping[str, Any]], List[Options]]:
    """A :attr:`Conversion.search` from ``rungs(spec, defaults)``, the ``(rank, variant)`` pairs to
    try: each becomes the options ``conversion_options`` gives for it (so they are valid), in
    order, duplicates dropped (small convs round several fractions to one rank)."""

    def search(spec: ConvSpec, defaults: Mapping[str, Any]) -> List[Options]:
        entry = get_kind(kind)
        found: List[Options] = []
        for rank, variant in rungs(spec, defaults):
            options = entry.conversion_options(spec, rank, variant)
            if options not in found:
                found.append(options)
        return found

    return search


_SEARCH_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)
"""The channel fractions a per-layer search tries for a kind ranked by channels (Tucker-2, asymmetric)."""


def _share(channels: int, fraction: float) -> int:
    return max(1, round(channels * fraction))


# --------------------------------------------------------------------------- dense and grouped


def _dense_stages(spec: ConvSpec) -> List[Stage]:
    groups = spec.options.get("groups", 1)
    name = "conv" if spec.options.get("permute") else ""  # PermutedGroupedConv2d wraps its conv
    return [_conv(name, spec.in_channels, spec.out_channels, spec.kernel_size, spec=spec, groups=groups, bias=spec.bias)]


def _build_grouped(layer: type, spec: ConvSpec, kw: Dict[str, Any]) -> nn.Module:
    """``Conv2d`` with groups, or ``PermutedGroupedConv2d`` (loaded like every layer: at build time)."""
    if spec.options["permute"]:
        layer = load_layer(f"{LAYERS}:PermutedGroupedConv2d", "grouped")
    return layer(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding, spec.dilation,
                 spec.options["groups"], spec.bias, **kw)


def _check_grouped(spec: ConvSpec) -> None:
    _check_groups(spec)
    if not isinstance(spec.options["permute"], bool):
        raise ValueError(f"permute={spec.options['permute']!r} must be True or False")


def _grouped_rows(spec: ConvSpec) -> List[Tuple[str, Options]]:
    c, o = spec.in_channels, spec.out_channels
    pointwise = spec.kernel_size == (1, 1)
    return [(f"grouped (g={g})", {"groups": g}) for g in (2, 4)
            if c % g == 0 and o % g == 0 and (pointwise or g < c)]


def _grouped_options(spec: ConvSpec, rank, variant: Mapping[str, Any]) -> Options:
    return {"groups": int(rank), **({"permute": True} if variant.get("permute") else {})}


def _grouped_rungs(spec: ConvSpec, defaults: Mapping[str, Any]) -> Iterable[Tuple[Rank, Options]]:
    """Groups 2, 4, 8 where they divide both channel counts, each plain and permuted."""
    return [(g, {"permute": permute}) for g in (2, 4, 8)
            if spec.in_channels % g == 0 and spec.out_channels % g == 0 for permute in (False, True)]


register(ConvKind(
    name="dense", summary="standard convolution: every output channel sees every input channel",
    layer=f"{LAYERS}:Conv2d", stages_fn=_dense_stages,
    params_formula="O*C*kh*kw (+O bias)", macs_formula="O*C*kh*kw*H'*W'",
    compare_rows=_one_row("dense", lambda spec: True),
    explanation={
        "en": "standard convolution: every output channel is a weighted sum over all input channels in a kh x kw window",
        "zh": "普通卷积：每个输出通道是 kh x kw 窗口内所有输入通道的加权和",
    },
))
register(ConvKind(
    name="grouped", summary="grouped convolution: channels split into g groups convolved separately",
    layer=f"{LAYERS}:Conv2d", options={"groups": 2, "permute": False}, build_fn=_build_grouped,
    stages_fn=_dense_stages, validate_fn=_check_grouped,
    params_formula="O*(C/g)*kh*kw (+O)",
    macs_formula="O*(C/g)*kh*kw*H'*W' (permute=True: channel reorderings, no MACs)",
    compare_rows=_grouped_rows,
    explanation={
        "en": "grouped convolution: input channels split into g groups; each group's filters see only their own group",
        "zh": "分组卷积：输入通道分成 g 组，每组的卷积核只看本组的通道",
    },
    conversion=Conversion(
        factorize=lambda w, o: factorize.grouped(w, o["groups"], permute=o["permute"]),
        rank_option="groups", variants={"permute": (False, True)}, options_at=_grouped_options,
        default_rank=2, ladder=False, search=_search("grouped", _grouped_rungs),
    ),
))

# --------------------------------------------------------------------------- depthwise and pointwise


def _depthwise_stages(spec: ConvSpec) -> List[Stage]:
    return [_conv("", spec.in_channels, spec.out_channels, spec.kernel_size, spec=spec,
                  groups=spec.in_channels, bias=spec.bias)]


def _check_pointwise(spec: ConvSpec) -> None:
    if spec.kernel_size != (1, 1):
        raise ValueError(f"kernel_size={spec.kernel_size} must be 1 for a pointwise conv")
    if spec.padding not in ((0, 0), "same", "valid"):
        raise ValueError(f"padding={spec.padding!r} must be 0, 'same' or 'valid' for a pointwise conv")
    _check_groups(spec)


def _pointwise_stages(spec: ConvSpec) -> List[Stage]:
    return [_conv("", spec.in_channels, spec.out_channels, 1, stride=spec.stride,
                  groups=spec.options["groups"], bias=spec.bias)]


register(ConvKind(
    name="depthwise", summary="one kxk filter per input channel (groups=C); m = O/C filters each",
    layer=f"{LAYERS}:DepthwiseConv2d", stages_fn=_depthwise_stages,
    validate_fn=lambda spec: rules.check_depthwise_channels(spec.in_channels, spec.out_channels) and None,
    params_formula="C*m*kh*kw (+C*m)", macs_formula="C*m*kh*kw*H'*W'",
    compare_rows=_one_row("depthwise", lambda spec: spec.kernel_size != (1, 1)
                          and spec.out_channels % spec.in_channels == 0),
    explanation={
        "en": "depthwise convolution (groups = input channels): each input channel is filtered on its own; channels are not mixed",
        "zh": "深度卷积（groups = 输入通道数）：每个输入通道单独滤波，通道之间不混合",
    },
))
register(ConvKind(
    name="pointwise", summary="1x1 convolution: mixes channels, changes the channel count, no spatial extent",
    layer=f"{LAYERS}:PointwiseConv2d", options={"groups": 1}, spatial=False,
    build_fn=lambda layer, s, kw: layer(s.in_channels, s.out_channels, s.stride, s.options["groups"], s.bias,
                                        device=kw["device"], dtype=kw["dtype"]),
    stages_fn=_pointwise_stages, validate_fn=_check_pointwise,
    params_formula="O*C/g (+O)", macs_formula="O*(C/g)*H'*W'",
    explanation={
        "en": "pointwise (1x1) convolution: a per-pixel linear map across channels; it changes the channel count and mixes channels, with no spatial extent",
        "zh": "逐点（1x1）卷积：在每个像素上对通道做线性组合，可升维、降维并融合通道信息，没有空间范围",
    },
))

# --------------------------------------------------------------------------- depthwise separable

_NORM_ACT = {"norm_layer": None, "act_layer": None}


def _dsconv_stages(spec: ConvSpec) -> List[Stage]:
    m, o = spec.options["depth_multiplier"], spec.out_channels
    if spec.options["order"] == "pointwise_first":
        stages = [_conv("pointwise", spec.in_channels, o * m, 1, groups=spec.options.get("groups", 1))]
        if _has_norm(spec):
            stages.append(_norm("norm", o * m))
        stages.append(_conv("depthwise", o * m, o, spec.kernel_size, spec=spec, groups=o, bias=spec.bias))
        return stages
    mid = spec.in_channels * m
    stages = [_conv("depthwise", spec.in_channels, mid, spec.kernel_size, spec=spec, groups=spec.in_channels)]
    if _has_norm(spec):
        stages.append(_norm("norm", mid))
    stages.append(_conv("pointwise", mid, o, 1, groups=spec.options.get("groups", 1), bias=spec.bias))
    return stages


def _check_dsconv(spec: ConvSpec) -> None:
    rules.check_depth_multiplier(spec.options["depth_multiplier"])
    rules.check_separable_order(spec.options["order"])
    _check_groups(spec)


def _dsconv_top_rank(spec: ConvSpec, variant: Mapping[str, Any]) -> int:
    """The depth multiplier that makes the factorization exact: a rank-min(n, kh*kw) SVD of each
    n x (kh*kw) slice (n = O/g per input channel, or C/g per output channel for the dual; g is
    the groups of a grouped conv being converted, 1 for a dense one)."""
    kernel = math.prod(spec.kernel_size)
    n = spec.in_channels if variant.get("order") == "pointwise_first" else spec.out_channels
    return min(n // spec.options.get("groups", 1), kernel)


def _dsconv_rungs(spec: ConvSpec, defaults: Mapping[str, Any]) -> Iterable[Tuple[Rank, Options]]:
    """Depth multipliers 1 and 2 in both stage orders (a multiplier above the exact one is dropped:
    it costs more for the same, exact, result)."""
    return [(m, {"order": order}) for m in (1, 2) for order in rules.SEPARABLE_ORDERS
            if m == 1 or m <= _dsconv_top_rank(spec, {**defaults, "order": order})]


register(ConvKind(
    name="dsconv", summary="depthwise separable: depthwise kxk (C -> C*m) then pointwise 1x1 (C*m -> O)",
    layer=f"{LAYERS}:DepthwiseSeparableConv2d",
    options={"depth_multiplier": 1, "order": "depthwise_first", "groups": 1, **_NORM_ACT},
    stages_fn=_dsconv_stages, validate_fn=_check_dsconv,
    params_formula="C*m*kh*kw + C*m*O/g (+O); pointwise_first: C*O*m/g + O*m*kh*kw (g: groups kept from a grouped conv)",
    macs_formula="(C*m*kh*kw + C*m*O/g)*H'*W'; pointwise_first: C*O*m*H*W/g + O*m*kh*kw*H'*W'",
    compare_rows=_one_row("depthwise separable", lambda spec: spec.kernel_size != (1, 1)),
    conversion=Conversion(
        factorize=lambda w, o: factorize.dsconv(w, o["depth_multiplier"], o["groups"], order=o["order"]),
        rank_option="depth_multiplier", top_rank=_dsconv_top_rank, variants={"order": rules.SEPARABLE_ORDERS},
        keeps_groups=True, search=_search("dsconv", _dsconv_rungs),
    ),
))

# --------------------------------------------------------------------------- asymmetric (spatially separable)


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
    rules.check_optional_channels(spec.options["mid_channels"], "mid_channels")
    rules.check_asymmetric_order(spec.options["order"])


def _asymmetric_top_rank(spec: ConvSpec, variant: Mapping[str, Any]) -> int:
    """Mid channels that make the (C*kh) x (O*kw) reshaped kernel's SVD exact (or its transpose's)."""
    (kh, kw), c, o = spec.kernel_size, spec.in_channels, spec.out_channels
    return min(c * kw, o * kh) if variant.get("order") == "1xk_first" else min(c * kh, o * kw)


def _asymmetric_applies(spec: ConvSpec) -> Optional[str]:
    """A kx1 or 1xk kernel is already one-dimensional: its 'pair' would put a 1x1 bottleneck in
    front of the same kernel (that cost a text recognizer its accuracy)."""
    if _is_kxk(spec):
        return None
    kh, kw = spec.kernel_size
    return f"the {kh}x{kw} kernel is already one-dimensional (asymmetric applies where both sides are > 1)"


def _asymmetric_rungs(spec: ConvSpec, defaults: Mapping[str, Any]) -> Iterable[Tuple[Rank, Options]]:
    """Mid channels at 1/8, 1/4 and 1/2 of the smaller channel count, in both stage orders."""
    smaller = min(spec.in_channels, spec.out_channels)
    return [(_share(smaller, f), {"order": order}) for f in _SEARCH_FRACTIONS for order in rules.ASYMMETRIC_ORDERS]


register(ConvKind(
    name="asymmetric", summary="spatially separable: kx1 conv (C -> K) then 1xk conv (K -> O), or the reverse",
    layer=f"{LAYERS}:AsymmetricConv2d", options={"mid_channels": None, "order": "kx1_first", **_NORM_ACT},
    stages_fn=_asymmetric_stages, validate_fn=_check_asymmetric,
    params_formula="C*K*kh + K*O*kw (+O), K = mid_channels (default O)",
    macs_formula="C*K*kh*H'*W1 + K*O*kw*H'*W' (W1: width after kx1)",
    compare_rows=lambda spec: [(f"{spec.kernel_size[0]}x1 then 1x{spec.kernel_size[1]}", {})] if _is_kxk(spec) else [],
    conversion=Conversion(
        factorize=lambda w, o: factorize.asymmetric(w, o["mid_channels"], o["order"]),
        rank_option="mid_channels", top_rank=_asymmetric_top_rank, variants={"order": rules.ASYMMETRIC_ORDERS},
        applies=_asymmetric_applies, search=_search("asymmetric", _asymmetric_rungs),
    ),
))


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
    rules.check_odd_kernel(spec.kernel_size)
    rules.check_branch_split(spec.out_channels)


register(ConvKind(
    name="asym_parallel",
    summary="1xk and kx1 in parallel, concatenated (Inception-v3): ceil(O/2) + floor(O/2) channels",
    layer=f"{LAYERS}:ParallelAsymmetricConv2d", stages_fn=_asym_parallel_stages, validate_fn=_check_asym_parallel,
    params_formula="C*(ceil(O/2)*kw + floor(O/2)*kh) (+O)", macs_formula="C*(ceil(O/2)*kw + floor(O/2)*kh)*H'*W'",
    compare_rows=lambda spec: ([(f"1x{spec.kernel_size[1]}, {spec.kernel_size[0]}x1 in parallel (concat)", {})]
                               if _is_odd_kxk(spec) and spec.out_channels >= 2 else []),
))


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
    rules.check_odd_kernel(spec.kernel_size)
    _check_groups(spec)


register(ConvKind(
    name="acblock", summary="ACNet block: kxk + 1xk + kx1 branches with BN each, summed; fuses to one kxk conv",
    layer=f"{LAYERS}:ACBlock", options={"groups": 1, "norm_layer": nn.BatchNorm2d},
    stages_fn=_acblock_stages, validate_fn=_check_acblock,
    params_formula="O*(C/g)*(kh*kw + kh + kw) + 6*O (BN)",
    macs_formula="O*(C/g)*(kh*kw + kh + kw)*H'*W' (training form; kh*kw after fuse)",
    compare_rows=_one_row("ACBlock (training form)", _is_odd_kxk),
))

# --------------------------------------------------------------------------- Tucker-2


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
    rules.check_tucker2_core(spec.options["core"], spec.options["core_mid_channels"])
    rules.check_ranks(spec.options["ranks"], spec.in_channels, spec.out_channels)


def _tucker2_options(spec: ConvSpec, rank, variant: Mapping[str, Any]) -> Options:
    """``ranks`` (r1, r2) from one int or a pair, clipped to the channels; with an asymmetric
    core (LPRNet's shape) the core keeps r2 mid channels."""
    ranks = (rank, rank) if isinstance(rank, int) else tuple(rank)
    options: Options = {"ranks": (min(ranks[0], spec.in_channels), min(ranks[1], spec.out_channels))}
    if variant.get("core") == "asymmetric":
        options.update(core="asymmetric", core_mid_channels=options["ranks"][1])
    return options


def _tucker2_exact(spec: ConvSpec, variant: Mapping[str, Any]) -> Options:
    (kh, kw), c, o = spec.kernel_size, spec.in_channels, spec.out_channels
    if variant.get("core") == "asymmetric":
        return {"ranks": (c, o), "core": "asymmetric", "core_mid_channels": min(c * kh, o * kw)}
    return {"ranks": (c, o)}


def _tucker2_rungs(spec: ConvSpec, defaults: Mapping[str, Any]) -> Iterable[Tuple[Rank, Options]]:
    """Ranks (C*f, O*f) for f = 1/8, 1/4, 1/2 with the dense core, and f = 1/4 with an asymmetric
    core (LPRNet's shape) where the kernel is kxk (a 1-D kernel has nothing to split)."""
    rungs: List[Tuple[Rank, Options]] = [
        ((_share(spec.in_channels, f), _share(spec.out_channels, f)), {"core": "dense"}) for f in _SEARCH_FRACTIONS]
    if _is_kxk(spec):
        rungs.append(((_share(spec.in_channels, 1 / 4), _share(spec.out_channels, 1 / 4)), {"core": "asymmetric"}))
    return rungs


register(ConvKind(
    name="tucker2",
    summary="Tucker-2 bottleneck: 1x1 reduce (C -> r1), kxk core (r1 -> r2), 1x1 expand (r2 -> O)",
    layer=f"{LAYERS}:Tucker2Conv2d", options={"ranks": None, "core": "dense", "core_mid_channels": None},
    stages_fn=_tucker2_stages, validate_fn=_check_tucker2,
    params_formula="C*r1 + r1*r2*kh*kw + r2*O (+O); core='asymmetric': r1*K*kh + K*r2*kw for the core",
    macs_formula="C*r1*H*W + (r1*r2*kh*kw + r2*O)*H'*W' (asymmetric core: as the asymmetric kind)",
    compare_rows=lambda spec: ([("Tucker-2 (C/4, O/4)", {"ranks": (max(1, spec.in_channels // 4),
                                                                  max(1, spec.out_channels // 4))})]
                               if spec.kernel_size != (1, 1) else []),
    conversion=Conversion(
        factorize=lambda w, o: factorize.tucker2(w, o["ranks"], core_mid_channels=o["core_mid_channels"]),
        rank_option="ranks", top_rank=lambda spec, variant: min(spec.in_channels, spec.out_channels),
        variants={"core": rules.TUCKER2_CORES}, options_at=_tucker2_options, exact=_tucker2_exact, pair_rank=True,
        search=_search("tucker2", _tucker2_rungs),
    ),
))

# --------------------------------------------------------------------------- upsampling kinds


def _transposed_stages(spec: ConvSpec) -> List[Stage]:
    return [Stage("", "conv_transpose", spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride,
                  spec.padding, spec.dilation, 1, spec.bias, spec.output_padding)]


def _check_transposed_padding(spec: ConvSpec) -> None:
    resolve_transposed_padding(spec.padding, spec.output_padding, spec.kernel_size, spec.stride, spec.dilation)


register(ConvKind(
    name="transposed", summary="transposed convolution: each input pixel scatters a kxk patch (upsampling by the stride)",
    layer=f"{LAYERS}:ConvTranspose2d", transposed=True,
    build_fn=lambda layer, s, kw: layer(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding,
                                        s.output_padding, 1, s.bias, s.dilation, **kw),
    stages_fn=_transposed_stages, validate_fn=_check_transposed_padding,
    params_formula="C*O*kh*kw (+O)", macs_formula="C*O*kh*kw*H*W (per input position)",
    compare_rows=_one_row("transposed conv", lambda spec: True),
    explanation={
        "en": "transposed convolution: each input pixel scatters a kh x kw patch into the output (upsampling by the stride)",
        "zh": "转置卷积：每个输入像素向输出散布一个 kh x kw 的块（按步长上采样）",
    },
))


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
    rules.check_transpose_multiplier(spec.options["depth_multiplier"], spec.options["order"])
    _check_transposed_padding(spec)


register(ConvKind(
    name="dsconv_transpose",
    summary="separable upsampling: depthwise transposed kxk (C -> C*m) then pointwise 1x1",
    layer=f"{LAYERS}:DepthwiseSeparableConvTranspose2d", transposed=True,
    options={"depth_multiplier": 1, "order": "depthwise_first", **_NORM_ACT},
    build_fn=lambda layer, s, kw: layer(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding,
                                        s.output_padding, s.bias, s.dilation, **kw, **s.options),
    stages_fn=_dsconv_transpose_stages, validate_fn=_check_dsconv_transpose,
    params_formula="C*m*kh*kw + C*m*O (+O)",
    macs_formula="C*m*kh*kw*H*W + C*m*O*H'*W' (transposed: per input position)",
    compare_rows=lambda spec: [("separable transposed", {}),
                               ("separable transposed, 1x1 first", {"order": "pointwise_first"})],
))


def _resize_conv_stages(spec: ConvSpec) -> List[Stage]:
    scale = rules.check_upsample(spec.options["scale_factor"], spec.options["mode"], spec.options["align_corners"])
    inner = get_kind(spec.options["conv"])
    inner_spec = replace(spec, options=dict(spec.options["conv_options"] or {}))
    channels = spec.in_channels
    stages = [Stage("upsample", "upsample", channels, channels, scale=scale)]
    for stage in inner.stages(inner_spec):
        prefix = f"conv.{stage.name}" if stage.name else "conv"
        stages.append(replace(stage, name=prefix, from_input=False))
    return stages


def _check_resize_conv(spec: ConvSpec) -> None:
    rules.check_upsample(spec.options["scale_factor"], spec.options["mode"], spec.options["align_corners"])
    if get_kind(spec.options["conv"]).upsamples:
        raise ValueError(f"conv={spec.options['conv']!r} must be a non-upsampling kind")


def _resize_rows(spec: ConvSpec) -> List[Tuple[str, Options]]:
    scale = spec.stride[0]
    return [(f"resize + {label} conv", {"scale_factor": scale, "conv": conv})
            for label, conv in (("dense", "dense"), ("separable", "dsconv"))]


register(ConvKind(
    name="resize_conv", summary="upsample (nearest/bilinear) then a conv of any kind: no checkerboard artifacts",
    layer=f"{LAYERS}:ResizeConv2d", scale_option="scale_factor",
    options={"scale_factor": 2, "mode": "nearest", "align_corners": None, "conv": "dense", "conv_options": None},
    stages_fn=_resize_conv_stages, validate_fn=_check_resize_conv,
    params_formula="those of the inner kind", macs_formula="the inner kind's MACs at the upsampled size (s*H, s*W)",
    compare_rows=_resize_rows,
))


__all__ = ["KINDS", "ConvKind", "ConvSpec", "Conversion", "Options", "Rank", "Stage", "StageShape", "convertible_kinds", "create_conv2d", "get_kind", "kind_of_conv", "register", "unregister"]

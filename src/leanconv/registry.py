"""The machinery of the conv-kind registry: what one kind's entry says and how it is looked up.

A :class:`ConvKind` is the one description of a kind. It knows how to build its module, the
module's stages (one per conv, norm or resampling step, named by their ``state_dict`` path)
and from them the parameter shapes, output shape and MACs for any input; the flags analysis
needs (``transposed``, ``spatial``, ``scale_option``, what ``compare`` lists); and, through its
:class:`Conversion`, how a trained dense conv becomes this kind (the rank option, stage orders,
full rank and the pure factorization in :mod:`leanconv.conversion.factorize`).

The built-in kinds are the entries of :mod:`leanconv.kinds`, registered when it is imported:
import the registry's names from there. A kind names its layer class by import path
(``'leanconv.layers:Conv2d'``) or holds the class itself; the class is loaded at build time,
so the layers can build inner convs through this registry without an import circle.

MAC = one multiply-accumulate. A conv stage costs ``O * (C/g) * kh * kw`` per output
position; a transposed conv stage ``C * (O/g) * kh * kw`` per *input* position.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from leanconv._validate import check_positive_int, check_positive_pair, pair
from leanconv.padding import (
    PaddingArg,
    check_padding,
    conv_output_hw,
    conv_transpose_output_size,
    resolve_transposed_padding,
)

if TYPE_CHECKING:  # types only: the entries in leanconv.kinds import the conversion math
    import torch
    from torch import nn

    from leanconv.conversion.factorize import Factorization

Shape = Tuple[int, ...]
Rank = Union[int, Tuple[int, int]]
Options = Dict[str, Any]


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


@dataclass(frozen=True, kw_only=True)
class Conversion:
    """How a trained dense ``kh x kw`` conv becomes this kind (read by :mod:`leanconv.conversion`).

    ``spec`` below is the *dense* conv's :class:`ConvSpec`; a ``variant`` is the options other
    than the rank that a conversion fixes (``{'order': 'pointwise_first'}``, ``{'core':
    'asymmetric'}``), each allowed by ``variants``. A rank is an int (or, where the kind
    allows, a pair) stored in the option ``rank_option``.
    """

    factorize: Callable[["torch.Tensor", Mapping[str, Any]], "Factorization"]
    """The dense weight and the kind's full options -> its optimal weights (pure math)."""
    rank_option: str
    top_rank: Optional[Callable[[ConvSpec, Mapping[str, Any]], int]] = None
    """The largest integer rank for this variant: the top of a rank ladder (needed when ``ladder``)."""
    variants: Mapping[str, Tuple[Any, ...]] = field(default_factory=dict)
    """Options a conversion may set besides the rank, with their allowed values. An ``'order'``
    entry lists the kind's stage orders, the default first."""
    options_at: Optional[Callable[[ConvSpec, Rank, Mapping[str, Any]], Options]] = None
    """The options at a rank (default: ``{rank_option: rank, **variant}``)."""
    exact: Optional[Callable[[ConvSpec, Mapping[str, Any]], Options]] = None
    """The options at which the factorization is exact (default: the options at ``top_rank``)."""
    default_rank: Optional[int] = None
    """The rank used when none is given; None: the exact options."""
    applies: Optional[Callable[[ConvSpec], Optional[str]]] = None
    """None where the kind can stand in for this dense conv, else the reason it cannot (the
    report says it); None here: it applies to every dense kxk conv."""
    pair_rank: bool = False
    """Whether a rank may be a pair ``(r1, r2)`` (Tucker-2) as well as an int."""
    ladder: bool = True
    """Whether ranks can be chosen by energy or a MAC/latency budget (False: give ``rank``)."""
    keeps_groups: bool = False
    """Whether a *grouped* conv (groups > 1, not depthwise) converts too: its ``groups`` become
    the kind's option ``groups`` and each group is factorized on its own (ResNeXt, RegNet)."""
    search: Optional[Callable[[ConvSpec, Mapping[str, Any]], List[Options]]] = None
    """The options a per-layer search tries for this dense conv (a short ladder: each one is
    timed on the target); None: the kind is not searched. Called with the dense conv's spec
    (a grouped conv's ``groups`` in its options) and the kind's variant defaults (may be empty);
    returns options as :meth:`ConvKind.conversion_options` gives them, without the groups."""

    def __post_init__(self) -> None:
        if self.top_rank is None and (self.ladder or (self.default_rank is None and self.exact is None)):
            raise ValueError("a Conversion needs top_rank unless ladder=False and default_rank or exact is given")

    @property
    def orders(self) -> Tuple[str, ...]:
        return tuple(self.variants.get("order", ()))

    def options(self, spec: ConvSpec, rank: Optional[Rank], variant: Optional[Mapping[str, Any]] = None,
                defaults: Optional[Mapping[str, Any]] = None) -> Options:
        """The kind's options at ``rank`` (None: ``default_rank``, or the exact options).

        ``defaults`` are the kind's own defaults for what the variant leaves out (its stage
        order...): the rank functions see them, the returned options hold only what was asked.
        """
        variant = dict(variant or {})
        filled = {**(defaults or {}), **variant}
        if rank is None and self.default_rank is not None:
            rank = self.default_rank
        if rank is None:
            if self.exact is not None:
                return self.exact(spec, filled)
            return self.options(spec, self.top_rank(spec, filled), variant, defaults)  # type: ignore[misc]
        if self.options_at is not None:
            return self.options_at(spec, rank, filled)
        return {self.rank_option: int(rank), **variant}  # type: ignore[arg-type]


CompareRows = Callable[[ConvSpec], List[Tuple[str, Options]]]


@dataclass(frozen=True, kw_only=True)
class ConvKind:
    """One conv kind: the one place that describes it (keyword arguments only)."""

    name: str
    summary: str
    layer: Union[str, type]
    """The module class, or its import path ``'package.module:Class'`` (loaded when building)."""
    stages_fn: Callable[[ConvSpec], List[Stage]]
    params_formula: str
    macs_formula: str
    options: Mapping[str, Any] = field(default_factory=dict)
    """The kind's own options with their defaults."""
    build_fn: Optional[Callable[[type, ConvSpec, Dict[str, Any]], "nn.Module"]] = None
    """``(layer class, spec, {device, dtype, padding_mode}) -> module``; None: the common
    signature ``cls(C, O, k, stride, padding, dilation, bias=..., **kw, **options)``."""
    validate_fn: Optional[Callable[[ConvSpec], None]] = None
    transposed: bool = False
    """A transposed conv kind (takes ``output_padding``; upsamples by its stride)."""
    scale_option: Optional[str] = None
    """The option that sets an upsampling factor (resize-then-conv); such a kind upsamples."""
    spatial: bool = True
    """False for a kind that is 1x1 only (pointwise): it cannot stand in for a kxk conv."""
    compare_rows: Optional[CompareRows] = None
    """``leanconv.compare``'s rows for a layer: ``[(label, options)]`` (empty: not applicable).
    For an upsampling kind the spec's stride is the upsampling factor."""
    explanation: Mapping[str, str] = field(default_factory=dict)
    """What ``leanconv.explain`` says about a single conv of this kind, by language."""
    conversion: Optional[Conversion] = None

    def conversion_options(self, spec: ConvSpec, rank: Optional[Rank],
                           variant: Optional[Mapping[str, Any]] = None) -> Options:
        """The options converting the dense conv ``spec`` to this kind at ``rank`` (None: the
        conversion's default or exact rank); the kind's own defaults (its stage order...) stand in
        for what ``variant`` leaves out, and the result holds only what was asked."""
        return self._conversion().options(spec, rank, variant, self._variant_defaults())

    def search_options(self, spec: ConvSpec) -> List[Options]:
        """The options a per-layer search tries for the dense conv ``spec`` (:attr:`Conversion.search`,
        given this kind's variant defaults); empty when the kind is not searched."""
        conversion = self._conversion()
        return [] if conversion.search is None else conversion.search(spec, self._variant_defaults())

    def top_rank(self, spec: ConvSpec, variant: Optional[Mapping[str, Any]] = None) -> int:
        """The largest integer rank converting ``spec`` to this kind (the top of a rank ladder)."""
        return self._conversion().top_rank(spec, {**self._variant_defaults(), **(variant or {})})  # type: ignore[misc]

    def _conversion(self) -> Conversion:
        if self.conversion is None:
            raise ValueError(f"kind {self.name!r} has no conversion: a trained conv cannot become it")
        return self.conversion

    def _variant_defaults(self) -> Options:
        """The kind's defaults for the options its conversion may set (what a variant leaves out)."""
        return {name: self.options[name] for name in self._conversion().variants if name in self.options}

    @property
    def upsamples(self) -> bool:
        return self.transposed or self.scale_option is not None

    @property
    def layer_name(self) -> str:
        """The layer class as ``package.Class`` (for tables)."""
        if isinstance(self.layer, str):
            module, _, cls = self.layer.partition(":")
            return f"{module}.{cls}"
        return f"{self.layer.__module__}.{self.layer.__qualname__}"

    def layer_class(self) -> type:
        """The layer class (imported on first use when named by path)."""
        if not isinstance(self.layer, str):
            return self.layer
        return load_layer(self.layer, self.name)

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
            if min(out_hw) < 1:
                raise ValueError(f"input size {tuple(in_hw)} is too small for {self.name} stage "
                                 f"{stage.name or stage.op!r}: its output would be {tuple(out_hw)}")
            rows.append(StageShape(stage, (channels, *hw), (stage.out_channels, *out_hw), stage.macs(hw)))
            hw, channels = out_hw, stage.out_channels
        return rows

    def output_shape(self, spec: ConvSpec, in_hw: Sequence[int]) -> Shape:
        """``(C_out, H_out, W_out)`` of the layer."""
        return (spec.out_channels, *self.walk(spec, in_hw)[-1].output_shape[1:])

    def macs(self, spec: ConvSpec, in_hw: Sequence[int]) -> int:
        return sum(row.macs for row in self.walk(spec, in_hw))

    def build(self, spec: ConvSpec, device=None, dtype=None, padding_mode: str = "zeros") -> "nn.Module":
        spec = self._with_defaults(spec)
        kw = dict(device=device, dtype=dtype, padding_mode=padding_mode)
        if self.build_fn is not None:
            return self.build_fn(self.layer_class(), spec, kw)
        return self.layer_class()(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                                  spec.dilation, bias=spec.bias, **kw, **spec.options)


KINDS: Dict[str, ConvKind] = {}


def register(kind: ConvKind) -> ConvKind:
    """Add a kind to the registry (names are unique); returns it."""
    if not isinstance(kind.name, str) or not kind.name.isidentifier():
        raise ValueError(f"kind name={kind.name!r} must be an identifier (letters, digits and '_')")
    if kind.name in KINDS:
        raise ValueError(f"kind name={kind.name!r} is already registered")
    if not isinstance(kind.layer, type) and not _is_layer_path(kind.layer):
        raise ValueError(f"kind {kind.name!r}: layer={kind.layer!r} must be a class or 'package.module:Class'")
    if kind.conversion is not None:
        unknown = sorted(set(kind.conversion.variants) - set(kind.options))
        if kind.conversion.rank_option not in kind.options or unknown:
            raise ValueError(f"kind {kind.name!r}: its conversion sets options {unknown or [kind.conversion.rank_option]} "
                             "that the kind does not have")
    KINDS[kind.name] = kind
    return kind


def load_layer(path: str, kind: str) -> type:
    """The class named ``'package.module:Class'``, imported now (ValueError naming ``kind``)."""
    module, _, cls = path.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"kind {kind!r}: layer={path!r} cannot be loaded ({error})") from None


def _is_layer_path(layer: object) -> bool:
    if not isinstance(layer, str):
        return False
    module, colon, cls = layer.partition(":")
    return bool(colon) and cls.isidentifier() and all(part.isidentifier() for part in module.split("."))


def unregister(name: str) -> ConvKind:
    """Remove a kind (for tests and plugins that register one for a while); returns it."""
    return KINDS.pop(get_kind(name).name)


def get_kind(name: str) -> ConvKind:
    """The registered kind called ``name`` (ValueError listing the kinds otherwise)."""
    if name not in KINDS:
        hint = "" if KINDS else " (none is registered: import leanconv.kinds, which registers the built-in kinds)"
        raise ValueError(f"kind={name!r} is not a conv kind; choose one of {sorted(KINDS)}{hint}")
    return KINDS[name]


def convertible_kinds() -> List[str]:
    """Names of the kinds a trained dense conv can be converted to (``convert(to=...)``)."""
    return sorted(name for name, kind in KINDS.items() if kind.conversion is not None)


def kind_of_conv(weight_shape: Sequence[int], groups: int, transposed: bool) -> str:
    """The kind of one plain conv op, by its weight: 'transposed', 'depthwise' (groups = input
    channels), 'grouped' (other groups > 1), 'pointwise' (1x1) or 'dense' (MobileNet's Table 2)."""
    if transposed:
        return "transposed"
    in_channels = weight_shape[1] * groups
    if groups > 1:
        return "depthwise" if groups == in_channels else "grouped"
    return "pointwise" if tuple(weight_shape[2:]) == (1, 1) else "dense"


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
) -> "nn.Module":
    """Build a conv of any registered kind with ``nn.Conv2d``'s arguments plus the kind's options.

    >>> create_conv2d("dsconv", 32, 64, 3, padding="same", depth_multiplier=2)  # doctest: +SKIP
    """
    spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                           output_padding, **options)
    entry = get_kind(kind)
    if any(spec.output_padding) and not entry.transposed:
        raise ValueError(f"output_padding={output_padding!r} applies only to transposed kinds, not {entry.name!r}")
    return entry.build(spec, device=device, dtype=dtype, padding_mode=padding_mode)


__all__ = ["KINDS", "CompareRows", "Conversion", "ConvKind", "ConvSpec", "Rank", "Stage", "StageShape",
           "convertible_kinds", "create_conv2d", "get_kind", "kind_of_conv", "load_layer", "register", "unregister"]

"""``leanconv.convert``: turn a trained model's dense convs into an efficient kind.

The pipeline reads in four steps: find the convertible convs, *choose* each one's options
(:mod:`~leanconv.conversion.select`), *apply* them (factorize, build, swap:
:mod:`~leanconv.conversion.surgery`) while recording the :class:`~leanconv.conversion.plan.Plan`,
and refit on calibration data (:mod:`~leanconv.conversion.refitting`). The input model is never
modified unless ``inplace=True``; a layer that stays as it is gets the reason in the report.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from leanconv._validate import check_choice
from leanconv.analysis.counting import outside_inference_mode, trace_calls
from leanconv.analysis.profiling import meta_copy
from leanconv.conversion.latency import LatencyCache
from leanconv.conversion.plan import LayerPlan, Plan
from leanconv.conversion.refitting import finite_batches, refit
from leanconv.conversion.select import LayerChoice, RankRequest, Selection, check_variant, choose
from leanconv.conversion.surgery import build_module, conv_spec, factorize_conv, jsonable, min_hw, set_module
from leanconv.kinds import Options, convertible_kinds, get_kind


NO_REFIT = ("no refit: without calib the converted layers were not fitted to any data, and a low-rank "
            "conversion can fall to chance accuracy (the digits CNN at rank 1: 24.8% without a refit, 90.3% "
            "with one on 256 images; docs/convert.md). Pass calib=... (--calib) to refit.")


@dataclass
class LayerReport:
    """What happened to one conv."""

    path: str
    converted: bool
    kind: str
    options: Dict[str, Any]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    relative_weight_error: float
    reason: str = ""
    output_error: Optional[float] = None  # relative, on the calibration data, after the refit
    output_error_before_refit: Optional[float] = None
    latency_before_ms: Optional[float] = None  # measured, under a latency budget
    latency_after_ms: Optional[float] = None


@dataclass
class ConversionResult:
    """The converted model, the plan that rebuilds its architecture, and a per-layer report."""

    model: nn.Module
    plan: Plan
    layers: List[LayerReport] = field(default_factory=list)
    original_latency_ms: Optional[float] = None  # measured whole model, under a latency budget
    predicted_latency_ms: Optional[float] = None  # the rest of the model + the chosen layers' timings

    @property
    def refitted(self) -> bool:
        """Whether the converted layers were refit on calibration data (``calib``)."""
        return any(r.output_error is not None for r in self.layers)

    @property
    def macs_before(self) -> int:
        return sum(r.macs_before for r in self.layers)

    @property
    def macs_after(self) -> int:
        return sum(r.macs_after if r.converted else r.macs_before for r in self.layers)

    def to_markdown(self) -> str:
        lines = ["| layer | converted | kind | options | MACs before | MACs after | rel. weight error | "
                 "rel. output error (calib) | note |",
                 "|---|---|---|---|---:|---:|---:|---:|---|"]
        for r in self.layers:
            output = "-" if r.output_error is None else f"{r.output_error_before_refit:.3f} -> {r.output_error:.3f}"
            lines.append(f"| {r.path} | {'yes' if r.converted else 'no'} | {r.kind} | {json.dumps(r.options)} | "
                         f"{r.macs_before:,} | {r.macs_after:,} | {r.relative_weight_error:.4f} | {output} | {r.reason} |")
        lines.append(f"\nconvertible layers: {self.macs_before:,} MACs before, {self.macs_after:,} after "
                     f"({self.macs_after / max(self.macs_before, 1):.3f}x)")
        if self.plan.layers and not self.refitted:
            lines.append(f"\n{NO_REFIT}")
        if self.original_latency_ms is not None:
            lines += self._latency_lines()
        return "\n".join(lines) + "\n"

    def _latency_lines(self) -> List[str]:
        lines = [f"\nmeasured latency: {self.original_latency_ms:.3f} ms before; predicted from per-layer "
                 f"timings: {self.predicted_latency_ms:.3f} ms after"]
        for r in self.layers:
            if r.latency_before_ms is not None:
                after = "-" if r.latency_after_ms is None else f"{r.latency_after_ms:.3f}"
                lines.append(f"- {r.path}: {r.latency_before_ms:.3f} ms dense -> {after} ms")
        return lines


def convert(
    model: nn.Module,
    to: str = "dsconv",
    rank: Optional[Union[int, Tuple[int, int]]] = None,
    energy: Optional[float] = None,
    mac_budget: Optional[int] = None,
    latency_budget: Optional[float] = None,
    input_size: Optional[Sequence[int]] = None,
    calib: Optional[Iterable[torch.Tensor]] = None,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    inplace: bool = False,
    only_if_cheaper: bool = True,
    order: Optional[str] = None,
    latency_cache: Optional[LatencyCache] = None,
    core: Optional[str] = None,
    permute: bool = False,
) -> ConversionResult:
    """Convert every dense ``kh x kw`` conv (kernel > 1x1, groups 1) of ``model`` to kind ``to``
    (any kind whose registry entry has a conversion: ``leanconv.kinds.convertible_kinds()``).

    Choose the ranks with one of: ``rank`` (the kind's rank option: depth multiplier for
    dsconv, mid channels for asymmetric, ``(r1, r2)`` or one int for tucker2, groups for
    grouped; None = the kind's default, else full rank, exact), ``energy`` (per layer, the
    smallest rank keeping that share of the kernel's energy), ``mac_budget`` (a count: the
    whole model's conv + linear MACs at ``input_size``, met by greedy allocation of discarded
    energy per MAC saved; see :mod:`leanconv.conversion.select`) or ``latency_budget``
    (milliseconds for one ``input_size`` batch on the device the model's parameters are on,
    from per-layer timings cached by ``latency_cache``, a
    :class:`leanconv.conversion.latency.LatencyCache`; a layer whose target form is not faster
    than its dense conv on this device stays dense).
    ``input_size`` (N, C, H, W) gives real MACs per layer; without it they are per output
    pixel. ``calib`` (input batches) refits each converted layer's last stage by least
    squares (:mod:`leanconv.conversion.refitting`) and reports its output error.
    ``include``/``exclude``: glob patterns on module paths. A layer where the target saves no
    MACs stays as it is (``only_if_cheaper=False`` converts it anyway). ``order``: the stage
    order, for asymmetric ``'kx1_first'`` (default) or ``'1xk_first'`` (seed 000's 1x3 then
    3x1), for dsconv ``'depthwise_first'`` (default, MobileNet) or ``'pointwise_first'`` (the
    dual); ``'auto'`` picks, per layer, the order with less discarded energy per MAC saved.
    ``core='asymmetric'`` (tucker2 only): the core becomes ``kh x 1`` then ``1 x kw`` with ``r2``
    mid channels at rank ``r`` (LPRNet's small basic block without its ReLUs).
    ``permute=True`` (grouped only): reorder channels so more of the kernel's energy falls in
    the groups (:class:`leanconv.layers.PermutedGroupedConv2d`).
    """
    check_choice(to, "to", convertible_kinds())
    kind = get_kind(to)
    extra = check_variant(kind, order=order, core=core, permute=permute)
    request = RankRequest(rank, energy, mac_budget, latency_budget)
    request.check(kind, input_size)
    calib = None if calib is None else finite_batches(calib)
    original = copy.deepcopy(model) if inplace and calib is not None else model  # refit needs the original
    sizes = input_sizes(model, input_size)
    model = model if inplace else copy.deepcopy(model)
    eligible = convertible_convs(model, include, exclude)
    for path, conv in eligible:
        _check_weights(path, conv)
    selection = choose(original, eligible, to, extra, request, input_size, sizes, calib, latency_cache)
    result = _apply(model, eligible, to, selection, sizes, only_if_cheaper)
    if calib is not None and result.plan.layers:
        _refit(result, original, calib)
    return result


def convertible_convs(model: nn.Module, include: Optional[Sequence[str]] = None,
                      exclude: Optional[Sequence[str]] = None) -> List[Tuple[str, nn.Conv2d]]:
    """``(path, conv)`` of every dense kxk conv (groups 1, kernel > 1x1) that the patterns keep
    (each a glob on module paths, or a list of them)."""
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")

    def matches(path: str, patterns: Tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in patterns)

    return [(path, conv) for path, conv in model.named_modules()
            if isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.kernel_size != (1, 1)
            and not (include and not matches(path, include)) and not matches(path, exclude)]


def _check_weights(path: str, conv: nn.Conv2d) -> None:
    """Real, finite weights: a factorization of NaN/inf (or of a meta tensor) has no meaning."""
    for name, tensor in (("weight", conv.weight), ("bias", conv.bias)):
        if tensor is None:
            continue
        if tensor.is_meta:
            raise ValueError(f"layer {path!r} is on the meta device: load real weights before converting")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"layer {path!r} has non-finite {name} values (NaN or inf): fix the model first")


def _patterns(value: Union[None, str, Sequence[str]], name: str) -> Tuple[str, ...]:
    """One glob pattern or a list of them (a string is one pattern, never its characters)."""
    if value is None:
        return ()
    patterns = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else None
    if patterns is None or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{name}={value!r} must be a glob pattern on module paths or a list of them")
    return patterns


@outside_inference_mode
def input_sizes(model: nn.Module, input_size: Optional[Sequence[int]]) -> Dict[str, Tuple[int, int]]:
    """Spatial input size of every conv, from one meta-device pass (for MAC figures)."""
    if input_size is None:
        return {}
    calls, _ = trace_calls(meta_copy(model).eval(), [torch.empty(tuple(input_size), device="meta")])
    return {c.path: tuple(c.input_shape[2:]) for c in calls if c.input_shape is not None and c.is_conv}


def _apply(model: nn.Module, eligible: List[Tuple[str, nn.Conv2d]], to: str, selection: Selection,
           sizes: Dict[str, Tuple[int, int]], only_if_cheaper: bool) -> ConversionResult:
    """Factorize and swap in every chosen layer; the plan and the report of every eligible one."""
    layers: Dict[str, LayerPlan] = {}
    reports = []
    for path, conv in eligible:
        report = _convert_layer(model, path, conv, to, selection.layers[path], sizes.get(path, min_hw(conv)),
                                only_if_cheaper)
        if report.converted:
            layers[path] = LayerPlan(to, dict(selection.layers[path].options))  # type: ignore[arg-type]
        reports.append(report)
    result = ConversionResult(model, Plan(to, layers), reports)
    if selection.model_ms is not None:
        result.original_latency_ms = selection.model_ms
        result.predicted_latency_ms = selection.fixed_ms + sum(r.latency_after_ms or 0.0 for r in reports)
    return result


def _convert_layer(model: nn.Module, path: str, conv: nn.Conv2d, to: str, choice: LayerChoice,
                   hw: Tuple[int, int], only_if_cheaper: bool) -> LayerReport:
    """Swap one conv for its chosen form (or say why it stays)."""
    macs = get_kind("dense").macs(conv_spec(conv), hw)
    params = sum(p.numel() for p in conv.parameters())
    options: Options = choice.options or {}

    def kept(reason: str, macs_after: int = macs, params_after: int = params) -> LayerReport:
        return LayerReport(path, False, to, jsonable(options), macs, macs_after, params, params_after, 0.0, reason,
                           latency_before_ms=choice.latency_before_ms, latency_after_ms=choice.latency_after_ms)

    if choice.options is None:
        return kept(choice.reason)
    try:
        spec = conv_spec(conv, **options)
        macs_after, params_after = get_kind(to).macs(spec, hw), get_kind(to).params(spec)
    except ValueError as error:
        return kept(f"not applicable: {error}")
    if only_if_cheaper and macs_after >= macs:
        return kept(f"{to} would cost {macs_after / macs:.2f}x the MACs: kept dense", macs_after, params_after)
    factors = factorize_conv(conv, to, options)
    replacement = build_module(conv, to, options, factors)
    replacement.train(conv.training)
    set_module(model, path, replacement)
    return LayerReport(path, True, to, jsonable(options), macs, macs_after, params, params_after,
                       factors.relative_error, latency_before_ms=choice.latency_before_ms,
                       latency_after_ms=choice.latency_after_ms)


def _refit(result: ConversionResult, original: nn.Module, calib: List[torch.Tensor]) -> None:
    """Refit the converted layers on ``calib`` and put their output errors in the report."""
    errors = {r.path: r for r in refit(result.model, original, result.plan, calib)}
    for report in result.layers:
        if report.path in errors:
            report.output_error_before_refit = errors[report.path].error_before
            report.output_error = errors[report.path].error_after


__all__ = ["ConversionResult", "LayerReport", "convert", "convertible_convs", "input_sizes"]

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

from leanconv._validate import check_choice, torch_device
from leanconv.analysis.counting import (Trace, layer_macs, model_device, model_dtype, normalize_sizes,
                                        outside_inference_mode, trace_model, traced_shapes)
from leanconv.conversion.factorize import reuse_decompositions
from leanconv.conversion.latency import LatencyCache
from leanconv.conversion.plan import LayerPlan, Plan
from leanconv.conversion.refitting import refit
from leanconv.data.batches import input_batches
from leanconv.conversion.select import LayerChoice, RankRequest, Selection, check_variant, choose
from leanconv.conversion.surgery import (build_module, conv_spec, factorize_conv, jsonable, kept_groups,
                                         set_module,                                          source_macs)
from leanconv.kinds import Options, convertible_kinds, get_kind


NO_REFIT = ("no refit: without calib the converted layers were not fitted to any data, and a low-rank "
            "conversion can fall close to chance accuracy (the digits demo at rank 1 does; with a refit on 256 "
            "images most of its accuracy comes back: benchmarks/results/deploy.md). Pass calib=... (--calib) to refit.")


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
    output_error: Optional[float] = None  # relative, on the calibration data fitted, with the weights kept
    output_error_before_refit: Optional[float] = None
    held_out_error_before_refit: Optional[float] = None  # on the held-out calibration images
    held_out_error_after_refit: Optional[float] = None
    refit_kept: Optional[bool] = None  # False: the refit raised the held-out error and was undone
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
    kept: Dict[str, str] = field(default_factory=dict)  # path -> why a conv that is not a target stays
    convertible_share: Optional[float] = None  # of the whole model's MACs at input_size, in eligible convs

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
        lines = []
        if self.convertible_share is not None:
            lines.append(f"convertible layers hold {self.convertible_share:.1%} of the model's MACs at input_size: "
                         f"no conversion of them can remove more\n")
        lines += ["| layer | converted | kind | options | MACs before | MACs after | rel. weight error | "
                 "rel. output error (calib) | note |",
                 "|---|---|---|---|---:|---:|---:|---:|---|"]
        for r in self.layers:
            output = _errors(r)
            lines.append(f"| {r.path} | {'yes' if r.converted else 'no'} | {r.kind} | {json.dumps(r.options)} | "
                         f"{r.macs_before:,} | {r.macs_after:,} | {r.relative_weight_error:.4f} | {output} | {r.reason} |")
        unit = "" if self.convertible_share is not None else " per output pixel (no input_size)"
        lines.append(f"\nconvertible layers: {self.macs_before:,} MACs{unit} before, {self.macs_after:,} after "
                     f"({self.macs_after / max(self.macs_before, 1):.3f}x)")
        if self.kept:
            lines.append("\nleft as they are: " + "; ".join(f"{path}: {why}" for path, why in self.kept.items()))
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
    keep_stem: bool = True,
    device: Optional[Union[str, torch.device]] = None,
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
    ``keep_stem`` (default, MobileNet's convention, as in ``optimize``): the first conv on the
    image stays dense. ``device``: where the model runs (refit, timings, shape pass) and where the
    result lives; default: the device of the model's parameters. Every conv that stays as it
    is (depthwise already, 1x1, transposed, the stem, excluded ...) is listed with its reason in
    ``result.kept``. ``calib`` takes every form of :mod:`leanconv.data.batches` (a tensor,
    batches, a ``DataLoader`` of ``(x, y)`` ...).
    """
    _check_model(model)
    _check_flags(inplace=inplace, only_if_cheaper=only_if_cheaper, keep_stem=keep_stem, permute=permute)
    check_choice(to, "to", convertible_kinds())
    kind = get_kind(to)
    extra = check_variant(kind, order=order, core=core, permute=permute)
    request = RankRequest(rank, energy, mac_budget, latency_budget)
    request.check(kind, input_size)
    model = _on_device(model, device, inplace)
    calib = None if calib is None else _calibration(model, calib)
    original = copy.deepcopy(model) if inplace and calib is not None else model  # refit needs the original
    trace = _trace(model, input_size)
    sizes = trace.conv_input_hw() if trace is not None else {}
    model = model if inplace else copy.deepcopy(model)
    image_channels = input_size[1] if input_size is not None else calib[0].shape[1] if calib else None
    eligible, kept = survey(model, to, include, exclude, keep_stem, image_channels)
    for path, conv in eligible:
        _check_weights(path, conv)
    with reuse_decompositions():  # choosing and applying read one decomposition per kernel
        selection = choose(original, eligible, to, extra, request, input_size, sizes, calib, latency_cache)
        result = _apply(model, eligible, to, selection, sizes, only_if_cheaper)
    result.kept = kept
    result.convertible_share = trace.mac_share([p for p, _ in eligible]) if trace is not None else None
    if calib is not None and result.plan.layers:
        _refit(result, original, calib)
    return result


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}; convert takes a torch.nn.Module")
    if not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        raise ValueError(f"model ({type(model).__name__}) has no conv layers: nothing to convert")


def _check_flags(**flags: Any) -> None:
    """Each flag a bool: ``inplace='no'`` would otherwise be true and change the user's model."""
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ValueError(f"{name}={flag!r} must be True or False")


def _on_device(model: nn.Module, device: Optional[Union[str, torch.device]], inplace: bool) -> nn.Module:
    """``model`` on ``device`` (a copy unless ``inplace``; the model itself when already there)."""
    if device is None:
        return model
    device = torch_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available on this machine")
    if all(t.device == device for t in [*model.parameters(), *model.buffers()]):
        return model
    return model.to(device) if inplace else copy.deepcopy(model).to(device)


def _calibration(model: nn.Module, calib: Any) -> List[torch.Tensor]:
    """The checked calibration batches, on the model's device and in its dtype."""
    return [b.to(device=model_device(model), dtype=model_dtype(model)) for b in input_batches(calib, "calib")]


def convertible_convs(model: nn.Module, include: Optional[Sequence[str]] = None,
                      exclude: Optional[Sequence[str]] = None, to: str = "dsconv",
                      keep_stem: bool = False, in_channels: Optional[int] = None) -> List[Tuple[str, nn.Conv2d]]:
    """``(path, conv)`` of every conv that ``to`` can convert and the patterns keep (see :func:`survey`)."""
    return survey(model, to, include, exclude, keep_stem, in_channels)[0]


def survey(model: nn.Module, to: str = "dsconv", include: Optional[Sequence[str]] = None,
           exclude: Optional[Sequence[str]] = None, keep_stem: bool = True, in_channels: Optional[int] = None,
           ) -> Tuple[List[Tuple[str, nn.Conv2d]], Dict[str, str]]:
    """Every conv of ``model``: those ``to`` can convert (dense kxk convs, and grouped ones where the
    kind keeps groups) that the glob patterns ``include``/``exclude`` keep, and the reason each
    other conv stays as it is. With ``keep_stem`` the stem (:func:`stem_path`) stays."""
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    keeps_groups = bool(get_kind(to).conversion and get_kind(to).conversion.keeps_groups)
    stem = stem_path(model, in_channels) if keep_stem else None
    eligible, kept = [], {}
    for path, module in model.named_modules():
        if not isinstance(module, nn.modules.conv._ConvNd):
            continue
        why = _why_kept(module, to, keeps_groups)
        if why is None and path == stem:
            why = "stem: the first conv on the image stays dense (MobileNet's convention; keep_stem=False converts it)"
        if why is None and include and not _matches(path, include):
            why = f"not matched by include={list(include)}"
        if why is None and _matches(path, exclude):
            why = f"excluded by exclude={list(exclude)}"
        if why is None:
            eligible.append((path, module))
        else:
            kept[path] = why
    return eligible, kept


def _matches(path: str, patterns: Tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _why_kept(conv: nn.Module, to: str, keeps_groups: bool) -> Optional[str]:
    """Why a conv is not a conversion target (None: it is one)."""
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        return "transposed conv: not a conversion target"
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__}: only 2-D convs convert"
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return "depthwise already"
    if conv.kernel_size == (1, 1):
        return "1x1 (pointwise): no spatial kernel to factorize"
    if conv.groups > 1 and not keeps_groups:
        return f"grouped (groups={conv.groups}): {to} does not convert grouped convs (dsconv does)"
    return None


def stem_path(model: nn.Module, in_channels: Optional[int] = None) -> Optional[str]:
    """The stem: the first ``nn.Conv2d`` (module order) if it reads the image, i.e. has
    ``in_channels`` input channels (unknown: at most 4, a gray, RGB or RGBA image), and is not
    the model's only conv (a lone conv given to convert is the one to convert). MobileNet and
    its followers keep the stem dense: a few-channel input leaves a separable form little to share."""
    convs = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) < 2:
        return None
    path, first = convs[0]
    reads_image = first.in_channels == in_channels if in_channels is not None else first.in_channels <= 4
    return path if reads_image else None


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


def input_sizes(model: nn.Module, input_size: Optional[Sequence[int]],
                device: Optional[Union[str, torch.device]] = None) -> Dict[str, Tuple[int, int]]:
    """Spatial input size of every conv at ``input_size`` (``{}`` without one): one meta-device
    pass, or one real pass where an op reads tensor values (:func:`leanconv.analysis.counting.traced_shapes`)."""
    return traced_shapes(model, input_size, device)


@outside_inference_mode
def _trace(model: nn.Module, input_size: Optional[Sequence[int]]) -> Optional[Trace]:
    """The counted pass at ``input_size`` (None without one): conv input sizes and MAC shares."""
    return None if input_size is None else trace_model(model, normalize_sizes(input_size))


def _apply(model: nn.Module, eligible: List[Tuple[str, nn.Conv2d]], to: str, selection: Selection,
           sizes: Dict[str, Tuple[int, int]], only_if_cheaper: bool) -> ConversionResult:
    """Factorize and swap in every chosen layer; the plan and the report of every eligible one."""
    layers: Dict[str, LayerPlan] = {}
    reports = []
    for path, conv in eligible:
        report = _convert_layer(model, path, conv, to, selection.layers[path], sizes.get(path),
                                only_if_cheaper)
        if report.converted:
            layers[path] = LayerPlan(to, {**kept_groups(conv), **selection.layers[path].options})  # type: ignore[arg-type]
        reports.append(report)
    result = ConversionResult(model, Plan(to, layers), reports)
    if selection.model_ms is not None:
        result.original_latency_ms = selection.model_ms
        result.predicted_latency_ms = selection.fixed_ms + sum(r.latency_after_ms or 0.0 for r in reports)
    return result


def _convert_layer(model: nn.Module, path: str, conv: nn.Conv2d, to: str, choice: LayerChoice,
                   hw: Optional[Tuple[int, int]], only_if_cheaper: bool) -> LayerReport:
    """Swap one conv for its chosen form (or say why it stays)."""
    macs = source_macs(conv, hw)
    params = sum(p.numel() for p in conv.parameters())
    options: Options = {**kept_groups(conv), **choice.options} if choice.options is not None else {}

    def kept(reason: str, macs_after: int = macs, params_after: int = params) -> LayerReport:
        return LayerReport(path, False, to, jsonable(options), macs, macs_after, params, params_after, 0.0, reason,
                           latency_before_ms=choice.latency_before_ms, latency_after_ms=choice.latency_after_ms)

    if choice.options is None:
        return kept(choice.reason)
    try:
        spec = conv_spec(conv, **options)
        macs_after, params_after = int(layer_macs(to, spec, hw)), get_kind(to).params(spec)
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
    """Refit the converted layers on ``calib`` and put their output errors (fitted and held-out
    images) and whether each kept its refit in the report."""
    errors = {r.path: r for r in refit(result.model, original, result.plan, calib)}
    for report in result.layers:
        fit = errors.get(report.path)
        if fit is None:
            continue
        report.output_error_before_refit, report.output_error = fit.error_before, fit.error
        report.held_out_error_before_refit, report.held_out_error_after_refit = fit.held_out_before, fit.held_out_after
        report.refit_kept = fit.kept
        if not fit.kept:
            report.reason = (report.reason + "; " if report.reason else "") + (
                "refit undone: it raised the held-out error")


def _errors(r: LayerReport) -> str:
    """The report's output-error cell: fitted images, then held-out ones."""
    if r.output_error is None:
        return "-"
    text = f"{r.output_error_before_refit:.3f} -> {r.output_error:.3f}"
    if r.held_out_error_before_refit is not None:
        text += f" (held out {r.held_out_error_before_refit:.3f} -> {r.held_out_error_after_refit:.3f})"
    return text


__all__ = ["ConversionResult", "LayerReport", "convert", "convertible_convs", "input_sizes", "stem_path", "survey"]

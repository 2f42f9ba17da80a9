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
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from leanconv._validate import check_choice, torch_device
from leanconv.analysis.counting import (Trace, layer_macs, model_device, model_dtype, normalize_sizes,
                                        outside_inference_mode, trace_model, traced_shapes)
from leanconv.conversion.factorize import reuse_decompositions
from leanconv.conversion.latency import LatencyCache
from leanconv.conversion.mixed import AutoRequest, convert_auto
from leanconv.conversion.plan import AUTO, LayerPlan, Plan
from leanconv.conversion.result import ConversionResult, LayerReport
from leanconv.conversion.refitting import refit
from leanconv.data.batches import input_batches
from leanconv.conversion.select import LayerChoice, RankRequest, Selection, check_variant, choose
from leanconv.conversion.surgery import (build_module, conv_spec, factorize_conv, jsonable, kept_groups,
                                         set_module,                                          source_macs)
from leanconv.kinds import Options, convertible_kinds, get_kind


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
    target: Optional[str] = None,
    precision: Optional[str] = None,
    target_speedup: Optional[float] = None,
    kinds: Optional[Sequence[str]] = None,
    accept_slower: bool = False,
    threads: int = 1,
    clock: Optional[Any] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> ConversionResult:
    """Convert every dense ``kh x kw`` conv (kernel > 1x1, groups 1) of ``model`` to kind ``to``
    (any kind whose registry entry has a conversion: ``leanconv.kinds.convertible_kinds()``).

    Choose the ranks with one of: ``rank`` (the kind's rank option: depth multiplier for
    dsconv, mid channels for asymmetric, ``(r1, r2)`` or one int for tucker2, groups for
    grouped; None = the kind's default, else full rank, exact), ``energy`` (per layer, the
    smallest rank keeping that share of the kernel's energy), ``mac_budget`` (a count: the
    whole model's conv + linear MACs at ``input_size``, met by greedy allocation of discarded
    energy per MAC saved; see :mod:`leanconv.conversion.select`) or ``latency_budget``
    (ms per ``input_size`` batch on the model's device, from per-layer PyTorch timings cached
    by ``latency_cache``; a layer whose form is not faster there stays dense).
    ``input_size`` (N, C, H, W) gives real MACs per layer; without it they are per output
    pixel. ``calib`` (input batches) refits each converted layer's last stage by least
    squares (:mod:`leanconv.conversion.refitting`) and reports its output error.
    ``include``/``exclude``: glob patterns on module paths. A layer where the target saves no
    MACs stays as it is (``only_if_cheaper=False`` converts it anyway). ``order``: asymmetric
    ``'kx1_first'``/``'1xk_first'``, dsconv ``'depthwise_first'``/``'pointwise_first'``, or
    ``'auto'`` (per layer, less discarded energy per MAC saved). ``core='asymmetric'`` (tucker2):
    a ``kh x 1`` then ``1 x kw`` core (LPRNet's block); ``permute=True`` (grouped): channels
    reordered to keep more energy in the groups (:class:`leanconv.layers.PermutedGroupedConv2d`).
    ``keep_stem`` (default, MobileNet's convention, as in ``optimize``): the first conv on the
    image stays dense. ``device``: where the model runs (refit, timings, shape pass) and where the
    result lives; default: the device of the model's parameters. Every conv that stays as it
    is (depthwise already, 1x1, transposed, the stem, excluded ...) is listed with its reason in
    ``result.kept``. ``calib`` takes every form of :mod:`leanconv.data.batches` (a tensor,
    batches, a ``DataLoader`` of ``(x, y)`` ...).

    ``to='auto'``: each layer's kind and rank chosen by latency measured on a deployment
    ``target`` ('onnxruntime', 'openvino', 'torch' ...) in ``precision`` (None: the dense model's
    fastest there) with ``threads``, for ``target_speedup`` (against the dense model at its best
    there) or ``latency_budget`` (ms there); ``kinds`` limits the search; a request no mix meets
    raises :class:`~leanconv.conversion.mixed.RequestNotMet` unless ``accept_slower``; ``clock``
    scripts the measurements (tests), ``progress`` gets a line per step (:mod:`leanconv.conversion.auto`).
    """
    _check_model(model)
    _check_flags(inplace=inplace, only_if_cheaper=only_if_cheaper, keep_stem=keep_stem, permute=permute)
    check_choice(to, "to", (*convertible_kinds(), AUTO))
    auto = AutoRequest(target, precision, target_speedup, latency_budget, kinds, accept_slower, threads, clock, progress)
    auto.check(to, input_size, rank=rank, energy=energy, mac_budget=mac_budget, order=order, core=core, permute=permute)
    request = None if to == AUTO else _rank_request(to, input_size, rank, energy, mac_budget, latency_budget)
    extra = None if to == AUTO else check_variant(get_kind(to), order=order, core=core, permute=permute)
    job = _prepare(model, to, device, inplace, calib, input_size, include, exclude, keep_stem)
    with reuse_decompositions():  # choosing and applying read one decomposition per kernel
        if to == AUTO:
            result = convert_auto(job.model, job.original, job.eligible, input_size, job.sizes, job.calib, auto,
                                  str(model_device(job.model)))
        else:
            selection = choose(job.original, job.eligible, to, extra, request, input_size, job.sizes, job.calib,
                               latency_cache)
            result = _apply(job.model, job.eligible, to, selection, job.sizes, only_if_cheaper)
    return _finish(result, job)


def _rank_request(to: str, input_size: Optional[Sequence[int]], *modes: Any) -> RankRequest:
    """The checked rank mode (rank, energy, mac_budget or latency_budget) of a conversion to kind ``to``."""
    request = RankRequest(*modes)
    request.check(get_kind(to), input_size)
    return request


def _finish(result: ConversionResult, job: "_Job") -> ConversionResult:
    """The report's kept convs and MAC share; the refit on the calibration data."""
    result.kept = job.kept
    result.convertible_share = job.trace.mac_share([p for p, _ in job.eligible]) if job.trace is not None else None
    if job.calib is not None and result.plan.layers:
        _refit(result, job.original, job.calib)
    return result


@dataclass
class _Job:
    """What a conversion works on: the model being converted (a copy unless inplace), the
    original it reads (refit targets), the checked calibration batches, the counted pass at
    input_size, each conv's input size, and the convs that convert or stay (with why)."""

    model: nn.Module
    original: nn.Module
    calib: Optional[List[torch.Tensor]]
    trace: Optional[Trace]
    sizes: Dict[str, Tuple[int, int]]
    eligible: List[Tuple[str, nn.Conv2d]]
    kept: Dict[str, str]


def _prepare(model: nn.Module, to: str, device: Any, inplace: bool, calib: Any, input_size: Optional[Sequence[int]],
             include: Any, exclude: Any, keep_stem: bool) -> _Job:
    model = _on_device(model, device, inplace)
    batches = None if calib is None else _calibration(model, calib)
    original = copy.deepcopy(model) if inplace and batches is not None else model  # refit needs the original
    trace = _trace(model, input_size)
    sizes = trace.conv_input_hw() if trace is not None else {}
    model = model if inplace else copy.deepcopy(model)
    image_channels = input_size[1] if input_size is not None else batches[0].shape[1] if batches else None
    eligible, kept = survey(model, "dsconv" if to == AUTO else to, include, exclude, keep_stem, image_channels)
    for path, conv in eligible:
        _check_weights(path, conv)
    return _Job(model, original, batches, trace, sizes, eligible, kept)


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


__all__ = ["ConversionResult", "LayerReport", "convert", "convertible_convs", "input_sizes", "stem_path", "survey"]

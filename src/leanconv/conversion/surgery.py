"""Turn a trained model's convs into efficient kinds: build each replacement with optimal
weights (``factorize``), swap it in with ``setattr`` on the parent, and record a plan.

The input model is never modified unless ``inplace=True``. A layer stays as it is when the
target would not save MACs on it (or, under a latency budget, is not faster on this device);
the report says why.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from leanconv._validate import check_choice, pair
from leanconv.conversion import factorize
from leanconv.conversion.refitting import last_stage_name
from leanconv.conversion.select import Choice
from leanconv.kinds import ConvSpec, get_kind

TARGETS = ("dsconv", "asymmetric", "tucker2", "grouped")
PLAN_VERSION = 1


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
    plan: Dict[str, Any]
    layers: List[LayerReport] = field(default_factory=list)
    original_latency_ms: Optional[float] = None  # measured whole model, under a latency budget
    predicted_latency_ms: Optional[float] = None  # the rest of the model + the chosen layers' timings

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
        if self.original_latency_ms is not None:
            lines.append(f"\nmeasured latency: {self.original_latency_ms:.3f} ms before; predicted from per-layer "
                         f"timings: {self.predicted_latency_ms:.3f} ms after")
            for r in self.layers:
                if r.latency_before_ms is not None:
                    after = "-" if r.latency_after_ms is None else f"{r.latency_after_ms:.3f}"
                    lines.append(f"- {r.path}: {r.latency_before_ms:.3f} ms dense -> {after} ms")
        return "\n".join(lines) + "\n"


def _padding_arg(conv: nn.Conv2d):
    """What the conv was asked for: 'same'/'valid' or an (h, w) pair (leanconv keeps the original)."""
    padding = getattr(conv, "padding_arg", conv.padding)
    return padding if isinstance(padding, str) else pair(padding, "padding")


def _spec(conv: nn.Conv2d, **options) -> ConvSpec:
    padding = _padding_arg(conv)
    return ConvSpec.create(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                           padding, conv.dilation,
                           conv.bias is not None, **options)


def describe(conv: nn.Conv2d, kind: str, options: Dict[str, Any]) -> str:
    """A stable text key for ``conv``'s arguments built as ``kind`` with ``options`` (latency cache)."""
    return (f"{kind}|C={conv.in_channels}|O={conv.out_channels}|k={tuple(conv.kernel_size)}|s={tuple(conv.stride)}|"
            f"p={_padding_arg(conv)}|d={tuple(conv.dilation)}|g={conv.groups}|bias={conv.bias is not None}|"
            f"{conv.padding_mode}|{json.dumps(_jsonable(options), sort_keys=True)}")


def _out_hw(conv: nn.Conv2d, in_hw: Tuple[int, int]) -> Tuple[int, int]:
    return get_kind("dense").output_shape(_spec(conv), in_hw)[1:]  # type: ignore[return-value]


def _full_rank(target: str, conv: nn.Conv2d, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    o, c, (kh, kw) = conv.out_channels, conv.in_channels, conv.kernel_size
    if target == "dsconv":
        if (extra or {}).get("order") == "pointwise_first":
            return {"depth_multiplier": min(c, kh * kw), **(extra or {})}
        return {"depth_multiplier": min(o, kh * kw), **(extra or {})}
    if target == "asymmetric":
        if (extra or {}).get("order", "kx1_first") == "1xk_first":
            return {"mid_channels": min(c * kw, o * kh), **(extra or {})}
        return {"mid_channels": min(c * kh, o * kw), **(extra or {})}
    if target == "tucker2":
        if (extra or {}).get("core") == "asymmetric":
            return {"ranks": (c, o), "core": "asymmetric", "core_mid_channels": min(c * kh, o * kw)}
        return {"ranks": (c, o)}
    raise ValueError(f"target={target!r} has no rank")


def _options_for(target: str, conv: nn.Conv2d, rank: Optional[Union[int, Tuple[int, int]]],
                 extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    if target == "grouped":
        return {"groups": int(rank or 2), **({"permute": True} if (extra or {}).get("permute") else {})}
    if rank is None:
        return _full_rank(target, conv, extra)
    if target == "dsconv":
        return {"depth_multiplier": int(rank), **(extra or {})}
    if target == "asymmetric":
        return {"mid_channels": int(rank), **(extra or {})}
    ranks = (rank, rank) if isinstance(rank, int) else tuple(rank)
    options: Dict[str, Any] = {"ranks": (min(ranks[0], conv.in_channels), min(ranks[1], conv.out_channels))}
    if (extra or {}).get("core") == "asymmetric":  # LPRNet's shape: the core keeps r2 mid channels
        options.update(core="asymmetric", core_mid_channels=options["ranks"][1])
    return options


def factorize_conv(conv: nn.Conv2d, target: str, options: Dict[str, Any]) -> factorize.Factorization:
    """The target's weights for this conv (pure math on its weight)."""
    w = conv.weight.detach()
    if target == "dsconv":
        return factorize.dsconv(w, options["depth_multiplier"], order=options.get("order", "depthwise_first"))
    if target == "asymmetric":
        return factorize.asymmetric(w, options["mid_channels"], options.get("order", "kx1_first"))
    if target == "tucker2":
        return factorize.tucker2(w, options["ranks"], core_mid_channels=options.get("core_mid_channels"))
    return factorize.grouped(w, options["groups"], permute=options.get("permute", False))


def _energy_rank(conv: nn.Conv2d, target: str, energy: float, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Smallest rank keeping at least ``energy`` of the kernel's squared Frobenius norm."""
    full = _full_rank(target, conv, extra)
    top = full.get("mid_channels", full.get("depth_multiplier")) if target != "tucker2" else min(conv.in_channels, conv.out_channels)
    for r in range(1, top + 1):
        options = _options_for(target, conv, r, extra)
        result = factorize_conv(conv, target, options)
        if result.total_energy == 0 or 1 - result.discarded_energy / result.total_energy >= energy - 1e-12:
            return options
    return full


def build_module(conv: nn.Conv2d, target: str, options: Dict[str, Any],
                 factors: Optional[factorize.Factorization] = None) -> nn.Module:
    """The leanconv module of kind ``target`` standing in for ``conv`` (same arguments).

    With ``factors`` (from :func:`factorize_conv`) the stages get its weights (and buffers, the
    channel orders of a permuted grouped conv) and the last stage gets the conv's bias (in the
    stage's output order); without, the module is freshly initialized (for :func:`apply_plan`).
    """
    from leanconv.kinds import create_conv2d

    padding = _padding_arg(conv)
    module = create_conv2d(
        target, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
        padding, conv.dilation, conv.bias is not None,
        conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype, **options,
    )
    if factors is None:
        return module
    last = last_stage_name(module)
    with torch.no_grad():
        for name, value in factors.weights.items():
            stage = last if name == "weight" else name  # a one-stage kind's weight is its last stage's
            module.get_parameter(f"{stage}.weight" if stage else "weight").copy_(value)
        for name, value in (factors.buffers or {}).items():
            module.get_buffer(name).copy_(value)
        if conv.bias is not None:
            bias = conv.bias if not factors.buffers else conv.bias[factors.buffers["output_order"]]
            module.get_parameter(f"{last}.bias" if last else "bias").copy_(bias)
    return module


ORDERS = {"dsconv": ("depthwise_first", "pointwise_first"), "asymmetric": ("kx1_first", "1xk_first")}


def order_variants(target: str, extra: Optional[Dict[str, Any]]) -> List[Optional[Dict[str, Any]]]:
    """``[extra]``, or one copy per stage order of ``target`` when ``extra`` asks for ``order='auto'``."""
    if (extra or {}).get("order") != "auto":
        return [extra]
    return [{**(extra or {}), "order": order} for order in ORDERS[target]]


def _cheapest_damage(conv: nn.Conv2d, target: str, candidates: List[Dict[str, Any]], hw) -> Dict[str, Any]:
    """The candidate with the least discarded energy per MAC saved (first one if none saves MACs)."""
    if len(candidates) == 1:
        return candidates[0]
    dense = get_kind("dense").macs(_spec(conv), hw)
    best, best_price = candidates[0], float("inf")
    for options in candidates:
        saved = dense - get_kind(target).macs(_spec(conv, **options), hw)
        if saved > 0:
            price = factorize_conv(conv, target, options).discarded_energy / saved
            if price < best_price:
                best, best_price = options, price
    return best


def _matches(path: str, patterns: Optional[Sequence[str]]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns or ())


def _input_sizes(model: nn.Module, input_size: Optional[Sequence[int]]) -> Dict[str, Tuple[int, int]]:
    """Spatial input size of every conv, from one meta-device pass (for MAC figures)."""
    if input_size is None:
        return {}
    from leanconv.analysis.counting import trace_calls
    from leanconv.analysis.profiling import meta_copy

    calls, _ = trace_calls(meta_copy(model).eval(), [torch.empty(tuple(input_size), device="meta")])
    return {c.path: tuple(c.input_shape[2:]) for c in calls if c.input_shape is not None and c.is_conv}


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
    latency_cache: Optional[Any] = None,
    core: Optional[str] = None,
    permute: bool = False,
) -> ConversionResult:
    """Convert every dense ``kh x kw`` conv (kernel > 1x1, groups 1) of ``model`` to kind ``to``.

    Choose the ranks with one of: ``rank`` (depth multiplier for dsconv, mid channels for
    asymmetric, ``(r1, r2)`` or one int for tucker2, groups for grouped; None = full rank,
    exact), ``energy`` (per layer, the smallest rank keeping that share of the kernel's
    energy), ``mac_budget`` (the whole model's conv + linear MACs at ``input_size``, met by
    greedy allocation of discarded energy per MAC saved; see :mod:`leanconv.conversion.select`)
    or ``latency_budget`` (milliseconds for one ``input_size`` batch on the device the model's
    parameters are on, from per-layer timings cached by ``latency_cache``, a
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
    check_choice(to, "to", TARGETS)
    if order is not None:
        if to not in ORDERS:
            raise ValueError(f"order={order!r} applies only to to='asymmetric' or to='dsconv'")
        check_choice(order, "order", (*ORDERS[to], "auto"))
    extra = {"order": order} if order is not None else None
    if core is not None:
        if to != "tucker2":
            raise ValueError(f"core={core!r} applies only to to='tucker2'")
        check_choice(core, "core", ("dense", "asymmetric"))
        extra = {"core": core}
    if permute:
        if to != "grouped":
            raise ValueError(f"permute={permute!r} applies only to to='grouped'")
        extra = {"permute": True}
    if sum(x is not None for x in (rank, energy, mac_budget, latency_budget)) > 1:
        raise ValueError("pass at most one of rank, energy, mac_budget and latency_budget")
    if latency_budget is not None and not latency_budget > 0:
        raise ValueError(f"latency_budget={latency_budget!r} must be a positive number of milliseconds")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy={energy!r} must be in (0, 1]")
    budget = mac_budget if mac_budget is not None else latency_budget
    if to == "grouped" and (energy is not None or budget is not None):
        raise ValueError("to='grouped' takes rank=<groups>, not energy, mac_budget or latency_budget")
    if budget is not None and input_size is None:
        raise ValueError(f"{'mac' if mac_budget is not None else 'latency'}_budget needs input_size (N, C, H, W)")
    original = model
    sizes = _input_sizes(model, input_size)
    model = model if inplace else copy.deepcopy(model)
    if calib is not None and inplace:
        original = copy.deepcopy(model)  # refit needs the original layers' outputs
    eligible = [
        (path, conv) for path, conv in model.named_modules()
        if isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.kernel_size != (1, 1)
        and not (include and not _matches(path, include)) and not _matches(path, exclude)
    ]
    timings: Dict[str, Any] = {}
    if budget is not None:
        calib = None if calib is None else list(calib)
        if latency_budget is not None:
            from leanconv.conversion.latency import LatencyCache

            timings["cache"] = latency_cache if latency_cache is not None else LatencyCache()
        chosen = _budget_options(original, eligible, to, budget, input_size, sizes, extra, calib, timings)
    plan: Dict[str, Any] = {"version": PLAN_VERSION, "target": to, "layers": {}}
    reports: List[LayerReport] = []
    for path, conv in eligible:
        hw = sizes.get(path, _min_hw(conv))
        macs_before = get_kind("dense").macs(_spec(conv), hw)
        params_before = sum(p.numel() for p in conv.parameters())
        if budget is not None:
            options = chosen[path]
            if options is None:
                rungs = timings.get("ladders", {}).get(path, [Choice(None, 0, 0.0)])
                dense_ms = rungs[0].latency_ms
                if "ladders" in timings and len(rungs) == 1:
                    reason = (f"kept dense: no rank of {to} measured faster than the dense conv ({dense_ms:.3f} ms) "
                              "on this device")
                else:
                    reason = f"kept dense by the {'MAC' if mac_budget is not None else 'latency'} budget"
                reports.append(LayerReport(path, False, to, {}, macs_before, macs_before, params_before,
                                           params_before, 0.0, reason, latency_before_ms=dense_ms,
                                           latency_after_ms=dense_ms))
                continue
        else:
            options = _cheapest_damage(conv, to, [
                _energy_rank(conv, to, energy, variant) if energy is not None else _options_for(to, conv, rank, variant)
                for variant in order_variants(to, extra)], hw)
        try:
            target_spec = _spec(conv, **options)
            macs_after = get_kind(to).macs(target_spec, hw)
            params_after = get_kind(to).params(target_spec)
        except ValueError as error:
            reports.append(LayerReport(path, False, to, options, macs_before, macs_before, params_before,
                                       params_before, 0.0, f"not applicable: {error}"))
            continue
        if only_if_cheaper and macs_after >= macs_before:
            reports.append(LayerReport(path, False, to, options, macs_before, macs_after, params_before, params_after,
                                       0.0, f"{to} would cost {macs_after / macs_before:.2f}x the MACs: kept dense"))
            continue
        result = factorize_conv(conv, to, options)
        replacement = build_module(conv, to, options, result)
        replacement.train(conv.training)
        _set_module(model, path, replacement)
        plan["layers"][path] = {"kind": to, "options": _jsonable(options)}
        report = LayerReport(path, True, to, _jsonable(options), macs_before, macs_after, params_before,
                             params_after, result.relative_error)
        if "ladders" in timings:
            rungs = timings["ladders"][path]
            report.latency_before_ms = rungs[0].latency_ms
            report.latency_after_ms = next(r.latency_ms for r in rungs if r.options == options)
        reports.append(report)
    if calib is not None and plan["layers"]:
        from leanconv.conversion.refitting import refit

        errors = {r.path: r for r in refit(model, original, plan, calib)}
        for report in reports:
            if report.path in errors:
                report.output_error_before_refit = errors[report.path].error_before
                report.output_error = errors[report.path].error_after
    result = ConversionResult(model, plan, reports)
    if "ladders" in timings:
        result.original_latency_ms = timings["model_ms"]
        result.predicted_latency_ms = timings["fixed_ms"] + sum(
            (r.latency_after_ms if r.latency_after_ms is not None else 0.0) for r in reports)
    return result


def _budget_options(model, eligible, to, budget, input_size, sizes, extra=None,
                    calib=None, timings=None) -> Dict[str, Optional[Dict[str, Any]]]:
    """Per-layer options meeting a MAC ``budget``, or a latency one when ``timings`` holds a
    ``'cache'`` (None: stays dense). With ``calib``, the damage of each rank is measured as
    output error on the layer's calibration inputs. Fills ``timings`` with the measured ladders,
    the whole model's latency and the part of it outside the convertible layers."""
    from leanconv.analysis.profiling import profile
    from leanconv.conversion.refitting import capture as _capture
    from leanconv.conversion.select import allocate, ladder, latency_ladder

    timings = {} if timings is None else timings
    layer_inputs: Dict[str, Any] = {}
    if calib:
        was_training = model.training
        model.eval()
        for path, _ in eligible:
            layer_inputs[path] = _capture(model, model.get_submodule(path), calib[:2], "input")
        model.train(was_training)
    ladders = {path: ladder(conv, to, sizes.get(path, _min_hw(conv)), extra, layer_inputs.get(path))
               for path, conv in eligible}
    if "cache" not in timings:
        total = profile(model, tuple(input_size)).total_macs
        fixed = total - sum(rungs[0].macs for rungs in ladders.values())
        return {path: choice.options for path, choice in allocate(ladders, budget, fixed).items()}
    cache = timings["cache"]
    batch = input_size[0]
    ladders = {path: latency_ladder(conv, to, ladders[path], (batch, conv.in_channels, *sizes[path]), cache)
               for path, conv in eligible}
    cache.save()
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    with torch.no_grad():
        timings["model_ms"] = float(cache.measure(model.eval(), torch.randn(tuple(input_size), device=device)))
    model.train(was_training)
    timings["fixed_ms"] = max(timings["model_ms"] - sum(rungs[0].latency_ms for rungs in ladders.values()), 0.0)
    timings["ladders"] = ladders
    chosen = allocate(ladders, budget, timings["fixed_ms"], cost="latency_ms")
    return {path: choice.options for path, choice in chosen.items()}


def _min_hw(conv: nn.Conv2d) -> Tuple[int, int]:
    """A spatial size giving exactly one output pixel (MACs per output pixel)."""
    return tuple(d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation))  # type: ignore[return-value]


def _jsonable(options: Dict[str, Any]) -> Dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, module)


def apply_plan(model: nn.Module, plan: Union[Dict[str, Any], str, Path], inplace: bool = False) -> nn.Module:
    """Rebuild a converted architecture on a freshly constructed ``model`` so a saved
    ``state_dict`` of the converted model loads into it."""
    if not isinstance(plan, dict):
        plan = json.loads(Path(plan).read_text())
    if plan.get("version") != PLAN_VERSION:
        raise ValueError(f"plan version={plan.get('version')!r} must be {PLAN_VERSION}")
    model = model if inplace else copy.deepcopy(model)
    for path, entry in plan["layers"].items():
        try:
            conv = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"plan layer {path!r} is not a module of this model") from None
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"plan layer {path!r} is a {type(conv).__name__}, expected the original nn.Conv2d")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["options"].items()}
        _set_module(model, path, build_module(conv, entry["kind"], options))
    return model


def save_plan(plan: Dict[str, Any], path: Union[str, Path]) -> None:
    from leanconv._files import write_atomic

    write_atomic(Path(path), json.dumps(plan, indent=2))


__all__ = ["ConversionResult", "LayerReport", "ORDERS", "TARGETS", "apply_plan", "build_module", "convert", "describe",
           "factorize_conv", "order_variants", "save_plan"]

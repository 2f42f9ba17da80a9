"""Per-layer conversion candidates: what one conv could become, and how much each choice costs it.

A per-layer search (kind and rank chosen by measured latency) needs, for each conv, a short list
of stand-ins and each one's error. :func:`layer_candidates` lists them: the dense conv itself,
then every option of every searched kind (the kind's registry ladder, :attr:`Conversion.search`)
that applies to the conv and saves MACs. :func:`fit_candidate` builds one with its optimal
factorized weights and, given this layer's inputs on calibration data, refits its last stage by
least squares (as :func:`leanconv.conversion.refitting.refit` does model-wide) and measures its
output error on held-out images, which is what the search trades against latency.

Timing is not done here: the modules are returned as built (the caller times fresh ones).
Decompositions are cached when the caller wraps the search in
:func:`leanconv.conversion.factorize.reuse_decompositions`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv._modes import evaluating
from leanconv._validate import check_positive_pair
from leanconv.conversion.refitting import refit_module, split_held_out
from leanconv.conversion.surgery import build_module, conv_spec, factorize_conv, source_macs
from leanconv.data.batches import input_batches
from leanconv.kinds import KINDS, ConvKind, ConvSpec, get_kind


@dataclass(frozen=True)
class Candidate:
    """One stand-in for a conv: a kind with its options, its MACs at the layer's input size."""

    kind: str
    """``'dense'`` for keeping the conv as it is."""
    options: Dict[str, Any]
    """``{}`` for dense; else the kind's options as ``conversion_options`` gives them, without the
    source conv's groups (:func:`leanconv.conversion.surgery.kept_groups` adds those)."""
    macs: int
    """At the layer's input size ``hw``."""
    label: str
    """Short and human: ``'dsconv m=2 pointwise_first'``, ``'tucker2 (16, 16) asym core'``."""

    @property
    def dense(self) -> bool:
        """Whether this candidate keeps the conv as it is."""
        return self.kind == "dense"


@dataclass
class CandidateFit:
    """How well a candidate stands in for the conv (relative errors, float64)."""

    error: float
    """``||y - y_ref|| / ||y_ref||`` on the held-out inputs with the weights kept (refit or not);
    on the fitted inputs when none were held out (a single image); the weight-space relative
    error when no inputs were given."""
    fitted_error: float
    """The same on the fitted inputs (nan without inputs)."""
    weight_error: float
    """Relative Frobenius error of the factorization: ``sqrt(discarded / total energy)``."""
    refit: bool
    """Whether the least-squares refit was kept (it is undone where it raises the held-out error)."""


def searched_kinds() -> List[str]:
    """The kinds a per-layer search tries (those whose conversion has a ``search`` ladder)."""
    return sorted(name for name, kind in KINDS.items() if kind.conversion is not None
                  and kind.conversion.search is not None)


def layer_candidates(conv: nn.Conv2d, hw: Tuple[int, int], kinds: Optional[Sequence[str]] = None) -> List[Candidate]:
    """Dense first, then every option of every searched kind (registry ``Conversion.search``,
    kinds restricted to ``kinds`` when given, unknown names -> ValueError naming ``kinds`` and
    listing the valid ones) that applies to this conv (``Conversion.applies``; a grouped source
    conv only for kinds with ``keeps_groups``) and costs fewer MACs than the dense conv at input
    size ``hw``."""
    _check_conv(conv)
    hw = check_positive_pair(hw, "hw")
    dense = source_macs(conv, hw)
    found = [Candidate("dense", {}, dense, "dense")]
    spec = conv_spec(conv)
    for name in _chosen_kinds(kinds):
        kind = get_kind(name)
        if not _converts(kind, conv, spec):
            continue
        for options in kind.search_options(spec):
            macs = int(kind.macs(conv_spec(conv, **options), hw))
            label = _label(kind, options)
            if macs < dense and all(c.label != label for c in found):
                found.append(Candidate(name, dict(options), macs, label))
    return found


def _check_conv(conv: nn.Module) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")


def _chosen_kinds(kinds: Optional[Sequence[str]]) -> List[str]:
    """``kinds`` checked against the searched kinds (all of them when None), in the given order."""
    valid = searched_kinds()
    if kinds is None:
        return valid
    chosen = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [name for name in chosen if name not in valid]
    if unknown:
        raise ValueError(f"kinds={kinds!r}: {unknown[0]!r} is not a searched kind; choose from {valid}")
    return list(dict.fromkeys(chosen))


def _converts(kind: ConvKind, conv: nn.Conv2d, spec: ConvSpec) -> bool:
    """Whether ``kind`` can stand in for ``conv`` (spec ``spec``): its ``applies``, and
    ``keeps_groups`` for a grouped conv."""
    conversion = kind.conversion
    if conversion is None or (conv.groups > 1 and not conversion.keeps_groups):
        return False
    return conversion.applies is None or conversion.applies(spec) is None


_RANK_LABELS = {"depth_multiplier": "m={}", "mid_channels": "mid={}", "groups": "g={}"}


def _label(kind: ConvKind, options: Dict[str, Any]) -> str:
    """``'<kind> <rank> <non-default options>'``: ``'dsconv m=2 pointwise_first'``,
    ``'tucker2 (16, 16) asym core'``, ``'grouped g=4 permuted'``."""
    parts = [kind.name]
    for key, value in options.items():
        default = kind.options.get(key)
        if key == "ranks":
            parts.append(f"({value[0]}, {value[1]})")
        elif key in _RANK_LABELS:
            parts.append(_RANK_LABELS[key].format(value))
        elif key == "core_mid_channels":
            if value is not None and value != options["ranks"][1]:
                parts.append(f"core mid={value}")
        elif value == default:
            continue
        elif key == "permute":
            parts.append("permuted" if value else "not permuted")
        elif key == "core":
            parts.append("asym core" if value == "asymmetric" else f"{value} core")
        elif key == "order":
            parts.append(str(value))
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def fit_candidate(conv: nn.Conv2d, candidate: Candidate, inputs: Optional[Sequence[torch.Tensor]] = None,
                  holdout: float = 0.25, accumulate: torch.dtype = torch.float64,
                  targets: Optional[Sequence[torch.Tensor]] = None) -> Tuple[nn.Module, CandidateFit]:
    """The candidate module with the optimal factorized weights (``surgery.factorize_conv`` +
    ``surgery.build_module``) and how well it stands in for ``conv``.

    With ``inputs`` (this layer's input batches on calibration data) the module's last stage is
    refit by least squares on the first ``1 - holdout`` of the images and kept only where it
    lowers the error on the held-out rest (:func:`leanconv.conversion.refitting.refit_module`);
    the targets are ``conv``'s own outputs. Dense: a copy of the conv, error 0.
    The inputs move to the conv's device and dtype; ``conv`` is not changed. ``accumulate``: the
    dtype the refit sums its normal equations in (:func:`~leanconv.conversion.refitting.solve_stage`).
    ``targets``: ``conv``'s outputs on ``inputs`` (:func:`layer_targets`), when the caller fits
    many candidates of one layer: the dense conv then runs once, not once per candidate.
    """
    _check_conv(conv)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ValueError(f"holdout={holdout!r} must be a share of the input images in [0, 1)")
    batches = None
    if inputs is not None:
        weight = conv.weight
        batches = [x.to(weight.device, weight.dtype)
                   for x in input_batches(inputs, "inputs", channels=conv.in_channels)]
    if candidate.dense:
        return copy.deepcopy(conv), CandidateFit(0.0, float("nan") if batches is None else 0.0, 0.0, False)
    factors = factorize_conv(conv, candidate.kind, candidate.options)
    module = build_module(conv, candidate.kind, candidate.options, factors)
    weight_error = factors.relative_error
    if batches is None:
        return module, CandidateFit(weight_error, float("nan"), weight_error, False)
    fit, held = split_held_out(batches, float(holdout))
    if targets is None:
        targets = layer_targets(conv, fit + held)
    else:  # cut as the inputs are: the cut depends only on the batch sizes
        fit_targets, held_targets = split_held_out(list(targets), float(holdout))
        targets = [y.detach().to(conv.weight.device, conv.weight.dtype) for y in fit_targets + held_targets]
    with evaluating(module):
        report = refit_module(module, fit + held, targets, len(fit), accumulate=accumulate)
    fitted = report.error
    if not held:
        return module, CandidateFit(fitted, fitted, weight_error, report.kept)
    error = report.held_out_after if report.kept else report.held_out_before
    return module, CandidateFit(float(error), fitted, weight_error, report.kept)  # type: ignore[arg-type]


@torch.no_grad()
def layer_targets(conv: nn.Conv2d, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``conv``'s outputs on ``inputs`` (moved to its device and dtype): what candidates are fitted to."""
    weight = conv.weight
    return [conv(x.to(weight.device, weight.dtype)) for x in inputs]


__all__ = ["Candidate", "CandidateFit", "fit_candidate", "layer_candidates", "layer_targets", "searched_kinds"]

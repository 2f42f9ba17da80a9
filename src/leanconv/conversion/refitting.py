"""Data-aware refit: least-squares fit of each converted layer's last linear stage.

With a few calibration batches, layer by layer in network order: the target is the original
layer's output on the original network's activations; the input is what the converted
network (with every earlier layer already refit) feeds that stage. The last stage (the
pointwise conv of a depthwise separable conv, the ``1 x kw`` conv of an asymmetric pair, the
expand conv of a Tucker-2 bottleneck) is linear in its weights, so the best weights and bias
are a ridge-regularized least-squares solution over all output pixels. Which stage that is,
and whether its outputs are reordered, is read through the layer protocol
(:mod:`leanconv.protocol`: ``output_stage``, ``reorders_output``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from leanconv._modes import evaluating
from leanconv.conversion.plan import PlanLike, as_plan
from leanconv.padding import pad_same
from leanconv.protocol import last_stage_name, output_order_of


@dataclass
class RefitReport:
    """Relative output error of one layer on the calibration data, before and after the refit."""

    path: str
    error_before: float
    error_after: float


def last_stage(module: nn.Module) -> nn.Conv2d:
    """The conv whose weights the refit solves for."""
    name = last_stage_name(module)
    return module.get_submodule(name) if name else module


def capture(model: nn.Module, module: nn.Module, batches: Sequence[torch.Tensor], want: str) -> List[torch.Tensor]:
    """What ``module`` sees while ``model`` runs each batch: its first input (``want='input'``)
    or its output (``want='output'``), detached, one tensor per batch.

    ``module`` must be a submodule of ``model`` (or ``model`` itself); ``model`` runs under
    ``torch.no_grad()`` in whatever mode it is in (callers put it in eval mode). The hook is
    removed even when a batch raises.
    """
    if want not in ("input", "output"):
        raise ValueError(f"want={want!r} must be 'input' or 'output'")
    seen: List[torch.Tensor] = []

    def hook(_, args, output):
        seen.append((args[0] if want == "input" else output).detach())

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        handle.remove()
    return seen


def _patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``(pixels, C*kh*kw)`` input patches of ``conv`` (its padding and padding mode applied)."""
    if getattr(conv, "dynamic_same", False):
        x = pad_same(x, conv.kernel_size, conv.stride, conv.dilation, conv.padding_mode)
        padding = (0, 0)
    elif conv.padding_mode != "zeros":
        ph, pw = conv.padding
        x = F.pad(x, (pw, pw, ph, ph), mode=conv.padding_mode)
        padding = (0, 0)
    else:
        padding = conv.padding
    cols = F.unfold(x, conv.kernel_size, conv.dilation, padding, conv.stride)  # (N, C*k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def solve_stage(conv: nn.Conv2d, inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                ridge: Optional[float] = None) -> None:
    """Set ``conv``'s weight (and bias) to the ridge least-squares fit of ``targets`` from ``inputs``.

    A grouped conv is one independent problem per group (its outputs see only its inputs).

    ``ridge`` is relative to the mean diagonal of the Gram matrix. ``None`` picks it from the
    sample/feature ratio: ``1e-6 + 1e-2 * min(1, 10 * features / samples)`` -- nearly plain
    least squares when there are many more pixels than features, and enough shrinkage to
    avoid overfitting the calibration set where deep layers have few pixels (measured: on
    ResNet-18 at 64x64 with 128 images, a fixed 1e-6 tripled the logit error on held-out
    inputs while fitting the calibration set almost perfectly).
    """
    g = conv.groups
    a = torch.cat([_patches(conv, x.double()) for x in inputs])  # (pixels, C*kh*kw), channel-major
    y = torch.cat([t.double().permute(0, 2, 3, 1).reshape(-1, t.shape[1]) for t in targets])
    a = a.reshape(a.shape[0], g, -1).transpose(0, 1)  # (g, pixels, C/g*kh*kw): each group its own problem
    y = y.reshape(y.shape[0], g, -1).transpose(0, 1)  # (g, pixels, O/g)
    if conv.bias is not None:
        a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2)
    if ridge is None:
        ridge = 1e-6 + 1e-2 * min(1.0, 10 * a.shape[2] / a.shape[1])
    gram = a.transpose(1, 2) @ a
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
    gram += ridge * scale[:, None, None] * torch.eye(gram.shape[1], dtype=gram.dtype)
    solution = torch.linalg.solve(gram, a.transpose(1, 2) @ y)  # (g, features, O/g)
    if conv.bias is not None:
        conv.bias.copy_(solution[:, -1].reshape(-1).to(conv.bias.dtype))
        solution = solution[:, :-1]
    conv.weight.copy_(solution.transpose(1, 2).reshape(conv.weight.shape).to(conv.weight.dtype))


def _relative_error(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> float:
    num = sum(float((o.double() - t.double()).pow(2).sum()) for o, t in zip(outputs, targets))
    den = sum(float(t.double().pow(2).sum()) for t in targets)
    return (num / den) ** 0.5 if den else 0.0


def finite_batches(calib: Iterable[torch.Tensor]) -> List[torch.Tensor]:
    """The calibration batches as a list, each finite (NaN data made an all-NaN model silently)."""
    batches = list(calib)
    for index, batch in enumerate(batches):
        if isinstance(batch, torch.Tensor) and batch.is_floating_point() and not torch.isfinite(batch).all():
            raise ValueError(f"calib batch {index} holds NaN or inf values")
    return batches


def refit(converted: nn.Module, original: nn.Module, plan: PlanLike, calib: Iterable[torch.Tensor],
          ridge: Optional[float] = None) -> List[RefitReport]:
    """Refit every converted layer of ``converted`` (in place), in network order.

    ``plan`` is :func:`leanconv.convert`'s plan (a :class:`~leanconv.conversion.plan.Plan`, its
    dict form or a plan file); ``calib`` yields input batches. Both models are used in eval
    mode; their training flags are restored afterwards.
    """
    layers = as_plan(plan).layers
    batches = finite_batches(calib)
    if not batches:
        raise ValueError("calib must yield at least one input batch")
    paths = [name for name, _ in original.named_modules() if name in layers]  # network order
    reports = []
    with evaluating(converted, original):
        for path in paths:
            targets = capture(original, original.get_submodule(path), batches, "output")
            layer = converted.get_submodule(path)
            before = _relative_error(capture(converted, layer, batches, "output"), targets)
            stage = last_stage(layer)
            channels = output_order_of(layer)  # the stage's output j is the layer's channel channels[j]
            stage_targets = targets if channels is None else [t.index_select(1, channels) for t in targets]
            solve_stage(stage, capture(converted, stage, batches, "input"), stage_targets, ridge)
            after = _relative_error(capture(converted, layer, batches, "output"), targets)
            reports.append(RefitReport(path, before, after))
    return reports


@torch.no_grad()
def reestimate_bn(model: nn.Module, calib: Iterable[torch.Tensor]) -> None:
    """Recompute every BatchNorm's running statistics on the calibration batches (cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.training) for m in norms]
    with evaluating(model):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for x in calib:
                model(x)
        finally:
            for m, (momentum, _) in zip(norms, saved):
                m.momentum = momentum


__all__ = ["RefitReport", "capture", "finite_batches", "last_stage", "last_stage_name", "reestimate_bn", "refit", "solve_stage"]

"""Data-aware refit: least-squares fit of each converted layer's last linear stage.

With a few calibration batches, layer by layer in network order: the target is the original
layer's output on the original network's activations; the input is what the converted
network (with every earlier layer already refit) feeds that stage. The last stage (the
pointwise conv of a depthwise separable conv, the ``1 x kw`` conv of an asymmetric pair, the
expand conv of a Tucker-2 bottleneck) is linear in its weights, so the best weights and bias
are a ridge-regularized least-squares solution over all output pixels. Which stage that is,
and whether its outputs are reordered, is read through the layer protocol
(:mod:`leanconv.protocol`: ``output_stage``, ``reorders_output``).

Cost: one pass of the original network per batch captures every converted layer's target at
once; per layer, one pass of the converted network per batch stops at that layer (the rest of
the network is not run) and keeps the layer's input; everything else (the stage's input, the
errors before and after) runs the layer module alone. Memory: the targets of all converted
layers on all calibration batches are held at once, on the data's device.

Held-out check: a least-squares fit on few pixels can fit the calibration data and make the
task worse. The last ``holdout`` share of the calibration images is kept out of the fit; a
layer keeps its refit weights only if its output error against the original layer falls on
that held-out part, else its previous weights come back (:attr:`RefitReport.kept`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from leanconv._modes import evaluating
from leanconv.conversion.plan import PlanLike, as_plan
from leanconv.data.batches import input_batches
from leanconv.padding import pad_same
from leanconv.protocol import last_stage_name, output_order_of

DEFAULT_HOLDOUT = 0.25


@dataclass
class RefitReport:
    """One layer's relative output error against the original layer, before and after the solve.

    ``error_before``/``error_after``: on the images the solve was fitted on (``fit_images``);
    ``held_out_before``/``held_out_after``: on the held-out images (None when there were fewer
    than two images, or ``holdout=0``: nothing to hold out). ``kept``: whether the layer keeps
    the refit weights (the held-out error fell, or there was no held-out part); when False it
    has its previous weights back and :attr:`error` is ``error_before``.
    """

    path: str
    error_before: float
    error_after: float
    held_out_before: Optional[float] = None
    held_out_after: Optional[float] = None
    kept: bool = True
    fit_images: int = 0
    held_out_images: int = 0
    note: str = ""

    @property
    def error(self) -> float:
        """The fit-part error of the weights the layer ends up with."""
        return self.error_after if self.kept else self.error_before


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


class _Stop(Exception):
    """Raised from a hook once everything wanted from a pass is captured: the rest of the
    network is not run."""


def capture_all(model: nn.Module, paths: Sequence[str], batches: Sequence[torch.Tensor],
                want: str) -> Dict[str, List[torch.Tensor]]:
    """What each module at ``paths`` sees while ``model`` runs each batch (its first input for
    ``want='input'``, its output for ``want='output'``), in one pass per batch that stops as
    soon as every module has been seen (a module called twice keeps its first call).

    A path the forward never reaches gets fewer tensors than there are batches (none at all
    when it is never run). Hooks are removed even when a batch raises.
    """
    if want not in ("input", "output"):
        raise ValueError(f"want={want!r} must be 'input' or 'output'")
    seen: Dict[str, List[torch.Tensor]] = {path: [] for path in paths}
    pending: set = set()

    def hook_for(path: str):
        def record(value: torch.Tensor) -> None:
            if path in pending:
                seen[path].append(value.detach())
                pending.discard(path)
                if not pending:
                    raise _Stop

        if want == "input":
            return lambda _, args: record(args[0])
        return lambda _, args, output: record(output)

    handles = [model.get_submodule(path).register_forward_pre_hook(hook_for(path)) if want == "input"
               else model.get_submodule(path).register_forward_hook(hook_for(path)) for path in seen]
    try:
        with torch.no_grad():
            for x in batches:
                pending.update(seen)
                try:
                    model(x)
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return seen


def layer_inputs(model: nn.Module, paths: Sequence[str], batches: Optional[Sequence[torch.Tensor]]
                 ) -> Dict[str, List[torch.Tensor]]:
    """Each module's input at ``paths`` on ``batches``, in eval mode (restored after), one pass
    per batch for all of them; ``{}`` without batches (no calibration data)."""
    if not batches:
        return {}
    with evaluating(model):
        return capture_all(model, paths, batches, "input")


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
                ridge: Optional[float] = None, accumulate: torch.dtype = torch.float64) -> None:
    """Set ``conv``'s weight (and bias) to the ridge least-squares fit of ``targets`` from ``inputs``.

    A grouped conv is one independent problem per group (its outputs see only its inputs).
    The solve runs in float64 on the data's device; a singular system (``ridge=0`` with fewer
    pixels than features) takes the minimum-norm solution.

    ``accumulate``: the dtype the normal equations are summed in (float32 halves the cost, for a
    search that only ranks candidates); the solve is float64 either way.

    ``ridge`` is relative to the mean diagonal of the Gram matrix. ``None`` picks it from the
    sample/feature ratio: ``1e-6 + 1e-2 * min(1, 10 * features / samples)`` -- nearly plain
    least squares when there are many more pixels than features, and enough shrinkage to
    avoid overfitting the calibration set where deep layers have few pixels (measured: on
    ResNet-18 at 64x64 with 128 images, a fixed 1e-6 tripled the logit error on held-out
    inputs while fitting the calibration set almost perfectly).
    """
    g, bias = conv.groups, conv.bias is not None
    gram = rhs = None
    samples = 0
    for x, t in zip(inputs, targets):  # the normal equations summed batch by batch: one batch's patches at a time
        a = _patches(conv, x.to(accumulate))  # (pixels, C*kh*kw), channel-major
        y = t.to(accumulate).permute(0, 2, 3, 1).reshape(-1, t.shape[1])
        a = a.reshape(a.shape[0], g, -1).transpose(0, 1)  # (g, pixels, C/g*kh*kw): each group its own problem
        y = y.reshape(y.shape[0], g, -1).transpose(0, 1)  # (g, pixels, O/g)
        if bias:
            a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2)
        gram = a.transpose(1, 2) @ a if gram is None else gram + a.transpose(1, 2) @ a
        rhs = a.transpose(1, 2) @ y if rhs is None else rhs + a.transpose(1, 2) @ y
        samples += a.shape[1]
    gram, rhs = gram.double(), rhs.double()  # the solve itself always in float64
    features = gram.shape[1]
    if ridge is None:
        ridge = 1e-6 + 1e-2 * min(1.0, 10 * features / samples)
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
    gram = gram + ridge * scale[:, None, None] * torch.eye(features, dtype=gram.dtype, device=gram.device)
    try:  # symmetric positive definite with a ridge: Cholesky (LU's batched pivoting failed under MKL once)
        solution = torch.cholesky_solve(rhs, torch.linalg.cholesky(gram))  # (g, features, O/g)
    except (torch.linalg.LinAlgError, RuntimeError):  # singular (ridge=0 with fewer pixels than features, dead inputs)
        solution = torch.linalg.pinv(gram, hermitian=True) @ rhs
    if bias:
        conv.bias.copy_(solution[:, -1].reshape(-1).to(conv.bias.dtype))
        solution = solution[:, :-1]
    conv.weight.copy_(solution.transpose(1, 2).reshape(conv.weight.shape).to(conv.weight.dtype))


def finite_batches(calib: Any) -> List[torch.Tensor]:
    """The calibration batches as a checked list (:func:`leanconv.data.batches.input_batches`,
    name ``calib``): any data form, each batch 4-D, floating point and finite."""
    return input_batches(calib, "calib")


def split_held_out(batches: Sequence[torch.Tensor], share: float) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """``(fit, held_out)``: the last ``share`` of the images (at least one when there are two or
    more and ``share > 0``; none with one image) held out, a batch split where the cut falls."""
    total = sum(int(x.shape[0]) for x in batches)
    held = 0 if total < 2 or share <= 0 else min(max(1, int(total * share)), total - 1)
    fit, out, start = [], [], total - held
    position = 0
    for x in batches:
        n = int(x.shape[0])
        cut = min(max(start - position, 0), n)
        if cut:
            fit.append(x[:cut])
        if cut < n:
            out.append(x[cut:])
        position += n
    return fit, out


def relative_error(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> float:
    """||outputs - targets|| / ||targets|| over all the batches (in float64; 0 when the targets are 0)."""
    num = sum(float((o.double() - t.double()).pow(2).sum()) for o, t in zip(outputs, targets))
    den = sum(float(t.double().pow(2).sum()) for t in targets)
    return (num / den) ** 0.5 if den else 0.0


def _run_layer(layer: nn.Module, stage: nn.Module, inputs: Sequence[torch.Tensor]
               ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """The layer's outputs on its captured ``inputs``, and what its last ``stage`` sees."""
    seen: List[torch.Tensor] = []
    handle = stage.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            outputs = [layer(x) for x in inputs]
    finally:
        handle.remove()
    return outputs, seen


def refit(converted: nn.Module, original: nn.Module, plan: PlanLike, calib: Any,
          ridge: Optional[float] = None, holdout: float = DEFAULT_HOLDOUT) -> List[RefitReport]:
    """Refit every converted layer of ``converted`` (in place), in network order.

    ``plan`` is :func:`leanconv.convert`'s plan (a :class:`~leanconv.conversion.plan.Plan`, its
    dict form or a plan file); ``calib`` any data form (:mod:`leanconv.data.batches`). The last
    ``holdout`` share of the images (0 <= holdout < 1) is not fitted on but decides whether
    each layer keeps its refit (see the module docstring). The batches move to the device of
    ``original``'s parameters. Both models are used in eval mode; their training flags are
    restored afterwards.
    """
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ValueError(f"holdout={holdout!r} must be a share of the calibration images in [0, 1)")
    layers = as_plan(plan).layers
    parameter = next(original.parameters(), None)
    batches = finite_batches(calib)
    if parameter is not None:  # the data follows the model's device
        batches = [x.to(parameter.device) for x in batches]
    fit, held = split_held_out(batches, float(holdout))
    paths = [name for name, _ in original.named_modules() if name in layers]  # network order
    with evaluating(converted, original):
        targets = capture_all(original, paths, fit + held, "output")
        return [_refit_layer(converted, path, fit, held, targets[path], ridge) for path in paths]


def _refit_layer(converted: nn.Module, path: str, fit: List[torch.Tensor], held: List[torch.Tensor],
                 targets: List[torch.Tensor], ridge: Optional[float]) -> RefitReport:
    """Solve one layer's last stage on ``fit``; keep it only if the error on ``held`` falls."""
    if len(targets) < len(fit) + len(held):
        nan = float("nan")
        return RefitReport(path, nan, nan, kept=False, fit_images=_images(fit), held_out_images=_images(held),
                           note="not refit: the model's forward does not run this layer on the calibration data")
    inputs = capture_all(converted, [path], fit + held, "input")[path]
    return refit_module(converted.get_submodule(path), inputs, targets, len(fit), ridge, path)


def _images(batches: Sequence[torch.Tensor]) -> int:
    return sum(int(x.shape[0]) for x in batches)


def refit_module(layer: nn.Module, inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], fit: int,
                 ridge: Optional[float] = None, path: str = "", accumulate: torch.dtype = torch.float64) -> RefitReport:
    """Solve ``layer``'s last stage (in place) so that its outputs on the first ``fit`` of the
    ``inputs`` batches match ``targets``; keep it only if the error on the other batches (the
    held-out ones) falls, else restore the previous weights. ``layer`` runs in its current mode
    (callers put it in eval mode); a stage whose outputs are reordered (``output_order_of``)
    is solved against the targets in its own order. ``path`` names the layer in the report."""
    inputs, targets = list(inputs), list(targets)
    counts = (_images(inputs[:fit]), _images(inputs[fit:]))
    stage = last_stage(layer)
    outputs, stage_inputs = _run_layer(layer, stage, inputs)
    n = fit
    channels = output_order_of(layer)  # the stage's output j is the layer's channel channels[j]
    stage_targets = targets[:n] if channels is None else [t.index_select(1, channels) for t in targets[:n]]
    saved = [p.detach().clone() for p in (stage.weight, stage.bias) if p is not None]
    solve_stage(stage, stage_inputs[:n], stage_targets, ridge, accumulate)
    after = _run_layer(layer, stage, inputs)[0]
    report = RefitReport(path, relative_error(outputs[:n], targets[:n]), relative_error(after[:n], targets[:n]),
                         fit_images=counts[0], held_out_images=counts[1])
    if n == len(inputs):
        report.note = "no held-out check: fewer than 2 calibration images (or holdout=0); the refit is kept"
        return report
    report.held_out_before = relative_error(outputs[n:], targets[n:])
    report.held_out_after = relative_error(after[n:], targets[n:])
    report.kept = report.held_out_after < report.held_out_before
    if not report.kept:
        with torch.no_grad():
            for parameter, value in zip((p for p in (stage.weight, stage.bias) if p is not None), saved):
                parameter.copy_(value)
        report.note = "refit not kept: it raised the error on the held-out images"
    return report


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


__all__ = ["DEFAULT_HOLDOUT", "RefitReport", "capture", "capture_all", "finite_batches", "last_stage", "last_stage_name",
           "reestimate_bn", "refit", "refit_module", "relative_error", "solve_stage", "split_held_out"]

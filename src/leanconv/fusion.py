"""Fusion for deployment: each exact identity a small pure function, plus ``fuse(model)``.

The algebra works on tensors only (no module walking), so each identity is testable against
its closed form:

* :func:`fold_bn` — an eval-mode BatchNorm after a conv or transposed conv is a per-output-
  channel scale and shift, i.e. the same conv with scaled weights and a new bias;
* :func:`add_branches` — parallel convs on the same input with equal kernels whose outputs
  are summed are one conv with the summed weights and biases;
* :func:`pad_kernel` — a smaller odd kernel is the larger kernel zero-padded around its centre
  (with the padding adjusted so the output grid stays put, as ACBlock's branches do);
* :func:`merge_1x1_kxk` — a 1x1 conv followed by a kxk conv is one kxk conv.

:func:`fuse` applies them model-wide: blocks with a ``fuse()`` method become that single
module, every declared or sequential conv->BatchNorm pair is folded, and then every
BatchNorm left that a ``torch.fx`` graph of the model shows right after a conv
(:mod:`leanconv.graph_fusion`). ``fuse(model, report=True)`` also says what it folded and, for
each BatchNorm left, why (:class:`FusionReport`). What it reads from a layer (``fuse()``,
``conv_norm_pairs``, ``output_stage``, ``reorders_output``) is the layer protocol of
:mod:`leanconv.protocol`.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union, overload

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from leanconv import graph_fusion
from leanconv.protocol import conv_norm_pairs_of, fuse_method_of, norm_target_of

WeightBias = Tuple[torch.Tensor, Optional[torch.Tensor]]

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


# ---------------------------------------------------------------------------- pure algebra


def fold_bn(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    gamma: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    transposed: bool = False,
    groups: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold ``BN(conv(x))`` (eval mode) into one conv: return the new ``(weight, bias)``.

    ``BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta = s * y + (beta - s * mean)`` with
    ``s = gamma / sqrt(var + eps)`` per output channel, so the weight of output channel ``o`` is
    scaled by ``s[o]`` and the bias becomes ``s * (b - mean) + beta``. ``gamma``/``beta`` None
    mean a BN without affine parameters (1 and 0); ``bias`` None a conv without bias.

    A conv weight is ``(O, C/g, kh, kw)``: output channel ``o`` is row ``o``. A transposed conv
    weight is ``(C, O/g, kh, kw)``: output channel ``o`` of group ``j`` is column
    ``o - j*O/g`` of rows ``j*C/g ... (j+1)*C/g - 1``.
    """
    _check_fold_shapes(weight, bias, running_mean, running_var, gamma, beta, transposed, groups)
    scale = torch.rsqrt(running_var + eps)
    if gamma is not None:
        scale = scale * gamma
    shift = -running_mean if bias is None else bias - running_mean
    new_bias = shift * scale if beta is None else shift * scale + beta
    if not transposed:
        return weight * scale.reshape(-1, 1, 1, 1), new_bias
    c_in, o_per_group = weight.shape[:2]
    grouped = weight.reshape(groups, c_in // groups, o_per_group, *weight.shape[2:])
    scaled = grouped * scale.reshape(groups, 1, o_per_group, 1, 1)
    return scaled.reshape(weight.shape), new_bias


def _check_fold_shapes(weight, bias, running_mean, running_var, gamma, beta, transposed, groups) -> None:
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D, got shape {tuple(weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups={groups!r} must be an int >= 1")
    if transposed and weight.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the transposed weight's C_in={weight.shape[0]}")
    out_channels = weight.shape[1] * groups if transposed else weight.shape[0]
    for name, t in (("bias", bias), ("running_mean", running_mean), ("running_var", running_var),
                    ("gamma", gamma), ("beta", beta)):
        if t is not None and tuple(t.shape) != (out_channels,):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, must be ({out_channels},): one value per output "
                f"channel of weight {tuple(weight.shape)} (transposed={transposed}, groups={groups})"
            )


def add_branches(branches: Iterable[WeightBias]) -> WeightBias:
    """Sum parallel convs on the same input (same kernel size, stride, groups and output grid).

    ``sum_i conv(x, W_i, b_i) = conv(x, sum_i W_i, sum_i b_i)`` by linearity; a missing bias
    counts as zero (the result has no bias only if no branch has one).
    """
    weight: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    for w, b in branches:
        if weight is not None and w.shape != weight.shape:
            raise ValueError(f"branch weight shape {tuple(w.shape)} must equal {tuple(weight.shape)} (pad_kernel first)")
        weight = w if weight is None else weight + w
        if b is not None:
            bias = b if bias is None else bias + b
    if weight is None:
        raise ValueError("branches must contain at least one (weight, bias) pair")
    return weight, bias


def pad_kernel(weight: torch.Tensor, kernel_size: Sequence[int]) -> torch.Tensor:
    """Zero-pad a ``(..., h, w)`` kernel to ``kernel_size`` around its centre.

    A ``1x3`` kernel run with padding ``(p - d, p)`` equals the ``3x3`` kernel that is zero
    except its centre row, run with padding ``(p, p)``; the sizes must differ by an even amount.
    """
    kh, kw = kernel_size
    h, w = weight.shape[-2:]
    if h > kh or w > kw or (kh - h) % 2 or (kw - w) % 2:
        raise ValueError(
            f"kernel of size {(h, w)} cannot be centred in kernel_size={tuple(kernel_size)} "
            "(it must be no larger and differ by an even amount in each dimension)"
        )
    top, left = (kh - h) // 2, (kw - w) // 2
    return F.pad(weight, (left, kw - w - left, top, kh - h - top))


def merge_1x1_kxk(
    w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor]
) -> WeightBias:
    """A 1x1 conv ``(M, C, 1, 1)`` followed by a kxk conv ``(O, M, kh, kw)`` as one kxk conv.

    ``W[o,c] = sum_m w2[o,m] * w1[m,c]`` and ``b = b2 + sum_{m,h,w} w2[o,m,h,w] * b1[m]``.
    Exact when the kxk conv pads nothing, or when ``b1`` is None/zero: zero padding of the
    1x1 output is not the 1x1 of zero padding when the 1x1 has a bias. Groups 1 only.
    """
    if w1.shape[-2:] != (1, 1):
        raise ValueError(f"w1 must be a 1x1 kernel (M, C, 1, 1), got shape {tuple(w1.shape)}")
    if w2.shape[1] != w1.shape[0]:
        raise ValueError(f"w2 has {w2.shape[1]} input channels, w1 gives {w1.shape[0]} (groups=1 only)")
    weight = torch.einsum("omhw,mc->ochw", w2, w1[:, :, 0, 0])
    bias = b2
    if b1 is not None:
        carried = torch.einsum("omhw,m->o", w2, b1)
        bias = carried if b2 is None else b2 + carried
    return weight, bias


# ---------------------------------------------------------------------------- modules


def _check_foldable(conv: nn.Module, bn: nn.Module) -> None:
    if not isinstance(conv, _CONVS):
        raise ValueError(f"conv={type(conv).__name__} must be an nn.Conv2d or nn.ConvTranspose2d")
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise ValueError(f"bn={type(bn).__name__} must be a BatchNorm module")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): it cannot be folded")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"bn.num_features={bn.num_features} must equal conv.out_channels={conv.out_channels}")
    problem = _statistics_problem(bn)
    if problem is not None:
        raise ValueError(f"bn {problem}")


def _statistics_problem(bn: nn.Module) -> Optional[str]:
    """What makes a BatchNorm's running statistics unusable (None when they are fine).

    ``running_var`` is a variance: a negative or non-finite entry (a hand edit, a corrupt
    checkpoint) makes ``1/sqrt(var + eps)`` meaningless, so nothing may be folded from it.
    """
    if bn.running_var is None or bn.running_var.is_meta:
        return None
    for name, stat in (("running_mean", bn.running_mean), ("running_var", bn.running_var)):
        bad = ~torch.isfinite(stat)
        if bad.any():
            channel = int(bad.nonzero()[0])
            return f"has a non-finite {name} ({float(stat[channel])} at channel {channel}): it must be finite"
    negative = bn.running_var < 0
    if negative.any():
        channel = int(negative.nonzero()[0])
        return (f"has a negative running_var ({float(bn.running_var[channel]):.6g} at channel {channel}): "
                "a variance must be >= 0")
    return None


@torch.no_grad()
def fuse_conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A new conv of the same class as ``conv`` (with a bias) equal to ``bn(conv(x))`` in eval mode.

    ``conv`` keeps its padding behaviour (leanconv's 'same' subclasses included); the inputs
    are not modified. A half or bfloat16 pair is folded in float32 and rounded once to the
    conv's dtype (folding in half precision would round ``1/sqrt(var + eps)`` first).
    """
    _check_foldable(conv, bn)
    work = torch.promote_types(conv.weight.dtype, torch.float32)

    def up(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.to(work)

    weight, bias = fold_bn(
        up(conv.weight), up(conv.bias), up(bn.running_mean), up(bn.running_var), bn.eps, up(bn.weight),
        up(bn.bias), transposed=isinstance(conv, nn.ConvTranspose2d), groups=conv.groups,
    )
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(weight.to(conv.weight.dtype))
    fused.bias = nn.Parameter(bias.to(conv.weight.dtype))
    return fused


def _get(root: nn.Module, path: str) -> Optional[nn.Module]:
    """``root.<path>``, or None when the path does not resolve (e.g. a block fused away)."""
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        return None


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(_get(root, parent_path), name, module)


def _fold_pair(owner: nn.Module, conv_path: str, norm_path: str) -> Optional[str]:
    """Fold ``owner.<norm_path>`` into ``owner.<conv_path>`` when both are foldable; return the
    path of the conv it went into (None when skipped).

    A multi-stage layer at ``conv_path`` (depthwise separable, asymmetric, Tucker-2) ends in
    a plain conv, its ``output_stage``: the norm folds into that. Skipped when a path
    does not resolve, there is no such conv (a reordering layer included), the conv is a
    foreign subclass with its own forward (it may rescale its weight), the norm is not a
    BatchNorm with running statistics (``nn.Identity`` included), or the channels differ.
    """
    layer, norm = _get(owner, conv_path), _get(owner, norm_path)
    inner = None if layer is None else norm_target_of(layer)
    if inner is None:
        return None
    conv_path = _join(conv_path, inner)
    conv = _get(owner, conv_path)
    if not isinstance(conv, _CONVS) or not graph_fusion.plain_conv(conv) or not graph_fusion.is_batch_norm(norm):
        return None
    if norm.running_mean is None or norm.running_var is None or norm.num_features != conv.out_channels:
        return None
    _set(owner, conv_path, fuse_conv_bn(conv, norm))
    _set(owner, norm_path, nn.Identity())
    return conv_path


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _fuse_block(module: nn.Module) -> nn.Module:
    """``module.fuse()`` when it has one and it returns a module, else ``module``; then the same
    for every child of the result (a fused block's result may itself hold fusable blocks)."""
    method = fuse_method_of(module)
    if method is not None:
        result = method()
        if isinstance(result, nn.Module):
            module = result
    for name, child in list(module.named_children()):
        fused = _fuse_block(child)
        if fused is not child:
            setattr(module, name, fused)
    return module


@dataclass(frozen=True)
class FusionReport:
    """What :func:`fuse` did with each BatchNorm: folded into a conv, or kept, and why.

    ``folded`` holds ``(norm path, conv path)`` pairs, ``kept`` ``(norm path, reason)`` pairs,
    both with the fused model's paths. ``graph`` says how the BatchNorms that no Sequential or
    declared pair covered were examined: ``'not needed'`` (none was left), ``'GraphModule'``
    (the model's own graph), ``'symbolic_trace'``, or ``'failed (<error>)'``. BatchNorms inside
    a block that its own ``fuse()`` method replaced (``ACBlock``) are in neither list.
    """

    folded: Tuple[Tuple[str, str], ...]
    kept: Tuple[Tuple[str, str], ...]
    graph: str

    @property
    def num_folded(self) -> int:
        return len(self.folded)

    @property
    def num_kept(self) -> int:
        return len(self.kept)

    def __str__(self) -> str:
        lines = [f"BatchNorms folded: {self.num_folded}, kept: {self.num_kept} (graph: {self.graph})"]
        lines += [f"  kept '{path}': {reason}" for path, reason in self.kept]
        return "\n".join(lines)


def _check_model(model: nn.Module) -> None:
    """Refuse, in one line, what fuse cannot fold meaningfully: no module, meta tensors (no
    values to compute new weights from), corrupt BatchNorm statistics."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be an nn.Module")
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_meta:
            raise ValueError(
                f"model tensor '{name}' is on the meta device: fuse computes new weights from the values; "
                "load real weights first (model.to_empty(device='cpu'), then load_state_dict)"
            )
    for path, module in model.named_modules():
        problem = _statistics_problem(module) if graph_fusion.is_batch_norm(module) else None
        if problem is not None:
            raise ValueError(f"BatchNorm '{path}' {problem}; fuse refuses to fold it")


def _pair_owners(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The modules whose own forward runs as written, with their paths: every module, except
    in a ``GraphModule``, where only the modules its graph calls as a whole (and theirs) do."""
    if not isinstance(model, torch.fx.GraphModule):
        return list(model.named_modules())
    owners: List[Tuple[str, nn.Module]] = []
    for target in dict.fromkeys(graph_fusion.called_modules(model)):
        owners += list(model.get_submodule(target).named_modules(prefix=target))
    return owners


def _fold_declared(model: nn.Module) -> List[Tuple[str, str]]:
    """Fold every declared ``conv_norm_pairs`` pair and every conv -> BatchNorm neighbour pair
    of an ``nn.Sequential``; return the ``(norm path, conv path)`` pairs folded."""
    folded: List[Tuple[str, str]] = []
    for prefix, owner in _pair_owners(model):
        pairs = list(conv_norm_pairs_of(owner))
        if isinstance(owner, nn.Sequential):
            names = [name for name, _ in owner.named_children()]
            pairs += list(zip(names, names[1:]))
        for conv_path, norm_path in pairs:
            conv = _fold_pair(owner, conv_path, norm_path)
            if conv is not None:
                folded.append((_join(prefix, norm_path), _join(prefix, conv)))
    return folded


def _fold_graph(model: nn.Module) -> Tuple[List[Tuple[str, str]], Dict[str, str], str]:
    """Fold the BatchNorms left whose graph input is a conv (:mod:`leanconv.graph_fusion`).

    In a ``GraphModule`` the norm's node goes and the conv's output feeds its users; in any
    other module the norm becomes ``nn.Identity`` (the forward code stays as written). Returns
    the pairs folded, a reason for every BatchNorm left, and how the graph was obtained.
    """
    left = [path for path, m in model.named_modules() if graph_fusion.is_batch_norm(m)]
    if not left:
        return [], {}, "not needed"
    is_graph_module = isinstance(model, torch.fx.GraphModule)
    try:
        graph = graph_fusion.model_graph(model)
    except Exception as error:  # whatever the trace of arbitrary user code raises
        lines = str(error).strip().splitlines()
        what = f"{type(error).__name__}: {lines[0] if lines else ''}"
        return [], {path: f"the model could not be traced: {what}" for path in left}, f"failed ({what})"
    folds, reasons = graph_fusion.plan_folds(model, graph)
    folded: List[Tuple[str, str]] = []
    for conv_node, norm_node in folds:
        conv, norm = model.get_submodule(conv_node.target), model.get_submodule(norm_node.target)
        _set(model, conv_node.target, fuse_conv_bn(conv, norm))
        if is_graph_module:
            graph_fusion.remove_norm_node(model, conv_node, norm_node)
        else:
            _set(model, norm_node.target, nn.Identity())
        folded.append((norm_node.target, conv_node.target))
    if is_graph_module and folds:
        model.recompile()
    done = {norm for norm, _ in folded}
    kept = {path: reasons.get(path) or graph_fusion.unlisted_reason(graph, path) for path in left if path not in done}
    return folded, kept, "GraphModule" if is_graph_module else "symbolic_trace"


@overload
def fuse(model: nn.Module, inplace: bool = ..., report: Literal[False] = ...) -> nn.Module:
    ...


@overload
def fuse(model: nn.Module, inplace: bool = ..., *, report: Literal[True]) -> Tuple[nn.Module, FusionReport]:
    ...


def fuse(
    model: nn.Module, inplace: bool = False, report: bool = False
) -> Union[nn.Module, Tuple[nn.Module, FusionReport]]:
    """Fuse a whole model for deployment; the result is in eval mode with the same eval output.

    1. every submodule (the model included) with a ``fuse()`` method callable without
       arguments (``ACBlock``) becomes the module it returns, when it returns one;
    2. every module's declared ``conv_norm_pairs`` (attribute paths relative to it) are folded;
    3. inside every ``nn.Sequential``, a conv directly followed by a BatchNorm is folded;
    4. every BatchNorm left whose one input, in the model's ``torch.fx`` graph (a
       ``GraphModule``'s own, else a symbolic trace), is a conv module called once whose
       output nothing else uses, is folded.

    A pair is skipped when its norm is not a BatchNorm with running statistics
    (``nn.Identity``, GroupNorm, ...), its conv is not an ``nn.Conv2d``/``nn.ConvTranspose2d``
    (or is another library's subclass with its own forward), the channel counts differ, or a
    path no longer resolves after step 1.

    Folded norms become ``nn.Identity`` so module paths and Sequential indices keep their
    meaning; in a ``GraphModule``, step 4 removes the norm's node and module instead. The
    input model is left untouched unless ``inplace=True``. ``report=True`` returns
    ``(model, FusionReport)``: what was folded and why each BatchNorm left stays. Half and
    bfloat16 models fold (in float32, rounded once); a model with meta tensors, or a
    BatchNorm with a negative or non-finite running statistic, is refused with a ValueError.
    """
    _check_model(model)
    for name, flag in (("inplace", inplace), ("report", report)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}={flag!r} must be a bool")
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    # A model that is itself a fusable block becomes its fused module (a new object even
    # with inplace=True); the folding below still runs on it.
    model = _fuse_block(model)
    folded = _fold_declared(model)
    more, kept, how = _fold_graph(model)
    model.eval()
    if not report:
        return model
    return model, FusionReport(tuple(folded + more), tuple(kept.items()), how)


__all__ = ["FusionReport", "add_branches", "fold_bn", "fuse", "fuse_conv_bn", "merge_1x1_kxk", "pad_kernel"]

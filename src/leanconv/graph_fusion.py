"""Which BatchNorms fold into a conv, read from a ``torch.fx`` graph's edges.

``leanconv.fuse`` finds conv -> BatchNorm pairs in ``nn.Sequential`` s and declared
``conv_norm_pairs``. A model whose forward is code (a plain ``nn.Module``) or a graph (a
``torch.fx.GraphModule``, e.g. an onnx2torch import) has no such structure, but its graph
says exactly what feeds what. This module reads the graph only and changes nothing; the
folding itself (the ``fold_bn`` algebra) stays in :mod:`leanconv.fusion`, which calls this.

A BatchNorm node folds when its one input is a call of an ``nn.Conv2d`` /
``nn.ConvTranspose2d`` module that nothing else uses, each module is called once, and the
forward reads neither module's tensors directly: then replacing the conv by the folded conv
and the BatchNorm by the identity changes nothing else in the forward. Every other
BatchNorm gets a one-line reason.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
from torch import nn

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
_PLAIN_FORWARDS = (nn.Conv2d.forward, nn.ConvTranspose2d.forward)

Fold = Tuple[torch.fx.Node, torch.fx.Node]  # (conv call node, BatchNorm call node)


def is_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm (any dimension, SyncBatchNorm included)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


class _FoldTracer(torch.fx.Tracer):
    """Keeps every conv and BatchNorm (subclasses included) one call, so an edge between them
    is an edge between two ``call_module`` nodes; leanconv's own layers are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _CONVS) or is_batch_norm(m) or super().is_leaf_module(m, qualname)


def model_graph(model: nn.Module) -> torch.fx.Graph:
    """The graph of ``model``: its own for a ``GraphModule``, else a symbolic trace.

    Raises what ``torch.fx`` raises when the forward cannot be traced (data-dependent
    control flow, unsupported calls).
    """
    if isinstance(model, torch.fx.GraphModule):
        return model.graph
    return _FoldTracer().trace(model)


def _describe(node: torch.fx.Node) -> str:
    """A node as a reader knows it: the model input, a function, a method or a module."""
    if node.op == "placeholder":
        return f"the model input '{node.target}'"
    if node.op == "call_function":
        return f"{getattr(node.target, '__name__', str(node.target))} (node '{node.name}')"
    if node.op == "call_method":
        return f".{node.target}() (node '{node.name}')"
    if node.op == "get_attr":
        return f"the attribute '{node.target}'"
    return f"'{node.target}'"


def plain_conv(conv: nn.Module) -> bool:
    """A conv whose weight acts as a plain conv's: nn's own forward or leanconv's subclasses
    (they only pad the input or crop the output). A foreign subclass with its own forward
    (weight standardization, say) may rescale the weight, which would undo the fold."""
    forward = type(conv).forward
    return forward in _PLAIN_FORWARDS or type(conv).__module__.startswith("leanconv.")


def _source_reason(model: nn.Module, node: torch.fx.Node, calls: Counter) -> Optional[str]:
    """Why the one input of BatchNorm ``node`` is not a conv it can fold into (None: it is)."""
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], torch.fx.Node):
        return "it takes more than one tensor argument"
    source = node.args[0]
    if source.op != "call_module":
        return f"its input is {_describe(source)}, not a conv"
    conv = model.get_submodule(source.target)
    if not isinstance(conv, _CONVS):
        return f"its input is {type(conv).__name__} '{source.target}', not a Conv2d or ConvTranspose2d"
    if not plain_conv(conv):
        return f"its input '{source.target}' is a {type(conv).__name__} with its own forward"
    if calls[source.target] > 1:
        return f"conv '{source.target}' is called {calls[source.target]} times"
    if len(source.users) > 1:
        return f"conv '{source.target}' output has {len(source.users)} users"
    return None


def _reason(model: nn.Module, node: torch.fx.Node, calls: Counter, read: Sequence[str]) -> Optional[str]:
    """Why BatchNorm call ``node`` does not fold, or None when it does."""
    norm = model.get_submodule(node.target)
    if norm.running_mean is None or norm.running_var is None:
        return "track_running_stats=False: there are no running statistics to fold"
    if calls[node.target] > 1:
        return f"it is called {calls[node.target]} times"
    reason = _source_reason(model, node, calls)
    if reason is not None:
        return reason
    conv_path = node.args[0].target
    for path in (conv_path, node.target):
        direct = [r for r in read if r == path or r.startswith(f"{path}.")]
        if direct:
            return f"the forward reads '{direct[0]}' directly"
    conv = model.get_submodule(conv_path)
    if norm.num_features != conv.out_channels:
        return f"num_features={norm.num_features} differs from conv '{conv_path}' out_channels={conv.out_channels}"
    return None


def plan_folds(model: nn.Module, graph: torch.fx.Graph) -> Tuple[List[Fold], Dict[str, str]]:
    """The BatchNorm calls of ``graph`` that fold into their conv, and a reason for each other.

    Returns ``(folds, kept)``: ``folds`` lists ``(conv node, norm node)`` pairs; ``kept`` maps
    the path of every other BatchNorm the graph calls to why it stays.
    """
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    read = [n.target for n in graph.nodes if n.op == "get_attr"]
    folds: List[Fold] = []
    kept: Dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not is_batch_norm(model.get_submodule(node.target)):
            continue
        reason = _reason(model, node, calls, read)
        if reason is None:
            folds.append((node.args[0], node))
        else:
            kept.setdefault(node.target, reason)
    return folds, kept


def unlisted_reason(graph: torch.fx.Graph, path: str) -> str:
    """Why a BatchNorm at ``path`` that the graph does not call as a module was not examined."""
    for node in graph.nodes:
        if node.op == "call_module" and path.startswith(f"{node.target}."):
            return f"it is inside '{node.target}', which the graph calls as one module"
    return "the traced forward never calls it as a module"


def remove_norm_node(model: torch.fx.GraphModule, conv: torch.fx.Node, norm: torch.fx.Node) -> None:
    """Take a folded BatchNorm out of a ``GraphModule``: its users read the conv instead, and
    the module goes when no other node names it (call ``model.recompile()`` afterwards)."""
    norm.replace_all_uses_with(conv)
    model.graph.erase_node(norm)
    target = norm.target
    still_named = any(n.op in ("call_module", "get_attr") and (n.target == target or n.target.startswith(f"{target}."))
                      for n in model.graph.nodes)
    if not still_named:
        model.delete_submodule(target)


def called_modules(model: torch.fx.GraphModule) -> List[str]:
    """Paths of the modules a ``GraphModule``'s graph calls as a whole."""
    return [n.target for n in model.graph.nodes if n.op == "call_module"]


__all__ = ["Fold", "called_modules", "is_batch_norm", "model_graph", "plain_conv", "plan_folds", "remove_norm_node",
           "unlisted_reason"]

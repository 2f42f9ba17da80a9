"""Float model to :class:`~leanconv.quant.model.QuantizedModel`: fold, trace, calibrate, quantize.

1. ``leanconv.fuse`` folds every BatchNorm that follows a conv (``fold_bn`` algebra) on a copy;
   the user's model is never modified.
2. ``torch.fx`` traces the copy with every ``nn.Conv2d`` (leanconv's kinds are made of them),
   ``nn.Linear``, activation, norm, pooling and dropout module kept as a leaf, and the graph
   must be a chain of: conv (zero padding), ReLU, Identity/Dropout, global average pooling +
   flatten + Linear, Linear. Anything else (a residual add, a concat, an unfolded norm, another
   activation) raises ``ValueError`` naming the node, before any calibration.
3. Observers record the input's and every stage's output range on the calibration batches;
   the dialect turns ranges into activation scales; weights get per-channel int8 scales; the
   dialect's requantization constants follow (a factor it cannot represent raises here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from leanconv.data.batches import check_batch, input_batches
from leanconv.fusion import fuse
from leanconv.padding import same_pad_amounts
from leanconv.quant.checks import check_name
from leanconv.quant.dialects import Dialect, make_dialect
from leanconv.quant.layers import IntConv2d, IntLayer, IntLinear
from leanconv.quant.model import QuantizedModel
from leanconv.quant.observers import make_observer
from leanconv.quant.qparams import activation_qparams, quantize_weight
from leanconv.quant.requant import make_requant

SUPPORTED = ("nn.Conv2d with zero padding (every leanconv conv kind is made of them), ReLU, "
             "BatchNorm right after a conv (folded), Identity, Dropout, "
             "AdaptiveAvgPool2d(1) + flatten + Linear, Linear")
_LEAVES = (nn.Conv2d, nn.Linear, nn.ReLU, nn.modules.batchnorm._BatchNorm, nn.Identity, nn.Dropout,
           nn.AdaptiveAvgPool2d, nn.Flatten)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.nn.functional.relu)
_FLATTEN_FUNCTIONS = (torch.flatten,)


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


@dataclass
class _Stage:
    module: nn.Module
    path: str
    relu: bool = False
    pool: bool = False

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            x = x.mean(dim=(2, 3))
        y = self.module(x)
        return F.relu(y) if self.relu else y


def _unsupported(node: torch.fx.Node, what: str) -> ValueError:
    return ValueError(f"unsupported layer: {what} (fx node {node.name!r}); integer quantization supports {SUPPORTED}")


def _chain_nodes(graph: torch.fx.Graph) -> Iterator[torch.fx.Node]:
    """The graph's operation nodes in order, checked to form a chain as they are reached: one model
    input, every node taking only the previous node's result, the output being the last one's."""
    previous: Optional[torch.fx.Node] = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise _unsupported(node, "a second model input")
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise _unsupported(node, "an output that is not the last layer's result")
            return
        if node.all_input_nodes != [previous]:
            raise _unsupported(node, f"{node.op} {node.target!r} that does not take only the previous result "
                                     "(a residual add, concat or branch)")
        yield node
        previous = node


def _is_relu(node: torch.fx.Node, target: Optional[nn.Module]) -> bool:
    """An ``nn.ReLU`` module, ``F.relu``/``torch.relu``, or the ``.relu()``/``.relu_()`` method."""
    return (isinstance(target, nn.ReLU) or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("relu", "relu_")))


def _is_flatten(node: torch.fx.Node, target: Optional[nn.Module]) -> bool:
    """An ``nn.Flatten`` module, ``torch.flatten``, or the ``.flatten()`` method."""
    return (isinstance(target, nn.Flatten) or (node.op == "call_function" and node.target in _FLATTEN_FUNCTIONS)
            or (node.op == "call_method" and node.target == "flatten"))


def _node_kind(node: torch.fx.Node, target: Optional[nn.Module]) -> str:
    """What a chain node is to the quantizer: one of the keys of :meth:`_Chain.add`'s handlers."""
    if isinstance(target, nn.Conv2d):
        return "conv"
    if isinstance(target, nn.Linear):
        return "linear"
    if _is_relu(node, target):
        return "relu"
    if isinstance(target, (nn.Identity, nn.Dropout)):
        return "skip"
    if isinstance(target, nn.modules.batchnorm._BatchNorm):
        return "norm"
    if isinstance(target, nn.AdaptiveAvgPool2d) and target.output_size in (1, (1, 1)):
        return "pool"
    return "flatten" if _is_flatten(node, target) else "unsupported"


@dataclass
class _Chain:
    """The stages found so far while walking the traced chain, and whether the map is pooled/flattened."""

    stages: List[_Stage] = field(default_factory=list)
    pooled: bool = False
    flat: bool = False

    def add(self, node: torch.fx.Node, target: Optional[nn.Module]) -> None:
        """Take the next node of the chain (``target``: its module, for a module call), or raise naming it."""
        handlers = {"conv": self._conv, "linear": self._linear, "relu": self._relu, "skip": self._skip,
                    "norm": self._norm, "pool": self._pool, "flatten": self._flatten, "unsupported": self._refuse}
        handlers[_node_kind(node, target)](node, target)

    def _conv(self, node: torch.fx.Node, conv: nn.Conv2d) -> None:
        if self.pooled:
            raise _unsupported(node, f"conv {node.target} after global pooling")
        if conv.padding_mode != "zeros":
            raise _unsupported(node, f"{node.target} with padding_mode={conv.padding_mode!r} (only 'zeros')")
        self.stages.append(_Stage(conv, node.target))

    def _linear(self, node: torch.fx.Node, linear: nn.Linear) -> None:
        if self.pooled and not self.flat:
            raise _unsupported(node, f"Linear {node.target} on the unflattened pooled map")
        if not self.pooled and self.stages and self.stages[-1].is_conv:
            raise _unsupported(node, f"Linear {node.target} on a flattened feature map (pool it globally first)")
        self.stages.append(_Stage(linear, node.target, pool=self.pooled))
        self.pooled = self.flat = False

    def _relu(self, node: torch.fx.Node, target: Optional[nn.Module]) -> None:
        if not self.stages or self.stages[-1].relu or self.pooled:
            raise _unsupported(node, "a ReLU that does not directly follow a conv or linear layer")
        self.stages[-1].relu = True

    def _skip(self, node: torch.fx.Node, target: nn.Module) -> None:
        """Identity and Dropout (eval mode) change nothing."""

    def _norm(self, node: torch.fx.Node, target: nn.Module) -> None:
        raise _unsupported(node, f"BatchNorm {node.target} that could not be folded (it must directly follow a conv)")

    def _pool(self, node: torch.fx.Node, target: nn.Module) -> None:
        self.pooled = True

    def _flatten(self, node: torch.fx.Node, target: Optional[nn.Module]) -> None:
        if not self.pooled:
            raise _unsupported(node, "flatten of a feature map that was not globally pooled")
        self.flat = True

    def _refuse(self, node: torch.fx.Node, target: Optional[nn.Module]) -> None:
        if target is not None:
            raise _unsupported(node, f"{type(target).__name__} at {node.target!r}")
        raise _unsupported(node, f"{node.op} {getattr(node.target, '__name__', str(node.target))!r}")

    def finish(self) -> List[_Stage]:
        """The stages, once the chain ended: not on a pooled map, and not empty."""
        if self.pooled:
            raise ValueError("unsupported layer: global pooling at the end must be followed by flatten and a Linear")
        if not self.stages:
            raise ValueError(f"the model has no conv or linear layer to quantize; supported: {SUPPORTED}")
        return self.stages


def trace_stages(model: nn.Module) -> List[_Stage]:
    """The model (BN already folded) as a chain of conv/linear stages with their ReLUs.

    ``torch.fx`` traces it with conv, linear, activation, norm, pooling and dropout modules kept
    as leaves; any node outside the supported chain raises ``ValueError`` naming it.
    """
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    chain = _Chain()
    for node in _chain_nodes(graph):
        chain.add(node, modules.get(node.target) if node.op == "call_module" else None)
    return chain.finish()


def _conv_pads(conv: nn.Conv2d, hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` zero padding the conv applies to an ``hw`` input."""
    if getattr(conv, "dynamic_same", False):  # leanconv's 'same' that needs an asymmetric pad
        top, bottom = same_pad_amounts(hw[0], conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        left, right = same_pad_amounts(hw[1], conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        return (top, bottom, left, right)
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":  # PyTorch's own (stride 1): the extra pixel goes after
        total = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation)]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    ph, pw = conv.padding
    return (ph, ph, pw, pw)


def _calibration_data(calib: object) -> List[torch.Tensor]:
    """``calib`` in any form of :mod:`leanconv.data.batches`, checked: 4-D float batches, finite,
    all of one ``(C, H, W)``, not all zero (a zero input range has no scale to find)."""
    batches = input_batches(calib, "calib")
    for index, batch in enumerate(batches):
        if batch.shape[1:] != batches[0].shape[1:]:
            raise ValueError(f"calib: batch {index} has shape {tuple(batch.shape)}; every batch must be (N, "
                             f"{', '.join(map(str, batches[0].shape[1:]))}) like batch 0")
    if not any(bool(batch.any()) for batch in batches):
        raise ValueError("calib: every input value is 0, so the input range is empty and has no scale; "
                         "calibrate on representative inputs")
    return batches


def _on_model(batches: List[torch.Tensor], fused: nn.Module, stages: List[_Stage]) -> List[torch.Tensor]:
    """The batches checked against the first layer's channel count, on the CPU in the model's float dtype."""
    first = stages[0].module
    channels = first.in_channels if isinstance(first, nn.Conv2d) else None
    dtype = next(fused.parameters()).dtype
    return [check_batch(batch, "calib", index, channels, finite=False).to("cpu", dtype)
            for index, batch in enumerate(batches)]


def _check_traced_chain(fused: nn.Module, stages: List[_Stage], batch: torch.Tensor) -> None:
    """The traced stages must compute what the model's forward does, and their paths be valid layer names."""
    for stage in stages:
        check_name(stage.path, "layer path")
    expected = fused(batch)
    x = batch
    for stage in stages:
        x = stage(x)
    if x.shape != expected.shape or not torch.allclose(x, expected, rtol=1e-4, atol=1e-5 * (1 + float(expected.abs().max()))):
        raise ValueError("unsupported layer: the model's forward does more than its traced chain of layers "
                         "(control flow or hidden ops); integer quantization supports " + SUPPORTED)


def _calibrate(stages: List[_Stage], batches: List[torch.Tensor], observer: str, percentile: float,
               progress: bool) -> Tuple[list, List[Tuple[int, int]]]:
    """Observers of the input and of every stage's output over the batches, and each stage's input size."""
    observers = [make_observer(observer, percentile) for _ in range(len(stages) + 1)]
    in_hw: List[Tuple[int, int]] = [(0, 0)] * len(stages)
    for x in _progress(batches, progress):
        observers[0].observe(x)
        for index, stage in enumerate(stages):
            if x.dim() == 4:
                in_hw[index] = (x.shape[2], x.shape[3])
            x = stage(x)
            observers[index + 1].observe(x)
    return observers, in_hw


def _int_layer(dialect: Dialect, stage: _Stage, in_q, out_q, in_hw: Tuple[int, int], per_channel: bool) -> IntLayer:
    """One stage as an integer layer: int8 weights, the dialect's requantization constants."""
    module = stage.module
    w_q, w_scale = quantize_weight(module.weight, per_channel)
    pool = in_hw[0] * in_hw[1] if stage.pool else 1
    acc_scale = in_q.scale * w_scale / pool
    requant = make_requant(dialect, acc_scale / out_q.scale, module.bias, acc_scale, out_q, stage.relu,
                           stage.path, per_channel)
    if stage.is_conv:
        return IntConv2d(w_q, requant, in_q, module.stride, _conv_pads(module, in_hw), module.dilation,
                         module.groups, stage.path)
    return IntLinear(w_q, requant, in_q, pool if stage.pool else None, stage.path)


@torch.no_grad()
def quantize(
    model: nn.Module,
    calib: Any,
    dialect: Union[str, Dialect] = "apfixed",
    observer: str = "minmax",
    percentile: float = 99.99,
    per_channel: bool = True,
    progress: bool = False,
    **dialect_settings,
) -> QuantizedModel:
    """Quantize a float model built from convs, ReLUs and a pooled linear head to integers.

    ``calib``: a few representative inputs in any form of :mod:`leanconv.data.batches` (a
    tensor, a list or DataLoader of batches or of ``(x, y)`` pairs, dicts; docs/data.md); a
    wrong channel count, NaN/inf or an all-zero input is refused naming the batch. ``dialect``: ``'apfixed'`` or
    ``'tflite'`` (settings such as ``narrowing='round'``, ``store='wrap'``, ``rounding='single'``
    by keyword) or an :class:`ApFixed`/:class:`TFLite`. ``observer``: ``'minmax'`` or
    ``'percentile'``. ``per_channel``: one weight scale per output channel (else per tensor).
    The model is not modified: BN folding works on a copy, in eval mode whatever the model's own
    flag (BatchNorm's running statistics, Dropout off), on the CPU, where the integer reference
    computes. A layer whose output is 0 on every calibration value gets scale 1/255.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be an nn.Module")
    dialect = make_dialect(dialect, **dialect_settings)
    make_observer(observer, percentile)  # validates observer and percentile before any work
    batches = _calibration_data(calib)
    fused = fuse(model).cpu()  # a copy in eval mode, BN folded
    stages = trace_stages(fused)
    batches = _on_model(batches, fused, stages)
    _check_traced_chain(fused, stages, batches[0])
    observers, in_hw = _calibrate(stages, batches, observer, percentile, progress)
    qparams = [activation_qparams(dialect, *obs.range()) for obs in observers]
    layers = [_int_layer(dialect, stage, qparams[i], qparams[i + 1], in_hw[i], per_channel)
              for i, stage in enumerate(stages)]
    return QuantizedModel(layers, dialect, layers[0].in_q, tuple(batches[0].shape[1:]), type(model).__name__)


def _progress(items: List[torch.Tensor], show: bool):
    if not show:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, description="calibrating", console=Console(stderr=True), transient=True)


__all__ = ["SUPPORTED", "quantize", "trace_stages"]

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

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from leanconv.fusion import fuse
from leanconv.padding import same_pad_amounts
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


def trace_stages(model: nn.Module) -> List[_Stage]:
    """The model (BN already folded) as a chain of conv/linear stages with their ReLUs."""
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    stages: List[_Stage] = []
    previous: Optional[torch.fx.Node] = None
    pooled = flat = False
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise _unsupported(node, "a second model input")
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise _unsupported(node, "an output that is not the last layer's result")
            break
        if node.all_input_nodes != [previous]:
            raise _unsupported(node, f"{node.op} {node.target!r} that does not take only the previous result "
                                     "(a residual add, concat or branch)")
        target = modules.get(node.target) if node.op == "call_module" else None
        is_relu = (isinstance(target, nn.ReLU) or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
                   or (node.op == "call_method" and node.target in ("relu", "relu_")))
        if isinstance(target, nn.Conv2d):
            if pooled:
                raise _unsupported(node, f"conv {node.target} after global pooling")
            if target.padding_mode != "zeros":
                raise _unsupported(node, f"{node.target} with padding_mode={target.padding_mode!r} (only 'zeros')")
            stages.append(_Stage(target, node.target))
        elif isinstance(target, nn.Linear):
            if pooled and not flat:
                raise _unsupported(node, f"Linear {node.target} on the unflattened pooled map")
            if not pooled and stages and stages[-1].is_conv:
                raise _unsupported(node, f"Linear {node.target} on a flattened feature map (pool it globally first)")
            stages.append(_Stage(target, node.target, pool=pooled))
            pooled = flat = False
        elif is_relu:
            if not stages or stages[-1].relu or pooled:
                raise _unsupported(node, "a ReLU that does not directly follow a conv or linear layer")
            stages[-1].relu = True
        elif isinstance(target, (nn.Identity, nn.Dropout)):
            pass
        elif isinstance(target, nn.modules.batchnorm._BatchNorm):
            raise _unsupported(node, f"BatchNorm {node.target} that could not be folded (it must directly follow a conv)")
        elif isinstance(target, nn.AdaptiveAvgPool2d) and target.output_size in (1, (1, 1)):
            pooled = True
        elif isinstance(target, nn.Flatten) or (node.op == "call_function" and node.target in _FLATTEN_FUNCTIONS) \
                or (node.op == "call_method" and node.target == "flatten"):
            if not pooled:
                raise _unsupported(node, "flatten of a feature map that was not globally pooled")
            flat = True
        elif target is not None:
            raise _unsupported(node, f"{type(target).__name__} at {node.target!r}")
        else:
            name = getattr(node.target, "__name__", str(node.target))
            raise _unsupported(node, f"{node.op} {name!r}")
        previous = node
    if pooled:
        raise ValueError("unsupported layer: global pooling at the end must be followed by flatten and a Linear")
    if not stages:
        raise ValueError(f"the model has no conv or linear layer to quantize; supported: {SUPPORTED}")
    return stages


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


def _batches(calib: Union[torch.Tensor, Iterable[torch.Tensor]]) -> List[torch.Tensor]:
    batches = [calib] if isinstance(calib, torch.Tensor) else list(calib)
    if not batches:
        raise ValueError("calib must hold at least one batch (an (N, C, H, W) tensor or a list of them)")
    for index, batch in enumerate(batches):
        if not isinstance(batch, torch.Tensor) or not batch.is_floating_point() or batch.dim() < 2:
            raise ValueError(f"calib[{index}] must be a float tensor (N, C, H, W), got "
                             f"{getattr(batch, 'dtype', type(batch).__name__)} {tuple(getattr(batch, 'shape', ()))}")
        if batch.shape[1:] != batches[0].shape[1:]:
            raise ValueError(f"calib[{index}] has shape {tuple(batch.shape)}; every batch must be (N, "
                             f"{', '.join(map(str, batches[0].shape[1:]))})")
    return batches


@torch.no_grad()
def quantize(
    model: nn.Module,
    calib: Union[torch.Tensor, Sequence[torch.Tensor]],
    dialect: Union[str, Dialect] = "apfixed",
    observer: str = "minmax",
    percentile: float = 99.99,
    per_channel: bool = True,
    progress: bool = False,
    **dialect_settings,
) -> QuantizedModel:
    """Quantize a float model built from convs, ReLUs and a pooled linear head to integers.

    ``calib``: a few float batches (a tensor or a list). ``dialect``: ``'apfixed'`` or
    ``'tflite'`` (settings such as ``narrowing='round'``, ``store='wrap'``, ``rounding='single'``
    by keyword) or an :class:`ApFixed`/:class:`TFLite`. ``observer``: ``'minmax'`` or
    ``'percentile'``. ``per_channel``: one weight scale per output channel (else per tensor).
    The model is not modified (BN folding works on a copy).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be an nn.Module")
    dialect = make_dialect(dialect, **dialect_settings)
    make_observer(observer, percentile)  # validates observer and percentile before any work
    batches = _batches(calib)
    fused = fuse(model)  # a copy in eval mode, BN folded
    stages = trace_stages(fused)
    expected = fused(batches[0])
    x = batches[0]
    for stage in stages:
        x = stage(x)
    if x.shape != expected.shape or not torch.allclose(x, expected, rtol=1e-4, atol=1e-5 * (1 + float(expected.abs().max()))):
        raise ValueError("unsupported layer: the model's forward does more than its traced chain of layers "
                         "(control flow or hidden ops); integer quantization supports " + SUPPORTED)
    observers = [make_observer(observer, percentile) for _ in range(len(stages) + 1)]
    in_hw: List[Tuple[int, int]] = [(0, 0)] * len(stages)
    for x in _progress(batches, progress):
        observers[0].observe(x)
        for index, stage in enumerate(stages):
            if x.dim() == 4:
                in_hw[index] = (x.shape[2], x.shape[3])
            x = stage(x)
            observers[index + 1].observe(x)
    in_q = activation_qparams(dialect, *observers[0].range())
    layers: List[IntLayer] = []
    for index, stage in enumerate(stages):
        out_q = activation_qparams(dialect, *observers[index + 1].range())
        module = stage.module
        w_q, w_scale = quantize_weight(module.weight, per_channel)
        pool = in_hw[index][0] * in_hw[index][1] if stage.pool else 1
        acc_scale = in_q.scale * w_scale / pool
        requant = make_requant(dialect, acc_scale / out_q.scale, module.bias, acc_scale, out_q, stage.relu,
                               stage.path, per_channel)
        if stage.is_conv:
            layers.append(IntConv2d(w_q, requant, in_q, module.stride, _conv_pads(module, in_hw[index]),
                                    module.dilation, module.groups, stage.path))
        else:
            layers.append(IntLinear(w_q, requant, in_q, pool if stage.pool else None, stage.path))
        in_q = out_q
    return QuantizedModel(layers, dialect, layers[0].in_q, tuple(batches[0].shape[1:]), type(model).__name__)


def _progress(items: List[torch.Tensor], show: bool):
    if not show:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, description="calibrating", console=Console(stderr=True), transient=True)


__all__ = ["SUPPORTED", "quantize", "trace_stages"]

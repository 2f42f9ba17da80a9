"""Dispatch-based op counting attributed to modules.

Every ATen op a forward pass runs passes through a ``TorchDispatchMode``; forward hooks keep a
stack of the modules being called, so each op is charged to the innermost module that ran it
(functional calls included). By default everything runs on the meta device: shapes and
counts without compute or memory, for any input size.

Counting conventions (MAC = one multiply-accumulate; FLOPs = 2 x MACs):

* conv: ``N * O * H' * W' * (C/g) * kh * kw``; transposed conv counts *input* positions:
  ``N * C * H * W * (O/g) * kh * kw``;
* matrix products (linear layers): ``n * k * m``;
* everything else (bias adds, norms, activations, pooling, resampling) is an "other op",
  counted per output element (per window element for pooling) in its own column.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

Shape = Tuple[int, ...]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _conv_macs(args: Sequence[Any], out: torch.Tensor) -> int:
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    kernel = _numel(w.shape[2:])
    if transposed:
        return x.numel() * w.shape[1] * kernel
    return out.numel() * w.shape[1] * kernel


def _mm_macs(args: Sequence[Any], out: torch.Tensor) -> int:
    a = args[-2]
    return out.numel() * a.shape[-1]


_MAC_OPS: Dict[Any, Callable[[Sequence[Any], torch.Tensor], int]] = {
    aten.convolution.default: _conv_macs,
    aten._convolution.default: _conv_macs,
    aten.mm.default: _mm_macs,
    aten.addmm.default: _mm_macs,
    aten.bmm.default: _mm_macs,
    aten.baddbmm.default: _mm_macs,
}

# Ops that move or view data without arithmetic: never counted.
_FREE = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "clone",
         "contiguous", "detach", "alias", "slice", "select", "unsqueeze", "squeeze", "cat",
         "split", "split_with_sizes", "empty", "zeros", "ones", "new_zeros", "new_empty",
         "_to_copy", "copy_", "copy", "as_strided", "flatten", "unbind", "constant_pad_nd",
         "reflection_pad2d", "replication_pad2d", "max_unpool2d", "lift_fresh", "zero_", "fill_",
         "max_pool2d_with_indices_backward", "_reshape_alias", "stack", "index", "narrow"}


def _other_ops(func: Any, args: Sequence[Any], out: Any) -> int:
    """Element operations of a non-MAC op: per output element, per window element for pooling."""
    name = func.__name__.split(".")[0] if hasattr(func, "__name__") else str(func)
    if name in _FREE:
        return 0
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if not outs:
        return 0
    first = outs[0]
    if name in ("max_pool2d_with_indices", "avg_pool2d", "max_pool2d"):
        kernel = args[1] if len(args) > 1 else (1, 1)
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        return first.numel() * _numel(kernel or (1, 1))
    if name in ("mean", "sum", "amax", "amin", "max", "_adaptive_avg_pool2d", "adaptive_avg_pool2d", "var_mean"):
        source = args[0] if args and isinstance(args[0], torch.Tensor) else first
        return source.numel()
    return first.numel()


@dataclass
class ModuleCall:
    """What one module call did itself (children's ops are charged to the children)."""

    path: str
    module: nn.Module
    input_shape: Optional[Shape] = None
    output_shape: Optional[Shape] = None
    input_bytes: int = 0
    output_bytes: int = 0
    macs: int = 0
    other_ops: int = 0
    op_names: List[str] = field(default_factory=list)
    weight_shape: Optional[Shape] = None
    transposed: bool = False
    groups: int = 1
    is_conv: bool = False
    peak_bytes: int = 0  # on the outermost call: peak live activation bytes of the whole pass


def _first_tensor(value: Any) -> Optional[torch.Tensor]:
    for item in tree_flatten(value)[0]:
        if isinstance(item, torch.Tensor):
            return item
    return None


class _Counter(TorchDispatchMode):
    """Charges each op to the innermost running module, and tracks live activation memory.

    Memory: every op output that is not an alias of an input (per the op's schema) is counted
    from its creation until its tensor is freed (a weakref finalizer); ``peak_bytes`` is the
    largest total seen, i.e. the peak activation memory of an inference pass.
    """

    def __init__(self, stack: List[ModuleCall], calls: List[ModuleCall], root: ModuleCall) -> None:
        super().__init__()
        self.stack, self.calls, self.root = stack, calls, root
        self.live_bytes = 0
        self.peak_bytes = 0

    def _release(self, nbytes: int) -> None:
        self.live_bytes -= nbytes

    def _track(self, func: Any, out: Any) -> None:
        returns = getattr(getattr(func, "_schema", None), "returns", ())
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for index, tensor in enumerate(outs):
            if not isinstance(tensor, torch.Tensor):
                continue
            if index < len(returns) and returns[index].alias_info is not None:
                continue  # a view or an in-place result: no new memory
            nbytes = tensor.numel() * tensor.element_size()
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(tensor, self._release, nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D401
        if func is aten.native_batch_norm.default and args[0].is_meta:
            # Shapes only: the meta kernel runs a slow Python decomposition for the same result.
            x = args[0]
            stats = torch.empty(x.shape[1], device="meta", dtype=torch.float32)
            out = (torch.empty_like(x), stats, torch.empty_like(stats))
        else:
            out = func(*args, **(kwargs or {}))
        self._track(func, out)
        owner = self.stack[-1] if self.stack else self.root
        packet = func.overloadpacket if hasattr(func, "overloadpacket") else func
        if func in _MAC_OPS:
            owner.macs += _MAC_OPS[func](args, out)
            owner.op_names.append(str(packet.__name__))
            if func in (aten.convolution.default, aten._convolution.default):
                owner.weight_shape = tuple(args[1].shape)
                owner.transposed = bool(args[6])
                owner.groups = int(args[8])
                owner.is_conv = True
                if args[2] is not None:
                    owner.other_ops += out.numel()  # the bias add
            elif func in (aten.addmm.default, aten.baddbmm.default):
                owner.weight_shape = owner.weight_shape or tuple(args[2].shape)
                owner.other_ops += out.numel()
            else:
                owner.weight_shape = owner.weight_shape or tuple(args[1].shape)
        else:
            ops = _other_ops(func, args, out)
            if ops:
                owner.other_ops += ops
                owner.op_names.append(str(getattr(packet, "__name__", packet)))
        return out


def _misfit_message(stack: List[ModuleCall], inputs: Sequence[Any], error: Exception) -> str:
    """Name the innermost module where the forward pass broke, with expected vs actual shape."""
    shapes = [tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
    if not stack:
        return f"input of shape {shapes} does not fit the model: {error}"
    call = stack[-1]
    module = call.module
    expected = ""
    if hasattr(module, "in_channels"):
        expected = f", expected (N, {module.in_channels}, H, W)"
    elif hasattr(module, "in_features"):
        expected = f", expected (..., {module.in_features})"
    where = call.path or "(the model itself)"
    return (f"input of shape {shapes} does not fit the model: it breaks at {where} ({type(module).__name__}) "
            f"on an input of shape {call.input_shape}{expected}: {str(error).splitlines()[0]}")


def outside_inference_mode(function: Callable) -> Callable:
    """Run an analysis entry point outside ``torch.inference_mode``: ops on tensors made in
    inference mode skip the op counter, so a profile taken inside it counted 0 MACs. Tensors the
    function makes (meta copies, example inputs) are then ordinary ones; no gradient is kept."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return function(*args, **kwargs)

    return wrapper


def trace_calls(model: nn.Module, inputs: Sequence[Any], kwargs: Optional[Dict[str, Any]] = None) -> Tuple[List[ModuleCall], Any]:
    """Run ``model(*inputs)`` once and return every module call in execution order, plus the output.

    Ops outside any submodule (in the root's own forward) are charged to the root call.
    """
    inputs = [x.clone() if isinstance(x, torch.Tensor) and x.is_inference() else x for x in inputs]
    stack: List[ModuleCall] = []
    calls: List[ModuleCall] = []
    names = {m: name for name, m in model.named_modules()}
    handles = []

    def pre_hook(module: nn.Module, args: Tuple[Any, ...]) -> None:
        call = ModuleCall(names.get(module, type(module).__name__), module)
        x = _first_tensor(args)
        if x is not None:
            call.input_shape = tuple(x.shape)
            call.input_bytes = x.numel() * x.element_size()
        calls.append(call)
        stack.append(call)

    def post_hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        call = stack.pop()
        y = _first_tensor(output)
        if y is not None:
            call.output_shape = tuple(y.shape)
            call.output_bytes = y.numel() * y.element_size()

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    root = ModuleCall("", model)
    counter = _Counter(stack, calls, root)
    try:
        with torch.inference_mode(False), torch.no_grad(), counter:
            output = model(*inputs, **(kwargs or {}))
    except (RuntimeError, ValueError, IndexError) as error:
        raise ValueError(_misfit_message(stack, inputs, error)) from error
    finally:
        for handle in handles:
            handle.remove()
    if calls:
        calls[0].peak_bytes = counter.peak_bytes
    return calls, output


__all__ = ["ModuleCall", "outside_inference_mode", "trace_calls"]

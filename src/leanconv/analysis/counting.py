"""Dispatch-based op counting attributed to modules.

Every ATen op a forward pass runs passes through a ``TorchDispatchMode``; forward hooks keep a
stack of the modules being called, so each op is charged to the innermost module that ran it
(functional calls included). By default everything runs on the meta device: shapes and
counts without compute or memory, for any input size.

When the meta pass meets an op that needs tensor values (``x[:, :, :int(limit)]``, a resize
whose size is a tensor, a reshape to a shape read from a tensor: models imported from ONNX are
full of them), :func:`trace_model` counts on one real pass instead, on the model's own device
(or a given one), and says so in one warning.

Counting conventions (MAC = one multiply-accumulate; FLOPs = 2 x MACs):

* conv: ``N * O * H' * W' * (C/g) * kh * kw``; transposed conv counts *input* positions:
  ``N * C * H * W * (O/g) * kh * kw``;
* matrix products (linear layers): ``n * k * m``;
* everything else (bias adds, norms, activations, pooling, resampling) is an "other op",
  counted per output element (per window element for pooling) in its own column.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import warnings
import weakref
from pathlib import Path
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from leanconv._modes import evaluating
from leanconv.kinds import ConvKind, ConvSpec, get_kind

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


class ForwardError(ValueError):
    """The forward pass broke: the message names the module and the shapes; ``where`` is the
    module (path and type) and ``detail`` the first line of the error underneath."""

    def __init__(self, message: str, where: str, detail: str) -> None:
        super().__init__(message)
        self.where, self.detail = where, detail


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
    _check_arity(model, inputs, kwargs)
    try:
        with torch.inference_mode(False), torch.no_grad(), counter:
            output = model(*inputs, **(kwargs or {}))
    except (RuntimeError, ValueError, IndexError) as error:
        where = f"{stack[-1].path or '(the model itself)'} ({type(stack[-1].module).__name__})" if stack else "the model"
        detail = (str(error).splitlines() or [type(error).__name__])[0]
        raise ForwardError(_misfit_message(stack, inputs, error), where, detail) from error
    finally:
        for handle in handles:
            handle.remove()
    if calls:
        calls[0].peak_bytes = counter.peak_bytes
    return calls, output


def _check_arity(model: nn.Module, inputs: Sequence[Any], kwargs: Optional[Dict[str, Any]]) -> None:
    """As many inputs as ``model.forward`` takes (else one line, not forward's bare TypeError)."""
    import inspect

    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin or C forward: let the call itself say it
        return
    try:
        signature.bind(*inputs, **(kwargs or {}))
    except TypeError as error:
        raise ForwardError(f"input: {len(inputs)} input(s) given, but {type(model).__name__}.forward{signature} "
                           f"takes otherwise ({error})", "the model", str(error)) from None


# ---------------------------------------------------------------- one pass, meta first

Sizes = Union[Sequence[int], Sequence[Sequence[int]]]

# What a meta pass says when an op needs tensor values (or has no meta kernel): a real pass can
# run it. A real misfit (wrong channel count) says none of these and is never retried.
_NEEDS_VALUES = ("cannot copy out of meta tensor", "cannot be called on meta tensors", "_local_scalar_dense",
                 "data-dependent", "data dependent", "data-independent implementation", "dynamic output shape",
                 "with meta tensors", "'meta' backend")


_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # warnings point at the caller's line


class MetaFallbackWarning(UserWarning):
    """The meta-device pass could not run the model; the figures come from one real pass."""


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device.

    The real tensors are never copied (``deepcopy`` is handed meta stand-ins for them), so even
    a large model costs no memory to analyse; the original is not touched.
    """
    memo: Dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def normalize_sizes(input_size: Sizes, batch_size: Optional[int] = None) -> List[Shape]:
    """One input shape or a list of them, as a list of int tuples (``batch_size`` replaces N)."""
    if not isinstance(input_size, (list, tuple, torch.Size)) or not input_size:
        raise ValueError(f"input_size={input_size!r} must be a shape like (1, 3, 224, 224) or a list of shapes")
    one = not isinstance(input_size[0], (list, tuple, torch.Size))
    sizes = [tuple(input_size)] if one else [tuple(s) for s in input_size]  # type: ignore[arg-type]
    for s in sizes:
        if not s or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s):
            raise ValueError(f"input_size={s} must contain positive ints (N, C, H, W)")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1, an int")
        sizes = [(batch_size, *s[1:]) for s in sizes]
    return sizes


def needs_values(error: BaseException) -> bool:
    """Whether a failed meta pass failed because an op needs tensor values (or has no meta
    kernel), so that a real pass can count the model; a shape misfit is not such a failure."""
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(pattern in str(current).lower() for pattern in _NEEDS_VALUES):
            return True
        current = current.__cause__ or current.__context__
    return False


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; CPU for a model without tensors."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (float32 if none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


@dataclass
class Trace:
    """One counted forward pass: every module call, the output, the inputs, where it ran, and
    ``fallback``, the reason when the meta pass could not run and a real pass counted instead."""

    calls: List[ModuleCall]
    output: Any
    inputs: List[torch.Tensor]
    device: torch.device
    param_bytes: int
    fallback: Optional[str] = None

    def conv_input_hw(self) -> Dict[str, Tuple[int, int]]:
        """``path -> (H, W)`` of the input of every 2-d conv call (the last call of a path wins)."""
        return {c.path: (int(c.input_shape[2]), int(c.input_shape[3])) for c in self.calls
                if c.is_conv and c.input_shape is not None and len(c.input_shape) == 4}

    def mac_share(self, paths: Iterable[str]) -> float:
        """The share of the pass's conv + linear MACs charged to ``paths`` and the modules below
        them (0.0 when the pass ran no MAC op at all)."""
        prefixes = tuple(paths)
        total = sum(c.macs for c in self.calls)
        held = sum(c.macs for c in self.calls
                   if any(p == "" or c.path == p or c.path.startswith(p + ".") for p in prefixes))
        return held / total if total else 0.0


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside leanconv (the user's line, for a warning)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _meta_trace(model: nn.Module, sizes: Sequence[Shape], dtype: torch.dtype) -> Trace:
    work = meta_copy(model).eval()
    tensors = [torch.empty(s, device="meta", dtype=dtype) for s in sizes]
    calls, output = trace_calls(work, tensors)
    param_bytes = sum(p.numel() * p.element_size() for p in work.parameters())
    return Trace(calls, output, tensors, torch.device("meta"), param_bytes)


def real_trace(model: nn.Module, sizes: Sequence[Shape], dtype: torch.dtype,
               device: Union[None, str, torch.device] = None,
               inputs: Optional[Sequence[torch.Tensor]] = None) -> Trace:
    """One pass on real tensors of ``device`` (None: the model's own; the model is copied only to
    move it), in eval mode and without gradients: every module's train flag is given back.
    Random inputs of ``sizes`` (seed 0) unless example ``inputs`` are given."""
    target = model_device(model) if device is None else torch.device(device)
    if target.type == "meta":
        raise ValueError("the model is on the meta device and the meta pass cannot run it (an op reads "
                         "tensor values): load real weights, or pass device='cpu'")
    work = model if model_device(model) == target else copy.deepcopy(model).to(target)
    if inputs is None:
        generator = torch.Generator().manual_seed(0)
        tensors = [torch.randn(s, generator=generator, dtype=dtype).to(target) for s in sizes]
    else:
        tensors = [t.to(target) for t in inputs]
    with evaluating(work):
        calls, output = trace_calls(work, tensors)
    param_bytes = sum(p.numel() * p.element_size() for p in work.parameters())
    return Trace(calls, output, tensors, target, param_bytes)


def trace_model(model: nn.Module, sizes: Sequence[Shape], dtype: Optional[torch.dtype] = None,
                device: Union[None, str, torch.device] = None,
                inputs: Optional[Sequence[torch.Tensor]] = None) -> Trace:
    """Count ``model`` on inputs of ``sizes``: on the meta device (nothing computed), or, when an
    op needs tensor values there, on one real pass on ``device`` (None: the model's own), with
    one :class:`MetaFallbackWarning`. A shape misfit is raised as it is (ValueError)."""
    dtype = dtype or model_dtype(model)
    try:
        return _meta_trace(model, sizes, dtype)
    except ValueError as error:
        if not needs_values(error):
            raise
        where = getattr(error, "where", "the model")
        detail = getattr(error, "detail", str(error))
    target = model_device(model) if device is None else torch.device(device)
    reason = (f"counted on one real pass on {target} (exact, uses its memory): the meta-device pass "
              f"cannot run {where}, an op there needs tensor values ({detail})")
    if target.type != "meta":
        warnings.warn(reason, MetaFallbackWarning, stacklevel=_caller_level())
    trace = real_trace(model, sizes, dtype, target, inputs)
    trace.fallback = reason
    return trace


@outside_inference_mode
def traced_shapes(model: nn.Module, input_size: Optional[Sizes],
                  device: Union[None, str, torch.device] = None) -> Dict[str, Tuple[int, int]]:
    """``path -> (H, W)`` of every 2-d conv's input for ``model(input)``, ``{}`` without an
    ``input_size``. Meta device first; a model whose ops read tensor values (ONNX imports) is run
    once for real on ``device`` (None: the model's own), with one warning (:func:`trace_model`)."""
    if input_size is None:
        return {}
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__} must be an nn.Module")
    return trace_model(model, normalize_sizes(input_size), device=device).conv_input_hw()


@outside_inference_mode
def mac_share(model: nn.Module, input_size: Sizes, paths: Iterable[str],
              device: Union[None, str, torch.device] = None) -> float:
    """The fraction of ``model``'s conv + linear MACs at ``input_size`` held by the modules at
    ``paths`` (and the modules below them): how much of the model a conversion of those layers
    can touch at all. 0.0 for a model that runs no MAC op. Counted as :func:`traced_shapes` does."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__} must be an nn.Module")
    paths = [paths] if isinstance(paths, str) else list(paths)
    known = {name for name, _ in model.named_modules()}
    unknown = [p for p in paths if not isinstance(p, str) or p not in known]
    if unknown:
        raise ValueError(f"paths={unknown[:3]} are not module paths of the model (model.named_modules())")
    return trace_model(model, normalize_sizes(input_size), device=device).mac_share(paths)


# ---------------------------------------------------------------- MACs per output pixel

def pixel_macs(kind: Union[str, ConvKind], spec: ConvSpec) -> Union[int, float]:
    """MACs of one output position of a layer (all output channels, batch 1): what its MACs come
    to per output pixel on a large input, whatever the padding. For a conv ``O * (C/g) * kh *
    kw``; for a multi-stage kind each stage's per-pixel cost times how many of its output
    positions one final output position needs (its stride ratio: a ``kh x 1`` stage with stride
    ``(s, 1)`` before a ``1 x kw`` stage with stride ``(1, s)`` runs ``s`` times per output pixel).
    An int for every kind that does not upsample."""
    entry = get_kind(kind) if isinstance(kind, str) else kind
    densities: List[Tuple[Fraction, Fraction]] = []  # output positions per input position, by stage
    costs: List[Tuple[int, bool]] = []  # MACs per own output (conv) or input (transposed) position
    density = (Fraction(1), Fraction(1))
    for stage in entry.stages(spec):
        if stage.from_input:
            density = (Fraction(1), Fraction(1))
        before = density
        if stage.op == "conv":
            density = (density[0] / stage.stride[0], density[1] / stage.stride[1])
        elif stage.op == "conv_transpose":
            density = (density[0] * stage.stride[0], density[1] * stage.stride[1])
        elif stage.op == "upsample":
            density = (density[0] * stage.scale[0], density[1] * stage.scale[1])
        positions = before if stage.op == "conv_transpose" else density
        cost = stage.macs((1, 1)) if stage.op == "conv_transpose" else _stage_pixel_cost(stage)
        densities.append(positions)
        costs.append((cost, stage.op in ("conv", "conv_transpose")))
    final = density
    total = sum(Fraction(cost) * (d[0] / final[0]) * (d[1] / final[1])
                for (cost, counted), d in zip(costs, densities) if counted)
    return int(total) if total.denominator == 1 else float(total)


def _stage_pixel_cost(stage: Any) -> int:
    """MACs of one output position of a conv stage: ``O * (C/g) * kh * kw`` (0 for a non-conv)."""
    if stage.op != "conv":
        return 0
    return stage.out_channels * (stage.in_channels // stage.groups) * stage.kernel_size[0] * stage.kernel_size[1]


def layer_macs(kind: Union[str, ConvKind], spec: ConvSpec, hw: Optional[Sequence[int]] = None) -> Union[int, float]:
    """The layer's MACs on an input of spatial size ``hw``; without one, per output pixel
    (:func:`pixel_macs`), as convert reports them when it has no ``input_size``."""
    entry = get_kind(kind) if isinstance(kind, str) else kind
    return pixel_macs(entry, spec) if hw is None else entry.macs(spec, hw)


__all__ = ["ForwardError", "MetaFallbackWarning", "ModuleCall", "Trace", "layer_macs", "mac_share", "meta_copy", "model_device",
           "model_dtype", "needs_values", "normalize_sizes", "outside_inference_mode", "pixel_macs", "real_trace",
           "trace_calls", "trace_model", "traced_shapes"]

"""ONNX export with a numerical check against onnxruntime.

Uses PyTorch's ``torch.export``-based exporter (``dynamo=True``). The model's output may be a
tensor or a (nested) tuple, list or dict of tensors (the MTCNN nets return two or three): every
output is run in onnxruntime on the example inputs and compared with PyTorch's, and only after
that check passes is the file written, atomically. ``dynamic=("batch", "height", "width")``
(any of them) leaves those axes of every 4-D input free in the ONNX graph. The exporter's
narration, warnings and graph dumps are captured; a model that does not export is one
``ValueError`` line naming the operator (or the line of the model) that failed.
Needs the ``onnx`` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from leanconv._files import atomic_file
from leanconv._modes import evaluating

AXES: Dict[str, int] = {"batch": 0, "height": 2, "width": 3}
"""The axes ``dynamic=`` may free, and their position in an NCHW input."""


def export_onnx(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: Union[str, os.PathLike],
                force: bool = False, check: bool = True, dynamic: Union[str, Sequence[str]] = (),
                tolerance: Optional[float] = None) -> float:
    """Export ``model`` (eval mode) to ``path``; return max |onnxruntime - PyTorch| over every output
    (0.0 unchecked). ``dynamic`` names the free axes; with ``tolerance`` a larger difference is an
    error and nothing is written."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: pass force=True to overwrite it")
    data, difference = export_onnx_bytes(model, example_inputs, check=check, dynamic=dynamic, tolerance=tolerance)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return difference


def export_onnx_bytes(model: nn.Module, example_inputs: Sequence[torch.Tensor], check: bool = True,
                      dynamic: Union[str, Sequence[str]] = (),
                      tolerance: Optional[float] = None) -> Tuple[bytes, float]:
    """The serialized ONNX model of ``model`` and its checked difference (see :func:`export_onnx`);
    nothing is written to disk. The deployment targets export through this."""
    inputs = _check_inputs(example_inputs)
    axes = _check_dynamic(dynamic, inputs)
    _check_tolerance(tolerance)
    try:
        import onnxruntime
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the onnx extra: pip install 'leanconv[onnx]'") from error
    with evaluating(model):  # each module's own train flag comes back afterwards
        program = _export(model, inputs, axes)
        _check_free_axes(program.model_proto, axes)
        data = program.model_proto.SerializeToString()
        if not check:
            return data, 0.0
        with torch.no_grad():
            reference = output_tensors(model(*inputs))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's graph notices would go to stderr
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.detach().cpu().numpy() for arg, t in zip(session.get_inputs(), inputs)}
    ours = session.run(None, feeds)
    if len(ours) != len(reference):
        raise ValueError(f"model: the ONNX graph has {len(ours)} outputs, the model returns {len(reference)} tensors")
    difference = 0.0
    for index, (got, want) in enumerate(zip(ours, reference)):
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"model: ONNX output {index} has shape {tuple(got.shape)}, PyTorch's {tuple(want.shape)}")
        difference = max(difference, float((torch.from_numpy(got).double() - want.detach().cpu().double()).abs().max()))
    if tolerance is not None and difference > tolerance:
        raise ValueError(f"tolerance={tolerance}: the ONNX model differs from PyTorch by {difference:.3g}; nothing written")
    return data, difference


def output_tensors(output: Any) -> List[torch.Tensor]:
    """Every tensor of a model's output, in the exporter's order (a tensor, or nested tuples, lists
    and dicts of them; other values, which ONNX drops, are skipped)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in output_tensors(item)]
    return []


def _check_inputs(example_inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise TypeError(f"example_inputs must be a tensor or a non-empty tuple/list of tensors, "
                        f"not {type(example_inputs).__name__}")
    for index, item in enumerate(example_inputs):
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"example_inputs[{index}] must be a tensor, not {type(item).__name__}")
    return tuple(example_inputs)


def _check_dynamic(dynamic: Union[str, Sequence[str]], inputs: Tuple[torch.Tensor, ...]) -> Tuple[str, ...]:
    names = (dynamic,) if isinstance(dynamic, str) else dynamic
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"dynamic={dynamic!r} must be axis names from {list(AXES)}")
    for name in names:
        if name not in AXES:
            raise ValueError(f"dynamic={dynamic!r}: {name!r} is not one of {list(AXES)}")
    if any(n in ("height", "width") for n in names):
        for index, item in enumerate(inputs):
            if item.dim() != 4:
                raise ValueError(f"dynamic={dynamic!r}: height and width need NCHW inputs, "
                                 f"example_inputs[{index}] has shape {tuple(item.shape)}")
    return tuple(dict.fromkeys(names))


def _check_tolerance(tolerance: Optional[float]) -> None:
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or not tolerance >= 0):
        raise ValueError(f"tolerance={tolerance!r} must be a number >= 0 (or None: report, do not refuse)")


def _export(model: nn.Module, inputs: Tuple[torch.Tensor, ...], axes: Tuple[str, ...]):
    """``torch.onnx.export(dynamo=True)`` with its output captured; a failure is one ValueError line."""
    dynamic_shapes = None
    if axes:
        from torch.export import Dim

        dims = {name: Dim(name) for name in axes}  # one symbol per axis, shared by every input
        dynamic_shapes = tuple({AXES[name]: dims[name] for name in axes if AXES[name] < t.dim()} for t in inputs)
    captured = io.StringIO()
    try:
        with _captured_output(captured):
            return torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=dynamic_shapes)
    except Exception as error:  # noqa: BLE001 - every exporter failure becomes one line
        raise ValueError(f"model cannot be exported to ONNX: {export_failure(error)}") from None


@contextlib.contextmanager
def _captured_output(sink: io.StringIO) -> Iterator[None]:
    """Send the exporter's prints, warnings and log records (torch's loggers print graph dumps,
    megabytes for a large model) to ``sink`` while the block runs; every handler comes back."""
    handler = logging.StreamHandler(sink)
    loggers = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
               if name.split(".")[0] in ("torch", "onnx", "onnxscript", "onnx_ir")]
    loggers = [lg for lg in loggers if isinstance(lg, logging.Logger) and lg.handlers]
    saved = [(lg, list(lg.handlers)) for lg in loggers]
    try:
        for lg in loggers:
            lg.handlers = [handler]
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, handlers in saved:
            lg.handlers = handlers


_NO_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>")
_NODE_TARGET = re.compile(r"target=(torch\.ops\.[\w.]+)")
_SUMMARY = re.compile(r"## Exception summary\s*\n\s*<class '(?:[\w]+\.)*(\w+)'>: ([^\n]+)")
_USER_LINE = re.compile(r'File "([^"]+)", line (\d+), in \w+(?:\n[ \t]+(\S[^\n]*))?')


def export_failure(error: BaseException) -> str:
    """One line saying why the exporter failed: the operator without an ONNX translation, or the
    exception behind it and the line of the model that raised it (no graph dumps)."""
    text = str(error)
    found = _NO_FUNCTION.search(text)
    if found:
        return (f"operator {found.group(1)}.{found.group(2)} has no ONNX translation in torch {torch.__version__} "
                f"(replace it, or register an ONNX function for it with torch.onnx.export(custom_translation_table=...))")
    found = _NODE_TARGET.search(text)
    if found:
        reason = _SUMMARY.search(text)
        return f"operator {found.group(1)[len('torch.ops.'):]} failed to translate" + (
            f" ({reason.group(1)}: {reason.group(2).strip()})" if reason else "")
    reason = _SUMMARY.search(text)
    line = reason.group(2).strip() if reason else (text.strip().splitlines() or [type(error).__name__])[0]
    message = f"{reason.group(1)}: {line}" if reason else f"{type(error).__name__}: {line}"
    where = [m for m in _USER_LINE.finditer(text) if "site-packages" not in m.group(1)]
    if where:
        file, number, code = where[-1].groups()
        message += f" at {Path(file).name}:{number}" + (f" ({code.strip()})" if code else "")
    return message[:400]


def _check_free_axes(proto, axes: Tuple[str, ...]) -> None:
    """Each requested axis is symbolic in every graph input that has it (not quietly fixed)."""
    for graph_input in proto.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        for name in axes:
            position = AXES[name]
            if position < len(dims) and not dims[position].dim_param:
                raise ValueError(f"dynamic: the exported model fixes {name} of input {graph_input.name!r} "
                                 f"to {dims[position].dim_value}; the model's code does not allow another size")


__all__ = ["AXES", "export_failure", "export_onnx", "export_onnx_bytes", "output_tensors"]

"""ONNX export with a numerical check against onnxruntime.

Uses PyTorch's ``torch.export``-based exporter (``dynamo=True``), writes the file atomically,
runs it in onnxruntime on the example inputs and returns the largest absolute difference from
PyTorch's own output. Needs the ``onnx`` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn

from leanconv._files import atomic_file
from leanconv._modes import evaluating


def export_onnx(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: Union[str, os.PathLike],
                force: bool = False, check: bool = True) -> float:
    """Export ``model`` (eval mode) to ``path``; return max |onnxruntime - PyTorch| (0.0 unchecked)."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: pass force=True to overwrite it")
    try:
        import onnxruntime
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the onnx extra: pip install 'leanconv[onnx]'") from error
    inputs = tuple(example_inputs)
    with evaluating(model):  # each module's own train flag comes back afterwards
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps
            program = torch.onnx.export(model, inputs, dynamo=True)
        data = program.model_proto.SerializeToString()
        with atomic_file(path) as tmp:
            tmp.write_bytes(data)
        if not check:
            return 0.0
        with torch.no_grad():
            reference = model(*inputs)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.detach().cpu().numpy() for arg, t in zip(session.get_inputs(), inputs)}
    ours = session.run(None, feeds)[0]
    return float((torch.from_numpy(ours) - reference.cpu()).abs().max())


__all__ = ["export_onnx"]

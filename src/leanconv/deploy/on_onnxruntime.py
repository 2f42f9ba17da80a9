"""The ``onnxruntime`` target: onnxruntime's CPU execution provider, fp32 and int8.

fp32 runs the exported graph with every graph optimization (``ORT_ENABLE_ALL``: BN and
activation fusion, NCHWc layouts), ``threads`` intra-op threads, one inter-op thread, sequential
execution. int8 is onnxruntime's own static quantization (``quantize_static``, QDQ format,
per-channel int8 weights, uint8 activations: VNNI runs u8 x s8 without saturation) calibrated
on the ``calib`` batches (the example when none are given). The model is exported through
:mod:`leanconv.export.onnx` from a fused fp32 CPU copy (the user's model is not changed, and a
CUDA model is copied to the CPU) with a free batch axis, so calibration batches of any size fit.

What ran is read from the graph onnxruntime actually optimized: int8 only when it holds integer
kernels (QLinearConv, MatMulInteger...), not QDQ pairs left around float ops.

A layer built only to be timed (:meth:`OnnxRuntime.build_for_timing`, many per conversion) is
exported by torch's TorchScript exporter instead (:func:`torchscript_onnx`: ~10 ms for one conv
against ~1 s for the dynamo exporter); onnxruntime optimizes both exports of a layer to the
same kernels (checked for every leanconv conv kind, fp32 and int8).
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from leanconv.deploy.target import Deployed, Target, register_target

INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd",
                         "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid",
                         "QLinearLeakyRelu", "QLinearConcat", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
"""Operators of an optimized onnxruntime graph that compute in integers (standard and com.microsoft)."""


def _cpu_copy(model: nn.Module) -> nn.Module:
    """A fused fp32 eval copy on the CPU (the target runs there; the user's model is untouched)."""
    from leanconv.fusion import fuse

    return fuse(copy.deepcopy(model).float().eval().cpu())


def _export(model: nn.Module, example: torch.Tensor) -> Tuple[bytes, bool]:
    """The ONNX bytes of ``model`` and whether its batch axis is free (tried first; a model whose
    code fixes the batch is exported at the example's batch)."""
    from leanconv.export.onnx import export_onnx_bytes

    try:
        return export_onnx_bytes(model, (example,), check=False, dynamic=("batch",))[0], True
    except ValueError:
        pass  # the static export below raises its own error if the model does not export at all
    return export_onnx_bytes(model, (example,), check=False)[0], False


def torchscript_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX bytes of ``model`` (eval mode) by torch's TorchScript exporter (``dynamo=False``),
    batch axis free: a trace, tens of milliseconds for one layer. The trace runs the model once,
    on one thread: on a busy machine torch's threads wait on each other, and one layer's forward
    took 140 ms on two threads against 1.5 ms on one. Raises whatever the exporter raises (the
    callers fall back to the dynamo exporter)."""
    buffer = io.BytesIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice and the tracer's
            torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    finally:
        torch.set_num_threads(threads)
    return buffer.getvalue()


def _export_for_timing(model: nn.Module, example: torch.Tensor) -> Tuple[bytes, str]:
    """The TorchScript export of ``model`` and ``''``; the dynamo export where that fails, with a note."""
    try:
        return torchscript_onnx(model, example), ""
    except Exception as error:  # noqa: BLE001 - any exporter failure: the default exporter may still work
        return _export(model, example)[0], f", dynamo export (TorchScript: {type(error).__name__})"


def _calibration(calib, example: torch.Tensor) -> List[torch.Tensor]:
    """The calibration batches (the example when none) as float32 CPU tensors, each shaped like
    the example but for the batch (checked before anything is exported)."""
    if calib is None or (isinstance(calib, (list, tuple)) and not calib):
        return [example]
    items = [calib] if isinstance(calib, torch.Tensor) else calib
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"calib must be a list of input tensors, not {type(calib).__name__}")
    for index, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"calib[{index}] must be a tensor, not {type(item).__name__}")
        if item.dim() != example.dim() or item.shape[1:] != example.shape[1:]:
            raise ValueError(f"calib[{index}] has shape {tuple(item.shape)}: the example's is "
                             f"{tuple(example.shape)} (only the batch may differ)")
    return [t.detach().float().cpu() for t in items]


def _recut(batches: List[torch.Tensor], batch: Optional[int]) -> List[torch.Tensor]:
    """``batches`` as they are, or re-cut to ``batch`` rows when the exported graph fixes the batch."""
    if batch is None or all(t.shape[0] == batch for t in batches):
        return batches
    rows = torch.cat(batches)
    if rows.shape[0] < batch:
        raise ValueError(f"calib: {rows.shape[0]} samples in all, the exported model needs batches of {batch}")
    return list(rows[: rows.shape[0] // batch * batch].split(batch))


def _quantize(data: bytes, batches: List[torch.Tensor], folder: Path) -> bytes:
    """onnxruntime's static QDQ quantization of the fp32 model ``data`` calibrated on ``batches``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load_from_string(data)
    name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {name: item.numpy()}

        def rewind(self) -> None:
            self.items = iter(batches)

    source, prepared, output = folder / "fp32.onnx", folder / "prepared.onnx", folder / "int8.onnx"
    source.write_bytes(data)
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return output.read_bytes()


def _session(data: bytes, threads: int, folder: Path):
    """A CPU session with full optimization, and the op types of the graph it optimized."""
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: no per-node notices on stderr
    optimized = folder / "optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(optimized), load_external_data=False).graph.node]
    return session, ops


def _runner(session) -> Callable[[torch.Tensor], torch.Tensor]:
    name, first = session.get_inputs()[0].name, session.get_outputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        # a float32 CPU tensor goes in as it is: the conversions cost ~5 us a call, a tenth of a
        # small model's batch-1 time, and the graph's outputs are float32 already
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.requires_grad or not x.is_contiguous():
            x = x.detach().float().cpu().contiguous()
        return torch.from_numpy(session.run([first], {name: x.numpy()})[0])

    return run


class OnnxRuntime(Target):
    def build(self, model: nn.Module, example: torch.Tensor, precision: str,
              calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        return self._build(model, example, precision, calib, threads, for_timing=False)

    def build_for_timing(self, module: nn.Module, example: torch.Tensor, precision: str,
                         calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        """As :meth:`build`, exported by :func:`torchscript_onnx` (the dynamo exporter where that
        fails); calibration batches are re-cut to the example's batch."""
        return self._build(module, example, precision, calib, threads, for_timing=True)

    def _build(self, model: nn.Module, example: torch.Tensor, precision: str,
               calib: Optional[List[torch.Tensor]], threads: int, for_timing: bool) -> Deployed:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r} must be an integer >= 1")
        example = example.detach().float().cpu()
        batches = _calibration(calib, example) if precision == "int8" else []
        exported = ""
        if for_timing:  # a trace may fix the batch in the graph: calibrate at the example's
            (data, exported), free_batch = _export_for_timing(_cpu_copy(model), example), False
        else:
            data, free_batch = _export(_cpu_copy(model), example)
        with tempfile.TemporaryDirectory(prefix="leanconv-ort-") as folder:
            if precision == "int8":
                batches = _recut(batches, None if free_batch else example.shape[0])
                data = _quantize(data, batches, Path(folder))
            session, ops = _session(data, threads, Path(folder))
        integer = sum(op in INTEGER_OPS for op in ops)
        set_threads = session.get_session_options().intra_op_num_threads
        note = f"{session.get_providers()[0]}, ORT_ENABLE_ALL, {set_threads} thread{'s' * (set_threads != 1)}"
        if precision == "int8":
            given = calib is not None and not (isinstance(calib, (list, tuple)) and not calib)
            source = f"{len(batches)} batch{'es' * (len(batches) != 1)}" if given else "the example"
            note += f", QDQ static, calibrated on {source}, {integer} integer kernels"
            if not integer:
                simulated = any(op in ("QuantizeLinear", "DequantizeLinear") for op in ops)
                note += (" (onnxruntime fused no QDQ pair: int8 rounding simulated in fp32)" if simulated
                         else " (no operator onnxruntime quantizes: all fp32)")
        if for_timing:
            note += exported or ", TorchScript export"
        elif not free_batch:
            note += f", batch fixed at {example.shape[0]}"
        return Deployed(self.name, precision, "int8" if integer else "fp32", "cpu", _runner(session), note)


register_target(OnnxRuntime("onnxruntime", "onnxruntime", ("fp32", "int8"), ("cpu",),
                            modules=("onnxruntime", "onnx", "onnxscript"), extra="onnx"))

__all__ = ["INTEGER_OPS", "OnnxRuntime", "torchscript_onnx"]

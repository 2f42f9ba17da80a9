"""The OpenVINO target (CPU): f32 and bf16 by the inference-precision hint, int8 by NNCF.

The model goes straight from PyTorch to OpenVINO (``openvino.convert_model`` on a float32
eval copy: no ONNX file), is fixed to the example's input shape (static shapes let the CPU
plugin pick its fastest kernels) and compiled for latency on ``threads`` threads. OpenVINO
runs bf16 by default on a CPU with AMX or AVX512_BF16, so fp32 asks for f32 explicitly; what
ran is read back from the compiled model and its runtime graph, never echoed from the request.
int8 is NNCF post-training quantization (performance preset: symmetric weights and
activations) from the calibration batches. openvino and nncf are imported only when a target
is built, so importing this module never fails where they are absent.

A layer built only to be timed (:meth:`OpenVinoTarget.build_for_timing`, many per conversion)
is read from its TorchScript ONNX export instead (tens of milliseconds against ~0.4 s for
``convert_model``). Its int8 skips NNCF where the graph is a chain of convolutions
(:func:`leanconv.deploy.ov_fake_quant.quick_int8`: FakeQuantize where NNCF puts it, ~0.03 s
against NNCF's ~0.2-0.5 s; the CPU plugin compiles the same program); other graphs (whole
models) keep NNCF, with its hardware pattern graph, which it otherwise rebuilds on every
quantization, built once and reused.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import warnings
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from leanconv.deploy.ov_fake_quant import quick_int8
from leanconv.deploy.target import Deployed, Target, register_target

HINTS = {"fp32": "f32", "bf16": "bf16"}
"""OpenVINO's INFERENCE_PRECISION_HINT value for each float precision this target runs."""
RUNTIME_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "u8": "int8", "i8": "int8"}
"""leanconv's name for a runtime precision that the CPU plugin reports for a layer."""
COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul",
                            "BinaryConvolution"})
"""Layer types of the CPU plugin's runtime graph that hold the arithmetic: their precision is what ran."""


def _float_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode (the user's model is not touched)."""
    return copy.deepcopy(model).float().cpu().eval()


def convert(model: nn.Module, example: torch.Tensor) -> Any:
    """``model`` as an OpenVINO model (dynamic shapes), traced with ``example`` on the CPU."""
    import openvino as ov

    work = _float_copy(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notices about Python-side shape checks
        return ov.convert_model(work, example_input=example.detach().float().cpu())


def convert_for_timing(model: nn.Module, example: torch.Tensor) -> Tuple[Any, str]:
    """``model`` as an OpenVINO model read from its TorchScript ONNX export, and a note: a tenth
    of :func:`convert`'s time, and the same runtime graph in every precision for every leanconv
    kind, since it is brought to :func:`convert`'s form: constants folded (NNCF quantizes only
    weights that are constants), the input fully dynamic (NNCF quantizes a depthwise conv's
    input per channel where it knows the channels, which the CPU plugin then runs in bf16, not
    u8). :func:`convert`'s model, with a note, where any of that fails."""
    import openvino as ov

    try:
        from openvino._offline_transformations import apply_moc_transformations  # what convert_model runs

        from leanconv.deploy.on_onnxruntime import torchscript_onnx

        data = torchscript_onnx(_float_copy(model), example.detach().float().cpu())
        ov_model = ov.Core().read_model(data, b"")
        apply_moc_transformations(ov_model, cf=True)
        ov_model.reshape(ov.PartialShape.dynamic(example.dim()))
    except Exception as error:  # noqa: BLE001 - any failure of the quick way: convert_model may still work
        return convert(model, example), f"convert_model (TorchScript ONNX: {type(error).__name__}), "
    return ov_model, "TorchScript ONNX export, "


_PATTERNS: dict = {}
"""NNCF's hardware pattern graphs by (backend, device, model type), built once (:func:`_reused_patterns`)."""


@contextlib.contextmanager
def _reused_patterns() -> Iterator[None]:
    """While the block runs, NNCF's hardware pattern graph is built once per (backend, device,
    model type) and reused: NNCF builds it anew on each ``nncf.quantize`` (the larger part of
    quantizing one layer) and only matches against it. NNCF is left as it was afterwards, and
    as it is where its layout differs from the one this knows."""
    try:
        from nncf.common.graph.patterns.manager import PatternsManager

        original = vars(PatternsManager)["get_full_hw_pattern_graph"]
    except (ImportError, KeyError):
        original = None
    if not isinstance(original, staticmethod):
        yield
        return
    build = original.__func__

    def reused(backend, device, model_type=None):
        key = (backend, device, model_type)
        if key not in _PATTERNS:
            _PATTERNS[key] = build(backend, device, model_type)
        return _PATTERNS[key]

    PatternsManager.get_full_hw_pattern_graph = staticmethod(reused)
    try:
        yield
    finally:
        PatternsManager.get_full_hw_pattern_graph = original


def check_calib(calib: Optional[List[torch.Tensor]], example: torch.Tensor) -> List[torch.Tensor]:
    """The calibration batches to quantize with (the example when none are given), checked."""
    if calib is None:
        return [example.detach().float().cpu()]
    if not isinstance(calib, (list, tuple)) or not calib:
        raise ValueError(f"calib must be a non-empty list of input batches, got {type(calib).__name__} "
                         f"of length {len(calib) if isinstance(calib, (list, tuple)) else 'n/a'}")
    batches = []
    for index, batch in enumerate(calib):
        if not isinstance(batch, torch.Tensor) or not batch.is_floating_point():
            raise TypeError(f"calib[{index}] must be a float tensor, got {type(batch).__name__}")
        if batch.dim() != example.dim() or batch.shape[1:2] != example.shape[1:2]:
            raise ValueError(f"calib[{index}] has shape {tuple(batch.shape)}: it must be {example.dim()}-D with "
                             f"{example.shape[1]} channels like the example {tuple(example.shape)}")
        batches.append(batch.detach().float().cpu())
    return batches


def quantize(ov_model: Any, batches: List[torch.Tensor]) -> Any:
    """``ov_model`` quantized to int8 by NNCF from ``batches`` (every batch is read once)."""
    import nncf

    dataset = nncf.Dataset(batches, lambda batch: batch.numpy())
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
        return nncf.quantize(ov_model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE,
                             subset_size=len(batches))


def _batches(batches: List[torch.Tensor]) -> str:
    return f"{len(batches)} calib batch{'es' if len(batches) > 1 else ''}"


def quantize_for_timing(ov_model: Any, batches: List[torch.Tensor]) -> Tuple[Any, str]:
    """``ov_model`` in int8 for timing, and a note: FakeQuantize inserted where NNCF would put it
    (:func:`quick_int8`) where the graph allows, else NNCF with its pattern graph reused."""
    quick = quick_int8(ov_model, batches)
    if quick is not None:
        return quick, (f"FakeQuantize inserted for timing (NNCF's placement on compute layers) from "
                       f"{_batches(batches)}, ")
    with _reused_patterns():
        return quantize(ov_model, batches), f"NNCF PTQ on {_batches(batches)}, "


def compile_model(ov_model: Any, shape: Tuple[int, ...], precision: str, threads: int) -> Any:
    """``ov_model`` fixed to ``shape`` and compiled for the CPU: latency, ``threads`` threads,
    the precision hint of a float ``precision``."""
    import openvino as ov

    ov_model.reshape(list(shape))
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision in HINTS:
        config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
    return ov.Core().compile_model(ov_model, "CPU", config)


def layer_precisions(compiled: Any) -> Counter:
    """How many compute layers of the compiled model's runtime graph ran in each precision."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if str(info["layerType"].astype(str)) in COMPUTE_LAYERS:
            runtime = str(info["runtimePrecision"].astype(str))
            counts[RUNTIME_PRECISIONS.get(runtime, runtime)] += 1
    return counts


PROGRAM_KEYS = ("layerType", "runtimePrecision", "outputPrecisions", "outputLayouts", "primitiveType")
"""What :func:`runtime_program` reads of each runtime node: its kind, precisions, layout and kernel."""


def runtime_program(compiled: Any) -> List[Tuple[str, ...]]:
    """The compiled model's runtime graph in execution order, each node as its :data:`PROGRAM_KEYS`
    (names left out): two compiled models with equal programs run the same kernels on the same data."""
    program = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        program.append(tuple(str(info[key].astype(str)) for key in PROGRAM_KEYS))
    return program


def describe_ran(counts: Counter, hint: str) -> str:
    """What ran, from the compute layers' precisions: the most common one, naming any others
    ("int8 (with bf16: 1 of 21 compute layers)"); ``hint`` when there are no compute layers."""
    if not counts:
        return hint
    total = sum(counts.values())
    (main, _), *others = counts.most_common()
    if not others:
        return main
    rest = ", ".join(f"{name}: {count}" for name, count in others)
    return f"{main} (with {rest} of {total} compute layers)"


def _hint_name(compiled: Any) -> str:
    """The compiled model's inference precision in leanconv's words (``bf16``, ``fp32``)."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = getattr(hint, "get_type_name", lambda: str(hint))()
    return RUNTIME_PRECISIONS.get(name, name)


def _runner(compiled: Any, shape: Tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``run(x)``: one InferRequest reading the input where it lies (``share_inputs``), output 0
    copied back as a float32 tensor. Copying the input in costs about 50 us a call at batch 16
    (measured, openvino 2026.4), a tenth of a lean digits CNN's time there."""
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != shape:
            raise ValueError(f"x has shape {tuple(x.shape)}: this openvino deployment is compiled for the "
                             f"example's shape {shape}")
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())  # kept alive through the call
        result = request.infer({0: array}, share_inputs=True, share_outputs=True)
        return torch.from_numpy(np.array(result[output], dtype=np.float32))  # a copy: the request reuses its own

    return run


class OpenVinoTarget(Target):
    """OpenVINO's CPU plugin: fp32 and bf16 by the precision hint, int8 by NNCF quantization."""

    calling = "input shared"

    def computes_wrongly(self, kind: str, options: Dict[str, Any]) -> Optional[str]:
        """A permuted grouped conv: the CPU plugin computes its output channel Gather followed by
        a ReLU and a conv wrongly (measured with openvino 2026.4: relative output error about 1
        in fp32 on a Gather -> ReLU -> Conv chain, 0.25 in a ResNet block; onnxruntime exact)."""
        if kind == "grouped" and options.get("permute"):
            return ("openvino's CPU plugin computes a channel permutation followed by ReLU and a conv wrongly "
                    "(tests/test_auto_target.py measures it)")
        return None

    def unsupported(self, precision: str, device: str) -> Optional[str]:
        """The base checks, and int8's own need: nncf."""
        why = super().unsupported(precision, device)
        if why is None and precision == "int8" and importlib.util.find_spec("nncf") is None:
            return f"int8 needs nncf, not installed (pip install 'leanconv[{self.extra}]')"
        return why

    def build(self, model: nn.Module, example: torch.Tensor, precision: str,
              calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        return self._build(model, example, precision, calib, threads, for_timing=False)

    def build_for_timing(self, module: nn.Module, example: torch.Tensor, precision: str,
                         calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        """As :meth:`build`, from :func:`convert_for_timing`, int8 by :func:`quantize_for_timing`."""
        return self._build(module, example, precision, calib, threads, for_timing=True)

    def _build(self, model: nn.Module, example: torch.Tensor, precision: str,
               calib: Optional[List[torch.Tensor]], threads: int, for_timing: bool) -> Deployed:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r} must be a positive integer")
        ov_model, note = convert_for_timing(model, example) if for_timing else (convert(model, example), "")
        if precision == "int8":  # on the dynamic model: calib batches may differ in size
            batches = check_calib(calib, example)
            if for_timing:
                ov_model, how = quantize_for_timing(ov_model, batches)
            else:
                ov_model, how = quantize(ov_model, batches), f"NNCF PTQ on {_batches(batches)}, "
            note += how
        shape = tuple(example.shape)
        compiled = compile_model(ov_model, shape, precision, threads)
        hint = _hint_name(compiled)
        ran = describe_ran(layer_precisions(compiled), hint)
        used = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        note += f"hint {HINTS[precision]}" if precision in HINTS else f"float parts {hint}"
        note += f", {used} thread{'s' if used != 1 else ''}"
        return Deployed(self.name, precision, ran, "cpu", _runner(compiled, shape), note)


register_target(OpenVinoTarget("openvino", "openvino", ("fp32", "bf16", "int8"), ("cpu",), modules=("openvino",),
                               extra="openvino"))

__all__ = ["COMPUTE_LAYERS", "OpenVinoTarget", "check_calib", "compile_model", "convert", "convert_for_timing",
           "describe_ran", "layer_precisions", "quantize", "quantize_for_timing", "runtime_program"]

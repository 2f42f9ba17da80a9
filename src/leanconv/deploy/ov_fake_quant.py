"""int8 for timing without NNCF: FakeQuantize placed as NNCF's performance preset places it.

``nncf.quantize`` costs ~0.2-0.5 s for one layer, nearly all of it in finding where quantizers
go (graph pattern matching), and a conversion times ~150 candidate layers. A candidate layer is
a short chain of convolutions with biases and channel permutations, where NNCF's placement is
plain: one quantizer on the activation input of every Convolution / GroupConvolution (moved
above a channel Gather, as NNCF moves it), symmetric, u8 where the calibration data never goes
below zero and i8 otherwise, per channel at a depthwise conv's input where its channels are
known, with NNCF's ranges; weights symmetric int8 per output channel, stored as NNCF stores them
(an i8 constant, Convert, Multiply by the scale; NNCF's 7-bit weights of a first layer, its
overflow fix, change values, not what runs). :func:`quick_int8` builds that from one float pass
over the calibration batches, and declines (None) any graph holding other ops (ReLU, residual
Adds, pooling, MatMul...), where NNCF's patterns decide more than this knows.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np
import torch

COMPUTE = frozenset({"Convolution", "GroupConvolution"})
"""The ops this quantizes: their activation input and their weights."""
PASSED = frozenset({"Gather"})
"""Ops NNCF moves an activation quantizer above (a channel permutation runs in int8 as well)."""
KNOWN = COMPUTE | PASSED | {"Parameter", "Constant", "Result", "Add"}
"""The ops of a graph this places quantizers in; any other op leaves the graph to NNCF."""


def _is_constant(value: Any) -> bool:
    return value.get_node().get_type_name() == "Constant"


def _placeable(op: Any) -> bool:
    """Whether ``op`` is one this knows: an Add only with a constant (a bias), a Gather only by
    constant indices, a compute op only with constant weights."""
    kind = op.get_type_name()
    if kind not in KNOWN:
        return False
    if kind == "Add":
        return sum(_is_constant(value) for value in op.input_values()) == 1
    if kind in PASSED or kind in COMPUTE:
        return all(_is_constant(value) for value in op.input_values()[1:])
    return True


def _depthwise(op: Any) -> bool:
    """NNCF's depthwise test: a GroupConvolution with as many groups as known input channels (> 1)."""
    channels = op.input_value(0).get_partial_shape()[1]
    groups = op.input_value(1).get_partial_shape()[0]
    return (op.get_type_name() == "GroupConvolution" and channels.is_static and groups.is_static
            and groups.get_length() == channels.get_length() > 1)


def _points(ov_model: Any) -> Optional[List[Tuple[Any, Any]]]:
    """(output to quantize, compute op) for every compute op, in graph order; None where the
    graph is not one this places quantizers in (an unknown op, a shared activation, no compute)."""
    ops = ov_model.get_ordered_ops()
    if not all(_placeable(op) for op in ops):
        return None
    points = []
    for op in ops:
        if op.get_type_name() in COMPUTE:
            point = op.input_value(0)
            while point.get_node().get_type_name() in PASSED:
                point = point.get_node().input_value(0)
            if _is_constant(point) or len(point.get_target_inputs()) != 1:
                return None
            points.append((point, op))
    return points or None


def _ranges(ov_model: Any, count: int, batches: List[torch.Tensor]) -> List[Tuple[bool, np.ndarray]]:
    """For each of the ``count`` points: whether a value went below zero, and each channel's
    (axis 1) largest magnitude in each of ``batches`` (batches x channels); from one float pass
    of a copy of ``ov_model`` with the points as outputs."""
    import openvino as ov

    probe = ov_model.clone()
    points = _points(probe)
    if points is None or len(points) != count:
        raise RuntimeError("the copy of the model lost its quantization points")
    probe.add_outputs([point for point, _ in points])
    compiled = ov.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    signed = [False] * count
    sizes: List[List[np.ndarray]] = [[] for _ in range(count)]
    for batch in batches:
        request.infer({0: np.ascontiguousarray(batch.numpy())})
        for index in range(count):
            value = request.get_output_tensor(len(compiled.outputs) - count + index).data
            signed[index] = signed[index] or bool(value.min() < 0)
            sizes[index].append(np.abs(value).max(axis=tuple(axis for axis in range(value.ndim) if axis != 1)))
    return [(sign, np.stack(size)) for sign, size in zip(signed, sizes)]


def _activation_quantizer(point: Any, signed: bool, sizes: np.ndarray, per_channel: bool) -> Any:
    """A 256-level symmetric FakeQuantize of ``point``: [-size * 128/127, size] (i8) where a
    value went below zero, else [0, size] (u8); size as NNCF takes it from ``sizes`` (batches x
    channels, each the largest magnitude): per channel the largest over the batches, per tensor
    each batch's largest, averaged."""
    from openvino import opset13 as ops

    if per_channel:
        shape = (1, -1) + (1,) * (point.get_partial_shape().rank.get_length() - 2)
        size = sizes.max(axis=0).reshape(shape)
    else:
        size = np.array(sizes.max(axis=1).mean())
    size = np.maximum(size, 1e-8).astype(np.float32)
    bottom = -size * np.float32(128 / 127) if signed else np.zeros_like(size)
    return ops.fake_quantize(point, bottom, size, bottom, size, 256)


def _int8_weights(op: Any) -> Any:
    """``op``'s weights (a float constant) as NNCF stores quantized weights: symmetric int8 per
    output channel (axis 0, or 0 and 1 of a GroupConvolution's [G, O/G, ...]), Convert, Multiply."""
    from openvino import opset13 as ops

    data = op.input_value(1).get_node().get_data().astype(np.float32)
    axes = tuple(range(2 if op.get_type_name() == "GroupConvolution" else 1, data.ndim))
    scale = np.maximum(np.abs(data).max(axis=axes, keepdims=True), 1e-8) / np.float32(127)
    ints = np.clip(np.round(data / scale), -127, 127).astype(np.int8)
    return ops.multiply(ops.convert(ops.constant(ints), "f32"), ops.constant(scale.astype(np.float32)))


def quick_int8(ov_model: Any, batches: List[torch.Tensor]) -> Optional[Any]:
    """``ov_model`` with int8 FakeQuantize and weights where NNCF's performance preset puts
    them, ranges from ``batches``; None (``ov_model`` untouched) where the graph holds ops
    this does not place quantizers around."""
    points = _points(ov_model)
    if points is None:
        return None
    ranges = _ranges(ov_model, len(points), batches)
    for (point, op), (signed, sizes) in zip(points, ranges):
        target = next(iter(point.get_target_inputs()))
        target.replace_source_output(_activation_quantizer(point, signed, sizes, _depthwise(op)).output(0))
        op.input(1).replace_source_output(_int8_weights(op).output(0))
    return ov_model


__all__ = ["quick_int8"]

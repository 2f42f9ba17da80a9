"""int8 for timing on OpenVINO without NNCF (:mod:`leanconv.deploy.ov_fake_quant`): for every
candidate the auto search times, the FakeQuantize nodes it inserts sit where NNCF's sit (same
producer and consumer, levels, per tensor or per channel, sign and range), its weights are
stored as NNCF stores them (i8, Convert, Multiply by a per output channel scale), and the CPU
plugin compiles from it the very program it compiles from NNCF's model (node by node: type,
precisions, layout, kernel). Its output stays within int8 error of fp32, and graphs it does not know (ReLU,
residual Adds, whole models) are left untouched, to NNCF. No timing is asserted."""

from __future__ import annotations

import importlib.util
from typing import List, Tuple

import numpy as np
import pytest
import torch
from torch import nn

import leanconv.kinds  # noqa: F401 - registers the conv kinds
from leanconv.conversion.candidates import fit_candidate, layer_candidates
from leanconv.conversion.latency import TimingSetting, deployed_layer
from leanconv.deploy.target import output_difference
from leanconv.registry import create_conv2d

HAVE_NNCF = all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf"))
pytestmark = pytest.mark.skipif(not HAVE_NNCF, reason="openvino/nncf not installed (leanconv[openvino])")

CANDIDATES = layer_candidates(nn.Conv2d(16, 16, 3, padding=1, bias=False), (10, 10))
"""Every candidate the search builds for a 3x3 conv: dense, asymmetric, dsconv, grouped, tucker2."""


def _candidate(label: str, bias: bool = False) -> nn.Module:
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=bias)
    (candidate,) = [c for c in layer_candidates(conv, (10, 10)) if c.label == label]
    return fit_candidate(conv, candidate, None)[0].eval()


def _calib(x: torch.Tensor) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [x] + [torch.randn(tuple(x.shape), generator=generator) for _ in range(2)]


def _int8(module: nn.Module, x: torch.Tensor, calib: List[torch.Tensor], quick: bool):
    """``module`` in int8 for timing, by quick_int8 or by NNCF, from the same converted model."""
    from leanconv.deploy import on_openvino as ovm
    from leanconv.deploy.ov_fake_quant import quick_int8

    ov_model, _ = ovm.convert_for_timing(module, x)
    if quick:
        result = quick_int8(ov_model, calib)
        assert result is not None, "quick_int8 declined a candidate layer"
        return result
    return ovm.quantize(ov_model, calib)


def _placements(ov_model) -> List[Tuple]:
    """Each FakeQuantize: producer and consumers' types, levels, range shape, signed, range."""
    found = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            low, high = (op.input_value(i).get_node().get_data() for i in (1, 2))
            consumers = sorted(t.get_node().get_type_name() for t in op.output(0).get_target_inputs())
            found.append((op.input_value(0).get_node().get_type_name(), consumers, op.get_levels(), low.shape,
                          bool(np.any(low < 0)), np.round(high.astype(np.float64), 4).tolist()))
    return found


def _weights(ov_model) -> List[Tuple]:
    """Each compute op's weights: the ops they pass through, the stored type and the scale's shape."""
    found = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            multiply = op.input_value(1).get_node()
            convert, scale = (value.get_node() for value in multiply.input_values())
            stored = convert.input_value(0).get_node()
            found.append((multiply.get_type_name(), convert.get_type_name(), stored.get_element_type().get_type_name(),
                          tuple(stored.get_output_shape(0)), tuple(scale.get_output_shape(0))))
    return found


def _program(ov_model, shape) -> List[Tuple[str, ...]]:
    from leanconv.deploy import on_openvino as ovm

    return ovm.runtime_program(ovm.compile_model(ov_model, shape, "int8", 1))


def _same_as_nncf(module: nn.Module, x: torch.Tensor, calib: List[torch.Tensor]) -> None:
    nncf, quick = _int8(module, x, calib, quick=False), _int8(module, x, calib, quick=True)
    assert _placements(quick) == _placements(nncf)
    assert _weights(quick) == _weights(nncf)
    program = _program(quick, tuple(x.shape))
    assert program == _program(nncf, tuple(x.shape))
    assert any(layer == "Convolution" and precision in ("u8", "i8") for layer, precision, *_ in program), program


@pytest.mark.parametrize("label", [c.label for c in CANDIDATES])
def test_each_candidate_is_quantized_where_nncf_quantizes_it_and_compiles_to_the_same_program(label):
    x = torch.randn(1, 16, 10, 10)
    _same_as_nncf(_candidate(label), x, _calib(x))


@pytest.mark.parametrize("label", ["dense", "dsconv m=1 pointwise_first", "grouped g=4 permuted",
                                   "tucker2 (4, 4) asym core"])
@pytest.mark.parametrize("positive", [False, True])
def test_with_biases_and_with_inputs_never_below_zero_it_still_matches_nncf(label, positive):
    """Non-negative calibration data makes the input's quantizer u8 ([0, max]), as NNCF makes it."""
    x = torch.randn(2, 16, 10, 10)
    calib = [batch.abs() if positive else batch for batch in _calib(x)]
    _same_as_nncf(_candidate(label, bias=True), calib[0], calib)
    first = _placements(_int8(_candidate(label, bias=True), calib[0], calib, quick=True))[0]
    assert first[0] == "Parameter" and first[4] is not positive


def test_a_depthwise_conv_with_known_channels_is_quantized_per_channel_as_nncf_does():
    module = create_conv2d("dsconv", 16, 16, 3, padding=1, order="pointwise_first").eval()
    x = torch.randn(1, 16, 10, 10)
    placements = _placements(_int8(module, x, _calib(x), quick=True))
    assert [shape for *_, shape, _, _ in placements] == [(), (1, 16, 1, 1)]  # the input's channels are not known
    _same_as_nncf(module, x, _calib(x))


@pytest.mark.parametrize("label", [c.label for c in CANDIDATES])
def test_the_quick_int8_output_is_close_to_fp32(label):
    from leanconv.deploy import on_openvino as ovm

    module = _candidate(label)
    x = torch.randn(1, 16, 10, 10)
    compiled = ovm.compile_model(_int8(module, x, [x], quick=True), tuple(x.shape), "int8", 1)
    with torch.no_grad():
        assert output_difference(ovm._runner(compiled, tuple(x.shape))(x), module(x)) < 0.1


def _not_a_chain() -> List[Tuple[str, nn.Module, torch.Tensor]]:
    from leanconv.models import BasicBlock
    from leanconv.models.digits import digits_cnn

    return [("conv + ReLU", nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()), torch.randn(1, 8, 10, 10)),
            ("residual block", BasicBlock(8, 8), torch.randn(1, 8, 10, 10)),
            ("digits CNN", digits_cnn(), torch.randn(4, 1, 32, 32))]


@pytest.mark.parametrize("name, model, x", _not_a_chain())
def test_a_graph_beyond_a_chain_of_convolutions_is_left_untouched_to_nncf(name, model, x):
    from leanconv.deploy import on_openvino as ovm
    from leanconv.deploy.ov_fake_quant import quick_int8

    ov_model, _ = ovm.convert_for_timing(model.eval(), x)
    before = [op.get_type_name() for op in ov_model.get_ordered_ops()]
    assert quick_int8(ov_model, [x]) is None
    assert [op.get_type_name() for op in ov_model.get_ordered_ops()] == before
    deployed = deployed_layer(TimingSetting("openvino", "int8"), model, x)
    assert "NNCF PTQ" in deployed.note and "FakeQuantize" not in deployed.note, deployed.note


def test_a_candidate_timed_on_openvino_int8_says_it_was_quantized_the_quick_way():
    module = _candidate("dsconv m=1")
    x = torch.randn(1, 16, 10, 10)
    deployed = deployed_layer(TimingSetting("openvino", "int8"), module, x)
    assert deployed.ran == "int8" and "FakeQuantize inserted for timing" in deployed.note, deployed.note
    assert "NNCF" not in deployed.note.replace("NNCF's placement", "")
    with torch.no_grad():
        assert output_difference(deployed(x), module(x)) < 0.1

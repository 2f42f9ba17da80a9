"""The openvino target: each precision builds and matches fp32 PyTorch eager within its tolerance
on small reference models, fp32 really runs f32 (OpenVINO's AMX default is bf16), int8 is NNCF's
from the calibration batches given, a missing runtime is a reason (not an import error), and
the user's model is left as it was."""

from __future__ import annotations

import copy
import importlib.util
from collections import Counter

import numpy as np
import pytest
import torch
from support import randomize_norms
from torch import nn

import leanconv
from leanconv.deploy import TOLERANCES, deploy, get_target
from leanconv.deploy.target import hardware_gap, output_difference

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
HAVE_NNCF = importlib.util.find_spec("nncf") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed (leanconv[openvino])")
needs_nncf = pytest.mark.skipif(not (HAVE_OPENVINO and HAVE_NNCF), reason="openvino/nncf not installed")
NO_BF16 = hardware_gap("bf16", "cpu")


def _digits() -> tuple[nn.Module, torch.Tensor]:
    return leanconv.models.create("digits_cnn"), torch.randn(4, 1, 8, 8)


def _resnet_like() -> tuple[nn.Module, torch.Tensor]:
    from leanconv.models import BasicBlock

    return nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2)), torch.randn(2, 8, 12, 12)


def _mobilenet_like() -> tuple[nn.Module, torch.Tensor]:
    block = leanconv.DepthwiseSeparableConv2d(8, 16, 3, stride=2, padding=1, norm_layer=nn.BatchNorm2d,
                                              act_layer=nn.ReLU)
    return nn.Sequential(leanconv.InvertedResidual(8, 8), block), torch.randn(2, 8, 12, 12)


MODELS = {"digits_cnn": _digits, "resnet_like": _resnet_like, "mobilenet_like": _mobilenet_like}


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    """A reference model with random BatchNorm statistics, an input and its fp32 eager output."""
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model, x = MODELS[request.param]()
    randomize_norms(model, generator)
    model.eval()
    with torch.no_grad():
        expected = copy.deepcopy(model)(x)
    return model, x, expected


def _state(model: nn.Module) -> dict:
    return {key: value.clone() for key, value in model.state_dict().items()}


@needs_openvino
def test_fp32_is_f32_and_matches_eager(case):
    model, x, expected = case
    deployed = deploy(model, "openvino", "fp32", example=x)
    assert (deployed.target, deployed.precision, deployed.ran, deployed.device) == ("openvino", "fp32", "fp32", "cpu")
    # bf16 anywhere would show as ~1e-3; f32 with reordered sums stays near float32 rounding
    assert output_difference(deployed(x), expected) < 1e-5 < TOLERANCES["fp32"]


@needs_openvino
@pytest.mark.skipif(NO_BF16 is not None, reason=str(NO_BF16))
def test_bf16_runs_bf16_within_its_tolerance(case):
    model, x, expected = case
    deployed = deploy(model, "openvino", "bf16", example=x)
    assert deployed.ran == "bf16"
    difference = output_difference(deployed(x), expected)
    assert 1e-4 < difference < TOLERANCES["bf16"]  # bf16 rounding shows; it stays within tolerance


@needs_nncf
def test_int8_runs_int8_within_its_tolerance(case):
    model, x, expected = case
    calib = [torch.randn((5, *x.shape[1:])) for _ in range(3)]  # another batch size than the example's
    deployed = deploy(model, "openvino", "int8", example=x, calib=calib)
    assert deployed.ran.startswith("int8"), deployed.ran
    assert deployed.note.startswith("NNCF PTQ on 3 calib batches, float parts ")
    assert output_difference(deployed(x), expected) < TOLERANCES["int8"]


@needs_openvino
def test_the_users_model_is_not_changed():
    model, x = _digits()
    randomize_norms(model)
    model.train()
    model.features.conv2.eval()
    flags = [m.training for m in model.modules()]
    before = _state(model)
    deploy(model, "openvino", "fp32", example=x)
    assert [m.training for m in model.modules()] == flags
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


@needs_openvino
def test_first_output_of_a_tuple_and_threads_read_back():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.relu(), y.sum()

    model, x = Two().eval(), torch.randn(1, 3, 9, 9)
    deployed = deploy(model, "openvino", "fp32", example=x, threads=2)
    expected = torch.nn.functional.conv2d(x, model.conv.weight, model.conv.bias).relu()
    assert output_difference(deployed(x), expected) < 1e-5
    assert deployed(x).dtype == torch.float32
    assert deployed.note == "hint f32, 2 threads"


@needs_openvino
def test_a_different_input_shape_is_one_clear_line():
    model, x = _digits()
    deployed = deploy(model, "openvino", "fp32", example=x)
    with pytest.raises(ValueError, match=r"x has shape \(2, 1, 8, 8\): .* compiled for the example's shape \(4, 1, 8, 8\)"):
        deployed(torch.randn(2, 1, 8, 8))


@needs_openvino
@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_threads(threads):
    model, x = _digits()
    with pytest.raises(ValueError, match=r"threads=.* must be a positive integer"):
        deploy(model, "openvino", "fp32", example=x, threads=threads)


@needs_openvino
def test_fp16_is_refused_by_name():
    model, x = _digits()
    with pytest.raises(ValueError, match=r"target='openvino' precision='fp16': openvino has no fp16"):
        deploy(model, "openvino", "fp16", example=x)


# ------------------------------------------------------------------ int8 reads the calibration data


@pytest.fixture(scope="module")
def digits_openvino():
    """The digits CNN converted to OpenVINO once (quantizing returns a new model)."""
    from leanconv.deploy.on_openvino import convert

    model, x = _digits()
    return convert(model.eval(), x)


def _input_range(ov_model, calib: list) -> tuple[float, float]:
    """The range NNCF gave the quantizer on the model's input, for ``calib``."""
    from leanconv.deploy.on_openvino import quantize

    quantized = quantize(ov_model, calib)
    first = next(op for op in quantized.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
    low, high = (float(first.input_value(i).get_node().get_data().ravel()[0]) for i in (1, 2))
    return low, high


@needs_nncf
def test_int8_input_range_comes_from_the_calib_batches(digits_openvino):
    batch = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    absmax = float(np.abs(batch.numpy()).max())
    # performance preset: symmetric signed 8-bit, so the range is [-absmax * 128/127, absmax]
    for scale in (1.0, 3.0):
        low, high = _input_range(digits_openvino, [batch * scale])
        assert high == pytest.approx(scale * absmax, rel=1e-5)
        assert low == pytest.approx(-scale * absmax * 128 / 127, rel=1e-5)
    # every batch is read: two batches give a range between their own ones
    wide, narrow = batch * 5, torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    _, high = _input_range(digits_openvino, [wide, narrow])
    assert float(narrow.abs().max()) * 1.01 < high < float(wide.abs().max()) * 0.99
    assert not any(op.get_type_name() == "FakeQuantize" for op in digits_openvino.get_ordered_ops())


@needs_nncf
def test_int8_output_depends_on_the_calib_and_defaults_to_the_example():
    model, x = _digits()
    randomize_norms(model, torch.Generator().manual_seed(5))
    model.eval()
    with torch.no_grad():
        expected = copy.deepcopy(model)(x)
    fitting = deploy(model, "openvino", "int8", example=x, calib=[x])
    default = deploy(model, "openvino", "int8", example=x)
    coarse = deploy(model, "openvino", "int8", example=x, calib=[x * 50])
    torch.testing.assert_close(default(x), fitting(x), rtol=1e-6, atol=1e-6)
    # calibrated on inputs 50x too large, every activation's quantization step is 50x coarser
    assert output_difference(coarse(x), fitting(x)) > 1e-3
    assert output_difference(coarse(x), expected) > output_difference(fitting(x), expected)


@pytest.mark.parametrize("calib, error, message", [
    ([], ValueError, r"calib must be a non-empty list of input batches, got list of length 0"),
    (torch.randn(4, 1, 8, 8), ValueError, r"calib must be a non-empty list of input batches, got Tensor"),
    ([np.zeros((4, 1, 8, 8))], TypeError, r"calib\[0\] must be a float tensor, got ndarray"),
    ([torch.randn(4, 1, 8, 8), torch.randn(4, 3, 8, 8)], ValueError,
     r"calib\[1\] has shape \(4, 3, 8, 8\): it must be 4-D with 1 channels like the example \(4, 1, 8, 8\)"),
])
def test_bad_calib_is_one_clear_line(calib, error, message):
    from leanconv.deploy.on_openvino import check_calib

    with pytest.raises(error, match=message):
        check_calib(calib, torch.randn(4, 1, 8, 8))


# ------------------------------------------------------------------ what ran, and a missing runtime


def test_describe_ran_names_the_minority_precisions():
    from leanconv.deploy.on_openvino import describe_ran

    assert describe_ran(Counter({"int8": 20}), "bf16") == "int8"
    assert describe_ran(Counter({"int8": 19, "bf16": 2, "fp32": 1}), "bf16") == \
        "int8 (with bf16: 2, fp32: 1 of 22 compute layers)"
    assert describe_ran(Counter(), "fp32") == "fp32"


def test_registered_with_what_it_needs():
    target = get_target("openvino")
    assert (target.runtime, target.precisions, target.devices) == ("openvino", ("fp32", "bf16", "int8"), ("cpu",))
    assert (target.modules, target.extra) == (("openvino",), "openvino")
    assert target.unsupported("fp32", "cuda") == "openvino runs on cpu, not cuda"


def _absent(*names: str):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in names else real(name, *args, **kwargs)

    return find_spec


def test_missing_openvino_is_a_reason_and_an_explicit_ask_an_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", _absent("openvino"))
    target = get_target("openvino")
    assert target.missing() == "openvino not installed (pip install 'leanconv[openvino]')"
    model, x = _digits()
    with pytest.raises(ValueError, match=r"target='openvino' precision='fp32': openvino not installed "
                                         r"\(pip install 'leanconv\[openvino\]'\)"):
        deploy(model, "openvino", "fp32", example=x)


def test_missing_nncf_refuses_only_int8(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", _absent("nncf"))
    target = get_target("openvino")
    assert target.unsupported("int8", "cpu") == "int8 needs nncf, not installed (pip install 'leanconv[openvino]')"
    assert target.unsupported("fp32", "cpu") is None
    if HAVE_OPENVINO:
        assert target.missing() is None

"""The onnxruntime target: fp32 and int8 outputs match fp32 PyTorch eager on reference models,
int8 is calibrated on the data given, the user's model is left as it was, a missing runtime says
what to install."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import leanconv
from leanconv.deploy import TOLERANCES, deploy, get_target
from leanconv.deploy.target import output_difference, reference_output

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _randomize_norms(model: nn.Module) -> nn.Module:
    """BatchNorm with non-trivial running statistics and affine terms (so folding them matters)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return model


class ResidualNet(nn.Module):
    """A ResNet basic block (conv-BN-ReLU-conv-BN plus identity) between a stem and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.head(torch.relu(x + y).mean((2, 3)))


class MobileNet(nn.Module):
    """A MobileNetV2 inverted residual (1x1 expand, 3x3 depthwise, 1x1 project, ReLU6) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(
            nn.Conv2d(8, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
            nn.Conv2d(32, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head((x + self.block(x)).mean((2, 3)))


MODELS = {
    "digits_cnn": (lambda: leanconv.models.create("digits_cnn"), (4, 1, 32, 32)),
    "residual": (ResidualNet, (4, 3, 16, 16)),
    "mobilenet": (MobileNet, (4, 3, 16, 16)),
}


def _setup(name: str):
    factory, shape = MODELS[name]
    model = _randomize_norms(factory()).eval()
    calib = [torch.randn(shape) for _ in range(4)]
    return model, torch.randn(shape), calib


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_outputs_match_fp32_eager(name, precision):
    model, x, calib = _setup(name)
    deployed = deploy(model, "onnxruntime", precision, example=x, calib=calib)
    assert (deployed.target, deployed.precision, deployed.ran, deployed.device) == ("onnxruntime", precision, precision,
                                                                                    "cpu")
    assert "CPUExecutionProvider" in deployed.note and "1 thread" in deployed.note
    difference = output_difference(deployed(x), reference_output(model, x))
    assert difference < TOLERANCES[precision], (name, precision, difference)
    if precision == "fp32":
        assert difference < 1e-5  # same math, reordered sums only
    other = torch.randn(7, *x.shape[1:])  # a free batch axis: any batch runs
    assert output_difference(deployed(other), reference_output(model, other)) < TOLERANCES[precision]


def test_int8_is_calibrated_on_the_data_given():
    """Calibrating on batches 100x wider than the inputs coarsens every activation scale: the output
    moves, and away from fp32."""
    model, x, calib = _setup("residual")
    fitting = deploy(model, "onnxruntime", "int8", example=x, calib=calib)
    wide = deploy(model, "onnxruntime", "int8", example=x, calib=[100 * c for c in calib])
    reference = reference_output(model, x)
    assert "calibrated on 4 batches" in fitting.note
    assert not torch.allclose(fitting(x), wide(x))
    assert output_difference(wide(x), reference) > 3 * output_difference(fitting(x), reference)
    default = deploy(model, "onnxruntime", "int8", example=x)
    assert "calibrated on the example" in default.note
    assert output_difference(default(x), reference) < TOLERANCES["int8"]


def test_users_model_is_not_changed():
    model, x, calib = _setup("mobilenet")
    model.train()
    model.block[1].eval()  # a frozen BN inside a training model keeps its own flag
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    deploy(model, "onnxruntime", "int8", example=x, calib=calib)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # not fused in place


def test_threads_are_set_in_the_session():
    model, x, _ = _setup("digits_cnn")
    assert "2 threads" in deploy(model, "onnxruntime", "fp32", example=x, threads=2).note
    with pytest.raises(ValueError, match=r"threads=0 must be an integer >= 1"):
        deploy(model, "onnxruntime", "fp32", example=x, threads=0)


class FixedBatch(nn.Module):
    """Code that fixes the batch (``view(2, 144)``): exported at the example's batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).view(2, 4 * 6 * 6)


def test_fixed_batch_model_gets_calibration_batches_recut():
    model = FixedBatch().eval()
    x = torch.randn(2, 3, 8, 8)
    calib = [torch.randn(3, 3, 8, 8) for _ in range(3)]  # 9 samples: four batches of 2
    deployed = deploy(model, "onnxruntime", "int8", example=x, calib=calib)
    assert "batch fixed at 2" in deployed.note
    assert output_difference(deployed(x), reference_output(model, x)) < TOLERANCES["int8"]
    with pytest.raises(ValueError, match="calib: 1 samples in all, the exported model needs batches of 2"):
        deploy(model, "onnxruntime", "int8", example=x, calib=[torch.randn(1, 3, 8, 8)])


def test_missing_runtime_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    target = get_target("onnxruntime")
    assert target.missing() == "onnxruntime not installed (pip install 'leanconv[onnx]')"
    model, x, _ = _setup("digits_cnn")
    with pytest.raises(ValueError, match=r"target='onnxruntime' precision='fp32': onnxruntime not installed"):
        deploy(model, "onnxruntime", "fp32", example=x)


def test_precisions_it_does_not_have_are_refused():
    model, x, _ = _setup("digits_cnn")
    with pytest.raises(ValueError, match="onnxruntime has no bf16"):
        deploy(model, "onnxruntime", "bf16", example=x)
    assert get_target("onnxruntime").unsupported("fp32", "cuda") == "onnxruntime runs on cpu, not cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_is_exported_from_a_cpu_copy():
    model, x, calib = _setup("residual")
    model = model.cuda()
    deployed = deploy(model, "onnxruntime", "fp32", example=x, device="cpu")
    assert next(model.parameters()).is_cuda
    assert output_difference(deployed(x), reference_output(model.cpu(), x)) < TOLERANCES["fp32"]


class NothingToQuantize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


def test_ran_is_what_onnxruntime_runs_not_what_was_asked():
    deployed = deploy(NothingToQuantize(), "onnxruntime", "int8", example=torch.randn(2, 3, 8, 8))
    assert (deployed.precision, deployed.ran) == ("int8", "fp32")
    assert "0 integer kernels (no operator onnxruntime quantizes: all fp32)" in deployed.note
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(deployed(x), torch.exp(x), rtol=1e-5, atol=1e-6)


@torch.library.custom_op("leanconv_test::ort_doubled", mutates_args=())
def _doubled(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


@_doubled.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _doubled(self.conv(x))


def test_bad_models_and_calibration_are_one_line():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"^model cannot be exported to ONNX: operator leanconv_test\.ort_doubled"
                                         r"\.default has no ONNX translation[^\n]*$"):
        deploy(WithCustomOp().eval(), "onnxruntime", "fp32", example=x)
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"calib\[1\] has shape \(2, 4, 8, 8\): the example's is \(2, 3, 8, 8\)"):
        deploy(conv, "onnxruntime", "int8", example=x, calib=[x, torch.randn(2, 4, 8, 8)])
    with pytest.raises(TypeError, match=r"calib\[0\] must be a tensor, not ndarray"):
        deploy(conv, "onnxruntime", "int8", example=x, calib=[x.numpy()])

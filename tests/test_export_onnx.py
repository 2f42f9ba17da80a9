"""ONNX export of leanconv layers and converted models matches PyTorch in onnxruntime."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import leanconv  # noqa: E402
from leanconv.export import export_onnx  # noqa: E402


def test_converted_model_exports_and_matches(tmp_path):
    model = leanconv.models.create("digits_cnn").eval()
    converted = leanconv.convert(model, to="dsconv", rank=1, exclude=["features.conv1*"]).model
    x = torch.randn(2, 1, 32, 32)
    assert export_onnx(converted, (x,), tmp_path / "m.onnx") < 1e-4
    with pytest.raises(FileExistsError, match="pass force=True"):
        export_onnx(converted, (x,), tmp_path / "m.onnx")
    for kwargs in (dict(to="dsconv", order="pointwise_first", rank=1), dict(to="tucker2", core="asymmetric", rank=8),
                   dict(to="grouped", permute=True, rank=2), dict(to="asymmetric", rank=4)):
        other = leanconv.convert(model, exclude=["features.conv1*"], **kwargs).model
        assert export_onnx(other, (x,), tmp_path / f"{kwargs['to']}.onnx") < 1e-4, kwargs


def test_layers_with_dynamic_same_padding_export(tmp_path):
    model = nn.Sequential(
        leanconv.Conv2d(3, 8, 3, 2, "same"),
        leanconv.DepthwiseSeparableConv2d(8, 8, 3, padding="same", dilation=2),
        leanconv.AsymmetricConv2d(8, 8, 3, padding=1),
        leanconv.ACBlock(8, 8, 3, padding=1),
        leanconv.DepthwiseSeparableConvTranspose2d(8, 4, 3, stride=2, padding="same"),
    ).eval()
    assert export_onnx(model, (torch.randn(1, 3, 17, 15),), tmp_path / "layers.onnx") < 1e-4


# ---------------------------------------------------------------- outputs, dynamic axes, failures

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402


class FaceNet(nn.Module):
    """Fully convolutional, three heads like MTCNN's nets (face probability, box, five landmarks)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2, 2, ceil_mode=True),
                                  nn.Conv2d(10, 16, 3), nn.PReLU(16), nn.Conv2d(16, 32, 3), nn.PReLU(32))
        self.cls, self.box, self.landmark = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1), nn.Conv2d(32, 10, 1)

    def forward(self, x):
        y = self.body(x)
        return torch.softmax(self.cls(y), dim=1), self.box(y), self.landmark(y)


def test_three_outputs_with_free_batch_and_image_size(tmp_path):
    model = FaceNet().eval()
    path = tmp_path / "face.onnx"
    assert export_onnx(model, (torch.randn(1, 3, 12, 12),), path, dynamic=("batch", "height", "width")) < 1e-4
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 3
    for shape in ((3, 3, 20, 17), (2, 3, 31, 40)):  # other pyramid sizes and batches than the example
        x = torch.randn(shape)
        ours = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            theirs = model(x)
        for got, want in zip(ours, theirs):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


_CALLS = [0]  # outside the module: torch.export restores a module's own attributes


class Counting(nn.Module):
    """Its second output changes with every call: the exported graph keeps the count of the
    export, so only a check of output 1 (not output 0) sees the difference."""

    def forward(self, x):
        _CALLS[0] += 1
        return {"same": x + 1, "rest": [x * 0.5, x * float(_CALLS[0])]}


def test_every_output_is_checked_and_a_failed_check_writes_nothing(tmp_path):
    x = torch.rand(2, 3, 4, 4) + 1  # every value >= 1
    difference = export_onnx(Counting(), (x,), tmp_path / "a.onnx")
    assert difference >= 0.999  # at least one more call since the export: |x * k - x * (k+1)| >= 1
    with pytest.raises(ValueError, match=r"tolerance=0.001: the ONNX model differs from PyTorch by .*nothing written"):
        export_onnx(Counting(), (x,), tmp_path / "b.onnx", tolerance=1e-3)
    assert not (tmp_path / "b.onnx").exists()
    assert export_onnx(Counting(), (x,), tmp_path / "c.onnx", check=False) == 0.0
    assert (tmp_path / "c.onnx").exists()


class FixedSize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def test_dynamic_axes_the_model_fixes_or_does_not_know_are_refused(tmp_path):
    model, x = FixedSize().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"fixes height of input 'x' to 8"):
        export_onnx(model, (x,), tmp_path / "m.onnx", dynamic=("batch", "height"))
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ValueError, match=r"dynamic=\('depth',\): 'depth' is not one of \['batch', 'height', 'width'\]"):
        export_onnx(model, (x,), tmp_path / "m.onnx", dynamic=("depth",))
    with pytest.raises(ValueError, match=r"height and width need NCHW inputs, example_inputs\[0\] has shape \(2, 5\)"):
        export_onnx(nn.Linear(5, 2), (torch.randn(2, 5),), tmp_path / "m.onnx", dynamic="height")
    assert export_onnx(model, (x,), tmp_path / "m.onnx", dynamic="batch") < 1e-4


@torch.library.custom_op("leanconv_test::scaled", mutates_args=())
def _scaled(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


@_scaled.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = leanconv.models.create("digits_cnn")

    def forward(self, x):
        return _scaled(self.body(x))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = leanconv.models.create("digits_cnn")

    def forward(self, x):
        y = self.body(x)
        if y.sum() > 0:  # a branch on a value: torch.export cannot trace it
            return y
        return -y


def test_an_op_without_onnx_is_one_line_and_stderr_stays_quiet(tmp_path, capfd):
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(ValueError) as caught:
        export_onnx(WithCustomOp().eval(), (x,), tmp_path / "m.onnx")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("model cannot be exported to ONNX: operator leanconv_test.scaled.default has no ONNX")
    with pytest.raises(ValueError) as caught:
        export_onnx(DataDependent().eval(), (x,), tmp_path / "m.onnx")
    message = str(caught.value)
    assert "\n" not in message and "data-dependent" in message
    assert "test_export_onnx.py" in message and "if y.sum() > 0" in message  # the model's line that failed
    assert not (tmp_path / "m.onnx").exists()
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 500, (out[-300:], err[-300:])  # the exporter dumps ~30 kB of graph otherwise


def test_bad_example_inputs_are_one_line(tmp_path):
    with pytest.raises(TypeError, match=r"example_inputs\[1\] must be a tensor, not int"):
        export_onnx(nn.Identity(), (torch.randn(1), 3), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"tolerance=-1 must be a number >= 0"):
        export_onnx(nn.Identity(), (torch.randn(1),), tmp_path / "m.onnx", tolerance=-1)

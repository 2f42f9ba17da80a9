"""Analysis on models whose forward reads tensor values (ONNX imports), MACs per output pixel,
the share of MACs in given layers, models without convs, and the grad modes.

Every figure is checked against a hand count (closed form) or torch's own FlopCounterMode.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import leanconv
from leanconv.analysis.counting import MetaFallbackWarning, layer_macs, mac_share, pixel_macs, traced_shapes
from leanconv.kinds import ConvSpec, create_conv2d


# ------------------------------------------------------------------ models that read tensor values

class Crop(nn.Module):
    """Keeps the first ``limit`` rows, ``limit`` read from a buffer (a data-dependent slice)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("limit", torch.tensor(6))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x[:, :, : int(self.limit.item())]))


class Resize(nn.Module):
    """An ONNX-style Resize: the output size is a tensor input (onnx2torch's OnnxResize reads it)."""

    def forward(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=sizes.tolist()[-2:], mode="nearest")


class ResizeNet(nn.Module):
    """Resize to a size held in a buffer, then a strided conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sizes", torch.tensor([1, 3, 12, 10]))
        self.resize = Resize()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.resize(x, self.sizes))
        return self.head(y.mean((2, 3)))


@torch.fx.wrap
def crop_rows(x: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """A graph-level op that reads a tensor's value (as onnx2torch's Slice does)."""
    return x[:, :, : int(limit.item())]


class GraphSource(nn.Module):
    """Traced into a GraphModule: resize (a leaf module), crop (a wrapped function), conv."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sizes", torch.tensor([1, 3, 12, 10]))
        self.register_buffer("limit", torch.tensor(9))
        self.resize = Resize()
        self.conv = nn.Conv2d(3, 6, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(crop_rows(self.resize(x, self.sizes), self.limit))


class _LeafResize(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return isinstance(module, Resize) or super().is_leaf_module(module, name)


def graph_module() -> torch.fx.GraphModule:
    source = GraphSource()
    return torch.fx.GraphModule(source, _LeafResize().trace(source))


# (model, input size, conv path, conv input (H, W), hand-counted conv + linear MACs)
CASES = {
    "slice": (Crop, (1, 3, 10, 8), "conv", (6, 8), 4 * 3 * 9 * 6 * 8),
    "resize": (ResizeNet, (1, 3, 7, 5), "conv", (12, 10), 8 * 3 * 9 * 6 * 5 + 8 * 5),
    "fx_graph": (graph_module, (1, 3, 7, 5), "conv", (9, 10), 6 * 3 * 9 * 9 * 10),
}


def _real_flop_count(model: nn.Module, size) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("case", sorted(CASES))
def test_profile_falls_back_to_a_real_pass_with_one_warning(case):
    make, size, path, hw, macs = CASES[case]
    model = make().train()
    state = copy.deepcopy(model.state_dict())
    with pytest.warns(MetaFallbackWarning) as caught:
        report = leanconv.profile(model, size)
    fallbacks = [w for w in caught if issubclass(w.category, MetaFallbackWarning)]
    assert len(fallbacks) == 1 and "\n" not in str(fallbacks[0].message)
    assert "needs tensor values" in str(fallbacks[0].message) and "cpu" in str(fallbacks[0].message)
    assert report.total_macs == macs == _real_flop_count(make(), size)
    assert report.device == "cpu" and report.notes == [str(fallbacks[0].message)]
    assert "note: counted on one real pass" in report.summary_text()
    row = next(r for r in report.rows if r.path == path)
    assert row.input_shape[2:] == hw
    # the model is left as it was: every train flag, every buffer (BatchNorm stats included)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert leanconv.profile(model, size, device="cpu").total_macs == macs  # the explicit real pass agrees


@pytest.mark.parametrize("case", sorted(CASES))
def test_traced_shapes_and_mac_share_fall_back_too(case):
    make, size, path, hw, macs = CASES[case]
    with pytest.warns(MetaFallbackWarning):
        assert traced_shapes(make(), size) == {path: hw}
    with pytest.warns(MetaFallbackWarning):
        share = mac_share(make(), size, [path])
    conv_macs = macs - (8 * 5 if case == "resize" else 0)
    assert share == pytest.approx(conv_macs / macs)
    with pytest.warns(MetaFallbackWarning, match="real pass on cpu"):
        assert traced_shapes(make(), size, device="cpu") == {path: hw}


def test_a_model_that_fits_the_meta_pass_gives_no_warning_and_no_input_size_no_shapes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 5, padding=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert traced_shapes(model, (2, 3, 31, 17)) == {"0": (31, 17), "1": (16, 9)}
        assert leanconv.profile(model, (1, 3, 8, 8)).notes == []
    assert traced_shapes(model, None) == {}


def test_a_real_misfit_is_not_masked_by_the_fallback():
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(6, 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback is tried for a shape misfit
        with pytest.raises(ValueError, match=r"does not fit the model: it breaks at 1 \(Conv2d\) .*expected \(N, 6, H, W\)"):
            traced_shapes(plain, (1, 3, 8, 8))
    # a value-reading model with the wrong channel count: the real pass meets the misfit and says so
    with pytest.warns(MetaFallbackWarning), pytest.raises(ValueError, match=r"breaks at conv \(Conv2d\) .*expected \(N, 3, H, W\)"):
        leanconv.profile(Crop(), (1, 5, 10, 8))


def test_fallback_needs_a_real_device():
    with torch.device("meta"):
        model = Crop()
    with pytest.raises(ValueError, match="the model is on the meta device"):
        leanconv.profile(model, (1, 3, 10, 8))


@pytest.mark.parametrize("bad, match", [
    ((1, 3, 0, 8), "must contain positive ints"),
    ("1,3,8,8", "must be a shape like"),
    ((1, 3, True, 8), "must contain positive ints"),
])
def test_traced_shapes_refuses_bad_sizes(bad, match):
    with pytest.raises(ValueError, match=match):
        traced_shapes(nn.Conv2d(3, 4, 3), bad)


# ------------------------------------------------------------------ MACs per output pixel

def _spec(o=16, c=8, k=(3, 3), s=(1, 1), p=1, d=(1, 1), **options):
    return ConvSpec.create(c, o, k, s, p, d, **options)


@pytest.mark.parametrize("k, s, p, d", [
    ((3, 3), (1, 1), 1, (1, 1)), ((3, 3), (1, 1), 0, (1, 1)), ((3, 3), (2, 2), 1, (1, 1)),
    ((5, 3), (2, 1), (2, 1), (1, 1)), ((3, 3), (1, 1), 2, (2, 2)), ((3, 3), (1, 1), 4, (1, 1)),
    ((7, 7), (3, 2), "same", (1, 2)), ((3, 5), (1, 1), "valid", (3, 1)),
])
def test_dense_macs_per_output_pixel_are_kernel_volume_times_channels(k, s, p, d):
    """Before: the spatial size min_hw ignored padding, so a padded 3x3 counted 9 output pixels."""
    spec = _spec(k=k, s=s, p=p, d=d)
    assert pixel_macs("dense", spec) == 16 * 8 * k[0] * k[1]
    assert layer_macs("dense", spec) == 16 * 8 * k[0] * k[1]
    conv = create_conv2d("dense", 8, 16, k, stride=s, padding=p, dilation=d)
    assert layer_macs("dense", spec, (40, 40)) == leanconv.profile(conv, (1, 8, 40, 40)).total_macs


def _flop_macs_per_pixel(kind, s, **options):
    """FlopCounterMode on the built layer at a size where 'same' padding makes every stage exact."""
    module = create_conv2d(kind, 8, 16, 3, stride=s, padding="same", **options)
    hw = 12 * s
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = module.eval()(torch.randn(1, 8, hw, hw))
    return counter.get_total_flops() // 2 / (out.shape[2] * out.shape[3])


@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("kind, options, closed", [
    ("grouped", {"groups": 4}, lambda s: 16 * 2 * 9),
    ("dsconv", {"depth_multiplier": 2}, lambda s: 8 * 2 * 9 + 8 * 2 * 16),
    ("asymmetric", {"mid_channels": 5}, lambda s: 8 * 5 * 3 * s + 5 * 16 * 3),
    ("tucker2", {"ranks": (4, 6)}, lambda s: 8 * 4 * s * s + 4 * 6 * 9 + 6 * 16),
])
def test_kind_macs_per_output_pixel_closed_form(kind, options, closed, s):
    """Per output pixel on a large input: a stage before a stride runs once per input pixel."""
    for padding in (1, 0, "same", "valid"):
        spec = ConvSpec.create(8, 16, (3, 3), (s, s), padding, (1, 1), **options)
        assert pixel_macs(kind, spec) == closed(s)
    assert _flop_macs_per_pixel(kind, s, **options) == closed(s)


def test_transposed_macs_per_output_pixel():
    spec = ConvSpec.create(8, 16, (4, 4), (2, 2), 1, (1, 1))
    assert pixel_macs("transposed", spec) == 8 * 16 * 16 / 4
    module = nn.ConvTranspose2d(8, 16, 4, stride=2, padding=1)
    report = leanconv.profile(module, (1, 8, 10, 10))
    assert report.total_macs / (20 * 20) == pixel_macs("transposed", spec)


# ------------------------------------------------------------------ share of the MACs in given layers

def test_mac_share_against_a_hand_count():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 1)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    size = (1, 3, 16, 16)
    stem, strided, pointwise, linear = 8 * 3 * 9 * 256, 16 * 8 * 9 * 64, 16 * 16 * 64, 16 * 10
    total = stem + strided + pointwise + linear
    assert mac_share(model, size, ["0", "2.0"]) == pytest.approx((stem + strided) / total)
    assert mac_share(model, size, ["2"]) == pytest.approx((strided + pointwise) / total)  # a container: all below it
    assert mac_share(model, size, "5") == pytest.approx(linear / total)
    assert mac_share(model, size, []) == 0.0
    assert mac_share(model, size, [""]) == 1.0
    with pytest.raises(ValueError, match=r"paths=\['9'\] are not module paths"):
        mac_share(model, size, ["0", "9"])
    assert mac_share(nn.Sequential(nn.ReLU()), (1, 3, 4, 4), ["0"]) == 0.0


# ------------------------------------------------------------------ no convs; too small; grad modes

def test_profile_of_a_model_without_convs_says_so():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 20), nn.ReLU(), nn.Linear(20, 3))
    report = leanconv.profile(mlp, (2, 3, 4, 4))
    assert report.total_macs == 2 * (48 * 20 + 20 * 3)
    assert report.notes == ["the model runs no convolution: its MACs are those of its matrix products (linear layers)"]
    assert "note: the model runs no convolution" in report.summary_text()
    assert report.to_dict()["notes"] == report.notes
    empty = leanconv.profile(nn.Sequential(nn.ReLU()), (1, 3, 4, 4))
    assert empty.total_macs == 0 and "0 MACs" in empty.notes[0]


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=5, input_size=3, padding="valid"),
    dict(kernel_size=3, input_size=8, padding="valid", dilation=4),
    dict(kernel_size=(1, 7), input_size=(8, 6), padding=0),
])
def test_compare_refuses_an_input_smaller_than_the_kernel(kwargs):
    with pytest.raises(ValueError, match=r"^input size .* is too small for dense stage 'conv': its output would be"):
        leanconv.compare(8, 8, **kwargs)


@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad, torch.enable_grad])
def test_every_entry_point_answers_the_same_in_every_grad_mode(context):
    conv = nn.Conv2d(4, 8, 3, padding=1)
    crop_macs = CASES["slice"][4]
    with context():
        compared = leanconv.compare(16, 32, 3, 14, stride=2)
        explained = leanconv.explain(conv, (1, 4, 8, 8))
        with pytest.warns(MetaFallbackWarning):
            profiled = leanconv.profile(Crop(), (1, 3, 10, 8))
    assert [c.macs for c in compared.candidates] == [c.macs for c in leanconv.compare(16, 32, 3, 14, stride=2).candidates]
    assert compared.candidates[0].macs == 32 * 16 * 9 * 7 * 7
    assert explained.total_macs == 8 * 4 * 9 * 64
    assert profiled.total_macs == crop_macs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_profile_follows_the_model_dtype(dtype):
    """A half model was profiled on float32 inputs and the error blamed the input."""
    conv = nn.Conv2d(3, 4, 3).to(dtype)
    for device in ("meta", "cpu"):
        report = leanconv.profile(conv, (1, 3, 10, 8), device=device)
        assert report.total_macs == 4 * 3 * 9 * 8 * 6
        assert report.param_bytes == (4 * 27 + 4) * 2 and report.input_bytes == 3 * 80 * 2
    with pytest.warns(MetaFallbackWarning):
        assert traced_shapes(Crop().to(dtype), (1, 3, 10, 8)) == {"conv": (6, 8)}


@pytest.mark.parametrize("call, match", [
    (lambda: leanconv.profile(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), batch_size=1.5), r"^batch_size=1\.5 must be >= 1, an int$"),
    (lambda: leanconv.profile(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), device="bogus"), r"^device='bogus' is not a torch device"),
    (lambda: leanconv.profile(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), dtype="float"), r"^dtype='float' must be a floating torch\.dtype"),
    (lambda: leanconv.profile(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), dtype=torch.int8), r"^dtype=torch\.int8 must be a floating"),
    (lambda: leanconv.profile(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), measure_latency=True, repeats=0), r"^repeats=0 must be an int >= 1$"),
    (lambda: leanconv.profile(nn.Conv2d(3, 4, 3), inputs="abc"), r"^inputs='abc' must be an example tensor or a list of them$"),
    (lambda: leanconv.compare(8, 8, 3, 8, kinds=5), r"^kinds=5 must be a kind name or a list of them"),
    (lambda: leanconv.compare(8, 8, 3, 8, measure=True, min_run_time=0), r"^min_run_time=0 must be a number of seconds > 0$"),
])
def test_analysis_arguments_are_checked_up_front(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_one_example_tensor_and_one_kind_name_are_accepted():
    conv = nn.Conv2d(3, 4, 3)
    assert leanconv.profile(conv, inputs=torch.randn(2, 3, 8, 8)).total_macs == 2 * 4 * 3 * 9 * 36
    assert [c.kind for c in leanconv.compare(8, 8, 3, 8, kinds="dsconv").candidates] == ["dense", "dsconv"]

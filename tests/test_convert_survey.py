"""What convert takes and what it leaves: grouped convs (ResNeXt), the stem default, a reason
for every conv that stays, every calibration data form, and the device option."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from leanconv import convert
from leanconv.conversion.plan import apply_plan

F64 = torch.float64


class Mixed(nn.Module):
    """A stem, a grouped 3x3 (ResNeXt), a depthwise, a 1x1, a transposed conv and a dense 3x3."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pointwise = nn.Conv2d(32, 16, 1)
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.dense = nn.Conv2d(16, 8, 3, padding=1, bias=False)

    def forward(self, x):
        return self.dense(self.up(self.pointwise(self.depthwise(self.grouped(self.stem(x))))))


def _model():
    torch.manual_seed(0)
    return Mixed().to(F64).eval()


@pytest.mark.parametrize("order", ["depthwise_first", "pointwise_first"])
def test_grouped_conv_converts_exactly_at_full_rank_per_group(order):
    model = _model()
    result = convert(model, to="dsconv", order=order, only_if_cheaper=False)
    assert sorted(result.plan.layers) == ["dense", "grouped"]
    layer = result.model.grouped
    assert layer.pointwise.groups == 4 and result.plan.layers["grouped"].options["groups"] == 4
    x = torch.randn(2, 3, 9, 7, dtype=F64)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-9, atol=1e-9)


def test_grouped_rank1_matches_a_per_group_svd():
    """Reference: rank-1 SVD of each (O/g) x 9 slice of each input channel, built with F.conv2d."""
    model = _model()
    conv = model.grouped
    result = convert(model, rank=1, only_if_cheaper=False)
    g, c_g, o_g = 4, 4, 8
    w = conv.weight.detach().reshape(g, o_g, c_g, 9)
    dw, pw = torch.zeros(16, 1, 3, 3, dtype=F64), torch.zeros(32, 4, 1, 1, dtype=F64)
    for j in range(g):
        for i in range(c_g):
            u, s, vh = torch.linalg.svd(w[j, :, i, :])
            dw[j * c_g + i, 0] = vh[0].reshape(3, 3)
            pw[j * o_g:(j + 1) * o_g, i, 0, 0] = u[:, 0] * s[0]
    x = torch.randn(2, 16, 6, 6, dtype=F64)
    expected = F.conv2d(F.conv2d(x, dw, padding=1, groups=16), pw, conv.bias, groups=4)
    torch.testing.assert_close(result.model.grouped(x), expected, rtol=1e-9, atol=1e-9)


def test_every_conv_that_stays_has_a_reason():
    result = convert(_model(), rank=1)
    assert set(result.kept) == {"stem", "depthwise", "pointwise", "up"}
    assert result.kept["depthwise"] == "depthwise already"
    assert "1x1" in result.kept["pointwise"] and "transposed" in result.kept["up"]
    assert "stem" in result.kept["stem"] and "keep_stem=False" in result.kept["stem"]
    assert "left as they are: stem: stem" in result.to_markdown()
    asym = convert(_model(), to="asymmetric", rank=4)
    assert "grouped (groups=4): asymmetric does not convert grouped convs" in asym.kept["grouped"]


def test_stem_is_kept_by_default_and_converted_on_request():
    assert "stem" not in convert(_model(), rank=1).plan.layers
    assert "stem" in convert(_model(), rank=1, keep_stem=False, only_if_cheaper=False).plan.layers
    # a model whose first conv does not read an image (64 channels) has no stem to keep
    body = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)).to(F64)
    assert list(convert(body, rank=1).plan.layers) == ["0", "1"]
    # the image channel count, when known, decides
    assert "0" in convert(body, rank=1, input_size=(1, 64, 8, 8)).kept
    # a lone conv given to convert is the one to convert
    assert list(convert(nn.Conv2d(3, 8, 3).to(F64), rank=1).plan.layers) == [""]


def test_plan_rebuilds_the_grouped_conversion():
    model = _model()
    result = convert(model, rank=2)
    rebuilt = apply_plan(_model(), result.plan)
    rebuilt.load_state_dict(result.model.state_dict())
    x = torch.randn(1, 3, 8, 8, dtype=F64)
    torch.testing.assert_close(rebuilt(x), result.model(x))


X = torch.randn(8, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
Y = torch.arange(8)


@pytest.mark.parametrize("form", ["tensor", "list", "pairs", "loader", "dicts", "dataset", "float32"])
def test_every_calibration_form_gives_the_same_refit(form):
    calib = {"tensor": X, "list": [X[:4], X[4:]], "pairs": [(X[:4], Y[:4]), (X[4:], Y[4:])],
             "loader": DataLoader(TensorDataset(X, Y), batch_size=4),
             "dicts": [{"image": X[:4]}, {"image": X[4:]}], "dataset": TensorDataset(X, Y),
             "float32": [X.float()]}[form]
    reference = convert(_model(), rank=1, calib=[X])
    result = convert(_model(), rank=1, calib=calib)
    for path, layer in result.model.named_modules():
        if path in result.plan.layers:
            expected = reference.model.get_submodule(path).pointwise.weight
            torch.testing.assert_close(layer.pointwise.weight, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("calib, words", [
    (torch.randn(8, 8), "calib: batch 0 has shape (8, 8)"),
    ([torch.ones(2, 3, 8, 8, dtype=torch.uint8)], "floating point"),
    ("images/", "calib='images/' is not data"),
    ([torch.full((2, 3, 8, 8), float("nan"))], "calib: batch 0 holds NaN"),
])
def test_bad_calibration_is_one_line(calib, words):
    with pytest.raises(ValueError) as error:
        convert(_model(), rank=1, calib=calib)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_model_argument_is_checked():
    with pytest.raises(TypeError, match="model is a str; convert takes a torch.nn.Module"):
        convert("resnet18")
    with pytest.raises(ValueError, match="has no conv layers"):
        convert(nn.Linear(4, 4))


def test_device_option_moves_a_copy_and_leaves_the_model():
    model = _model()
    with pytest.raises(ValueError, match="layer 'grouped' is on the meta device"):
        convert(model, rank=1, device="meta")  # the wiring: the copy that is converted is on the device
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert convert(model, rank=1, device="cpu").model.grouped.pointwise.weight.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda': CUDA is not available"):
            convert(model, rank=1, device="cuda")


def test_report_says_how_much_of_the_model_is_convertible():
    """Hand count at (1, 3, 8, 8): stem 27,648, grouped 73,728, depthwise 18,432, 1x1 32,768,
    transposed 65,536 (8x8 -> 16x16), dense 294,912 (at 16x16); grouped + dense are convertible."""
    result = convert(_model(), rank=1, input_size=(1, 3, 8, 8))
    share = (73_728 + 294_912) / (27_648 + 73_728 + 18_432 + 32_768 + 65_536 + 294_912)
    assert result.convertible_share == pytest.approx(share)
    assert result.to_markdown().startswith(f"convertible layers hold {share:.1%} of the model's MACs")


def test_without_input_size_macs_are_per_output_pixel():
    """O * C/g * kh * kw whatever the padding (a padded 3x3 used to count 9 output pixels)."""
    result = convert(_model(), rank=1)
    by_path = {r.path: r for r in result.layers}
    assert by_path["grouped"].macs_before == 32 * 4 * 9 and by_path["dense"].macs_before == 8 * 16 * 9
    assert by_path["dense"].macs_after == 16 * 9 + 8 * 16  # depthwise 16 x 3x3, pointwise 16 -> 8
    assert "MACs per output pixel (no input_size)" in result.to_markdown()


def test_report_shows_held_out_errors_and_an_undone_refit():
    result = convert(_model(), rank=1, calib=X)
    layer = {r.path: r for r in result.layers}["dense"]
    assert layer.held_out_error_before_refit is not None and layer.refit_kept is not None
    cell = f"(held out {layer.held_out_error_before_refit:.3f} -> {layer.held_out_error_after_refit:.3f})"
    assert cell in result.to_markdown()
    if not layer.refit_kept:
        assert "refit undone" in layer.reason


def test_a_device_torch_cannot_read_is_one_line():
    with pytest.raises(ValueError, match=r"^device='tpu' is not a torch device \(e.g. 'cpu', 'cuda', 'cuda:1'\)$"):
        convert(_model(), rank=1, device="tpu")

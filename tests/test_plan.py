"""Plans from files are checked before anything is built; ranks are checked before anything is
factorized; a kind's own defaults reach its conversion."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import leanconv
from leanconv.conversion.plan import Plan, apply_plan
from leanconv.conversion.refitting import refit
from leanconv.kinds import get_kind, register, unregister


def model():
    return nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))


def layer(kind, **options):
    return {"kind": kind, "options": options}


@pytest.mark.parametrize("layers, match", [
    # 10**9 filters per channel would ask for hundreds of GB: refused by arithmetic on the stages
    ({"0": layer("dsconv", depth_multiplier=10**9)}, "more than its exact form"),
    ({"0": layer("asymmetric", mid_channels=10**12)}, "more than its exact form"),
    ({"0": layer("tucker2", ranks=[800, 1600])}, "more than its exact form"),
    ({"0": layer("tucker2", ranks=[8, 16], core="asymmetric", core_mid_channels=10**10)}, "more than its exact"),
    ({"0": layer("resize_conv", scale_factor=10**6)}, "'resize_conv' is not a conversion target"),
    ({"0": layer("transposed")}, "'transposed' is not a conversion target"),
    ({"0": layer("dsconv"), "0.pointwise": layer("grouped", groups=2)}, "'0.pointwise' lies inside plan layer '0'"),
    ({"0": layer("grouped", groups=2, permute="yes")}, "permute='yes' must be True or False"),
    ({"0": layer("dsconv", depth_multiplier="3")}, "depth_multiplier='3' must be an int >= 1"),
    ({"0": layer("dsconv", depth_multiplier={"a": 1})}, "must be a number, string, bool, null or a list"),
    ({"0": layer("dsconv", colour=1)}, "has no option 'colour'"),
    ({"0;rm": layer("dsconv")}, "must be a module path"),
    ({"9": layer("dsconv")}, "'9' is not a module of this model"),
    ({"1": layer("dsconv")}, "'1' is a ReLU, expected the original nn.Conv2d"),
])
def test_a_hostile_or_malformed_plan_is_one_clear_error_and_touches_nothing(layers, match):
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        apply_plan(net, {"version": 1, "target": "dsconv", "layers": layers}, inplace=True)
    assert [type(m) for m in net] == [nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("data, match", [
    ({"version": True, "target": "dsconv", "layers": {}}, "plan version=True must be 1"),
    ({"version": 1, "target": "octave", "layers": {}}, "kind='octave' is not a conv kind"),
    ({"version": 1, "target": "dsconv", "layers": []}, "must map module paths"),
    ([1, 2], "must be a JSON object"),
])
def test_malformed_plan_fields(data, match):
    with pytest.raises(ValueError, match=match):
        Plan.from_dict(data)


def test_a_plan_file_that_is_not_json_is_one_error(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match="is not JSON"):
        Plan.load(tmp_path / "deep.json")


@pytest.mark.parametrize("to, rank, match", [
    ("dsconv", 0, r"rank=0 must be an int >= 1 \(the depth_multiplier\)"),
    ("dsconv", 2.9, "rank=2.9 must be an int >= 1"),
    ("dsconv", (2, 3), r"rank=\(2, 3\) must be an int >= 1 \(the"),
    ("grouped", 0, r"rank=0 must be an int >= 1 \(the groups\)"),
    ("tucker2", (2,), r"rank=\(2,\) must be an int >= 1 or a pair \(r1, r2\) of them"),
    ("tucker2", "3", "rank='3' must be"),
])
def test_rank_is_checked_before_anything_is_factorized(to, rank, match):
    with pytest.raises(ValueError, match=match):
        leanconv.convert(model(), to=to, rank=rank)


@pytest.mark.parametrize("base, order", [("dsconv", "pointwise_first"), ("asymmetric", "1xk_first")])
def test_a_registered_variant_converts_with_its_own_default_order(base, order):
    kind = get_kind(base)
    register(replace(kind, name="variant", options={**kind.options, "order": order}))
    try:
        net = model().double().eval()
        result = leanconv.convert(net, to="variant", only_if_cheaper=False)  # full rank: exact
        x = torch.randn(2, 8, 7, 6, dtype=torch.float64)
        torch.testing.assert_close(result.model(x), net(x))
        assert all(result.model[i].order == order for i in (0, 2))
    finally:
        unregister("variant")


def test_a_conv_the_forward_never_runs_stays_with_the_reason_under_a_budget():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(4, 8, 3, padding=1)
            self.spare = nn.Conv2d(8, 8, 3)

        def forward(self, x):
            return self.used(x)

    result = leanconv.convert(Net(), to="dsconv", mac_budget=10**9, input_size=(1, 4, 8, 8))
    spare = next(r for r in result.layers if r.path == "spare")
    assert not spare.converted and "not run by the model's forward" in spare.reason


@pytest.mark.parametrize("kwargs", [dict(rank=2), dict(energy=0.9), dict(mac_budget=10**6, input_size=(1, 8, 8, 8))])
def test_asymmetric_leaves_one_dimensional_kernels_alone_and_says_why(kwargs):
    """A 1x3 conv 'as 1x3 then 3x1 ...' would be a 1x1 bottleneck in front of the same 1x3."""
    net = nn.Sequential(nn.Conv2d(8, 16, (1, 3), padding=(0, 1)), nn.Conv2d(16, 16, 3, padding=1)).eval()
    result = leanconv.convert(net, to="asymmetric", keep_stem=False, **kwargs)
    first = result.layers[0]
    assert not first.converted and "1x3 kernel is already one-dimensional" in first.reason
    assert type(result.model[0]) is nn.Conv2d and "0" not in result.plan.layers


def test_a_pattern_string_is_one_pattern_and_bad_patterns_are_refused():
    """``exclude="0*"`` was iterated character by character: its '*' excluded every layer."""
    net = model()
    assert sorted(leanconv.convert(net, to="dsconv", rank=1, exclude="0*").plan.layers) == ["2"]
    assert sorted(leanconv.convert(net, to="dsconv", rank=1, include="2").plan.layers) == ["2"]
    for bad in ([1], [""], 3, {"0"}):
        with pytest.raises(ValueError, match="must be a glob pattern on module paths or a list of them"):
            leanconv.convert(net, to="dsconv", exclude=bad)


def test_the_report_says_when_no_refit_was_done():
    net = model().eval()
    without = leanconv.convert(net, to="dsconv", rank=1)
    assert not without.refitted and "no refit: without calib" in without.to_markdown()
    with_calib = leanconv.convert(net, to="dsconv", rank=1, calib=[torch.randn(2, 8, 9, 9)])
    assert with_calib.refitted and "no refit" not in with_calib.to_markdown()


def test_cli_convert_says_when_it_works_on_untrained_weights(tmp_path, capsys):
    from leanconv.cli import main

    assert main(["convert", "digits_cnn", "--rank", "1", "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "no --weights given: worked on digits_cnn's untrained initial weights" in err
    torch.save(leanconv.models.create("digits_cnn").state_dict(), tmp_path / "w.pt")
    assert main(["convert", "digits_cnn", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "d")]) == 0
    assert "no --weights" not in capsys.readouterr().err


@pytest.mark.parametrize("spoil, match", [
    (lambda net: net[0].weight.data.__setitem__((0, 0, 0, 0), float("nan")), "layer '0' has non-finite weight values"),
    (lambda net: net[2].bias.data.__setitem__(0, float("inf")), "layer '2' has non-finite bias values"),
])
def test_non_finite_weights_are_refused_naming_the_layer(spoil, match):
    net = model()
    spoil(net)
    with pytest.raises(ValueError, match=match):
        leanconv.convert(net, to="dsconv", rank=1)


def test_meta_weights_and_non_finite_calibration_data_are_refused():
    with pytest.raises(ValueError, match="layer '0' is on the meta device"):
        leanconv.convert(model().to("meta"), to="dsconv", rank=1)
    calib = [torch.randn(2, 8, 9, 9), torch.full((2, 8, 9, 9), float("nan"))]
    with pytest.raises(ValueError, match="calib:? batch 1 holds NaN or inf values"):
        leanconv.convert(model(), to="dsconv", rank=1, calib=calib)
    result = leanconv.convert(model(), to="dsconv", rank=1)
    with pytest.raises(ValueError, match="calib:? batch 1 holds NaN or inf values"):
        refit(result.model, model(), result.plan, calib)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_convert_in_their_own_dtype(dtype):
    """The SVDs run in float64 and the factors are cast back."""
    net = model().to(dtype)
    result = leanconv.convert(net, to="dsconv", only_if_cheaper=False)
    assert all(p.dtype == dtype for p in result.model.parameters())
    x = torch.randn(1, 8, 9, 9)
    reference = model().float()
    reference.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    full = leanconv.convert(reference, to="dsconv", only_if_cheaper=False).model
    converted = {k: v.float() for k, v in result.model.state_dict().items()}
    for key, value in full.state_dict().items():  # the same factors, to the dtype's precision
        torch.testing.assert_close(converted[key], value, atol=0.05, rtol=0.05)
    assert torch.isfinite(result.model.float()(x)).all()

"""convert(): exact at full rank on real layers, plans rebuild the architecture, the seed ASPP."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanconv
from leanconv import apply_plan, convert, save_plan
from support import randomize_norms

F64 = torch.float64


class Mixed(nn.Module):
    """Plain nn.Conv2d layers with the arguments conversion must place correctly."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 8, (3, 5), padding=(2, 4), dilation=2, padding_mode="reflect", bias=False)
        self.c = leanconv.Conv2d(8, 12, 3, stride=2, padding="same")
        self.d = nn.Conv2d(12, 6, 3, padding="valid", padding_mode="circular")
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.d(F.relu(self.c(F.relu(self.b(F.relu(self.a(x)))))))))


@pytest.mark.parametrize("target", ["dsconv", "asymmetric", "tucker2"])
def test_full_rank_conversion_is_exact(target):
    model = Mixed().double().eval()
    x = torch.randn(2, 3, 23, 21, dtype=F64)
    result = convert(model, to=target, only_if_cheaper=False, keep_stem=False)
    assert sorted(result.plan.layers) == ["a", "b", "c", "d"]  # the 1x1 head is not a kxk conv
    assert all(r.relative_weight_error < 1e-7 for r in result.layers)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x))


def test_input_model_untouched_unless_inplace():
    model = Mixed()
    before = copy.deepcopy(model.state_dict())
    result = convert(model, to="dsconv", rank=1)
    assert isinstance(model.b, nn.Conv2d) and isinstance(result.model.b, leanconv.DepthwiseSeparableConv2d)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    same = convert(model, to="dsconv", rank=1, inplace=True)
    assert same.model is model and isinstance(model.b, leanconv.DepthwiseSeparableConv2d)


def test_low_rank_reports_and_skips_layers_that_would_not_save():
    model = Mixed()
    result = convert(model, to="dsconv", rank=1, input_size=(1, 3, 32, 32))
    by_path = {r.path: r for r in result.layers}
    assert by_path["b"].converted and by_path["b"].macs_after < by_path["b"].macs_before
    full = convert(model, to="dsconv", input_size=(1, 3, 32, 32))  # full rank never saves MACs
    assert not any(r.converted for r in full.layers)
    assert "kept dense" in full.layers[0].reason
    assert "| b | no | dsconv |" in full.to_markdown()


def test_energy_selects_the_smallest_sufficient_rank():
    conv = nn.Conv2d(4, 8, 3)
    with torch.no_grad():  # each input channel's 8x9 slice has rank 2
        conv.weight.copy_(torch.einsum("oir,irk->oik", torch.randn(8, 4, 2), torch.randn(4, 2, 9)).reshape(8, 4, 3, 3))
    result = convert(nn.Sequential(conv), to="dsconv", energy=0.999999)
    assert result.layers[0].options == {"depth_multiplier": 2} and result.layers[0].relative_weight_error < 1e-5


def test_plan_round_trip_loads_state_dict(tmp_path):
    model = Mixed().eval()
    result = convert(model, to="asymmetric", rank=4)
    save_plan(result.plan, tmp_path / "plan.json")
    torch.save(result.model.state_dict(), tmp_path / "weights.pt")
    rebuilt = apply_plan(Mixed(), tmp_path / "plan.json")
    rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt"), strict=True)
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), result.model(x))
    assert json.loads((tmp_path / "plan.json").read_text())["layers"]["b"]["kind"] == "asymmetric"


def seed_aspp(dim_in, dim_out, rate=1, bn_mom=0.1):
    """Seed 000's ASPP as the user wrote it (with the lost '*' signs restored)."""

    class ASPP(nn.Module):
        def __init__(self):
            super().__init__()

            def branch(k, d):
                return nn.Sequential(nn.Conv2d(dim_in, dim_out, k, 1, padding=0 if k == 1 else d, dilation=d, bias=True),
                                     nn.BatchNorm2d(dim_out, momentum=bn_mom), nn.ReLU(inplace=True))
            self.branch1 = branch(1, rate)
            for i, r in enumerate((4, 8, 12, 16, 20, 24), start=2):
                setattr(self, f"branch{i}", branch(3, r * rate))
            self.branch8_conv = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=True)
            self.branch8_bn = nn.BatchNorm2d(dim_out, momentum=bn_mom)
            self.branch8_relu = nn.ReLU(inplace=True)
            self.conv_cat = nn.Sequential(nn.Conv2d(dim_out * 8, dim_out, 1, 1, padding=0, bias=True),
                                          nn.BatchNorm2d(dim_out, momentum=bn_mom), nn.ReLU(inplace=True))

        def forward(self, x):
            b, c, row, col = x.size()
            feats = [getattr(self, f"branch{i}")(x) for i in range(1, 8)]
            g = torch.mean(torch.mean(x, 2, True), 3, True)
            g = self.branch8_relu(self.branch8_bn(self.branch8_conv(g)))
            feats.append(F.interpolate(g, (row, col), None, "bilinear", True))
            return self.conv_cat(torch.cat(feats, dim=1))

    return ASPP()


def test_seed_aspp_converts_to_atrous_separable():
    aspp = randomize_norms(seed_aspp(16, 8)).double().eval()
    x = torch.randn(2, 16, 13, 17, dtype=F64)
    result = convert(aspp, to="dsconv", only_if_cheaper=False)
    assert sorted(result.plan.layers) == [f"branch{i}.0" for i in range(2, 8)]
    separable = result.model.branch4[0]
    assert isinstance(separable, leanconv.DepthwiseSeparableConv2d) and separable.depthwise.dilation == (12, 12)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), aspp(x))  # full rank: exact
        low = convert(aspp, to="dsconv", rank=1).model
        assert low(x).shape == aspp(x).shape
    assert sum(p.numel() for p in low.parameters()) < sum(p.numel() for p in aspp.parameters()) / 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(to="octave"), "to='octave' must be one of"),
        (dict(rank=1, energy=0.9), "at most one of rank, energy, mac_budget and latency_budget"),
        (dict(energy=1.5), "energy=1.5 must be in"),
        (dict(to="grouped", energy=0.5), "takes rank=<groups>, not energy, mac_budget or latency_budget"),
    ],
)
def test_invalid_convert_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        convert(Mixed(), **kwargs)


def test_apply_plan_rejects_mismatched_models():
    plan = convert(Mixed(), to="dsconv", rank=1, keep_stem=False).plan
    with pytest.raises(ValueError, match="plan layer 'a' is not a module of this model"):
        apply_plan(nn.Sequential(nn.Conv2d(3, 3, 3)), plan)
    with pytest.raises(ValueError, match="plan version"):
        apply_plan(Mixed(), {"version": 99, "layers": {}})


def test_mac_budget_is_met_with_least_discarded_energy_first():
    from leanconv.conversion.select import Choice, allocate

    model = Mixed().eval()
    total = leanconv.profile(model, (1, 3, 32, 32)).total_macs
    for fraction in (0.6, 0.3):
        result = convert(model, to="dsconv", mac_budget=int(total * fraction), input_size=(1, 3, 32, 32),
                         keep_stem=False)
        assert leanconv.profile(result.model, (1, 3, 32, 32)).total_macs <= total * fraction
    with pytest.raises(ValueError, match="mac_budget=10 is below"):
        convert(model, to="dsconv", mac_budget=10, input_size=(1, 3, 32, 32))
    with pytest.raises(ValueError, match="mac_budget needs input_size"):
        convert(model, to="dsconv", mac_budget=10)
    # the greedy rule on a hand-made ladder: the cheaper damage per MAC is taken first
    ladders = {"x": [Choice(None, 100, 0.0), Choice({"r": 1}, 50, 0.5)],
               "y": [Choice(None, 100, 0.0), Choice({"r": 1}, 60, 0.1)]}
    chosen = allocate(ladders, 160)
    assert chosen["x"].options is None and chosen["y"].options == {"r": 1}


def test_convert_with_calib_refits_and_reports_output_error():
    model = Mixed().eval()
    calib = [torch.randn(4, 3, 24, 24) for _ in range(2)]
    result = convert(model, to="dsconv", rank=1, calib=calib)
    converted = [r for r in result.layers if r.converted]
    assert converted and all(r.output_error is not None and r.output_error <= r.output_error_before_refit + 1e-9
                             for r in converted)
    assert "->" in result.to_markdown()


def test_converted_models_trace_export_and_compile():
    from support import check_traceable

    model = Mixed().eval()
    for target in ("dsconv", "asymmetric", "tucker2"):
        converted = convert(model, to=target, rank=2).model
        check_traceable(converted, torch.randn(1, 3, 20, 20), compile=target == "dsconv")
    variants = [dict(to="dsconv", order="pointwise_first"), dict(to="tucker2", core="asymmetric"),
                dict(to="grouped", permute=True, include=["c"])]  # c: 8 -> 12 channels, divisible by 2
    for kwargs in variants:
        converted = convert(model, rank=2, only_if_cheaper=False, **kwargs).model
        check_traceable(converted, torch.randn(1, 3, 20, 20))


def test_cli_convert_writes_a_loadable_folder(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "converted"
    args = [sys.executable, "-m", "leanconv.cli", "convert", "digits_cnn", "--rank", "1", "--calib", "random:32",
            "--out", str(out)]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == [".leanconv-output", "model.pt", "plan.json", "report.md"]
    rebuilt = apply_plan(leanconv.models.create("digits_cnn"), out / "plan.json")
    rebuilt.load_state_dict(torch.load(out / "model.pt"), strict=True)
    assert "rel. output error" in (out / "report.md").read_text()
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode != 0 and "pass --force" in again.stderr
    assert sorted(p.name for p in out.iterdir()) == [".leanconv-output", "model.pt", "plan.json", "report.md"]
    forced = subprocess.run(args + ["--force"], capture_output=True, text=True)
    assert forced.returncode == 0 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_seed_convblock_order_conversion_is_exact_and_low_rank_keeps_shape():
    """Seed 000's ConvBlock runs 1x3 first: convert a 3x3 into that order."""
    conv = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1)).double().eval()
    x = torch.randn(2, 4, 10, 12, dtype=F64)
    full = convert(conv, to="asymmetric", order="1xk_first", only_if_cheaper=False)
    layer = full.model[0]
    assert isinstance(layer, leanconv.AsymmetricConv2d) and layer.order == "1xk_first"
    with torch.no_grad():
        torch.testing.assert_close(full.model(x), conv(x))
    low = convert(conv, to="asymmetric", order="1xk_first", rank=2)
    assert low.layers[0].converted and low.model(x).shape == conv(x).shape
    with pytest.raises(ValueError, match="order='1xk_first' applies only to to='asymmetric' or to='dsconv'"):
        convert(conv, to="tucker2", order="1xk_first")
    with pytest.raises(ValueError, match="order='1xk_first' must be one of"):
        convert(conv, to="dsconv", order="1xk_first")


def test_dsconv_pointwise_first_conversion_exact_refit_and_plan(tmp_path):
    model = Mixed().double().eval()
    x = torch.randn(2, 3, 23, 21, dtype=F64)
    full = convert(model, to="dsconv", order="pointwise_first", only_if_cheaper=False)
    assert all(full.model.get_submodule(p).order == "pointwise_first" for p in full.plan.layers)
    with torch.no_grad():
        torch.testing.assert_close(full.model(x), model(x))
    low = convert(model.float(), to="dsconv", order="pointwise_first", rank=1, only_if_cheaper=False,
                  calib=[torch.randn(4, 3, 24, 24) for _ in range(2)])
    assert all(r.output_error <= r.output_error_before_refit + 1e-9 for r in low.layers if r.converted)
    save_plan(low.plan, tmp_path / "plan.json")
    rebuilt = apply_plan(Mixed(), tmp_path / "plan.json")
    rebuilt.load_state_dict(low.model.state_dict())
    xf = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(xf), low.model(xf))


def test_auto_order_picks_the_exact_dual_for_per_output_rank_one_kernels():
    """W[o] = a_o b_o^T (C x 9) is rank 1 per output channel: the dual at m=1 is exact, the
    depthwise-first form at m=1 is not; 'auto' must pick the dual."""
    torch.manual_seed(3)
    conv = nn.Conv2d(32, 8, 3, padding=1, bias=False).double()
    a, b = torch.randn(8, 32, dtype=F64), torch.randn(8, 9, dtype=F64)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("oc,ok->ock", a, b).reshape(8, 32, 3, 3))
    model = nn.Sequential(conv).eval()
    chosen = convert(model, to="dsconv", order="auto", rank=1, input_size=(1, 32, 16, 16))
    assert chosen.plan.layers["0"].options["order"] == "pointwise_first"
    assert chosen.layers[0].relative_weight_error < 1e-7
    assert convert(model, to="dsconv", rank=1).layers[0].relative_weight_error > 0.1
    budget = convert(model, to="dsconv", order="auto", mac_budget=100_000, input_size=(1, 32, 16, 16))
    assert budget.plan.layers["0"].options["order"] == "pointwise_first"


def test_tucker2_with_asymmetric_core_is_the_lprnet_shape():
    model = Mixed().double().eval()
    x = torch.randn(2, 3, 23, 21, dtype=F64)
    full = convert(model, to="tucker2", core="asymmetric", only_if_cheaper=False)
    with torch.no_grad():
        torch.testing.assert_close(full.model(x), model(x))
    low = convert(model, to="tucker2", core="asymmetric", rank=2, only_if_cheaper=False)
    layer = low.model.d  # 12 -> 6: reduce to 2, 3x1 (2 -> 2), 1x3 (2 -> 2), expand to 6
    assert isinstance(layer.core, leanconv.AsymmetricConv2d) and layer.core.mid_channels == 2
    assert [tuple(p.shape) for p in (layer.reduce.weight, layer.core.conv_kx1.weight, layer.core.conv_1xk.weight,
                                     layer.expand.weight)] == [(2, 12, 1, 1), (2, 2, 3, 1), (2, 2, 1, 3), (6, 2, 1, 1)]
    rebuilt = apply_plan(Mixed().double(), low.plan)
    rebuilt.load_state_dict(low.model.state_dict())
    with pytest.raises(ValueError, match="core='asymmetric' applies only to to='tucker2'"):
        convert(model, to="dsconv", core="asymmetric")


def test_permuted_grouped_conversion_keeps_outputs_order_bias_and_plan(tmp_path):
    torch.manual_seed(6)
    conv = nn.Conv2d(6, 8, 3, padding=1).double()
    with torch.no_grad():  # block-diagonal up to a scrambled channel order
        mask = torch.zeros(8, 6, 1, 1, dtype=F64)
        mask[:4, :3] = 1
        mask[4:, 3:] = 1
        conv.weight.mul_(mask[torch.randperm(8)][:, torch.randperm(6)])
    model = nn.Sequential(conv, nn.ReLU()).eval()
    x = torch.randn(2, 6, 9, 9, dtype=F64)
    plain = convert(model, to="grouped", rank=2)
    permuted = convert(model, to="grouped", rank=2, permute=True)
    assert isinstance(permuted.model[0], leanconv.PermutedGroupedConv2d)
    assert permuted.layers[0].relative_weight_error < 1e-7 < plain.layers[0].relative_weight_error
    with torch.no_grad():
        torch.testing.assert_close(permuted.model(x), model(x))
    rebuilt = apply_plan(nn.Sequential(nn.Conv2d(6, 8, 3, padding=1).double(), nn.ReLU()), permuted.plan)
    rebuilt.load_state_dict(permuted.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model(x))
    refit = convert(model.float(), to="grouped", rank=2, permute=True, calib=[torch.randn(4, 6, 9, 9)])
    assert refit.layers[0].output_error < 0.05  # the ridge shrinks a little; wrong channel order gives ~1
    with pytest.raises(ValueError, match="permute=True applies only to to='grouped'"):
        convert(model, to="dsconv", permute=True)

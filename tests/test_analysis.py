"""profile / explain / compare against FlopCounterMode, closed forms and published figures."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import leanconv
from leanconv import models
from leanconv.kinds import ConvSpec, KINDS, get_kind
from test_kinds import draw_case, too_small


def flop_counter_macs(model, *shapes):
    with torch.device("meta"):
        meta = model.to("meta") if next(model.parameters()).device.type != "meta" else model
        inputs = [torch.empty(s) for s in shapes]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta.eval()(*inputs)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", models.list_models())
def test_profile_equals_flop_counter_on_every_reference_model(name):
    with torch.device("meta"):
        model = models.create(name)
    shapes = models.DEFAULT_INPUTS[name]
    report = leanconv.profile(model, list(shapes) if len(shapes) > 1 else shapes[0])
    assert report.total_macs == flop_counter_macs(model, *shapes)
    assert report.total_params == sum(p.numel() for p in model.parameters())


def test_mobilenet_v1_breakdown_matches_paper_table_2():
    """MobileNet paper, Table 2: share of mult-adds and parameters per layer type."""
    with torch.device("meta"):
        model = models.create("mobilenet_v1")
    report = leanconv.profile(model, (1, 3, 224, 224))
    assert report.total_macs == 568_740_352
    share = {k: v["share"] for k, v in report.by_kind.items()}
    conv_params = {k: v["params"] for k, v in report.by_kind.items()}
    weights = sum(conv_params.values())  # the table counts conv/FC weights and biases, not BN
    assert round(100 * share["pointwise"], 2) == 94.86
    assert round(100 * share["depthwise"], 2) == 3.06
    # The paper prints 1.19% for the 3x3 stem; its four shares then sum to 99.29%. The stem is
    # 32*3*9*112*112 = 10,838,016 MACs = 1.91%: a transposed digit in the paper (sum 100.01%).
    assert round(100 * share["dense"], 2) == 1.91
    assert round(100 * share["linear"], 2) == 0.18
    assert round(100 * conv_params["pointwise"] / weights, 1) == pytest.approx(74.6, abs=0.15)
    assert round(100 * conv_params["linear"] / weights, 1) == pytest.approx(24.3, abs=0.15)


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=15)
@given(data=st.data())
def test_profile_single_layers_of_every_kind(kind, data):
    case = draw_case(data, kind)
    size, options = case.pop("size"), case.pop("options")
    spec = ConvSpec.create(**case, **options)
    if too_small(spec, kind, size):
        return
    layer = leanconv.create_conv2d(kind, **case, **options)
    report = leanconv.profile(layer, (2, spec.in_channels, *size))
    assert report.total_macs == 2 * get_kind(kind).macs(spec, size)
    assert report.total_macs == flop_counter_macs(layer, (2, spec.in_channels, *size))


def test_profile_rows_shapes_and_kinds():
    model = nn.Sequential(leanconv.Conv2d(3, 8, 3, 2, "same"), nn.BatchNorm2d(8), nn.ReLU(),
                          leanconv.DepthwiseSeparableConv2d(8, 16, 3, padding=1),
                          leanconv.ConvTranspose2d(16, 4, 4, 2, 1), nn.Flatten(), nn.LazyLinear(5))
    model(torch.randn(1, 3, 9, 9))  # materialize the lazy layer
    report = leanconv.profile(model, (1, 3, 9, 9))
    kinds = [(r.path, r.kind) for r in report.rows]
    assert kinds == [("0", "dense"), ("3.depthwise", "depthwise"), ("3.pointwise", "pointwise"),
                     ("4", "transposed"), ("6", "linear")]
    first = report.rows[0]
    assert (first.input_shape, first.weight_shape, first.output_shape) == ((1, 3, 9, 9), (8, 3, 3, 3), (1, 8, 5, 5))
    assert first.macs == 8 * 3 * 9 * 25 and first.params == 8 * 27 + 8
    assert first.activation_bytes == (3 * 81 + 8 * 25) * 4
    transposed = report.rows[3]
    assert transposed.macs == 16 * 4 * 16 * 5 * 5  # C_in*(C_out/g)*kh*kw*H_in*W_in
    other = leanconv.profile(model, (1, 3, 9, 9), include_other=True)
    bn = next(r for r in other.rows if r.path == "1")
    assert bn.other_ops == 8 * 25 and bn.macs == 0
    assert other.total_macs == report.total_macs
    assert leanconv.profile(model, (1, 3, 9, 9), batch_size=4).total_macs == 4 * report.total_macs


def test_profile_leaves_the_model_alone_and_handles_huge_inputs():
    model = models.create("digits_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = leanconv.profile(model, (1, 1, 4096, 4096))
    assert report.total_macs > 0
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in model.state_dict().items())
    assert model.training


def test_profile_exports(tmp_path):
    report = leanconv.profile(models.create("digits_cnn"), (1, 1, 32, 32))
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(rows) == len(report.rows) and int(rows[0]["macs"]) == report.rows[0].macs
    data = json.loads(report.to_json())
    assert data["total_macs"] == report.total_macs == sum(r["macs"] for r in data["rows"])
    assert data["total_flops"] == 2 * data["total_macs"]
    assert report.to_markdown().startswith("| path |")
    assert "leanconv profile" in report.render("table")
    path = report.save(tmp_path / "r.json")
    with pytest.raises(FileExistsError, match="pass force=True"):
        report.save(path)
    report.save(path, force=True)
    assert json.loads(path.read_text())["total_macs"] == report.total_macs


def test_profile_measured_latency():
    report = leanconv.profile(models.create("digits_cnn"), (1, 1, 32, 32), device="cpu", measure_latency=True, repeats=3)
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in report.rows)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: leanconv.profile("resnet", (1, 3, 8, 8)), "model=str must be an nn.Module"),
        (lambda: leanconv.profile(nn.Conv2d(3, 3, 1)), "pass input_size"),
        (lambda: leanconv.profile(nn.Conv2d(3, 3, 1), (1, 3, 0, 4)), "must contain positive ints"),
        (lambda: leanconv.profile(nn.Conv2d(3, 3, 1), (1, 3, 4, 4), batch_size=0), "batch_size=0 must be >= 1"),
        (lambda: leanconv.explain(nn.Conv2d(3, 3, 1), (1, 3, 4, 4), lang="fr"), "lang='fr' must be one of"),
        (lambda: leanconv.explain(nn.ReLU(), (1, 3, 4, 4)), "runs no convolution"),
        (lambda: leanconv.explain(nn.Conv2d(3, 3, 1), (3, 4)), "must be \\(N, C, H, W\\)"),
        (lambda: leanconv.compare(8, 8, 3, 16, kinds=["octave"]), "not applicable here"),
        (lambda: leanconv.compare(0, 8, 3, 16), "in_channels=0 must be >= 1"),
    ],
)
def test_invalid_analysis_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_explain_depthwise_states_the_facts_with_numbers():
    text = str(leanconv.explain(nn.Conv2d(32, 32, 3, padding=1, groups=32), (1, 32, 56, 56)))
    assert "weight (32, 1, 3, 3)" in text
    assert "H_out = floor((56 + 2*1 - 1*(3-1) - 1) / 1) + 1 = 56" in text
    assert f"= {32 * 56 * 56 * 9:,}" in text
    assert "does not halve the output height" in text and "not a special case of a pointwise" in text
    zh = str(leanconv.explain(nn.Conv2d(32, 32, 3, padding=1, groups=32), (1, 32, 56, 56), lang="zh"))
    assert "深度卷积不会使输出高度减半" in zh and "权重 (32, 1, 3, 3)" in zh


def test_explain_dilated_same_and_transposed():
    e = leanconv.explain("dsconv", (1, 8, 15, 15), in_channels=8, out_channels=16, kernel_size=3, stride=2,
                         padding="same", dilation=2)
    assert [s.kind for s in e.stages] == ["depthwise", "pointwise"]
    assert "H_out = ceil(15/2) = 8" in e.text and "2*(3-1)+1 = 5" in e.text
    assert e.total_macs == 8 * 9 * 64 + 16 * 8 * 64
    t = leanconv.explain(nn.ConvTranspose2d(8, 4, 4, 2, 1), (1, 8, 10, 10))
    assert "layout (C_in, C_out/groups, kh, kw)" in t.text and "(10-1)*2 - 2*1 + 1*(4-1) + 0 + 1 = 20" in t.text
    assert t.total_macs == 8 * 4 * 16 * 100


def test_compare_ratios_and_measurement():
    result = leanconv.compare(64, 64, 3, (28, 28))
    rows = {c.kind: c for c in result.candidates}
    assert rows["dense"].macs == 64 * 64 * 9 * 28 * 28
    assert rows["dsconv"].macs_ratio == pytest.approx(1 / 64 + 1 / 9)
    assert rows["asymmetric"].macs_ratio == pytest.approx(6 / 9)
    by_name = {c.name: c for c in result.candidates}
    assert by_name["grouped (g=2)"].macs_ratio == pytest.approx(1 / 2)
    assert by_name["grouped (g=4)"].macs_ratio == pytest.approx(1 / 4)
    measured = leanconv.compare(16, 16, 3, 16, kinds=["dsconv"], measure=True, min_run_time=0.01)
    assert [c.kind for c in measured.candidates] == ["dense", "dsconv"]
    assert all(c.latency_ms_nchw > 0 and c.latency_ms_channels_last > 0 for c in measured.candidates)
    assert measured.candidates[0].speedup_nchw == 1.0
    assert "| depthwise separable | dsconv |" in measured.to_markdown()


def test_compare_upsampling_candidates():
    result = leanconv.compare(64, 32, 4, 16, padding=1, upsample=2)
    names = [c.kind for c in result.candidates]
    assert names[0] == "transposed" and "dsconv_transpose" in names and "resize_conv" in names
    assert all(c.output_shape == (1, 32, 32, 32) for c in result.candidates)
    assert result.candidates[0].macs == 64 * 32 * 16 * 16 * 16


def run_cli(*args, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "leanconv.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_profile_explain_compare(tmp_path):
    out = tmp_path / "mnv1.json"
    result = run_cli("profile", "mobilenet_v1", "--input", "1,3,224,224", "--format", "json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["total_macs"] == 568_740_352
    again = run_cli("profile", "mobilenet_v1", "--format", "json", "--out", str(out))
    assert again.returncode != 0 and "pass --force" in again.stderr
    model_file = tmp_path / "net.py"
    model_file.write_text("import torch\ndef build():\n    return torch.nn.Conv2d(3, 8, 3, groups=1)\n")
    csv_out = run_cli("profile", f"{model_file}:build", "--input", "2,3,10,10", "--format", "csv")
    assert csv_out.returncode == 0 and f",{2 * 8 * 27 * 64}," in csv_out.stdout
    module_path = run_cli("profile", "leanconv.models:digits_cnn", "--input", "1,1,32,32", "--format", "md")
    assert module_path.returncode == 0 and "| Conv2d | dense |" in module_path.stdout
    zh = run_cli("explain", "depthwise", "--input", "1,32,56,56", "--out-channels", "32", "--padding", "1", "--lang", "zh")
    assert zh.returncode == 0 and "深度卷积" in zh.stdout
    bad = run_cli("explain", "dsconv", "--input", "1,4,8,8", "--out-channels", "8", "--option", "depth_multiplier=0")
    assert bad.returncode == 2 and "depth_multiplier=0 must be >= 1" in bad.stderr
    unknown = run_cli("profile", "resnet101")
    assert unknown.returncode != 0 and "mobilenet_v1" in unknown.stderr and "resnet50" in unknown.stderr
    cmp_md = run_cli("compare", "--in-channels", "32", "--out-channels", "32", "--size", "28,28", "--format", "md")
    assert cmp_md.returncode == 0 and "| depthwise separable | dsconv |" in cmp_md.stdout


def test_profiling_resnet50_at_4096_allocates_nothing_large():
    """Run in a fresh process: peak RSS growth of the 4096x4096 profile stays tiny (meta device)."""
    import subprocess
    import sys

    code = (
        "import resource, leanconv\n"
        "from leanconv import models\n"
        "m = models.create('resnet50')\n"
        "leanconv.profile(m, (1, 3, 224, 224))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "report = leanconv.profile(m, (1, 3, 4096, 4096))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "import torch\n"
        "from torch.utils.flop_counter import FlopCounterMode\n"
        "with torch.device('meta'):\n"
        "    meta, x = models.create('resnet50').eval(), torch.empty(1, 3, 4096, 4096)\n"
        "with FlopCounterMode(display=False) as c:\n"
        "    meta(x)\n"
        "print(report.total_macs, (after - before) // 1024, c.get_total_flops() // 2)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    macs, growth_mb, reference = int(out[0]), int(out[1]), int(out[2])
    assert macs == reference
    # one real activation of the first stage alone would be 1x64x2048x2048 float32 = 1 GiB
    assert growth_mb < 32


def test_input_that_does_not_fit_names_the_module():
    model = models.create("resnet18")
    with pytest.raises(ValueError, match=r"does not fit the model: it breaks at .* on an input of shape "
                                         r"\(1, 4, 64, 64\), expected \(N, 3, H, W\)"):
        leanconv.profile(model, (1, 4, 64, 64))
    convs = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(6, 4, 3))
    with pytest.raises(ValueError, match=r"breaks at 2 \(Conv2d\) on an input of shape \(1, 8, 6, 6\), "
                                         r"expected \(N, 6, H, W\)"):
        leanconv.profile(convs, (1, 3, 8, 8))
    mlp = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(ValueError, match=r"breaks at 2 \(Linear\) on an input of shape \(1, 288\), expected \(\.\.\., 10\)"):
        leanconv.profile(mlp, (1, 3, 8, 8))


def test_peak_inference_memory_closed_form():
    """Sequential convs: at the peak the previous and the current output are both alive."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU())
    report = leanconv.profile(model, (2, 3, 16, 16))
    out1, out2, x = 2 * 8 * 256 * 4, 2 * 4 * 256 * 4, 2 * 3 * 256 * 4
    assert report.peak_activation_bytes == out1 + out2  # the in-place ReLU allocates nothing
    weights = (8 * 27 + 8 + 4 * 72 + 4) * 4
    assert report.peak_memory_bytes == x + weights + out1 + out2
    assert json.loads(report.to_json())["peak_memory_bytes"] == report.peak_memory_bytes


@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad, torch.enable_grad])
def test_analysis_gives_the_same_answer_under_inference_mode_and_no_grad(context):
    """Inside torch.inference_mode() the op counter saw nothing: profile said 0 MACs."""
    model = models.create("digits_cnn").eval()
    expected = flop_counter_macs(models.create("digits_cnn"), (1, 1, 32, 32))  # FlopCounterMode, no mode
    conv = nn.Conv2d(4, 8, 3, padding=1)
    with context():
        made_inside = nn.Conv2d(4, 8, 3, padding=1)  # inference tensors under inference_mode
        assert leanconv.profile(model, (1, 1, 32, 32)).total_macs == expected
        assert leanconv.profile(model, (1, 1, 32, 32), device="cpu").total_macs == expected
        for layer in (conv, made_inside):
            assert leanconv.explain(layer, (1, 4, 8, 8)).total_macs == 8 * 4 * 9 * 64
        inside = leanconv.convert(model, to="dsconv", rank=1, input_size=(1, 1, 32, 32))
    outside = leanconv.convert(model, to="dsconv", rank=1, input_size=(1, 1, 32, 32))
    assert [r.macs_before for r in inside.layers] == [r.macs_before for r in outside.layers]

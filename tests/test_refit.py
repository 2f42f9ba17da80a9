"""Data-aware refit: exact recovery on synthetic targets, and the digits CNN claim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import leanconv
from leanconv import convert
from leanconv.conversion.plan import LayerPlan, Plan
from leanconv.conversion.refitting import capture, last_stage_name, reestimate_bn, refit, solve_stage

pytest.importorskip("sklearn")
from leanconv.data import load_digits  # noqa: E402
from leanconv.models.digits import train_digits_cnn  # noqa: E402

F64 = torch.float64


@pytest.mark.parametrize(
    "make",
    [
        lambda: leanconv.Conv2d(6, 4, 1, dtype=F64),
        lambda: leanconv.Conv2d(6, 4, (1, 3), stride=(1, 2), padding=(0, 1), dtype=F64),
        lambda: leanconv.Conv2d(6, 4, 3, stride=2, padding="same", padding_mode="reflect", dtype=F64),
        lambda: leanconv.Conv2d(6, 4, 3, padding=1, bias=False, dtype=F64),
        lambda: leanconv.Conv2d(6, 4, 3, padding=1, groups=2, dtype=F64),
        lambda: leanconv.Conv2d(6, 3, (3, 1), padding=(1, 0), groups=3, bias=False, dtype=F64),
    ],
)
def test_solve_stage_recovers_the_generating_weights(make):
    truth, fitted = make(), make()
    inputs = [torch.randn(4, 6, 9, 11, dtype=F64) for _ in range(3)]
    with torch.no_grad():
        targets = [truth(x) for x in inputs]
    solve_stage(fitted, inputs, targets, ridge=0.0)
    torch.testing.assert_close(fitted.weight, truth.weight)
    if truth.bias is not None:
        torch.testing.assert_close(fitted.bias, truth.bias)


def test_capture_returns_what_the_module_sees_and_removes_its_hook():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    batches = [torch.randn(2, 3, 5, 5) for _ in range(3)]
    inputs = capture(model, model[2], batches, "input")
    outputs = capture(model, model[2], batches, "output")
    with torch.no_grad():
        for x, seen_in, seen_out in zip(batches, inputs, outputs):
            torch.testing.assert_close(seen_in, model[:2](x))
            torch.testing.assert_close(seen_out, model(x))
    assert len(inputs) == 3 and not seen_out.requires_grad
    with pytest.raises(RuntimeError):
        capture(model, model[2], [torch.randn(2, 5, 5, 5)], "input")  # wrong channel count
    assert not model[2]._forward_hooks
    with pytest.raises(ValueError, match="want='inputs' must be 'input' or 'output'"):
        capture(model, model[2], batches, "inputs")


def test_last_stage_is_the_declared_output_stage():
    assert last_stage_name(leanconv.Conv2d(4, 6, 3)) == ""
    assert last_stage_name(leanconv.DepthwiseSeparableConv2d(4, 6, 3, order="pointwise_first")) == "depthwise"
    assert last_stage_name(leanconv.AsymmetricConv2d(4, 6, 3, order="1xk_first")) == "conv_kx1"
    assert last_stage_name(leanconv.PermutedGroupedConv2d(4, 6, 3, groups=2)) == "conv"
    with pytest.raises(ValueError, match="ParallelAsymmetricConv2d has no output_stage"):
        last_stage_name(leanconv.ParallelAsymmetricConv2d(4, 6, 3))


def test_refit_solves_a_reordered_stage_against_permuted_targets():
    """PermutedGroupedConv2d declares reorders_output: the refit permutes the targets by
    output_order, so a layer with the truth's structure recovers the truth exactly."""
    torch.manual_seed(0)
    truth = nn.Sequential(leanconv.PermutedGroupedConv2d(6, 4, 3, padding=1, groups=2, dtype=F64))
    truth[0].input_order.copy_(torch.randperm(6))
    truth[0].output_order.copy_(torch.randperm(4))
    fitted = nn.Sequential(leanconv.PermutedGroupedConv2d(6, 4, 3, padding=1, groups=2, dtype=F64))
    fitted[0].load_state_dict({**fitted[0].state_dict(), "input_order": truth[0].input_order,
                               "output_order": truth[0].output_order})
    calib = [torch.randn(4, 6, 8, 8, dtype=F64) for _ in range(2)]
    plan = Plan("grouped", {"0": LayerPlan("grouped", {"groups": 2, "permute": True})})
    (report,) = refit(fitted, truth, plan, calib, ridge=0.0)
    assert report.error_before > 0.1 and report.error_after < 1e-6
    torch.testing.assert_close(fitted[0].conv.weight, truth[0].conv.weight)


def test_reestimate_bn_matches_batch_statistics():
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5))
    batches = [torch.randn(8, 3, 10, 10) for _ in range(4)]
    reestimate_bn(model, batches)
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x in batches])
    torch.testing.assert_close(model[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    # cumulative average of the per-batch unbiased variances
    per_batch = torch.stack([model[0](x).detach().var((0, 2, 3), unbiased=True) for x in batches]).mean(0)
    torch.testing.assert_close(model[1].running_var, per_batch, rtol=1e-4, atol=1e-5)
    assert model[1].momentum == 0.1 and model.training  # settings restored as they were


def accuracy(model, data):
    with torch.no_grad():
        return (model.eval()(data.test_x).argmax(1) == data.test_y).float().mean().item()


@pytest.fixture(scope="module")
def trained():
    data = load_digits()
    return data, train_digits_cnn(data)  # 8 epochs: at 6 the refit result swung 0.85-0.93 across machines


def test_rank1_dsconv_with_refit_keeps_digits_accuracy(trained):
    data, model = trained
    original = accuracy(model, data)
    assert original >= 0.95
    # The 1-channel stem stays dense (as MobileNet's does): a rank-1 separable version of it
    # keeps a single spatial filter.
    result = convert(model, to="dsconv", rank=1, exclude=["features.conv1*"], input_size=(1, 1, 32, 32))
    assert result.macs_after / result.macs_before < 0.14
    collapsed = accuracy(result.model, data)
    calib = list(data.train_x[:256].split(64))
    reports = refit(result.model, model, result.plan, calib)
    refitted = accuracy(result.model, data)
    assert collapsed < 0.5, f"without refit: {collapsed:.3f}"
    assert refitted >= 0.88, f"with refit: {refitted:.3f} (original {original:.3f})"
    assert all(r.error_after < r.error_before for r in reports)


def test_mac_budget_with_calib_ranks_layers_by_measured_output_error(trained):
    """Weight-space energy drove a layer to a 1-channel bottleneck (28% accuracy at 30% of the
    MACs); ranking rungs by output error on calibration inputs avoids that."""
    data, model = trained
    shape = (1, 1, 32, 32)
    budget = int(0.3 * leanconv.profile(model, shape).total_macs)
    calib = list(data.train_x[:256].split(64))
    result = convert(model, to="asymmetric", mac_budget=budget, input_size=shape, calib=calib)
    assert leanconv.profile(result.model, shape).total_macs <= budget
    assert all(r.options["mid_channels"] > 1 for r in result.layers if r.converted)
    assert accuracy(result.model, data) >= 0.85

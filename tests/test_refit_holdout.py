"""Refit: one ordered pass per batch (same numbers as the layer-by-layer algorithm), tensors made
on the data's device, and the held-out check that undoes a refit which makes things worse."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from leanconv.conversion.plan import LayerPlan, Plan
from leanconv.conversion.refitting import (capture, capture_all, last_stage, refit, solve_stage,
                                           split_held_out)
from leanconv.conversion.surgery import build_module, factorize_conv, set_module

F64 = torch.float64
RANK1 = {"depth_multiplier": 1}


def network() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    ).double().eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model


def converted_copy(model: nn.Module, paths, options=RANK1):
    """``model`` with the convs at ``paths`` replaced by their rank-1 dsconv factorization, and its plan."""
    converted = copy.deepcopy(model)
    for path in paths:
        conv = converted.get_submodule(path)
        set_module(converted, path, build_module(conv, "dsconv", options, factorize_conv(conv, "dsconv", options)).eval())
    return converted, Plan("dsconv", {path: LayerPlan("dsconv", dict(options)) for path in paths})


def rel(outputs, targets) -> float:
    num = sum(np.sum((o.numpy() - t.numpy()) ** 2) for o, t in zip(outputs, targets))
    return float(np.sqrt(num / sum(np.sum(t.numpy() ** 2) for t in targets)))


def layer_by_layer(converted, original, paths, batches, ridge):
    """The algorithm before the one-pass refit, written out: per layer, full passes of the
    original (targets), of the converted model (error before, stage input, error after)."""
    errors = []
    for path in paths:
        targets = capture(original, original.get_submodule(path), batches, "output")
        layer = converted.get_submodule(path)
        before = rel(capture(converted, layer, batches, "output"), targets)
        stage = last_stage(layer)
        solve_stage(stage, capture(converted, stage, batches, "input"), targets, ridge)
        errors.append((before, rel(capture(converted, layer, batches, "output"), targets)))
    return errors


PATHS = ["0", "3", "5"]


def test_one_pass_refit_gives_the_layer_by_layer_result():
    original = network()
    batches = [torch.randn(4, 3, 12, 12, dtype=F64) for _ in range(3)]
    old, _ = converted_copy(original, PATHS)
    new, plan = converted_copy(original, PATHS)
    expected = layer_by_layer(old, original, PATHS, batches, ridge=None)
    reports = refit(new, original, plan, batches, holdout=0)
    assert [r.path for r in reports] == PATHS
    for report, (before, after) in zip(reports, expected):
        assert report.error_before == pytest.approx(before, rel=1e-10, abs=1e-12)
        assert report.error_after == pytest.approx(after, rel=1e-10, abs=1e-12)
        assert report.kept and report.held_out_before is None and "no held-out check" in report.note
    for (name, a), (_, b) in zip(old.state_dict().items(), new.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def counters(model: nn.Module):
    """Calls entering each module (pre-hook) and runs that finished (forward hook), by path."""
    entered, finished = {}, {}
    for name, module in model.named_modules():
        module.register_forward_pre_hook(lambda m, a, name=name: entered.__setitem__(name, entered.get(name, 0) + 1))
        module.register_forward_hook(lambda m, a, o, name=name: finished.__setitem__(name, finished.get(name, 0) + 1))
    return entered, finished


def test_forward_passes_one_original_pass_per_batch_and_one_partial_pass_per_layer():
    original = network()
    converted, plan = converted_copy(original, PATHS)
    batches = [torch.randn(4, 3, 10, 10, dtype=F64) for _ in range(2)]
    pieces = 3  # 8 images, the last 2 held out: the second batch is split in two
    (o_entered, o_finished), (c_entered, c_finished) = counters(original), counters(converted)
    refit(converted, original, plan, batches)
    assert o_entered[""] == pieces  # the original once per batch, for every layer's target
    assert c_entered[""] == len(PATHS) * pieces  # the converted model once per batch per layer ...
    assert o_finished.get("9", 0) == 0 and c_finished.get("9", 0) == 0  # ... stopping at the layer
    assert "" not in o_finished and "" not in c_finished
    for i, path in enumerate(PATHS):  # the layer itself: before and after on its own, then the later passes
        assert c_finished[path] == (2 + len(PATHS) - 1 - i) * pieces
    assert c_finished["1"] == (len(PATHS) - 1) * pieces  # BN after layer 0: reached by later layers' passes


class FactoryDevices(TorchFunctionMode):
    """Records the device asked of every tensor factory called (None: the default device)."""

    FACTORIES = {torch.eye, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor,
                 torch.randn, torch.rand, torch.linspace, torch.as_tensor}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES:
            self.calls.append((func.__name__, kwargs.get("device")))
        return func(*args, **kwargs)


def test_refit_makes_every_tensor_on_the_data_device():
    """A factory without device= makes a CPU tensor next to CUDA data (torch.eye broke the refit
    on CUDA): every factory the refit calls names the device."""
    original = network()
    converted, plan = converted_copy(original, PATHS)
    batches = [torch.randn(4, 3, 10, 10, dtype=F64) for _ in range(2)]
    with FactoryDevices() as mode:
        refit(converted, original, plan, batches)
    assert mode.calls, "the solve makes its identity matrix"
    assert all(device is not None and torch.device(device) == torch.device("cpu") for _, device in mode.calls), mode.calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_refit_on_cuda():
    original = network().cuda()
    converted, plan = converted_copy(original, PATHS)
    reports = refit(converted, original, plan, [torch.randn(8, 3, 10, 10, dtype=F64, device="cuda")])
    assert all(r.error <= r.error_before for r in reports)


def one_layer(channels: int):
    torch.manual_seed(1)
    original = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1)).double().eval()
    converted, plan = converted_copy(original, ["0"])
    return original, converted, plan


def closed_form(original, converted, images, held):
    """NumPy least squares of the pointwise stage on the first ``len(images) - held`` images, and
    the relative errors (fit, held-out) before and after, against the original conv."""
    with torch.no_grad():
        feats = converted[0].depthwise(images).permute(0, 2, 3, 1).numpy()
        target = original(images).permute(0, 2, 3, 1).numpy()
        before = converted(images).permute(0, 2, 3, 1).numpy()
    design = np.concatenate([feats, np.ones(feats.shape[:3] + (1,))], axis=3)
    n = len(images) - held
    a, y = design[:n].reshape(-1, design.shape[3]), target[:n].reshape(-1, target.shape[3])
    solution = np.linalg.lstsq(a, y, rcond=None)[0]
    after = design @ solution

    def err(out, part):
        return float(np.linalg.norm(out[part] - target[part]) / np.linalg.norm(target[part]))

    fit, out = slice(0, n), slice(n, None)
    return solution, {"error_before": err(before, fit), "error_after": err(after, fit),
                      "held_out_before": err(before, out), "held_out_after": err(after, out)}


def test_refit_that_overfits_the_fit_images_is_undone():
    """17 features (16 channels + bias) and 18 fit pixels, no ridge: the solve interpolates the
    fit pixels and is far off on the held-out image, so the factorized weights stay."""
    original, converted, plan = one_layer(16)
    images = torch.randn(3, 16, 3, 3, dtype=F64)  # 2 fit images x 9 pixels, 1 held out
    factorized = copy.deepcopy(converted.state_dict())
    _, expected = closed_form(original, converted, images, held=1)
    (report,) = refit(converted, original, plan, images, ridge=0.0)
    assert (report.fit_images, report.held_out_images) == (2, 1)
    assert not report.kept and "not kept" in report.note
    assert report.held_out_after > report.held_out_before
    assert report.error == report.error_before and report.error_after < report.error_before
    for name, value in expected.items():
        assert getattr(report, name) == pytest.approx(value, rel=1e-6), name
    for name, value in converted.state_dict().items():
        assert torch.equal(value, factorized[name]), name


def test_refit_that_generalizes_is_kept_with_closed_form_errors():
    """Channels driven by two latent signals (as image channels are correlated): the solve
    uses the correlation, on the held-out images too."""
    original, converted, plan = one_layer(6)
    latent = torch.randn(16, 2, 10, 10, dtype=F64)
    images = torch.einsum("nlhw,lc->nchw", latent, torch.randn(2, 6, dtype=F64)) + 0.1 * torch.randn(16, 6, 10, 10, dtype=F64)
    solution, expected = closed_form(original, converted, images, held=4)
    (report,) = refit(converted, original, plan, list(images.split(5)), ridge=0.0)  # batches 5, 5, 5, 1
    assert (report.fit_images, report.held_out_images) == (12, 4) and report.kept and report.note == ""
    assert report.held_out_after < 0.9 * report.held_out_before and report.error == report.error_after
    for name, value in expected.items():
        assert getattr(report, name) == pytest.approx(value, rel=1e-8), name
    pointwise = converted[0].pointwise
    np.testing.assert_allclose(pointwise.weight.detach()[:, :, 0, 0].numpy(), solution[:-1].T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pointwise.bias.detach().numpy(), solution[-1], rtol=1e-7, atol=1e-9)


def test_split_held_out_takes_the_last_quarter_of_the_images():
    x = torch.arange(8.0).reshape(8, 1, 1, 1)
    fit, held = split_held_out([x], 0.25)  # one batch: split inside it
    assert [b.flatten().tolist() for b in fit] == [[0, 1, 2, 3, 4, 5]] and [b.flatten().tolist() for b in held] == [[6, 7]]
    fit, held = split_held_out([x[:3], x[3:5], x[5:]], 0.25)
    assert [len(b) for b in fit] == [3, 2, 1] and [len(b) for b in held] == [2]
    assert split_held_out([x[:2]], 0.25)[1][0].flatten().tolist() == [1]  # two images: one held out
    fit, held = split_held_out([x[:1]], 0.25)
    assert len(fit) == 1 and held == []  # one image: nothing to hold out


def test_one_image_refits_without_a_held_out_check_and_says_so():
    original, converted, plan = one_layer(4)
    (report,) = refit(converted, original, plan, torch.randn(1, 4, 8, 8, dtype=F64))
    assert report.kept and report.held_out_images == 0 and report.held_out_after is None
    assert "fewer than 2 calibration images" in report.note


@pytest.mark.parametrize("holdout", [-0.1, 1.0, "0.25", True])
def test_bad_holdout_is_one_clear_error(holdout):
    original, converted, plan = one_layer(4)
    with pytest.raises(ValueError, match=r"holdout=.* must be a share of the calibration images in \[0, 1\)"):
        refit(converted, original, plan, torch.randn(4, 4, 8, 8, dtype=F64), holdout=holdout)


def test_capture_all_stops_after_the_last_module_and_keeps_first_calls():
    model = network()
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    seen = capture_all(model, ["0", "3"], [x, x], "output")
    with torch.no_grad():
        expected = model[3](model[2](model[1](model[0](x))))
    assert len(seen["3"]) == 2
    torch.testing.assert_close(seen["3"][1], expected)
    _, finished = counters(model)
    capture_all(model, ["0", "3"], [x], "input")
    assert finished.get("3", 0) == 0 and finished.get("9", 0) == 0  # stopped as layer 3 was entered

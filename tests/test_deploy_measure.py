"""Deployment targets measured together: rows, checks against fp32 eager, and the honest
speedup arithmetic on scripted timings (no clock)."""

import pytest
import torch
from torch import nn

from leanconv.deploy import Deployed, Target, deploy
from leanconv.deploy.measure import EAGER, measure_targets
from leanconv.deploy.target import TARGETS, output_difference, reference_output


def _net(channels=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.Conv2d(channels, 4, 3, padding=1)).eval()


class _Shifted(Target):
    """A target whose output is off by ``shift`` (a wrong runtime)."""

    shift: float = 0.0

    def build(self, model, example, precision, calib, threads):
        work = model.eval()
        return Deployed(self.name, precision, precision, "cpu", lambda x: work(x).detach() + self.shift)


@pytest.fixture
def fake_targets():
    added = {"wrong": _Shifted("wrong", "fake", ("fp32",)), "absent": _Shifted("absent", "fake", ("fp32",),
                                                                                modules=("no_such_runtime_mod",),
                                                                                extra="absent")}
    added["wrong"].shift = 1.0
    deploy_targets = dict(TARGETS)
    TARGETS.update(added)
    yield added
    TARGETS.clear()
    TARGETS.update(deploy_targets)


def _scripted(values):
    """A measure() returning the scripted milliseconds in call order (round-robin by design)."""
    it = iter(values)
    return lambda fn: next(it)


def test_honest_speedup_is_against_the_original_at_its_best():
    original, converted = _net(16), _net(8)
    # order per round: original eager, original torch, original torch-frozen, converted eager, converted torch, frozen
    rounds = [[40.0, 20.0, 10.0, 30.0, 8.0, 5.0], [44.0, 22.0, 12.0, 28.0, 9.0, 4.0], [42.0, 21.0, 11.0, 29.0, 7.0, 5.5]]
    report = measure_targets({"dense": original, "lean": converted}, (1, 3, 8, 8), targets=["torch", "torch-frozen"],
                             precisions=["fp32"], rounds=3, warmup=0, measure=_scripted(sum(rounds, [])))
    assert report.best("dense").target == "torch-frozen" and report.best("lean").target == "torch-frozen"
    speedup = report.speedup("dense", "lean")
    per_round = [10 / 5, 12 / 4, 11 / 5.5]
    assert speedup.median == pytest.approx(sorted(per_round)[1]) and speedup.low == pytest.approx(2.0)
    eager = report.eager_speedup("dense", "lean")
    assert eager.median == pytest.approx(sorted([40 / 30, 44 / 28, 42 / 29])[1])
    macs = report.macs["dense"] / report.macs["lean"]
    assert report.efficiency("dense", "lean").median == pytest.approx(speedup.median / macs)
    summary = report.summary("dense", "lean")
    assert "speedup vs dense at its best 2.00x (2.00-3.00)" in summary and EAGER in summary
    assert "**fastest**" in report.to_markdown()


def test_wrong_outputs_are_reported_not_timed_and_absent_runtimes_skipped(fake_targets):
    report = measure_targets({"net": _net()}, (1, 3, 8, 8), precisions=None, targets=None, rounds=1, warmup=0,
                             measure=lambda fn: 1.0, eager=False)
    by_target = {r.target: r for r in report.rows if r.precision == "fp32"}
    assert by_target["wrong"].status == "wrong" and not by_target["wrong"].samples
    assert "allowed for fp32" in by_target["wrong"].reason
    assert by_target["absent"].status == "skipped"
    assert by_target["absent"].reason == "no_such_runtime_mod not installed (pip install 'leanconv[absent]')"
    assert by_target["torch"].status == "ok" and by_target["torch"].samples == [1.0]


def test_asking_for_a_target_that_cannot_run_is_an_error(fake_targets):
    with pytest.raises(ValueError, match="target 'absent' with precision 'fp32' cannot run here: no_such_runtime_mod"):
        measure_targets({"net": _net()}, (1, 3, 8, 8), targets=["absent"], rounds=1, measure=lambda fn: 1.0)
    with pytest.raises(ValueError, match="target='nope' must be one of"):
        deploy(_net(), "nope", input_size=(1, 3, 8, 8))
    with pytest.raises(ValueError, match="precision='int4' must be one of"):
        deploy(_net(), "torch", "int4", input_size=(1, 3, 8, 8))


@pytest.mark.parametrize("target", ["torch", "torch-frozen"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torch_targets_match_fp32_eager_within_their_tolerance(target, precision):
    from leanconv.deploy.target import TOLERANCES, get_target

    model = _net()
    why = get_target(target).unsupported(precision, "cpu")
    if why:
        pytest.skip(why)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    deployed = deploy(model, target, precision, example=x)
    # the reference is computed here independently: the model itself in float64
    expected = model.double()(x.double()).float()
    model.float()
    difference = output_difference(deployed(x), expected)
    assert difference <= TOLERANCES[precision]
    assert (difference < 1e-5) == (precision == "fp32")  # bf16 really ran in bf16
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_reference_is_fp32_eager_and_leaves_the_model():
    model = _net().double().train()
    x = torch.randn(1, 3, 8, 8)
    out = reference_output(model, x)
    assert out.dtype == torch.float32 and model.training and next(model.parameters()).dtype == torch.float64


def test_accuracy_per_deployment_on_labelled_validation_data():
    """Labels chosen so the fp32 model's accuracy is known: half the labels are its own argmax."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    torch.manual_seed(1)
    x = torch.randn(10, 3, 8, 8)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    labels = torch.where(torch.arange(10) < 6, predicted, (predicted + 1) % 4)  # 6 right, 4 wrong
    val = [(x[:5], labels[:5]), (x[5:], labels[5:])]
    report = measure_targets({"net": model}, (4, 3, 8, 8), targets=["torch"], precisions=["fp32"], rounds=1,
                             warmup=0, measure=lambda fn: 1.0, val=val, eager=False)
    # batches of 4: the first 8 images (6 right among them: the first six), the remainder dropped
    assert report.rows[0].accuracy == pytest.approx(6 / 8)
    with pytest.raises(ValueError, match="val holds no labels"):
        measure_targets({"net": model}, (4, 3, 8, 8), targets=["torch"], precisions=["fp32"], val=[x], rounds=1,
                        measure=lambda fn: 1.0)

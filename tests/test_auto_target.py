"""``convert(to='auto')`` measured for real on onnxruntime (no timing asserted: the machine is
noisy): what is cached, under which key, and that a second search reads the cache."""

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from leanconv import convert

pytest.importorskip("onnxruntime")


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, 8, 3, padding=1), act0=nn.ReLU(),
        conv2=nn.Conv2d(8, 16, 3, padding=1), act2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
    )).eval()


def test_a_real_search_on_onnxruntime_is_cached_by_target_and_version(tmp_path, monkeypatch):
    import onnxruntime

    monkeypatch.setenv("LEANCONV_CACHE_DIR", str(tmp_path))
    calib = [torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    kwargs = dict(to="auto", target="onnxruntime", precision="fp32", target_speedup=1.05, input_size=(1, 3, 8, 8),
                  calib=calib, accept_slower=True, kinds=["dsconv", "tucker2"])
    result = convert(small_model(), **kwargs)
    search = result.search
    assert (search.target, search.precision) == ("onnxruntime", "fp32")
    assert result.plan.deployment == {"target": "onnxruntime", "precision": "fp32", "input_size": (1, 3, 8, 8),
                                      "threads": 1}
    layer = search.layers["conv2"]
    assert [m.candidate.kind for m in layer.considered][0] == "dense"
    assert {m.candidate.kind for m in layer.considered[1:]} <= {"dsconv", "tucker2"}
    assert all(m.latency_ms > 0 for m in layer.considered)
    table = json.loads((tmp_path / "latency.json").read_text())
    keys = [k for k in table if k.startswith(f"onnxruntime|onnxruntime {onnxruntime.__version__}|")]
    assert len(keys) >= len(layer.considered) + 1  # every candidate, and the dense model
    assert all("|fp32|1threads|" in k for k in keys)
    # the second search reads every timing (layers and the dense model) from the cache
    again = convert(small_model(), **kwargs)
    assert json.loads((tmp_path / "latency.json").read_text()).keys() == table.keys()
    assert [m.latency_ms for m in again.search.layers["conv2"].considered] == [m.latency_ms for m in layer.considered]
    assert again.search.baseline_ms == search.baseline_ms


def test_dense_timings_measured_before_the_search_are_its_baseline(tmp_path, monkeypatch):
    """optimize measures the original on every target to find the fastest; the search then reads
    those timings from the cache instead of measuring the dense model again."""
    from leanconv.conversion import clock as clock_module
    from leanconv.deploy import measure

    monkeypatch.setenv("LEANCONV_CACHE_DIR", str(tmp_path))
    model = small_model()
    report = measure.measure_targets({"original": model}, (1, 3, 8, 8), targets=["torch"], precisions=["fp32"],
                                     eager=False, rounds=2, measure=lambda fn: 1.25)
    clock_module.remember_dense(model, report)

    def refuse(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(measure, "measure_targets", refuse)
    clock = clock_module.TargetClock("torch", (1, 3, 8, 8), "fp32")
    assert clock.baseline(small_model()) == {"fp32": 1.25}  # same architecture, fresh weights


def test_whole_models_are_timed_beside_the_dense_model_so_load_drift_cancels(tmp_path, monkeypatch):
    """A machine twice as busy during the check as during the baseline: the per-round ratio to
    the dense model, times the baseline's ms, gives the same verdict as a quiet machine would."""
    from leanconv.conversion import clock as clock_module
    from leanconv.deploy import measure
    from leanconv.timing import Interleaved

    monkeypatch.setenv("LEANCONV_CACHE_DIR", str(tmp_path))
    model = small_model()
    report = measure.measure_targets({"dense": model}, (1, 3, 8, 8), targets=["torch"], precisions=["fp32"],
                                     eager=False, rounds=2, measure=lambda fn: 1.0)
    clock_module.remember_dense(model, report)
    clock = clock_module.TargetClock("torch", (1, 3, 8, 8), "fp32", rounds=3)
    assert clock.baseline(model) == {"fp32": 1.0}
    timed = []

    def interleaved(calls, **kwargs):
        timed.append(len(calls))  # the converted model and the dense reference, interleaved
        return Interleaved([[1.2, 1.6, 1.4], [2.0, 2.0, 2.0]])  # converted, dense: both at twice the load

    monkeypatch.setattr(clock_module, "time_interleaved", interleaved)
    converted = nn.Sequential(small_model(), nn.Identity())  # another architecture than the dense model's
    assert clock.model_ms(converted) == pytest.approx(0.7)  # median ratio 0.7 x the baseline's 1.0 ms
    assert timed == [2]
    # kept under the architecture: the same model again, or a new search's clock, measures nothing
    assert clock.model_ms(nn.Sequential(small_model(), nn.Identity())) == pytest.approx(0.7) and timed == [2]
    fresh = clock_module.TargetClock("torch", (1, 3, 8, 8), "fp32", rounds=3)
    assert fresh.model_ms(converted) == pytest.approx(0.7) and timed == [2]


def test_a_runtime_that_refuses_the_empty_graph_is_asked_once(tmp_path):
    """The per-call cost is measured on a graph that only passes its input through; where a
    runtime cannot build one, no correction is made, and it is not tried again per candidate."""
    from leanconv.conversion.clock import TargetClock
    from leanconv.conversion.latency import LatencyCache

    tries = []

    def refuse_identity(module, x):
        tries.append(type(module).__name__)
        raise RuntimeError("a graph without operators")

    clock = TargetClock("torch", (1, 3, 8, 8), "fp32", cache_path=tmp_path / "latency.json")
    clock._caches["fp32"] = LatencyCache(tmp_path / "latency.json", measure=refuse_identity)
    assert clock.call_ms((1, 3, 8, 8)) == 0.0 and clock.call_ms((1, 8, 8, 8)) == 0.0
    assert tries == ["Identity"]


def test_the_returned_mix_is_checked_as_users_deploy_it(tmp_path):
    from leanconv.conversion.clock import TargetClock

    calib = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))]
    clock = TargetClock("onnxruntime", (1, 3, 8, 8), "fp32", calib=calib, cache_path=tmp_path / "latency.json")
    assert clock.deployment_problem(small_model()) is None  # fp32 onnxruntime computes what eager does

    class Unexportable(nn.Module):
        def forward(self, x):
            raise RuntimeError("no graph here")

    problem = clock.deployment_problem(Unexportable())
    assert problem.startswith("its onnxruntime fp32 build failed (") and "no graph here" in problem


def _permuted_then_relu_and_conv():
    from leanconv.layers.conv import PermutedGroupedConv2d

    torch.manual_seed(0)
    permuted = PermutedGroupedConv2d(16, 16, 3, 1, 1, groups=2)
    permuted.input_order.copy_(torch.randperm(16))
    permuted.output_order.copy_(torch.randperm(16))
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), permuted, nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1)).eval()


def test_the_search_offers_no_candidate_its_target_computes_wrongly(tmp_path):
    """openvino's CPU plugin computes a permuted grouped conv followed by ReLU and a conv wrongly
    (measured here against eager, with onnxruntime as the second reference); a search there does
    not offer permuted grouped candidates and says why. If a new openvino computes it right, the
    first assertion says so: then drop ``OpenVinoTarget.computes_wrongly``."""
    pytest.importorskip("openvino")
    from leanconv.conversion.candidates import layer_candidates
    from leanconv.conversion.clock import TargetClock
    from leanconv.deploy.target import deploy, first_output, output_difference

    model, x = _permuted_then_relu_and_conv(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        reference = model(x)
    wrong = output_difference(first_output(deploy(model, "openvino", "fp32", example=x, threads=1)(x)), reference)
    right = output_difference(first_output(deploy(model, "onnxruntime", "fp32", example=x, threads=1)(x)), reference)
    assert right < 1e-5 and wrong > 1e-2, (wrong, right)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    candidates = layer_candidates(conv, (8, 8), ["grouped"])
    clock = TargetClock("openvino", (1, 16, 8, 8), "fp32", cache_path=tmp_path / "latency.json")
    refused = {c.label for c in candidates if clock.excludes(c)}
    assert refused == {c.label for c in candidates if c.options.get("permute")} and refused
    ort = TargetClock("onnxruntime", (1, 16, 8, 8), "fp32", cache_path=tmp_path / "latency.json")
    assert not any(ort.excludes(c) for c in candidates)

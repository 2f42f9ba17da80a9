"""Per-layer timings on a deployment target (issue 14): a :class:`TimingSetting` keys the latency
cache by everything that changes a timing (target, runtime and version, device, precision,
threads), refuses what cannot run here in one line, and really deploys the layer it times, with
outputs that match the conv. No timing is asserted beyond being a positive number of ms."""

from __future__ import annotations

import importlib.util
import json
import math
from importlib import metadata

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanconv.kinds  # noqa: F401 - registers the conv kinds
from leanconv.conversion.latency import LatencyCache, TimingSetting, deployed_layer
from leanconv.deploy.target import TOLERANCES, get_target, hardware_gap, output_difference, runtime_version
from leanconv.registry import create_conv2d

HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
HAVE_NNCF = HAVE_OPENVINO and importlib.util.find_spec("nncf") is not None
NO_BF16 = hardware_gap("bf16", "cpu")


class Counting:
    """A scripted measurement that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module, x) -> float:
        self.calls += 1
        return 1.5


def _time_three(path, setting, measure) -> LatencyCache:
    cache = LatencyCache(path, measure=measure, setting=setting)
    for channels in (4, 8, 16):
        cache.latency(f"dense|C={channels}", nn.Conv2d(channels, channels, 3), (1, channels, 8, 8))
    cache.save()
    return cache


# ---------------------------------------------------------------- keys


def test_the_key_changes_with_every_part_of_the_setting():
    base = TimingSetting("torch")
    others = [TimingSetting("torch-frozen"), TimingSetting("torch", precision="bf16"),
              TimingSetting("torch", threads=2), TimingSetting("torch", device="cuda"), TimingSetting("onnxruntime")]
    keys = [base.key()] + [other.key() for other in others]
    assert len(set(keys)) == len(keys), keys
    assert TimingSetting("torch", min_run_time=0.2).key() == base.key()  # how long it is timed is no part of it


def test_the_key_names_the_runtime_and_its_version_and_the_device():
    from leanconv.deploy.target import cpu_name

    key = TimingSetting("torch").key()
    assert f"torch {torch.__version__}" in key and cpu_name() in key and "fp32" in key and "1threads" in key
    assert runtime_version("torch") == f"torch {torch.__version__}"
    if HAVE_ORT:
        assert f"onnxruntime {metadata.version('onnxruntime')}" in TimingSetting("onnxruntime").key()
    if HAVE_OPENVINO:
        assert runtime_version("openvino") == f"openvino {metadata.version('openvino')}"
    with pytest.raises(ValueError, match="target='nope'"):
        runtime_version("nope")


def test_timings_of_one_setting_are_not_read_for_another(tmp_path):
    path = tmp_path / "latency.json"
    first = Counting()
    _time_three(path, TimingSetting("torch"), first)
    assert first.calls == 3
    saved = json.loads(path.read_text())
    assert len(saved) == 3 and all(key.startswith(TimingSetting("torch").key() + "|") for key in saved)

    again = Counting()
    assert _time_three(path, TimingSetting("torch"), again).measured == 0 and again.calls == 0  # read from the file

    for other in (TimingSetting("torch", precision="bf16"), TimingSetting("torch", threads=2),
                  TimingSetting("torch-frozen")):
        count = Counting()
        _time_three(path, other, count)
        assert count.calls == 3, other  # another setting: measured again

    plain = Counting()
    cache = LatencyCache(path, measure=plain)  # no setting: PyTorch eager, its own keys, as before
    cache.latency("dense|C=4", nn.Conv2d(4, 4, 3), (1, 4, 8, 8))
    assert plain.calls == 1


def test_without_a_setting_the_cache_keys_by_the_torch_device_as_before(tmp_path):
    from leanconv.conversion.latency import device_key

    cache = LatencyCache(tmp_path / "latency.json", measure=Counting())
    cache.latency("d", nn.Conv2d(2, 2, 3), (1, 2, 8, 8))
    cache.save()
    (key,) = json.loads((tmp_path / "latency.json").read_text())
    assert key.startswith(device_key(torch.device("cpu")) + "|torch.float32|nchw|")


# ---------------------------------------------------------------- check


@pytest.mark.parametrize("setting, words", [
    (TimingSetting("nope"), ["target='nope'", "must be one of"]),
    (TimingSetting("torch", precision="fp8"), ["precision='fp8'"]),
    (TimingSetting("torch", threads=0), ["threads=0"]),
    (TimingSetting("torch", min_run_time=0), ["min_run_time=0"]),
    (TimingSetting("torch", device="tpu"), ["device='tpu'"]),
    (TimingSetting("torch", precision="int8"), ["target='torch'", "precision='int8'", "has no int8"]),
])
def test_check_refuses_what_cannot_run_here_in_one_line(setting, words):
    with pytest.raises(ValueError) as caught:
        setting.check()
    message = str(caught.value)
    assert all(word in message for word in words) and "\n" not in message, message
    with pytest.raises(ValueError):
        LatencyCache(setting=setting)  # it will measure: checked at once
    LatencyCache(measure=Counting(), setting=TimingSetting("torch", precision="bf16"))  # scripted: not checked


@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed (leanconv[onnx])")
def test_check_names_a_precision_the_runtime_lacks():
    assert "bf16" not in get_target("onnxruntime").precisions
    with pytest.raises(ValueError, match=r"target='onnxruntime' precision='bf16'.*has no bf16"):
        TimingSetting("onnxruntime", precision="bf16").check()


def test_check_names_a_missing_runtime(monkeypatch):
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(ValueError, match=r"target='openvino'.*openvino not installed"):
        TimingSetting("openvino").check()
    assert "openvino (not installed)" in TimingSetting("openvino").key()


def test_a_setting_must_be_a_timing_setting():
    with pytest.raises(TypeError, match="setting must be a TimingSetting"):
        LatencyCache(setting="onnxruntime")


# ---------------------------------------------------------------- real deployments

needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed (leanconv[onnx])")
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed (leanconv[openvino])")
needs_nncf = pytest.mark.skipif(not HAVE_NNCF, reason="openvino/nncf not installed (leanconv[openvino])")
needs_bf16 = pytest.mark.skipif(NO_BF16 is not None, reason=str(NO_BF16))

REAL = [
    pytest.param("torch", "fp32"),
    pytest.param("torch-frozen", "fp32"),
    pytest.param("onnxruntime", "fp32", marks=needs_ort),
    pytest.param("onnxruntime", "int8", marks=needs_ort),
    pytest.param("openvino", "fp32", marks=needs_openvino),
    pytest.param("openvino", "bf16", marks=[needs_openvino, needs_bf16]),
    pytest.param("openvino", "int8", marks=needs_nncf),
]


@pytest.mark.parametrize("target, precision", REAL)
def test_a_timing_deploys_the_layer_and_its_output_matches_the_conv(target, precision):
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1).eval()
    x = torch.randn(1, 8, 12, 12)
    setting = TimingSetting(target, precision, min_run_time=0.01)
    deployed = deployed_layer(setting, conv, x)
    assert deployed.target == target and deployed.precision == precision
    with torch.no_grad():
        want = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    assert output_difference(deployed(x), want) <= TOLERANCES[precision]
    ms = setting.measure(conv, x)
    assert isinstance(ms, float) and math.isfinite(ms) and ms > 0


@pytest.mark.parametrize("target", [pytest.param("onnxruntime", marks=needs_ort),
                                    pytest.param("openvino", marks=needs_openvino)])
@pytest.mark.parametrize("kind, options", [("tucker2", {"ranks": (4, 4)}), ("grouped", {"groups": 2, "permute": True}),
                                           ("dsconv", {})])
def test_a_factorized_layer_deployed_for_timing_computes_what_it_computes_in_torch(target, kind, options):
    module = create_conv2d(kind, 8, 8, 3, padding=1, **options).eval()
    x = torch.randn(1, 8, 10, 10)
    deployed = deployed_layer(TimingSetting(target), module, x)
    with torch.no_grad():
        assert output_difference(deployed(x), module(x)) <= TOLERANCES["fp32"]
    assert "TorchScript" in deployed.note  # built the quick way


@needs_ort
def test_the_cache_times_on_the_target_and_keys_by_it(tmp_path):
    setting = TimingSetting("onnxruntime", min_run_time=0.01)
    cache = LatencyCache(tmp_path / "latency.json", setting=setting)
    ms = cache.latency("dense|8-8", nn.Conv2d(8, 8, 3, padding=1), (1, 8, 10, 10))
    assert math.isfinite(ms) and ms > 0 and cache.measured == 1
    cache.save()
    (key,) = json.loads((tmp_path / "latency.json").read_text())
    assert key.startswith(setting.key() + "|")


@needs_ort
def test_onnxruntime_times_through_the_dynamo_export_when_the_quick_one_fails(monkeypatch):
    from leanconv.deploy import on_onnxruntime

    def broken(model, example):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(on_onnxruntime, "torchscript_onnx", broken)
    conv = nn.Conv2d(4, 4, 3).eval()
    x = torch.randn(1, 4, 8, 8)
    deployed = deployed_layer(TimingSetting("onnxruntime"), conv, x)
    assert "dynamo export (TorchScript: RuntimeError)" in deployed.note
    assert output_difference(deployed(x), F.conv2d(x, conv.weight, conv.bias)) <= TOLERANCES["fp32"]


@needs_ort
def test_the_whole_model_deployment_keeps_the_dynamo_export():
    from leanconv.deploy import deploy

    deployed = deploy(nn.Conv2d(4, 4, 3), "onnxruntime", "fp32", example=torch.randn(1, 4, 8, 8))
    assert "TorchScript" not in deployed.note


@needs_nncf
def test_openvino_int8_for_timing_leaves_nncf_as_it_was():
    from nncf.common.graph.patterns.manager import PatternsManager

    before = vars(PatternsManager)["get_full_hw_pattern_graph"]
    conv = nn.Conv2d(8, 8, 3, padding=1).eval()
    model = nn.Sequential(conv, nn.ReLU()).eval()  # a ReLU: NNCF quantizes it, not the quick insertion
    x = torch.randn(1, 8, 10, 10)
    for _ in range(2):  # the second reuses the pattern graph the first built
        deployed = deployed_layer(TimingSetting("openvino", "int8"), model, x)
        assert "NNCF PTQ" in deployed.note, deployed.note
        want = F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1))
        assert output_difference(deployed(x), want) <= TOLERANCES["int8"]
    assert vars(PatternsManager)["get_full_hw_pattern_graph"] is before


@pytest.mark.parametrize("target", [pytest.param("onnxruntime", marks=needs_ort), pytest.param("openvino", marks=needs_nncf)])
@pytest.mark.parametrize("kind, options", [("depthwise", {}), ("grouped", {"groups": 4, "permute": True}), ("dsconv", {})])
def test_int8_for_timing_runs_what_the_whole_model_deployment_runs(target, kind, options):
    """The quick build must not change what runs: read from ONNX as it was, OpenVINO left a
    depthwise conv's weights unquantized and ran it in bf16 (the default build runs u8)."""
    from leanconv.deploy import deploy

    module = create_conv2d(kind, 16, 16, 3, padding=1, **options).eval()
    x = torch.randn(1, 16, 12, 12)
    quick = deployed_layer(TimingSetting(target, "int8"), module, x)
    generator = torch.Generator().manual_seed(0)
    calib = [x] + [torch.randn(tuple(x.shape), generator=generator) for _ in range(2)]
    default = deploy(module, target, "int8", example=x, calib=calib)
    assert quick.ran == default.ran == "int8", (quick.ran, default.ran)

"""Deployment settings: every setting computes what eager computes, the chosen one is the
fastest measured, failures are skipped with a reason, the efficiency arithmetic on given
numbers, MACs against FlopCounterMode, and ``leanconv bench``. No timed assertions."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import leanconv
from leanconv import bench
from leanconv.bench import (DEFAULT_SETTINGS, EfficiencyReport, SettingResult, SettingsReport, benchmark_settings,
                            efficiency, prepare, realized_efficiency)
from leanconv import save_plan
from leanconv.models.digits import digits_cnn
from support import randomize_norms

FAST = dict(min_run_time=0.01, warmup=1)


def _model(width: int = 8) -> nn.Module:
    return randomize_norms(digits_cnn(width=width)).eval()


@pytest.mark.parametrize("setting", DEFAULT_SETTINGS)
def test_every_setting_computes_the_eager_output(setting):
    model = _model()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        expected = model(x)
        module, example = prepare(model, setting, x)
        got = module(example)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    if "channels_last" in setting:
        assert example.is_contiguous(memory_format=torch.channels_last)
    if "fused" in setting:
        assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_benchmark_picks_the_fastest_and_leaves_the_model_alone():
    model = _model().train()
    before = copy.deepcopy(model.state_dict())
    report = benchmark_settings(model, (2, 1, 16, 16), threads=1, **FAST)
    assert [r.setting for r in report.results] == list(DEFAULT_SETTINGS)
    assert all(r.latency_ms > 0 and r.skipped is None and r.max_abs_diff < 1e-4 for r in report.results)
    assert report.best.latency_ms == min(r.latency_ms for r in report.results)
    assert report.to_dict()["best"] == report.best.setting
    assert f"fastest: **{report.best.setting}**" in report.to_markdown()
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert report.threads == 1 and report.input_shape == (2, 1, 16, 16)


def test_failed_compile_and_wrong_outputs_are_skipped(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    report = benchmark_settings(_model(), (1, 1, 16, 16), settings=["eager"], compile=True, **FAST)
    compiled = report.results[-1]
    assert compiled.setting == "compiled" and compiled.latency_ms is None
    assert compiled.skipped == "RuntimeError: no compiler here"
    assert report.best.setting == "eager"

    def wrong_fuse(model, inplace=False):  # a "fusion" that changes the output
        model = copy.deepcopy(model).eval()
        with torch.no_grad():
            model.fc.bias.add_(1.0)
        return model

    monkeypatch.setattr(sys.modules["leanconv.fusion"], "fuse", wrong_fuse)
    report = benchmark_settings(_model(), (1, 1, 16, 16), settings=["eager", "fused"], **FAST)
    fused = report.results[1]
    assert fused.latency_ms is None and fused.skipped.startswith("output differs from eager by up to 1")
    assert report.best.setting == "eager"


def test_efficiency_arithmetic_on_given_numbers():
    assert efficiency(4.4, 8.0) == pytest.approx(0.55)
    assert efficiency(2.0, 2.0) == 1.0
    original = SettingsReport((16, 1, 32, 32), 2, [SettingResult("eager", 10.0), SettingResult("fused", 8.0),
                                                   SettingResult("compiled", None, "RuntimeError: x")])
    converted = SettingsReport((16, 1, 32, 32), 2, [SettingResult("eager", 5.0), SettingResult("fused", 2.0),
                                                    SettingResult("compiled", 1.0)])
    report = EfficiencyReport(original, converted, original_macs=9_000_000, converted_macs=1_500_000)
    assert report.mac_reduction == 6.0
    assert original.best.setting == "fused" and converted.best.setting == "compiled"
    assert report.speedup == 8.0  # 8.0 ms (original at its best) / 1.0 ms (converted at its best)
    assert report.efficiency == pytest.approx(8.0 / 6.0)
    rows = {r["setting"]: r for r in report.per_setting()}
    assert rows["eager"]["speedup"] == 2.0 and rows["eager"]["efficiency"] == pytest.approx(2.0 / 6.0)
    assert rows["fused"]["speedup"] == 4.0 and rows["fused"]["efficiency"] == pytest.approx(4.0 / 6.0)
    assert rows["compiled"]["speedup"] is None and rows["compiled"]["note"] == "RuntimeError: x"
    text = report.to_markdown()
    assert "9,000,000 -> 1,500,000 (6.00x fewer)" in text and "| eager | 10.000 | 5.000 | 2.00x | 0.33 |  |" in text
    assert "speedup **8.00x**, realized efficiency **1.33**" in text
    assert json.loads(json.dumps(report.to_dict()))["efficiency"] == pytest.approx(8.0 / 6.0)
    with pytest.raises(ValueError, match=r"mac_reduction=0 must be a finite number > 0"):
        efficiency(1.0, 0)


def test_realized_efficiency_macs_match_flop_counter():
    original = _model()
    converted = leanconv.convert(original, to="dsconv", rank=1, exclude=["features.conv1*"]).model.eval()
    shape = (2, 1, 16, 16)
    report = realized_efficiency(original, converted, shape, settings=["eager", "fused"], rounds=1, threads=1, **FAST)
    for model, macs in ((original, report.original_macs), (converted, report.converted_macs)):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.randn(shape))
        assert macs == counter.get_total_flops() // 2
    assert report.mac_reduction == report.original_macs / report.converted_macs
    assert report.speedup == pytest.approx(report.original.best.latency_ms / report.converted.best.latency_ms)
    assert report.efficiency == pytest.approx(report.speedup / report.mac_reduction)


def test_bad_arguments():
    model = _model()
    with pytest.raises(ValueError, match=r"setting='fast' must be one of"):
        prepare(model, "fast", torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"settings entry 'nchw' must be one of"):
        benchmark_settings(model, (1, 1, 8, 8), settings=["nchw"])
    with pytest.raises(ValueError, match=r"input_size=\(1, 0, 8\) must be a shape of positive ints"):
        benchmark_settings(model, (1, 0, 8))
    with pytest.raises(ValueError, match=r"threads=0 must be an int >= 1"):
        benchmark_settings(model, (1, 1, 8, 8), threads=0)
    with pytest.raises(ValueError, match=r"rounds=0 must be an int >= 1"):
        realized_efficiency(model, model, (1, 1, 8, 8), rounds=0)
    with pytest.raises(ValueError, match=r"converted=str must be an nn.Module"):
        realized_efficiency(model, "x", (1, 1, 8, 8))


def _leanconv(*args):
    return subprocess.run([sys.executable, "-m", "leanconv.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_bench_json_and_converted(tmp_path):
    done = _leanconv("bench", "digits_cnn", "--input", "1,1,16,16", "--threads", "1", "--min-run-time", "0.01",
                     "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    latencies = {r["setting"]: r["latency_ms"] for r in data["results"]}
    assert set(latencies) == set(DEFAULT_SETTINGS) and data["best"] == min(latencies, key=latencies.get)

    model = digits_cnn()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    result = leanconv.convert(model, to="dsconv", rank=1)
    (tmp_path / "c").mkdir()
    torch.save(result.model.state_dict(), tmp_path / "c" / "model.pt")
    save_plan(result.plan, tmp_path / "c" / "plan.json")
    done = _leanconv("bench", "digits_cnn", "--weights", str(tmp_path / "w.pt"), "--converted", str(tmp_path / "c"),
                     "--batch-size", "2", "--settings", "eager,fused", "--threads", "1", "--min-run-time", "0.01",
                     "--format", "md")
    assert done.returncode == 0, done.stderr
    assert "Input 2x1x32x32, 1 thread(s)" in done.stdout and "realized efficiency **" in done.stdout
    assert "| setting | original ms | converted ms | speedup | realized efficiency | note |" in done.stdout

    bad = _leanconv("bench", "digits_cnn", "--settings", "eager,warp")
    assert bad.returncode == 2 and "leanconv bench: --settings 'eager,warp' must be a comma-separated subset" in bad.stderr
    missing = _leanconv("bench", "digits_cnn", "--converted", str(tmp_path / "none"))
    assert missing.returncode == 2 and "must hold plan.json and model.pt" in missing.stderr


def test_measure_latency_keeps_its_default():
    """Existing callers time on one thread, as torch.utils.benchmark does by default."""
    import inspect

    assert inspect.signature(bench.measure_latency).parameters["num_threads"].default == 1


def test_deploy_benchmark_quick(tmp_path):
    """benchmarks/deploy.py in quick mode writes its tables and refuses to overwrite them."""
    from pathlib import Path

    pytest.importorskip("sklearn")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "deploy.py"
    args = [sys.executable, str(script), "--quick", "--threads", "1", "--min-run-time", "0.005", "--out", str(tmp_path)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    data = json.loads((tmp_path / "deploy.json").read_text())
    (run,) = data["runs"]
    report = run["report"]
    assert run["threads"] == 1 and run["batch"] == 1
    assert report["mac_reduction"] == report["original_macs"] / report["converted_macs"]
    assert report["original_macs"] == 9_732_736  # the digits CNN at 32x32 (leanconv.profile)
    for side in ("original", "converted"):
        latencies = {r["setting"]: r["latency_ms"] for r in report[side]["results"]}
        assert report[side]["best"] == min(latencies, key=latencies.get)
    assert report["efficiency"] == pytest.approx(report["speedup"] / report["mac_reduction"])
    assert data["meta"]["batchnorms_left_after_fuse_converted"] >= 0
    assert "## batch 1, 1 thread(s)" in (tmp_path / "deploy.md").read_text()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--force" in again.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------- spreads, devices, TorchScript (issue 12)


def _script(values):
    """A per-round ``measure`` returning ``values`` in the order it is asked (no clock)."""
    left = list(values)
    return lambda fn: left.pop(0)


def test_realized_efficiency_reports_ranges_and_says_within_noise():
    original = _model()
    converted = leanconv.convert(original, to="dsconv", rank=1, exclude=["features.conv1*"]).model.eval()
    # each round times: eager/original, eager/converted, fused/original, fused/converted
    rounds = [(10.0, 9.0, 8.0, 4.0), (12.0, 13.0, 9.0, 4.5), (11.0, 10.0, 8.5, 5.0)]
    report = realized_efficiency(original, converted, (2, 1, 16, 16), settings=["eager", "fused"], rounds=3,
                                 warmup=0, threads=1, measure=_script([v for r in rounds for v in r]))
    mr = report.mac_reduction
    eager, fused = report.per_setting()
    assert (eager["original_ms"], eager["converted_ms"]) == (11.0, 10.0)
    assert eager["speedup_range"] == pytest.approx((12 / 13, 10 / 9)) and eager["within_noise"]
    assert fused["speedup"] == pytest.approx(8.5 / 4.5) and fused["speedup_range"] == pytest.approx((1.7, 2.0))
    assert not fused["within_noise"] and not report.within_noise
    text = report.to_markdown()
    assert "median of 3 interleaved rounds" in text
    assert (f"| eager | 11.000 (10.000-12.000) | 10.000 (9.000-13.000) | 0.92-1.11x: within noise | "
            f"{12 / 13 / mr:.2f}-{10 / 9 / mr:.2f} |  |") in text  # within noise: a range, no figure
    assert "| fused | 8.500 (8.000-9.000) | 4.500 (4.000-5.000) | 1.89x (1.70-2.00) |" in text
    assert f"speedup **1.89x** (1.70-2.00 over 3 interleaved rounds), realized efficiency **{8.5 / 4.5 / mr:.2f}" in text
    assert json.loads(json.dumps(report.to_dict()))["speedup_range"] == pytest.approx([1.7, 2.0])

    noisy = realized_efficiency(original, converted, (2, 1, 16, 16), settings=["eager"], rounds=3, warmup=0,
                                threads=1, measure=_script([10.0, 9.0, 12.0, 13.0, 11.0, 10.0]))
    assert noisy.within_noise and noisy.speedup_text == "0.92-1.11x: within noise"
    assert "so no speedup or realized efficiency is claimed" in noisy.to_markdown()
    assert noisy.efficiency_text == f"{12 / 13 / mr:.2f}-{10 / 9 / mr:.2f}"
    assert "**1.10x**" not in noisy.to_markdown()


def test_benchmark_settings_vs_eager_has_a_range():
    report = benchmark_settings(_model(), (1, 1, 16, 16), settings=["eager", "fused"], rounds=3, warmup=0,
                                measure=_script([10.0, 5.0, 10.0, 6.0, 10.0, 4.0]))
    fused = report.results[1]
    assert fused.latency_ms == 5.0 and fused.spread_ms == (4.0, 6.0) and fused.samples_ms == [5.0, 6.0, 4.0]
    assert "| fused | 5.000 (4.000-6.000) | 2.00x (1.67-2.50) |" in report.to_markdown()
    assert "| eager | 10.000 (10.000-10.000) | 1.00x |" in report.to_markdown()
    assert json.loads(json.dumps(report.to_dict()))["rounds"] == 3


class _DeviceCheck(nn.Module):
    """Asserts its input is on its weight's device; records which instance ran (a class list,
    which deepcopy does not copy)."""

    ran: list = []

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        assert x.device == self.conv.weight.device, (x.device, self.conv.weight.device)
        _DeviceCheck.ran.append(self)
        return self.conv(x)


def test_settings_follow_the_model_device_on_a_copy():
    model = _DeviceCheck()
    _DeviceCheck.ran.clear()
    report = benchmark_settings(model, (1, 1, 8, 8), settings=["eager", "channels_last"], device="cpu", warmup=1,
                                measure=_script([1.0, 1.0]))
    assert report.device == "cpu" and _DeviceCheck.ran and all(m is not model for m in _DeviceCheck.ran)
    moved = bench.placed(model, "cpu")
    assert moved is not model and torch.equal(moved.conv.weight, model.conv.weight)
    assert bench.placed(model, None) is model and bench.model_device(nn.ReLU()) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"model is on the meta device: it has no weights to run"):
        benchmark_settings(_DeviceCheck().to("meta"), (1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"device='meta' cannot run a model"):
        benchmark_settings(model, (1, 1, 8, 8), device="meta")
    with pytest.raises(ValueError, match=r"device='warp' must be a torch device"):
        benchmark_settings(model, (1, 1, 8, 8), device="warp")
    with pytest.raises(ValueError, match=r"converted is on the meta device"):
        realized_efficiency(model, _DeviceCheck().to("meta"), (1, 1, 8, 8))
    assert model.conv.weight.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_measures_a_moved_copy():
    original = _model()
    converted = leanconv.convert(original, to="dsconv", rank=1, exclude=["features.conv1*"]).model.eval()
    report = realized_efficiency(original, converted, (2, 1, 16, 16), device="cuda", rounds=2, threads=1, **FAST)
    assert report.original.device.startswith("cuda") and report.meta["device"].startswith("cuda")
    assert all(r.latency_ms or r.skipped for r in report.original.results)
    assert bench.model_device(original).type == "cpu"


class _TwoGraphs(nn.Module):
    """Computes 2x, but by a different graph on every trace: TorchScript's check_trace compares
    two traces' graphs and refuses it although the output is right."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.conv(x)
        return y * 2 if self.calls % 2 else y + y


def test_frozen_checks_outputs_not_the_tracer_graphs():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(torch.jit._trace.TracingCheckError, match="Graphs differed across invocations"):
        torch.jit.trace(_TwoGraphs().eval(), x)  # TorchScript's own sanity check (check_trace=True)
    model = _TwoGraphs().eval()
    with torch.no_grad():
        expected = 2 * model.conv(x)
        module, example = prepare(model, "frozen", x)
        torch.testing.assert_close(module(example), expected)
    error = torch.jit._trace.TracingCheckError("graph diff", None)
    assert bench.skip_reason(error) == ("TracingCheckError: Tracing failed sanity checks! "
                                        "ERROR: Graphs differed across invocations!")


def test_demo_measures_deployment_on_the_device_asked(monkeypatch, tmp_path):
    """run_demo's wiring, without training or timing: optimize runs on ``device`` and measures no
    batch size, the demo measures each on ``device`` with its rounds and writes the folder."""
    from types import SimpleNamespace

    from leanconv import demo

    asked, written = [], []
    monkeypatch.setattr(demo, "trained_digits_cnn", lambda progress: _model())
    monkeypatch.setattr(demo, "optimize", lambda model, data, **kw: asked.append(("optimize", kw["batch_sizes"],
                                                                                   kw["out"], kw["device"]))
                        or SimpleNamespace(model=_model(), efficiency={}, notes=[], out=None, targets={}))
    monkeypatch.setattr(demo, "realized_efficiency", lambda o, c, size, **kw: asked.append((size, kw["device"],
                                                                                             kw["rounds"])) or size)
    on_targets = []
    monkeypatch.setattr(demo, "_on_targets", lambda o, c, data, batch, targets, rounds, min_run_time, device:
                        on_targets.append((batch, targets, rounds, device)) or batch)
    monkeypatch.setattr(demo, "write_outputs", lambda result, out, force, title: written.append(out))
    result = demo.run_demo(tmp_path / "out", batch_sizes=(1, 4), progress=False, device="cuda:1", rounds=4)
    assert asked == [("optimize", (), None, torch.device("cuda", 1)), ((1, 1, 32, 32), torch.device("cuda", 1), 4),
                     ((4, 1, 32, 32), torch.device("cuda", 1), 4)]
    # and both models on every deployment target at each batch size, on the same device and rounds
    assert on_targets == [(1, "all", 4, torch.device("cuda", 1)), (4, "all", 4, torch.device("cuda", 1))]
    assert result.targets == {1: 1, 4: 4}
    assert result.efficiency == {1: (1, 1, 32, 32), 4: (4, 1, 32, 32)} and written == [tmp_path / "out"]
    for bad, message in (({"device": "meta"}, r"device='meta' cannot run the demo"),
                         ({"batch_sizes": ()}, r"batch_sizes=\(\) must be a non-empty sequence of ints >= 1"),
                         ({"rounds": 0}, r"rounds=0 must be >= 1")):
        with pytest.raises(ValueError, match=message):
            demo.run_demo(None, progress=False, **bad)

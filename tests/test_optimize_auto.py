"""optimize(to='auto'): the per-layer search inside the whole path (wiring on a real
onnxruntime, nothing timed asserted; the search itself is tested on scripted timings)."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import leanconv
from leanconv import optimization

pytest.importorskip("onnxruntime")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).eval()


def _data(model):
    x = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])


def test_optimize_auto_searches_on_the_fastest_target_and_reports_the_mix(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(optimization, "layer_latency", lambda *args: {})
    asked = []

    def fastest(model, data, batch, device, precisions=None, say=None):
        asked.append(batch)
        return "onnxruntime"

    monkeypatch.setattr(optimization, "fastest_target", fastest)
    model = _model()
    result = leanconv.optimize(model, _data(model), to="auto", target_speedup=1.05, search_precision="fp32",
                               epochs=0, calib_images=16, batch_sizes=(1, 4), min_run_time=0.005, progress=False,
                               out=tmp_path / "out")
    assert asked == [4]  # the largest batch size measured, where the search ran
    search = result.chosen.conversion.search
    assert (search.target, search.precision, search.input_size) == ("onnxruntime", "fp32", (4, 1, 8, 8))
    assert result.plan.target == "auto" and result.plan.deployment["target"] == "onnxruntime"
    rows = {what: converted for what, _, converted in result.summary_rows()}
    assert "on onnxruntime fp32" in rows["per-layer choice (batch 4)"]
    assert (tmp_path / "out" / "front.png").is_file()
    if not search.met:
        assert result.notes[0] == search.headline()
    loaded = leanconv.apply_plan(_model(), tmp_path / "out" / "plan.json")
    loaded.load_state_dict(torch.load(tmp_path / "out" / "model.pt"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(to="auto", rank=1), r"to='auto' chooses each layer's kind and rank for a target_speedup"),
    (dict(to="nope", rank=1), r"to='nope' must be one of"),
])
def test_optimize_auto_bad_arguments(kwargs, message):
    model = _model()
    with pytest.raises(ValueError, match=message):
        leanconv.optimize(model, _data(model), progress=False, **kwargs)

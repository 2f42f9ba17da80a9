"""optimize(targets=...): both models measured on the deployment targets, with accuracy per
precision and the speedup against the original at its best (wiring; the timing arithmetic is
tested on scripted timings in test_deploy_measure)."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

import leanconv
from leanconv import optimization


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).eval()


def test_optimize_measures_both_models_on_the_targets(monkeypatch):
    monkeypatch.setattr(optimization, "layer_latency", lambda *args: {})
    model = _model()
    x = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    data = (TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:]))
    result = leanconv.optimize(model, data, rank=1, epochs=0, sweep=False, calib_images=16, batch_sizes=(4,),
                               min_run_time=0.005, progress=False, targets=["torch"], precisions=["fp32"])
    report = result.targets[4]
    rows = {(r.model, r.target): r for r in report.rows}
    assert rows[("original", "torch")].accuracy == 1.0  # the labels are the original's own predictions
    assert rows[("converted", "torch")].status == "ok" and rows[("converted", "torch")].accuracy is not None
    summary = dict((what, converted) for what, _, converted in result.summary_rows())
    assert "speedup vs the original at its best, batch 4" in summary
    assert "## Where each model is fastest, batch 4" in result.to_markdown()
    assert "torch fp32" in dict((what, o) for what, o, _ in result.summary_rows())["fastest deployment, batch 4"]

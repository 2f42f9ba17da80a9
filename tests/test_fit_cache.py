"""The fit cache: candidates' errors kept on disk per (model, images, layer, candidate, settings),
so that a second search of one model fits only what it returns and times nothing."""

import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from leanconv import convert
from leanconv.conversion.candidates import Candidate, CandidateFit
from leanconv.conversion.fit_cache import FitCache, data_key, fit_key

DSCONV = Candidate("dsconv", {"depth_multiplier": 1}, 100, "dsconv m=1")


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, 8, 3, padding=1), bn0=nn.BatchNorm2d(8), act0=nn.ReLU(),  # BN: a 0-d int64 buffer
        conv2=nn.Conv2d(8, 16, 3, padding=1), act2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
    )).eval()


def images(seed=0):
    return [torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(seed))]


def test_a_fit_round_trips_through_the_file(tmp_path):
    path = tmp_path / "fits.json"
    cache = FitCache(path)
    cache.remember("a", CandidateFit(0.25, 0.2, 0.5, True))
    cache.remember("b", CandidateFit(0.5, math.nan, 0.5, False))  # no inputs: no fitted error
    cache.remember("c", CandidateFit(math.nan, 0.1, 0.1, False))  # not a number: never kept
    cache.save()
    again = FitCache(path)
    assert again.known("a") == CandidateFit(0.25, 0.2, 0.5, True)
    b = again.known("b")
    assert (b.error, b.weight_error, b.refit) == (0.5, 0.5, False) and math.isnan(b.fitted_error)
    assert again.known("c") is None and again.known("d") is None


def test_bad_entries_are_dropped_with_one_warning_naming_the_file(tmp_path):
    path = tmp_path / "fits.json"
    path.write_text(json.dumps({"good": [0.1, 0.1, 0.2, True], "negative": [-0.1, 0.1, 0.2, True],
                                "short": [0.1, 0.2], "text": ["0.1", 0.1, 0.2, True], "refit": [0.1, 0.1, 0.2, 1]}))
    with pytest.warns(UserWarning, match=f"fit cache '{path}' is 4 entries that are not") as caught:
        cache = FitCache(path)
    assert len(caught) == 1
    assert cache.known("good") == CandidateFit(0.1, 0.1, 0.2, True)
    assert all(cache.known(k) is None for k in ("negative", "short", "text", "refit"))


def test_the_data_key_changes_with_any_weight_image_or_architecture():
    model = small_model()
    key = data_key(model, images())
    assert data_key(small_model(), images()) == key  # the same weights and images
    nudged = small_model()
    with torch.no_grad():
        nudged.conv2.weight[0, 0, 0, 0] = torch.nextafter(nudged.conv2.weight[0, 0, 0, 0], torch.tensor(1.0))
    assert data_key(nudged, images()) != key
    assert data_key(model, images(seed=1)) != key
    assert data_key(nn.Sequential(small_model(), nn.Identity()), images()) != key
    assert fit_key(key, "conv2", DSCONV, images=8) != fit_key(key, "conv2", DSCONV, images=16)
    assert fit_key(key, "conv2", DSCONV, images=8) != fit_key(key, "stem", DSCONV, images=8)


def test_a_second_search_fits_only_what_it_returns_and_times_nothing(tmp_path, monkeypatch):
    from leanconv.conversion import auto, clock, latency

    monkeypatch.setenv("LEANCONV_CACHE_DIR", str(tmp_path))
    fitted = []
    real_fit = auto.fit_candidate

    def counting_fit(conv, candidate, *args, **kwargs):
        fitted.append(candidate.label)
        return real_fit(conv, candidate, *args, **kwargs)

    monkeypatch.setattr(auto, "fit_candidate", counting_fit)
    # timings scripted (by parameter count: every candidate faster than dense), so that what is
    # fitted does not hang on microsecond noise; the deployments, caches and checks are real
    from leanconv.timing import Interleaved

    monkeypatch.setattr(latency.TimingSetting, "measure",
                        lambda self, module, x: 0.01 + 1e-4 * sum(p.numel() for p in module.parameters()))
    monkeypatch.setattr(clock, "time_interleaved", lambda calls, **kw: Interleaved([[0.9, 0.9, 0.9], [1.0, 1.0, 1.0]]))
    calib = images() + images(seed=1)
    kwargs = dict(to="auto", target="onnxruntime", precision="fp32", target_speedup=1.05, input_size=(1, 3, 8, 8),
                  calib=calib, accept_slower=True, kinds=["dsconv", "tucker2"])
    first = convert(small_model(), **kwargs)
    assert fitted and json.loads((tmp_path / "fits.json").read_text())

    def refuse(*args, **kwargs):
        raise AssertionError("timed again")

    monkeypatch.setattr(clock, "deployed_layer", refuse)
    monkeypatch.setattr(latency, "deployed_layer", refuse)
    fitted.clear()
    again = convert(small_model(), **kwargs)
    converted = [path for path, plan in again.plan.layers.items()]
    assert len(fitted) == len(converted), (fitted, converted)  # the returned modules' weights, nothing else
    assert again.plan.to_dict() == first.plan.to_dict()
    errors = lambda r: {p: [m.error_text for m in layer.considered] for p, layer in r.search.layers.items()}
    assert errors(again) == errors(first)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(again.model(x), first.model(x), atol=1e-5)
    # other weights: fitted again (times nothing: timings do not depend on weights)
    fitted.clear()
    other = convert(small_model(seed=1), **kwargs)
    worth = [m for layer in other.search.layers.values() for m in layer.considered[1:] if m.fit is not None]
    assert worth and len(fitted) == len(worth)  # every candidate faster than dense, fitted afresh

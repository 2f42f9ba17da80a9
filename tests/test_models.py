"""Reference models reproduce the published/DESIGN figures exactly (meta device, no compute)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from leanconv import models

# name -> (MACs, params, exact?)  conv + linear MACs at batch 1; params = weights + biases + BN affine
REFERENCE = {
    "mobilenet_v1": (568_740_352, 4_231_976, True),
    "conv_mobilenet": (4_867e6, 29.29e6, False),   # paper Table 4: 4866 M mult-adds, 29.3 M params
    "mobilenet_v2": (300.8e6, 3_504_872, False),
    "resnet18": (1_814e6, 11_689_512, False),
    "resnet50": (4_089_184_256, 25_557_032, True),
    "vgg16": (15_470e6, 138_357_544, False),
}
EXACT_PARAMS = {"mobilenet_v2", "resnet18", "vgg16"}


def meta_counts(name: str):
    with torch.device("meta"):
        model = models.create(name).eval()
        inputs = [torch.empty(s) for s in models.DEFAULT_INPUTS[name]]
    with FlopCounterMode(display=False) as counter:
        output = model(*inputs)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters()), output


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_figures(name):
    macs, params, _ = meta_counts(name)
    ref_macs, ref_params, exact = REFERENCE[name]
    if exact:
        assert (macs, params) == (ref_macs, ref_params)
    else:
        assert abs(macs - ref_macs) / ref_macs < 1e-3
        if name in EXACT_PARAMS:
            assert params == ref_params
        else:
            assert abs(params - ref_params) / ref_params < 1e-3


@pytest.mark.parametrize(
    "name, inputs, out_shape",
    [
        ("mobilenet_v1", [(1, 3, 64, 64)], (1, 1000)),
        ("mobilenet_v2", [(1, 3, 64, 64)], (1, 1000)),
        ("resnet18", [(1, 3, 64, 64)], (1, 1000)),
        ("resnet50", [(1, 3, 64, 64)], (1, 1000)),
        ("lprnet", [(2, 3, 24, 94)], (2, 68, 18)),
        ("deeplabv3plus_head", [(1, 64, 8, 8), (1, 16, 32, 32)], (1, 21, 32, 32)),
        ("digits_cnn", [(4, 1, 32, 32)], (4, 10)),
    ],
)
def test_models_run_on_cpu(name, inputs, out_shape):
    kwargs = {"in_channels": 64, "low_level_channels": 16} if name == "deeplabv3plus_head" else {}
    model = models.create(name, **kwargs).eval()
    with torch.no_grad():
        y = model(*[torch.randn(s) for s in inputs])
    assert tuple(y.shape) == out_shape and torch.isfinite(y).all()


def test_vgg16_runs_small():
    model = models.create("vgg16", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_create_rejects_unknown_names():
    with pytest.raises(ValueError, match="name='resnet101' is not a reference model; choose one of"):
        models.create("resnet101")
    assert "digits_cnn" in models.list_models()


def test_separable_resnet_is_cheaper():
    with torch.device("meta"):
        dense = models.create("resnet18")
        separable = models.create("resnet18", conv="dsconv")
    assert sum(p.numel() for p in separable.parameters()) < sum(p.numel() for p in dense.parameters()) / 3

"""Reference models: published MACs/params (counted on the meta device), CPU forward shapes,
BN folding, traceability, argument checks and the registry.

MACs are counted independently of leanconv's own analysis: ``FlopCounterMode`` counts 2 flops
per multiply-add of convolutions and matmuls (linear layers) only, so ``flops // 2`` is
exactly the conv + linear MAC convention of the published figures.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import leanconv
from leanconv import models
from leanconv.models.lpr import ChannelStridedMaxPool2d
from support import check_traceable, randomize_norms

# name -> (MACs, exact?, params, exact?) at 224x224, batch 1.
REFERENCE = {
    "mobilenet_v1": (568_740_352, True, 4_231_976, True),
    "conv_mobilenet": (4_867e6, False, 29.29e6, False),  # paper Table 4: 4866 M, 29.3 M
    "mobilenet_v2": (300.8e6, False, 3_504_872, True),
    "resnet18": (1_814e6, False, 11_689_512, True),
    "resnet50": (4_089_184_256, True, 25_557_032, True),
    "vgg16": (15_470e6, False, 138_357_544, True),
}


def meta_counts(name: str, *shapes, **kwargs):
    """(MACs, params, output shape) of ``create(name, **kwargs)`` on meta inputs of ``shapes``."""
    with torch.device("meta"):
        model = models.create(name, **kwargs).eval()
        inputs = [torch.empty(s) for s in (shapes or models.DEFAULT_INPUTS[name])]
    with FlopCounterMode(display=False) as counter:
        output = model(*inputs)
    params = sum(p.numel() for p in model.parameters())
    return counter.get_total_flops() // 2, params, tuple(output.shape)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_published_figures(name):
    macs, params, out_shape = meta_counts(name)
    ref_macs, macs_exact, ref_params, params_exact = REFERENCE[name]
    assert out_shape == (1, 1000)
    if macs_exact:
        assert macs == ref_macs
    else:
        assert abs(macs - ref_macs) / ref_macs < 1e-3, macs
    if params_exact:
        assert params == ref_params
    else:
        assert abs(params - ref_params) / ref_params < 1e-3, params


@pytest.mark.parametrize(
    "width_mult, size, ref_macs_m, ref_params_m",
    [  # MobileNet v1 paper, Tables 6 and 7 (millions, as printed)
        (0.75, 224, 325, 2.6), (0.5, 224, 149, 1.3), (0.25, 224, 41, 0.5),
        (1.0, 192, 418, 4.2), (1.0, 160, 290, 4.2), (1.0, 128, 186, 4.2),
    ],
)
def test_mobilenet_v1_width_and_resolution_table(width_mult, size, ref_macs_m, ref_params_m):
    macs, params, _ = meta_counts("mobilenet_v1", (1, 3, size, size), width_mult=width_mult)
    assert abs(macs / 1e6 - ref_macs_m) < 1  # the paper prints whole millions
    assert round(params / 1e6, 1) == ref_params_m


def test_separable_resnet18_params_closed_form():
    # Every block 3x3 (in -> out) goes from 9*in*out weights to 9*in + in*out (depthwise +
    # pointwise, no biases: a BN follows); stem, shortcuts, norms and fc are unchanged.
    convs = [(64, 64)] * 4 + [(64, 128)] + [(128, 128)] * 3 + [(128, 256)] + [(256, 256)] * 3 \
        + [(256, 512)] + [(512, 512)] * 3
    saved = sum(9 * i * o - (9 * i + i * o) for i, o in convs)
    _, params, _ = meta_counts("resnet18", conv="dsconv")
    assert params == 11_689_512 - saved


def test_lprnet_standard_configuration():
    _, _, out_shape = meta_counts("lprnet")
    assert out_shape == (1, 68, 18)
    model = models.create("lprnet").eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 24, 94))
    assert y.shape == (1, 68, 18) and torch.isfinite(y).all()
    # global context: 64 + 128 + 256 + class_num channels into the 1x1
    assert model.context_conv.in_channels == 448 + 68
    assert isinstance(model.stages["stage2"].block, leanconv.SmallBasicBlock)


def test_lprnet_output_is_per_image():
    model = randomize_norms(models.create("lprnet", class_num=37)).eval()
    x = torch.randn(3, 3, 24, 94)
    with torch.no_grad():
        batched = model(x)
        single = model(x[1:2])
    assert batched.shape == (3, 37, 18)
    torch.testing.assert_close(batched[1:2], single, rtol=1e-4, atol=1e-5)


def test_channel_strided_max_pool_matches_maxpool3d():
    # The reference LPRNet applies MaxPool3d to (N, C, H, W), read as unbatched (C', D, H, W).
    x = torch.randn(2, 128, 20, 90)
    reference = nn.MaxPool3d((1, 3, 3), (2, 1, 2))(x)
    torch.testing.assert_close(ChannelStridedMaxPool2d(2, 3, (1, 2))(x), reference, rtol=0, atol=0)


CPU_CASES = [
    ("mobilenet_v1", {}, [(1, 3, 64, 64)], (1, 1000)),
    ("conv_mobilenet", {"num_classes": 5}, [(1, 3, 64, 64)], (1, 5)),
    ("mobilenet_v2", {}, [(2, 3, 64, 64)], (2, 1000)),
    ("resnet18", {}, [(1, 3, 64, 64)], (1, 1000)),
    ("resnet50", {"num_classes": 10}, [(1, 3, 64, 64)], (1, 10)),
    ("vgg16", {"num_classes": 7}, [(1, 3, 32, 32)], (1, 7)),
    ("lprnet", {}, [(1, 3, 24, 94)], (1, 68, 18)),
    ("deeplabv3plus_head", {"in_channels": 64, "low_level_channels": 16},
     [(2, 64, 8, 8), (2, 16, 32, 32)], (2, 21, 32, 32)),
    ("digits_cnn", {}, [(4, 1, 32, 32)], (4, 10)),
]


@pytest.mark.parametrize("name, kwargs, shapes, out_shape", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_models_run_on_cpu(name, kwargs, shapes, out_shape):
    model = models.create(name, **kwargs).eval()
    with torch.no_grad():
        y = model(*[torch.randn(s) for s in shapes])
    assert tuple(y.shape) == out_shape
    assert torch.isfinite(y).all()


def test_digits_cnn_trains_one_step():
    model = models.create("digits_cnn")
    x, target = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) < 100_000


@pytest.mark.parametrize(
    "name, kwargs, shapes",
    [
        ("digits_cnn", {}, [(2, 1, 32, 32)]),
        ("mobilenet_v1", {"width_mult": 0.25, "num_classes": 10}, [(2, 3, 32, 32)]),
        ("resnet18", {"num_classes": 10}, [(2, 3, 32, 32)]),
        ("lprnet", {}, [(2, 3, 24, 94)]),
        ("deeplabv3plus_head", {"in_channels": 32, "low_level_channels": 8, "aspp_channels": 16},
         [(2, 32, 4, 4), (2, 8, 16, 16)]),
    ],
)
def test_fuse_folds_every_batchnorm(name, kwargs, shapes):
    # Each conv + BN pair is declared (conv_norm_pairs) or adjacent in a Sequential, so
    # leanconv.fuse leaves no BatchNorm behind and keeps the eval output.
    model = randomize_norms(models.create(name, **kwargs)).eval().double()
    inputs = [torch.randn(s, dtype=torch.float64) for s in shapes]
    fused = leanconv.fuse(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(*inputs), model(*inputs), rtol=1e-9, atol=1e-9)


def test_traceable_digits_cnn():
    check_traceable(models.create("digits_cnn"), torch.randn(2, 1, 32, 32), compile=True)


def test_traceable_lprnet():
    check_traceable(models.create("lprnet"), torch.randn(2, 3, 24, 94))


def test_traceable_deeplab_head():
    head = models.create("deeplabv3plus_head", in_channels=32, low_level_channels=8, aspp_channels=16)
    check_traceable(head, torch.randn(2, 32, 4, 4), torch.randn(2, 8, 16, 16))


def test_state_dict_keys_are_named():
    keys = list(models.create("mobilenet_v1").state_dict())
    assert "features.layer1.conv.depthwise.weight" in keys
    assert "features.layer13.conv.pointwise.weight" in keys
    assert "layer4.block2.conv2.conv.weight" in models.create("resnet18").state_dict()
    assert "features.block5.conv3.conv.bias" in models.create("vgg16", hidden=8).state_dict()
    assert "decoder.refine2.conv.pointwise.weight" in models.create("deeplabv3plus_head").state_dict()


def test_conv_kind_swaps_every_block_3x3():
    model = models.create("resnet50", conv="acblock")
    kinds = {m.kind for m in model.modules() if isinstance(m, leanconv.KindConvNormAct)}
    assert kinds == {"acblock"}
    assert sum(isinstance(m, leanconv.ACBlock) for m in model.modules()) == 16


def test_create_rejects_unknown_names():
    message = r"name='resnet101' is not a reference model; choose one of \[.*'resnet50'.*'digits_cnn'\]"
    with pytest.raises(ValueError, match=message):
        models.create("resnet101")
    with pytest.raises(ValueError, match="name=None is not a reference model"):
        models.create(None)


def test_list_models():
    assert models.list_models() == [
        "mobilenet_v1", "conv_mobilenet", "mobilenet_v2", "resnet18", "resnet50", "vgg16",
        "lprnet", "deeplabv3plus_head", "digits_cnn",
    ]
    assert set(models.MODELS) == set(models.DEFAULT_INPUTS)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("mobilenet_v1", {"width_mult": 0}, "width_mult=0 must be a number > 0"),
        ("mobilenet_v1", {"num_classes": 0}, "num_classes=0 must be >= 1"),
        ("mobilenet_v1", {"conv": "pointwise"}, "conv='pointwise' must be a kind"),
        ("mobilenet_v2", {"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
        ("resnet18", {"conv": "nope"}, "kind='nope' is not a conv kind"),
        ("vgg16", {"hidden": 0}, "hidden=0 must be >= 1"),
        ("lprnet", {"class_num": 0}, "class_num=0 must be >= 1"),
        ("deeplabv3plus_head", {"conv": "resize_conv"}, "conv='resize_conv' must be a kind"),
        ("digits_cnn", {"width": -1}, "width=-1 must be >= 1"),
    ],
)
def test_invalid_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.create(name, **kwargs)


def test_resnet_rejects_unknown_block():
    with pytest.raises(ValueError, match="block='plain' must be one of"):
        models.ResNet("plain", models.resnet.RESNET18_SETTING)


def test_wrong_inputs_raise_before_compute():
    with pytest.raises(ValueError, match="input has 3 channels, expected 1"):
        models.create("digits_cnn")(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"LPRNet: input must be \(N, 3, 24, 94\)"):
        models.create("lprnet")(torch.randn(1, 3, 32, 96))
    head = models.create("deeplabv3plus_head", in_channels=32, low_level_channels=8)
    with pytest.raises(ValueError, match=r"\(low\): input has 16 channels, expected 8"):
        head(torch.randn(1, 32, 4, 4), torch.randn(1, 16, 16, 16))

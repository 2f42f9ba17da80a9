"""The kind registry against the modules it builds, FlopCounterMode and closed forms."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import leanconv
from leanconv.kinds import KINDS, ConvSpec, create_conv2d, get_kind


def draw_case(data, kind: str):
    """Arguments and options that are valid for ``kind``."""
    d = data.draw
    cin = d(st.integers(1, 6))
    cout = d(st.integers(1, 6))
    odd = st.sampled_from([1, 3, 5])
    kernel = (d(st.integers(1, 5)), d(st.integers(1, 5)))
    stride = (d(st.integers(1, 3)), d(st.integers(1, 3)))
    dilation = (d(st.integers(1, 3)), d(st.integers(1, 3)))
    padding = d(st.sampled_from(["same", "valid", 0, 1, (2, 1)]))
    options = {}
    bias = d(st.booleans())
    if kind == "grouped":
        g = d(st.integers(1, 3))
        cin, cout, options = cin * g, cout * g, {"groups": g}
    elif kind == "depthwise":
        cout = cin * d(st.integers(1, 3))
    elif kind == "pointwise":
        kernel, padding, dilation = (1, 1), d(st.sampled_from([0, "same", "valid"])), (1, 1)
    elif kind == "dsconv":
        options = {"depth_multiplier": d(st.integers(1, 3))}
    elif kind == "asymmetric":
        options = {"mid_channels": d(st.sampled_from([None, 1, 4])), "order": d(st.sampled_from(["kx1_first", "1xk_first"]))}
    elif kind == "asym_parallel":
        kernel, cout = (d(odd), d(odd)), max(cout, 2)
    elif kind == "acblock":
        g = d(st.integers(1, 2))
        kernel, cin, cout, options = (d(odd), d(odd)), cin * g, cout * g, {"groups": g}
    elif kind == "tucker2":
        options = {"ranks": d(st.sampled_from([None, (1, 2), (3, 3)]))}
    elif kind == "dsconv_transpose":
        order = d(st.sampled_from(["depthwise_first", "pointwise_first"]))
        options = {"order": order, "depth_multiplier": 1 if order == "pointwise_first" else d(st.integers(1, 2))}
        padding = d(st.sampled_from(["same", 0, 1]))
    elif kind == "transposed":
        padding = d(st.sampled_from(["same", 0, 1]))
    elif kind == "resize_conv":
        inner = d(st.sampled_from(["dense", "dsconv", "asymmetric"]))
        options = {"scale_factor": d(st.integers(1, 3)), "conv": inner}
        stride = (1, 1)
    size = (d(st.integers(1, 12)), d(st.integers(1, 12)))
    return dict(in_channels=cin, out_channels=cout, kernel_size=kernel, stride=stride, padding=padding,
                dilation=dilation, bias=bias, options=options, size=size)


def too_small(spec: ConvSpec, kind: str, size) -> bool:
    """Inputs smaller than the (dilated, padded) kernel are rejected by PyTorch itself."""
    if get_kind(kind).transposed or spec.padding == "same":
        if get_kind(kind).transposed and spec.padding != "same":
            try:
                get_kind(kind).output_shape(spec, size)
            except ValueError:  # the registry refuses an input too small for the kernel
                return True
            return False
        return False
    scale = spec.options.get("scale_factor", 1)
    pads = (0, 0) if spec.padding == "valid" else spec.padding
    return any(
        n * scale + 2 * p < d * (k - 1) + 1
        for n, p, k, d in zip(size, pads, spec.kernel_size, spec.dilation)
    )


def conv_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=25)
@given(data=st.data())
def test_registry_matches_built_module(kind, data):
    case = draw_case(data, kind)
    size = case.pop("size")
    options = case.pop("options")
    spec = ConvSpec.create(**case, **options)
    if too_small(spec, kind, size):
        return
    module = create_conv2d(kind, **case, **options).eval()
    registry = get_kind(kind)
    # parameter shapes, by state_dict key
    assert {k: tuple(v.shape) for k, v in module.named_parameters()} == registry.param_shapes(spec)
    assert sum(p.numel() for p in module.parameters()) == registry.params(spec)
    x = torch.randn(2, spec.in_channels, *size)
    with torch.no_grad():
        y = module(x)
        assert tuple(y.shape[1:]) == registry.output_shape(spec, size)
        # MACs: FlopCounterMode reports 2 x MACs for convs, batch included
        assert conv_macs(module, x) == 2 * registry.macs(spec, size)


def test_dense_closed_forms():
    spec = ConvSpec.create(32, 64, 3, 1, 1)
    kind = get_kind("dense")
    assert kind.params(spec) == 64 * 32 * 9 + 64
    assert kind.macs(spec, (56, 56)) == 64 * 32 * 9 * 56 * 56


def test_dsconv_saving_is_the_mobilenet_ratio():
    """MobileNet's reduction: dsconv / dense MACs = 1/O + 1/k^2 (m = 1)."""
    spec = ConvSpec.create(512, 512, 3, 1, "same", bias=False)
    ratio = get_kind("dsconv").macs(spec, (14, 14)) / get_kind("dense").macs(spec, (14, 14))
    assert math.isclose(ratio, 1 / 512 + 1 / 9)


def test_asymmetric_saving_is_2k_over_k2():
    spec = ConvSpec.create(64, 64, 3, 1, "same", bias=False)
    ratio = get_kind("asymmetric").params(spec) / get_kind("dense").params(spec)
    assert math.isclose(ratio, 2 * 3 / 9)


def test_transposed_macs_count_input_positions():
    spec = ConvSpec.create(8, 4, 4, 2, 1, depth_multiplier=2)
    rows = get_kind("dsconv_transpose").walk(spec, (10, 10))
    assert rows[0].macs == 8 * 2 * 16 * 10 * 10  # C*m*kh*kw per input position
    assert rows[0].output_shape == (16, 20, 20)
    assert rows[-1].macs == 16 * 4 * 20 * 20


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: create_conv2d("octave", 4, 4, 3), "kind='octave' is not a conv kind"),
        (lambda: create_conv2d("dsconv", 4, 4, 3, depth_multiplier=0), "depth_multiplier=0 must be >= 1"),
        (lambda: create_conv2d("dsconv", 4, 4, 3, ranks=2), "kind='dsconv' has no option 'ranks'"),
        (lambda: create_conv2d("dsconv", 4, 4, 3, groups=3), "in_channels=4 must be divisible by groups=3"),
        (lambda: create_conv2d("depthwise", 4, 6, 3), "out_channels=6 must be a multiple of in_channels=4"),
        (lambda: create_conv2d("pointwise", 4, 6, 3), r"kernel_size=\(3, 3\) must be 1"),
        (lambda: create_conv2d("pointwise", 4, 6, 1, padding=1), "padding=.* must be 0, 'same' or 'valid'"),
        (lambda: create_conv2d("grouped", 4, 6, 3, groups=4), "out_channels=6 must be divisible by groups=4"),
        (lambda: create_conv2d("asymmetric", 4, 6, 3, order="diagonal"), "order='diagonal' must be one of"),
        (lambda: create_conv2d("asymmetric", 4, 6, 3, mid_channels=0), "mid_channels=0 must be >= 1"),
        (lambda: create_conv2d("acblock", 4, 6, 2), "kernel_size=.* must be odd"),
        (lambda: create_conv2d("asym_parallel", 4, 1, 3), "out_channels=1 must be >= 2"),
        (lambda: create_conv2d("tucker2", 4, 6, 3, ranks=(2,)), r"ranks=\(2,\) must be a pair"),
        (lambda: create_conv2d("resize_conv", 4, 6, 3, conv="resize_conv"), "must be a non-upsampling kind"),
        (lambda: create_conv2d("resize_conv", 4, 6, 3, scale_factor=0), "scale_factor=0 must be >= 1"),
        (lambda: create_conv2d("dense", 4, 6, 3, output_padding=1), "output_padding=1 applies only to transposed"),
        (lambda: create_conv2d("dsconv_transpose", 4, 6, 3, order="pointwise_first", depth_multiplier=2),
         "depth_multiplier=2 must be 1 with order='pointwise_first'"),
        (lambda: ConvSpec.create(0, 4, 3), "in_channels=0 must be >= 1"),
        (lambda: ConvSpec.create(4, 4, (3, 3, 3)), "kernel_size=.* must be an int or a pair"),
    ],
)
def test_invalid_kind_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_public_api_reexports():
    for name in ("create_conv2d", "get_kind", "KINDS", "ConvSpec", "Conv2d", "ConvTranspose2d"):
        assert hasattr(leanconv, name)


def test_cli_kinds_lists_every_kind():
    out = subprocess.run([sys.executable, "-m", "leanconv.cli", "kinds", "--format", "md"],
                         capture_output=True, text=True, check=True).stdout
    for name, kind in KINDS.items():
        assert f"`{name}`" in out and kind.macs_formula in out
    version = subprocess.run([sys.executable, "-m", "leanconv.cli", "--version"],
                             capture_output=True, text=True, check=True).stdout
    assert version.strip() == f"leanconv {leanconv.__version__}"


@pytest.mark.parametrize("kind, size", [("dense", (2, 2)), ("dsconv", (3, 2)), ("asymmetric", (1, 9))])
def test_an_input_smaller_than_the_kernel_is_refused_not_a_negative_shape(kind, size):
    """``compare`` and the registry reported (1, 8, -2, -2) with positive MACs."""
    spec = ConvSpec.create(8, 8, 5)
    with pytest.raises(ValueError, match=r"input size .* is too small for .*: its output would be \("):
        get_kind(kind).macs(spec, size)
    with pytest.raises(ValueError, match="is too small"):
        leanconv.compare(8, 8, 5, size, padding=0)

"""Helpers shared by the tests: BN randomization, traceability and input/factory checks, and the
independent references (padding, output sizes, eval-mode BN, hypothesis conv configurations).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn


def load_script(path, name: str):
    """The Python file at ``path`` (a benchmark or example script, not a package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize_norms(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm random running stats and (if affine) random scale and shift."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=generator))
                m.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=generator))
                    m.bias.copy_(torch.randn(n, generator=generator))
    return module


def check_traceable(module: nn.Module, *inputs: torch.Tensor, compile: bool = False) -> None:
    """The module gives the same eval output under fx, torch.export and channels_last.

    ``compile=True`` also runs ``torch.compile`` with the ``aot_eager`` backend (the inductor
    backend is exercised once, in test_compile.py, to keep the suite fast).
    """
    module = module.eval()
    with torch.no_grad():
        expected = module(*inputs)
        traced = torch.fx.symbolic_trace(copy.deepcopy(module))
        torch.testing.assert_close(traced(*inputs), expected)
        exported = torch.export.export(copy.deepcopy(module), tuple(inputs))
        torch.testing.assert_close(exported.module()(*inputs), expected)
        cl_inputs = tuple(
            t.to(memory_format=torch.channels_last) if t.is_floating_point() and t.dim() == 4 else t
            for t in inputs
        )
        cl_module = copy.deepcopy(module).to(memory_format=torch.channels_last)
        torch.testing.assert_close(cl_module(*cl_inputs), expected, rtol=1e-4, atol=1e-5)
        if compile:
            compiled = torch.compile(copy.deepcopy(module), backend="aot_eager", fullgraph=False)
            torch.testing.assert_close(compiled(*inputs), expected, rtol=1e-4, atol=1e-5)


def check_rejects_bad_input(layer: nn.Module, channels: int) -> None:
    """A 3-D input and one with ``channels - 1`` channels raise, naming the layer and the shape."""
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}: input must be 4-D .* got shape \({channels}, 9, 9\)"):
        layer(torch.randn(channels, 9, 9))
    with pytest.raises(ValueError, match=rf"{name}: input has {channels - 1} channels, expected {channels}"):
        layer(torch.randn(1, channels - 1, 9, 9))


def check_device_and_dtype(make) -> None:
    """``make(dtype=float64)`` and ``make(device='meta')`` reach every parameter and buffer."""
    layer = make(dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in layer.state_dict().values() if t.is_floating_point())
    meta = make(device="meta")
    assert all(t.device.type == "meta" for t in meta.state_dict().values())


# ------------------------------------------------------------------ independent references
# Written out from the formulas; they never call leanconv's own padding code.

F64 = torch.float64
MODES = ("zeros", "reflect", "replicate", "circular")
small = st.integers(1, 3)
paddings = st.one_of(
    st.integers(0, 3),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.sampled_from(["same", "valid"]),
)
kernels = st.tuples(st.integers(1, 7), st.integers(1, 7))
small_pairs = st.tuples(small, small)


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'same' padding of one dimension (extra pixel after), written out here."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def ref_pad(x, padding, kernel, stride, dilation, mode="zeros"):
    """Pad ``x`` explicitly as a kxk conv with this padding would (the conv then runs with 0)."""
    if padding == "valid":
        return x
    if padding == "same":
        top, bottom = tf_same_pads(x.shape[-2], kernel[0], stride[0], dilation[0])
        left, right = tf_same_pads(x.shape[-1], kernel[1], stride[1], dilation[1])
    else:
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        top = bottom = ph
        left = right = pw
    pads = (left, right, top, bottom)
    return F.pad(x, pads) if mode == "zeros" else F.pad(x, pads, mode=mode)


def expected_hw(h, w, kernel, stride, padding, dilation):
    """Output (H, W) from nn.Conv2d itself, or ceil(in/stride) for 'same'."""
    if padding == "same":
        return (math.ceil(h / stride[0]), math.ceil(w / stride[1]))
    probe = nn.Conv2d(1, 1, kernel, stride, padding, dilation, bias=False)
    with torch.no_grad():
        return tuple(probe(torch.zeros(1, 1, h, w)).shape[-2:])


def bn_eval(x, norm):
    """Eval-mode batch norm from the module's running stats and affine parameters; Identity: x."""
    if isinstance(norm, nn.Identity):
        return x
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)


@st.composite
def conv_config(draw, odd: bool = False) -> dict:
    """Kernel (odd sides only with ``odd``), stride, dilation, padding form, padding mode, and an
    input (H, W) that the dilated kernel fits with 3 to 9 pixels to spare."""
    sides = st.sampled_from([1, 3, 5, 7]) if odd else st.integers(1, 7)
    kernel = (draw(sides), draw(sides))
    stride = (draw(small), draw(small))
    dilation = (draw(small), draw(small))
    padding = draw(paddings)
    mode = draw(st.sampled_from(MODES))
    h = dilation[0] * (kernel[0] - 1) + 1 + draw(st.integers(3, 9))
    w = dilation[1] * (kernel[1] - 1) + 1 + draw(st.integers(3, 9))
    return dict(kernel=kernel, stride=stride, dilation=dilation, padding=padding, mode=mode, hw=(h, w))


def config_args(cfg: dict) -> tuple:
    """(kernel, stride, padding, dilation) of a conv_config draw, in nn.Conv2d's argument order."""
    return cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"]


def config_out_hw(cfg: dict) -> tuple[int, int]:
    """Output (H, W) of a conv with a conv_config draw's arguments (see expected_hw)."""
    return expected_hw(*cfg["hw"], *config_args(cfg))

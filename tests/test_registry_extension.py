"""A kind registered at run time, in this file only, works everywhere a built-in kind does.

The toy kind ``reduce_conv`` is a 1x1 reduction (C -> K) followed by the kxk conv (K -> O): the
first half of a Tucker-2 bottleneck. Its optimal weights come from one SVD: unfold the dense
kernel along its input channels, W_(C) of size C x (O*kh*kw); the rank-K truncation gives the
reduction (U_K^T) and the kxk conv (S_K V_K^T). Exact at K = min(C, O*kh*kw); otherwise the
squared error is the sum of the discarded squared singular values (checked against
``torch.linalg.svdvals``, an independent computation). Nothing outside this file is edited.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanconv
from leanconv.cli import main
from leanconv.conversion.factorize import Factorization
from leanconv.conversion.plan import Plan
from leanconv.kinds import Conversion, ConvKind, ConvSpec, Stage, convertible_kinds, register, unregister

F64 = torch.float64


class ReduceConv(nn.Module):
    """1x1 reduce (C -> K, no bias), then the kxk conv (K -> O) with the layer's arguments."""

    output_stage = "conv"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", mid_channels=None, device=None, dtype=None):
        super().__init__()
        mid = mid_channels or min(in_channels, out_channels)
        self.reduce = nn.Conv2d(in_channels, mid, 1, bias=False, device=device, dtype=dtype)
        self.conv = leanconv.Conv2d(mid, out_channels, kernel_size, stride, padding, dilation, bias=bias,
                                    padding_mode=padding_mode, device=device, dtype=dtype)

    def forward(self, x):
        return self.conv(self.reduce(x))


def _stages(spec: ConvSpec):
    mid = spec.options["mid_channels"] or min(spec.in_channels, spec.out_channels)
    return [Stage("reduce", "conv", spec.in_channels, mid),
            Stage("conv", "conv", mid, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                  spec.dilation, bias=spec.bias)]


def factorize_reduce(weight: torch.Tensor, options) -> Factorization:
    """Rank-K truncated SVD of the kernel unfolded along its input channels."""
    o, c, kh, kw = weight.shape
    k = options["mid_channels"]
    unfolded = weight.permute(1, 0, 2, 3).reshape(c, o * kh * kw)
    u, s, vh = torch.linalg.svd(unfolded, full_matrices=False)
    reduce = u[:, :k].T.reshape(k, c, 1, 1)
    conv = (s[:k, None] * vh[:k]).reshape(k, o, kh, kw).permute(1, 0, 2, 3)
    energy = float(s.double().pow(2).sum())
    return Factorization({"reduce": reduce.contiguous(), "conv": conv.contiguous()},
                         float(s[k:].double().pow(2).sum()), energy)


KIND = ConvKind(
    name="reduce_conv", summary="1x1 reduce (C -> K) then the kxk conv (K -> O)",
    layer=ReduceConv, options={"mid_channels": None}, stages_fn=_stages,
    params_formula="C*K + K*O*kh*kw (+O)", macs_formula="C*K*H*W + K*O*kh*kw*H'*W'",
    compare_rows=lambda spec: [("reduce, then kxk (K=C/2)", {"mid_channels": max(1, spec.in_channels // 2)})]
    if spec.kernel_size != (1, 1) else [],
    conversion=Conversion(
        factorize=factorize_reduce, rank_option="mid_channels",
        top_rank=lambda spec, variant: min(spec.in_channels, spec.out_channels * math.prod(spec.kernel_size)),
    ),
)


@pytest.fixture(autouse=True)
def registered():
    register(KIND)
    yield
    unregister("reduce_conv")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(6, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, (3, 5), stride=2, padding=(1, 2))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))))


def test_convert_is_exact_at_full_rank_and_loses_the_discarded_singular_energy():
    torch.manual_seed(0)
    model = Net().double().eval()
    x = torch.randn(2, 6, 9, 10, dtype=F64)
    full = leanconv.convert(model, to="reduce_conv", only_if_cheaper=False)
    assert sorted(full.plan.layers) == ["a", "b"] and all(r.converted for r in full.layers)
    torch.testing.assert_close(full.model(x), model(x))
    low = leanconv.convert(model, to="reduce_conv", rank=2)
    weight = model.b.weight.detach()
    expected = float((torch.linalg.svdvals(weight.permute(1, 0, 2, 3).reshape(8, -1))[2:] ** 2).sum())
    rebuilt = torch.einsum("okhw,kc->ochw", low.model.b.conv.weight, low.model.b.reduce.weight[:, :, 0, 0]).detach()
    assert float((rebuilt - weight).pow(2).sum()) == pytest.approx(expected, rel=1e-9)
    sized = leanconv.convert(Net().eval(), to="reduce_conv", rank=2, input_size=(2, 6, 9, 10))
    by_path = {r.path: r for r in sized.layers}
    # the closed form C*K*H*W + K*O*kh*kw*H'*W': the 1x1 runs at 9x10, the 3x5 stride-2 conv gives 5x5
    assert by_path["b"].macs_after == 8 * 2 * 9 * 10 + 2 * 4 * 15 * 5 * 5


def test_compare_explain_and_cli_choices_see_the_new_kind(tmp_path, capsys):
    comparison = leanconv.compare(8, 16, 3, 14)
    row = next(c for c in comparison.candidates if c.kind == "reduce_conv")
    assert row.macs == 8 * 4 * 14 * 14 + 4 * 16 * 9 * 14 * 14 and row.options == {"mid_channels": 4}
    assert "reduce_conv" in convertible_kinds()
    text = leanconv.explain("reduce_conv", (1, 8, 14, 14), in_channels=8, out_channels=16, kernel_size=3,
                            padding=1, mid_channels=4)
    text = str(text)
    assert "reduce" in text and str(8 * 4 * 14 * 14 + 4 * 16 * 9 * 14 * 14) in text.replace(",", "")
    assert main(["convert", "digits_cnn", "--to", "nonsense", "--out", str(tmp_path / "bad")]) == 2
    assert "reduce_conv" in capsys.readouterr().err  # the choices listed come from the registry
    assert main(["convert", "digits_cnn", "--to", "reduce_conv", "--rank", "2", "--out", str(tmp_path / "c")]) == 0
    plan = Plan.load(tmp_path / "c" / "plan.json")
    assert {layer.kind for layer in plan.layers.values()} == {"reduce_conv"}


def test_plan_save_load_apply_round_trip(tmp_path):
    torch.manual_seed(1)
    model = Net().eval()
    result = leanconv.convert(model, to="reduce_conv", rank=3)
    leanconv.save_plan(result.plan, tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded == result.plan
    rebuilt = leanconv.apply_plan(Net(), loaded)
    rebuilt.load_state_dict(result.model.state_dict())
    x = torch.randn(1, 6, 8, 8)
    torch.testing.assert_close(rebuilt.eval()(x), result.model(x))
    assert isinstance(rebuilt.a, ReduceConv) and rebuilt.a.reduce.out_channels == 3

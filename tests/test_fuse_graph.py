"""BatchNorm folding along torch.fx graph edges (leanconv.fuse step 4) and fuse's refusals.

Every fused model is compared, in eval mode and float64, with the eval output of the original
modules (PyTorch's own conv and BatchNorm forward), and every report against a hand count.
"""

from __future__ import annotations

import copy
import operator
import re

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import leanconv
from leanconv.fusion import FusionReport, fuse, fuse_conv_bn

F64 = torch.float64


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters for every BatchNorm that has them."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                if m.running_var is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g))
                    m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g))
    return module


def bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, dtype=F64)


class Net(nn.Module):
    """A plain module (no Sequential): conv -> BN -> ReLU chains, a residual add, grouped,
    depthwise and transposed convs with BN, and four BNs that must stay."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, dtype=F64), bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect", dtype=F64), bn(8)
        self.bn_after_add = bn(8)
        self.grouped, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False, dtype=F64), bn(8)
        self.dw, self.bn4 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8, dtype=F64), bn(16)
        self.shared, self.bn5 = nn.Conv2d(16, 16, 1, dtype=F64), bn(16)
        self.tapped, self.bn6 = nn.Conv2d(16, 16, 1, dtype=F64), bn(16)
        self.free = nn.BatchNorm2d(16, track_running_stats=False, dtype=F64)
        self.up, self.bn7 = nn.ConvTranspose2d(16, 4, 2, stride=2, groups=2, dtype=F64), bn(4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn_after_add(y + F.relu(self.bn2(self.conv2(y))))   # residual add, then a BN
        y = F.relu(self.bn3(self.grouped(y)))
        y = F.relu(self.bn4(self.dw(y)))                               # depthwise, multiplier 2
        y = self.bn5(self.shared(y)) + self.shared(0.5 * y)            # a conv used twice
        t = self.tapped(y)
        y = self.free(self.bn6(t) + t)                                 # a conv output used twice
        return self.bn7(self.up(y))


NET_FOLDED = {("bn1", "conv1"), ("bn2", "conv2"), ("bn3", "grouped"), ("bn4", "dw"), ("bn7", "up")}
NET_KEPT = {
    "bn_after_add": r"its input is add \(node '.*'\), not a conv",
    "bn5": r"conv 'shared' is called 2 times",
    "bn6": r"conv 'tapped' output has 2 users",
    "free": r"track_running_stats=False: there are no running statistics to fold",
}


def check_report(report: FusionReport, folded, kept) -> None:
    assert set(report.folded) == set(folded) and report.num_folded == len(folded)
    assert {path for path, _ in report.kept} == set(kept) and report.num_kept == len(kept)
    for path, reason in report.kept:
        assert re_match(kept[path], reason), (path, reason)


def re_match(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def test_plain_module_folds_along_its_forward_and_reports_what_stays():
    model = randomize(Net()).train()
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    x = torch.randn(2, 3, 12, 10, dtype=F64)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = reference(x)
        fused, report = fuse(model, report=True)
        torch.testing.assert_close(fused(x), expected)
    check_report(report, NET_FOLDED, NET_KEPT)
    assert report.graph == "symbolic_trace"
    # the user's class and forward stay; folded norms are Identity, kept ones BatchNorm
    assert type(fused) is Net and not any(m.training for m in fused.modules())
    assert all(isinstance(getattr(fused, n), nn.Identity) for n, _ in NET_FOLDED)
    assert all(isinstance(getattr(fused, n), nn.BatchNorm2d) for n in NET_KEPT)
    assert fused.conv1.bias is not None and fused.grouped.bias is not None  # the fold adds a bias
    assert isinstance(fused.conv2, nn.Conv2d) and fused.conv2.padding_mode == "reflect"
    # the input model is unchanged: values, train flags, modules
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.conv1.bias.shape == (8,)
    # the plain call keeps its return type
    assert isinstance(fuse(model), Net)


def test_report_text_names_counts_and_reasons():
    _, report = fuse(randomize(Net()), report=True)
    text = str(report)
    assert text.splitlines()[0] == "BatchNorms folded: 5, kept: 4 (graph: symbolic_trace)"
    assert "  kept 'bn5': conv 'shared' is called 2 times" in text.splitlines()


def onnx_like_graph_module() -> torch.fx.GraphModule:
    """A GraphModule assembled node by node, as onnx2torch does: flat module names, functional
    ReLU and add, a BN after the add."""
    root = nn.Module()
    root.add_module("Conv_0", nn.Conv2d(4, 6, 3, padding=1, dtype=F64))
    root.add_module("BatchNormalization_0", bn(6))
    root.add_module("Conv_1", nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False, dtype=F64))
    root.add_module("BatchNormalization_1", bn(6))
    root.add_module("BatchNormalization_2", bn(6))
    graph = torch.fx.Graph()
    x = graph.placeholder("input_0")
    a = graph.call_function(torch.relu, (graph.call_module("BatchNormalization_0", (graph.call_module("Conv_0", (x,)),)),))
    b = graph.call_module("BatchNormalization_1", (graph.call_module("Conv_1", (a,)),))
    graph.output(graph.call_module("BatchNormalization_2", (graph.call_function(operator.add, (a, b)),)))
    return randomize(torch.fx.GraphModule(root, graph))


def test_graph_module_like_an_onnx_import_folds_and_loses_its_bn_nodes():
    model = onnx_like_graph_module().eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 4, 9, 7, dtype=F64)
    with torch.no_grad():
        expected = model(x)
        fused, report = fuse(model, report=True)
        torch.testing.assert_close(fused(x), expected)
    check_report(report, {("BatchNormalization_0", "Conv_0"), ("BatchNormalization_1", "Conv_1")},
                 {"BatchNormalization_2": r"its input is add \(node 'add'\), not a conv"})
    assert report.graph == "GraphModule" and isinstance(fused, torch.fx.GraphModule)
    called = [n.target for n in fused.graph.nodes if n.op == "call_module"]
    assert called == ["Conv_0", "Conv_1", "BatchNormalization_2"]
    assert not hasattr(fused, "BatchNormalization_0") and "BatchNormalization_0" not in fused.code
    # the input GraphModule keeps its nodes, modules and values
    assert [n.target for n in model.graph.nodes if n.op == "call_module"] == [
        "Conv_0", "BatchNormalization_0", "Conv_1", "BatchNormalization_1", "BatchNormalization_2"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # inplace=True folds the given GraphModule itself
    same = fuse(model, inplace=True)
    assert same is model and "BatchNormalization_1" not in model.code
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_a_symbolically_traced_net_folds_the_same_pairs():
    traced = torch.fx.symbolic_trace(randomize(Net()).eval())
    x = torch.randn(1, 3, 8, 8, dtype=F64)
    with torch.no_grad():
        expected = traced(x)
        fused, report = fuse(traced, report=True)
        torch.testing.assert_close(fused(x), expected)
    check_report(report, NET_FOLDED, NET_KEPT)
    assert report.graph == "GraphModule"
    left = {path for path, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert left == set(NET_KEPT)


class SeparableThenNorm(nn.Module):
    """leanconv layers traced through: a BN after a depthwise separable layer folds into its
    pointwise stage; one after a channel-reordering layer stays (its input is the reordering)."""

    def __init__(self):
        super().__init__()
        self.sep = leanconv.DepthwiseSeparableConv2d(4, 8, 3, padding="same", stride=2, bias=False, dtype=F64)
        self.norm = bn(8)
        self.perm = leanconv.PermutedGroupedConv2d(8, 8, 3, padding=1, groups=2, dtype=F64)
        self.norm2 = bn(8)

    def forward(self, x):
        return self.norm2(self.perm(F.relu(self.norm(self.sep(x)))))


def test_leanconv_layers_are_traced_through():
    model = SeparableThenNorm()
    model.perm.input_order.copy_(torch.randperm(8))
    model.perm.output_order.copy_(torch.randperm(8))
    model = randomize(model).eval()
    x = torch.randn(2, 4, 11, 9, dtype=F64)
    with torch.no_grad():
        expected = model(x)
        fused, report = fuse(model, report=True)
        torch.testing.assert_close(fused(x), expected)
    check_report(report, {("norm", "sep.pointwise")},
                 {"norm2": r"its input is \.index_select\(\) \(node '.*'\), not a conv"})


class StdConv2d(nn.Conv2d):
    """Another library's conv subclass that standardizes its weight in forward: a BN folded into
    its weight would be standardized away."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / w.std(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Stays(nn.Module):
    """One conv -> BN edge each, every one of which must stay, with its reason."""

    def __init__(self, case: str):
        super().__init__()
        self.case = case
        self.conv = (StdConv2d if case == "own forward" else nn.Conv2d)(3, 4, 3, dtype=F64)
        self.norm = bn(4)
        self.seq = nn.Sequential(StdConv2d(4, 4, 1, dtype=F64), bn(4))

    def forward(self, x):
        y = self.seq(self.norm(self.conv(x)))
        if self.case == "reads weight":
            y = y * self.conv.weight.mean()
        if self.case == "norm twice":
            y = y + self.norm(self.conv(x))
        return y


@pytest.mark.parametrize("case, reason", [
    ("own forward", r"its input 'conv' is a StdConv2d with its own forward"),
    ("reads weight", r"the forward reads 'conv.weight' directly"),
    ("norm twice", r"it is called 2 times"),
])
def test_edges_that_must_not_fold(case, reason):
    model = randomize(Stays(case)).eval()
    x = torch.randn(2, 3, 7, 7, dtype=F64)
    with torch.no_grad():
        expected = model(x)
        fused, report = fuse(model, report=True)
        torch.testing.assert_close(fused(x), expected)
    # the Sequential pair holds a StdConv2d too: not folded there either
    check_report(report, set(), {"norm": reason, "seq.1": r"its input 'seq.0' is a StdConv2d with its own forward"})


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3, dtype=F64), bn(4)
        self.seq = nn.Sequential(nn.Conv2d(4, 4, 1, dtype=F64), bn(4))

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: symbolic tracing fails
            x = -x
        return self.seq(self.norm(self.conv(x)))


def test_untraceable_model_keeps_sequential_folding_and_says_why_the_rest_stays():
    model = randomize(Untraceable()).eval()
    x = torch.randn(2, 3, 6, 6, dtype=F64)
    with torch.no_grad():
        expected = model(x)
        fused, report = fuse(model, report=True)
        torch.testing.assert_close(fused(x), expected)
    check_report(report, {("seq.1", "seq.0")}, {"norm": r"the model could not be traced: TraceError: .*"})
    assert report.graph.startswith("failed (TraceError: ")
    assert isinstance(fused.norm, nn.BatchNorm2d) and isinstance(fused.seq[1], nn.Identity)


def test_nothing_left_needs_no_graph():
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3, dtype=F64), bn(4), nn.ReLU()))
    fused, report = fuse(model, report=True)
    assert report == FusionReport(folded=(("1", "0"),), kept=(), graph="not needed")


@pytest.mark.parametrize("stat, value, message", [
    ("running_var", -0.5, r"BatchNorm 'block.1' has a negative running_var \(-0.5 at channel 2\): "
                          r"a variance must be >= 0; fuse refuses to fold it"),
    ("running_var", float("nan"), r"BatchNorm 'block.1' has a non-finite running_var \(nan at channel 2\)"),
    ("running_mean", float("inf"), r"BatchNorm 'block.1' has a non-finite running_mean \(inf at channel 2\)"),
])
def test_corrupt_statistics_are_refused_naming_the_norm(stat, value, message):
    model = nn.Module()
    model.block = randomize(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    with torch.no_grad():
        getattr(model.block[1], stat)[2] = value
    with pytest.raises(ValueError, match=message) as error:
        fuse(model)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=rf"^bn has a (negative|non-finite) {stat}"):
        fuse_conv_bn(model.block[0], model.block[1])


def test_meta_model_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, device="meta"), nn.BatchNorm2d(4, device="meta"))
    with pytest.raises(ValueError, match=r"^model tensor '0.weight' is on the meta device: fuse computes new weights"):
        fuse(model)


def test_flags_must_be_bools():
    with pytest.raises(ValueError, match=r"report='yes' must be a bool"):
        fuse(nn.Conv2d(1, 1, 1), report="yes")
    with pytest.raises(ValueError, match=r"inplace='no' must be a bool"):
        fuse(nn.Conv2d(1, 1, 1), inplace="no")


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_models_fold_in_their_dtype(dtype, tol):
    """The folded weights are the float64 fold rounded once to the dtype (to its precision), and
    the fused model runs in that dtype."""
    model = randomize(Net().eval())
    low = copy.deepcopy(model).to(dtype)
    fused, report = fuse(low, report=True)
    assert report.num_folded == 5
    assert all(p.dtype == dtype for p in fused.parameters())
    conv, norm = copy.deepcopy(low.conv1).double(), copy.deepcopy(low.bn1).double()
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    expected_w = conv.weight * scale.reshape(-1, 1, 1, 1)
    expected_b = (conv.bias - norm.running_mean) * scale + norm.bias
    torch.testing.assert_close(fused.conv1.weight.double(), expected_w, rtol=tol, atol=tol)
    torch.testing.assert_close(fused.conv1.bias.double(), expected_b, rtol=tol, atol=tol)
    # end to end on a short chain: the fused half model against the float64 original
    chain = randomize(nn.Sequential(nn.Conv2d(3, 8, 3, dtype=F64), bn(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3, groups=8, dtype=F64), bn(8))).eval()
    x = torch.randn(2, 3, 9, 9, dtype=F64)
    with torch.no_grad():
        expected = chain(x)
        out = fuse(copy.deepcopy(chain).to(dtype))(x.to(dtype))
    assert out.dtype == dtype
    scale = expected.abs().max()
    torch.testing.assert_close(out.double() / scale, expected / scale, rtol=0, atol=4 * tol)

"""The layer protocol (leanconv.protocol), the two-stage base and the argument rules."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.fx
from torch import nn

from leanconv.layers import (
    ACBlock,
    AsymmetricConv2d,
    Conv2d,
    ConvNormAct,
    DepthwiseSeparableConv2d,
    DepthwiseSeparableConvTranspose2d,
    ParallelAsymmetricConv2d,
    PermutedGroupedConv2d,
    SpatialGate,
    Tucker2Conv2d,
)
import leanconv.rules as rules
from leanconv.layers.base import TwoStageConv
from leanconv.protocol import (
    FusableLayer,
    NormPairsLayer,
    ReorderingLayer,
    StagedLayer,
    conv_norm_pairs_of,
    fuse_method_of,
    norm_target_of,
    output_order_of,
    output_stage_of,
    reorders_output,
)

# (layer class, order, the stage that runs first, the output stage)
TWO_STAGE = [
    (DepthwiseSeparableConv2d, "depthwise_first", "depthwise", "pointwise"),
    (DepthwiseSeparableConv2d, "pointwise_first", "pointwise", "depthwise"),
    (AsymmetricConv2d, "kx1_first", "conv_kx1", "conv_1xk"),
    (AsymmetricConv2d, "1xk_first", "conv_1xk", "conv_kx1"),
    (DepthwiseSeparableConvTranspose2d, "depthwise_first", "depthwise", "pointwise"),
    (DepthwiseSeparableConvTranspose2d, "pointwise_first", "pointwise", "depthwise"),
]


def _two_stage(cls, order):
    return cls(4, 6, 3, padding=1, order=order, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU).eval()


def _randomize_norm(layer):
    with torch.no_grad():
        layer.norm.running_mean.uniform_(-1, 1)
        layer.norm.running_var.uniform_(0.5, 2)
        layer.norm.weight.uniform_(0.5, 2)
    return layer


# ------------------------------------------------------------------------------ two-stage base


@pytest.mark.parametrize("cls, order, first, second", TWO_STAGE)
def test_two_stage_forward_is_first_norm_act_second(cls, order, first, second):
    layer = _randomize_norm(_two_stage(cls, order))
    assert isinstance(layer, TwoStageConv)
    x = torch.randn(2, 4, 7, 6)
    with torch.no_grad():
        expected = getattr(layer, second)(torch.relu(layer.norm(getattr(layer, first)(x))))
        torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("cls, order, first, second", TWO_STAGE)
def test_two_stage_protocol_follows_the_order(cls, order, first, second):
    layer = _two_stage(cls, order)
    assert layer.output_stage == output_stage_of(layer) == second
    assert layer.conv_norm_pairs == conv_norm_pairs_of(layer) == ((first, "norm"),)
    assert norm_target_of(layer) == second
    assert getattr(layer, second).bias is not None and getattr(layer, first).bias is None
    default_first, default_second = next(iter(cls.stage_orders.values()))
    assert cls.output_stage == default_second
    assert cls.conv_norm_pairs == ((default_first, "norm"),)


@pytest.mark.parametrize("cls, order, first, second", TWO_STAGE)
def test_two_stage_state_dict_keys_and_repr_are_unchanged(cls, order, first, second):
    layer = _two_stage(cls, order)
    norm_keys = ["norm.weight", "norm.bias", "norm.running_mean", "norm.running_var", "norm.num_batches_tracked"]
    if cls is AsymmetricConv2d:  # registers both convs before the norm
        expected = ["conv_kx1.weight", "conv_1xk.weight"]
        expected.insert(2 if first == "conv_kx1" else 1, f"{second}.bias")
        expected += norm_keys
        width = f"mid_channels={layer.mid_channels}"
    else:
        expected = [f"{first}.weight", *norm_keys, f"{second}.weight", f"{second}.bias"]
        width = "depth_multiplier=1"
    assert list(layer.state_dict()) == expected
    assert layer.extra_repr() == f"order={order!r}, {width}"


@pytest.mark.parametrize("cls, order, first, second", TWO_STAGE)
def test_two_stage_traces_with_fx_in_stage_order(cls, order, first, second):
    layer = _randomize_norm(_two_stage(cls, order))
    traced = torch.fx.symbolic_trace(layer)
    # leanconv's convs are traced through (their weights are get_attr nodes); norm and act are leaves
    used = [n.target.split(".")[0] for n in traced.graph.nodes if n.op in ("call_module", "get_attr")]
    assert [name for i, name in enumerate(used) if i == 0 or used[i - 1] != name] == [first, "norm", "act", second]
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), layer(x))


def test_two_stage_reads_its_stages_from_order_after_unpickling():
    """Stage names are derived from ``order``: a pickled module needs nothing else stored."""
    layer = _two_stage(DepthwiseSeparableConv2d, "pointwise_first")
    assert "output_stage" not in vars(layer) and "conv_norm_pairs" not in vars(layer)
    copy = pickle.loads(pickle.dumps(layer))
    assert copy.output_stage == "depthwise"
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), layer(x))


def test_stage_orders_use_the_rules_vocabulary():
    assert tuple(DepthwiseSeparableConv2d.stage_orders) == rules.SEPARABLE_ORDERS
    assert tuple(DepthwiseSeparableConvTranspose2d.stage_orders) == rules.SEPARABLE_ORDERS
    assert tuple(AsymmetricConv2d.stage_orders) == rules.ASYMMETRIC_ORDERS


# ------------------------------------------------------------------------------ protocol readers


def test_readers_on_plain_and_staged_modules():
    conv = Conv2d(4, 6, 3)
    assert output_stage_of(conv) is None and norm_target_of(conv) == ""
    assert conv_norm_pairs_of(conv) == () and fuse_method_of(conv) is None
    tucker = Tucker2Conv2d(4, 6, 3, ranks=(2, 3), core="asymmetric")
    assert output_stage_of(tucker) == norm_target_of(tucker) == "expand"
    assert conv_norm_pairs_of(ConvNormAct(4, 6)) == (("conv", "norm"),)
    assert norm_target_of(ParallelAsymmetricConv2d(4, 6, 3)) is None  # concatenates two branches


def test_norm_target_descends_nested_output_stages():
    class Wrapper(nn.Module):
        output_stage = "inner"

        def __init__(self):
            super().__init__()
            self.inner = DepthwiseSeparableConv2d(4, 6, 3, order="pointwise_first")

    assert norm_target_of(Wrapper()) == "inner.depthwise"

    class Broken(nn.Module):
        output_stage = "missing"

    assert norm_target_of(Broken()) is None


def test_reordering_layer():
    layer = PermutedGroupedConv2d(4, 6, 3, groups=2)
    layer.output_order.copy_(torch.randperm(6))
    assert reorders_output(layer) and output_stage_of(layer) == "conv"
    assert output_order_of(layer) is layer.output_order
    assert norm_target_of(layer) is None  # a following BN must not fold into the reordered conv
    assert not reorders_output(DepthwiseSeparableConv2d(4, 6, 3))
    assert output_order_of(DepthwiseSeparableConv2d(4, 6, 3)) is None


def test_fuse_method_only_for_methods_callable_without_arguments():
    block = ACBlock(4, 6)
    assert fuse_method_of(block) == block.fuse

    class ChildNamedFuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.fuse = nn.Identity()

    class NeedsArgument(nn.Module):
        def fuse(self, scale):
            return nn.Identity()

    assert fuse_method_of(ChildNamedFuse()) is None
    assert fuse_method_of(NeedsArgument()) is None


def test_protocol_types():
    assert isinstance(DepthwiseSeparableConv2d(4, 6, 3), StagedLayer)
    assert isinstance(PermutedGroupedConv2d(4, 6, 3), ReorderingLayer)
    assert not isinstance(DepthwiseSeparableConv2d(4, 6, 3), ReorderingLayer)
    assert isinstance(SpatialGate(), NormPairsLayer)
    assert isinstance(ACBlock(4, 6), FusableLayer)
    assert not isinstance(nn.Conv2d(4, 6, 3), StagedLayer)


@pytest.mark.parametrize(
    "attrs, reader, match",
    [
        (dict(output_stage=3), output_stage_of, r"output_stage=3 must be a submodule path"),
        (dict(conv_norm_pairs="conv"), conv_norm_pairs_of, r"conv_norm_pairs='conv' must be a tuple"),
        (dict(conv_norm_pairs=(("conv",),)), conv_norm_pairs_of, r"has \('conv',\): each entry must be"),
        (dict(output_stage="conv", reorders_output=True), output_order_of, r"output_order must be a 1-D"),
    ],
)
def test_readers_reject_malformed_declarations(attrs, reader, match):
    module = type("Odd", (nn.Module,), attrs)()
    with pytest.raises(ValueError, match=match):
        reader(module)


# ------------------------------------------------------------------------------ argument rules


@pytest.mark.parametrize(
    "rule, layer",
    [
        (lambda: rules.check_odd_kernel((3, 4)), lambda: ParallelAsymmetricConv2d(4, 8, (3, 4))),
        (lambda: rules.check_odd_kernel(2), lambda: ACBlock(4, 8, 2)),
        (lambda: rules.check_branch_split(1), lambda: ParallelAsymmetricConv2d(4, 1, 3)),
        (lambda: rules.check_separable_order("up"), lambda: DepthwiseSeparableConv2d(4, 8, 3, order="up")),
        (lambda: rules.check_separable_order("up"), lambda: DepthwiseSeparableConvTranspose2d(4, 8, 3, order="up")),
        (lambda: rules.check_asymmetric_order("up"), lambda: AsymmetricConv2d(4, 8, 3, order="up")),
        (lambda: rules.check_depth_multiplier(0), lambda: DepthwiseSeparableConv2d(4, 8, 3, depth_multiplier=0)),
        (lambda: rules.check_depth_multiplier(0),
         lambda: DepthwiseSeparableConvTranspose2d(4, 8, 3, depth_multiplier=0)),
        (lambda: rules.check_transpose_multiplier(2, "pointwise_first"),
         lambda: DepthwiseSeparableConvTranspose2d(4, 8, 3, depth_multiplier=2, order="pointwise_first")),
        (lambda: rules.check_optional_channels(0, "mid_channels"), lambda: AsymmetricConv2d(4, 8, 3, mid_channels=0)),
        (lambda: rules.check_ranks((0, 2), 4, 8), lambda: Tucker2Conv2d(4, 8, 3, ranks=(0, 2))),
        (lambda: rules.check_tucker2_core("dense", 2), lambda: Tucker2Conv2d(4, 8, 3, core_mid_channels=2)),
        (lambda: rules.check_tucker2_core("cp", None), lambda: Tucker2Conv2d(4, 8, 3, core="cp")),
        (lambda: rules.check_cbam_variant("x"), lambda: SpatialGate(variant="x")),
    ],
)
def test_layers_raise_the_rules_own_error(rule, layer):
    """Each rule is checked in one place: the layer's error is the rule's error, word for word."""
    with pytest.raises(ValueError) as from_rule:
        rule()
    with pytest.raises(ValueError) as from_layer:
        layer()
    assert str(from_layer.value) == str(from_rule.value)


def test_rules_return_normalized_values():
    assert rules.check_odd_kernel(3) == (3, 3)
    assert rules.check_ranks(None, 4, 8) == (4, 8)
    assert rules.check_ranks([2, 3], 4, 8) == (2, 3)
    assert rules.check_depthwise_channels(4, 12) == 3
    assert rules.check_optional_channels(None, "mid_channels") is None
    assert rules.check_tucker2_core("asymmetric", 3) == 3
    assert rules.check_upsample((2, 3), "bilinear", True) == (2, 3)
    assert rules.check_groups(4, 6, 2) == 2


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rules.check_odd_kernel((3, 4)), r"kernel_size=\(3, 4\) must be odd in both dimensions \(the 1xk"),
        (lambda: rules.check_odd_kernel(4, reason="why"), r"kernel_size=4 must be odd in both dimensions \(why\)"),
        (lambda: rules.check_depthwise_channels(4, 6), r"out_channels=6 must be a multiple of in_channels=4"),
        (lambda: rules.check_ranks("ab", 4, 8), r"ranks='ab' must be a pair"),
        (lambda: rules.check_ranks((True, 2), 4, 8), r"ranks=\(True, 2\) must be a pair"),
        (lambda: rules.check_upsample(2, "nearest", True), r"align_corners=True must be None with mode='nearest'"),
        (lambda: rules.check_upsample(2, "area", None), r"mode='area' must be one of"),
        (lambda: rules.check_groups(4, 6, 4), r"out_channels=6 must be divisible by groups=4"),
        (lambda: rules.check_transpose_multiplier(1, "sideways"), r"order='sideways' must be one of"),
    ],
)
def test_rules_name_the_argument_value_and_rule(call, match):
    with pytest.raises(ValueError, match=match):
        call()

"""leanconv.keras: each Keras layer against its PyTorch twin, plus config, save/load and shapes.

Cross-framework check: the twin from leanconv.layers gets random weights (BN statistics
included), load_torch_weights copies them into the Keras layer (OIHW -> HWIO ...), both run on
the same data (NHWC for Keras, the same values in NCHW for PyTorch), float32, and must agree
within rtol=1e-4, atol=1e-5. The torch twins are themselves tested against torch.nn.functional
compositions in tests/test_layers_*.py. Keras runs on its torch backend (no TensorFlow).
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # keras was imported earlier with another backend
    pytest.skip(f"these tests run Keras on its torch backend, got {keras.backend.backend()!r}",
                allow_module_level=True)

import leanconv  # noqa: E402
import leanconv.keras as lk  # noqa: E402
from leanconv._validate import check_positive_pair  # noqa: E402
from support import randomize_norms  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOL = dict(rtol=1e-4, atol=1e-5)
RNG = np.random.default_rng(0)


def nhwc(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype("float32")


def torch_nhwc(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """Run a PyTorch module on NHWC data (as NCHW) and return NHWC."""
    with torch.no_grad():
        y = module(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    return y.permute(0, 2, 3, 1).numpy()


def as_numpy(t) -> np.ndarray:
    return keras.ops.convert_to_numpy(t)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and biases everywhere (not just PyTorch's init) and random BN statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.3))
    return randomize_norms(module, g)


def check_twin(layer, twin: nn.Module, x: np.ndarray, training: bool = False) -> np.ndarray:
    """Build ``layer``, copy ``twin``'s weights, compare outputs; return the Keras output."""
    layer(x[:1])  # build
    lk.load_torch_weights(layer, twin)
    twin.train(training)
    expected = torch_nhwc(twin, x)
    got = as_numpy(layer(x, training=training))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **TOL)
    return got


# ------------------------------------------------------------------ cross-framework checks


@pytest.mark.parametrize("variant", ["paper", "common"])
@pytest.mark.parametrize("kernel_size", [7, (3, 5)])
def test_cbam_matches_torch(variant, kernel_size):
    twin = randomize(leanconv.CBAM(16, reduction=4, kernel_size=kernel_size, variant=variant))
    layer = lk.CBAM(reduction=4, kernel_size=kernel_size, variant=variant)
    check_twin(layer, twin, nhwc(2, 9, 11, 16))
    assert layer.channel_gate.hidden == twin.hidden == 4


def test_cbam_paper_training_mode_uses_batch_statistics_like_torch():
    twin = randomize(leanconv.CBAM(8, reduction=2, variant="paper"))
    check_twin(lk.CBAM(reduction=2, variant="paper"), twin, nhwc(3, 6, 7, 8), training=True)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=(3, 5), strides=2, padding="same"),        # odd input: TF 'same' rule
    dict(kernel_size=(5, 3), strides=(1, 2), padding="valid"),
    dict(kernel_size=3, dilation_rate=2, padding="same"),
    dict(kernel_size=3, padding="same", order="1xk_first", mid_filters=5),
])
def test_asymmetric_matches_torch(kw):
    kw = dict(kw)
    order, mid = kw.pop("order", "kx1_first"), kw.pop("mid_filters", None)
    twin = randomize(leanconv.AsymmetricConv2d(
        6, 7, kw["kernel_size"], kw.get("strides", 1), kw["padding"], kw.get("dilation_rate", 1),
        mid_channels=mid, order=order))
    check_twin(lk.AsymmetricConv2D(7, order=order, mid_filters=mid, **kw), twin, nhwc(2, 11, 13, 6))


def test_asymmetric_inner_norm_and_activation_match_torch():
    twin = randomize(leanconv.AsymmetricConv2d(4, 6, 3, padding="same", norm_layer=nn.BatchNorm2d,
                                               act_layer=nn.ReLU))
    layer = lk.AsymmetricConv2D(6, 3, padding="same", mid_norm=True, mid_activation="relu")
    check_twin(layer, twin, nhwc(2, 8, 8, 4))
    check_twin(layer, twin, nhwc(3, 8, 8, 4), training=True)


@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("image_pooling", [True, False])
def test_aspp_matches_torch(separable, image_pooling):
    twin = randomize(leanconv.ASPP(8, 6, rates=(1, 2, 3), conv="dsconv" if separable else "dense",
                                   image_pooling=image_pooling, bias=True))
    layer = lk.ASPP(6, rates=(1, 2, 3), separable=separable, image_pooling=image_pooling, use_bias=True)
    check_twin(layer, twin, nhwc(2, 11, 12, 8))
    assert [b.name for b in layer.branches] == list(twin.branches.keys())


def test_aspp_training_mode_matches_torch():
    twin = randomize(leanconv.ASPP(4, 4, rates=(2, 4), conv="dsconv"))
    check_twin(lk.ASPP(4, rates=(2, 4), separable=True), twin, nhwc(3, 9, 9, 4), training=True)


def test_aspp_separable_has_the_separable_weight_count():
    c, o, rates = 16, 8, (6, 12, 18)
    dense = lk.ASPP(o, rates=rates, image_pooling=False, batch_norm=False)
    sep = lk.ASPP(o, rates=rates, image_pooling=False, batch_norm=False, separable=True)
    x = nhwc(1, 8, 8, c)
    dense(x), sep(x)
    shared = c * o + (1 + len(rates)) * o * o  # conv1x1 + projection
    assert dense.count_params() == shared + len(rates) * c * o * 9
    assert sep.count_params() == shared + len(rates) * (c * 9 + c * o)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_small_basic_block_matches_torch(batch_norm):
    twin = randomize(leanconv.SmallBasicBlock(6, 16, norm_layer=nn.BatchNorm2d if batch_norm else None))
    check_twin(lk.SmallBasicBlock(16, batch_norm=batch_norm), twin, nhwc(2, 7, 9, 6))


def _torch_transposed_padding(kw):
    """leanconv twin arguments for a Keras transposed config: 'same' is shared, 'valid' with the
    Keras default output_padding (None) is PyTorch's output_padding = max(k_eff, s) - k_eff."""
    k = check_positive_pair(kw["kernel_size"], "k")
    s = check_positive_pair(kw.get("strides", 1), "s")
    d = check_positive_pair(kw.get("dilation_rate", 1), "d")
    if kw.get("padding", "valid") == "same":
        return "same", 0
    if kw.get("output_padding") is not None:
        return 0, kw["output_padding"]
    eff = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
    return 0, tuple(max(e, si) - e for e, si in zip(eff, s))


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, strides=2, padding="same"),
    dict(kernel_size=4, strides=2, padding="same"),
    dict(kernel_size=(3, 5), strides=(2, 3), padding="same"),
    dict(kernel_size=3, strides=2, padding="valid", output_padding=1),
    dict(kernel_size=2, strides=3, padding="valid"),                   # k < s: Keras pads to (n-1)s + s
    dict(kernel_size=3, dilation_rate=2, padding="same"),
    dict(kernel_size=3, strides=2, padding="same", depth_multiplier=2),
    dict(kernel_size=3, strides=2, padding="same", order="pointwise_first"),
])
def test_separable_transposed_matches_torch(kw):
    padding, output_padding = _torch_transposed_padding(kw)
    twin = randomize(leanconv.DepthwiseSeparableConvTranspose2d(
        5, 7, kw["kernel_size"], kw.get("strides", 1), padding, output_padding,
        dilation=kw.get("dilation_rate", 1), depth_multiplier=kw.get("depth_multiplier", 1),
        order=kw.get("order", "depthwise_first")))
    layer = lk.DepthwiseSeparableConv2DTranspose(7, **kw)
    y = check_twin(layer, twin, nhwc(2, 5, 6, 5))
    assert y.shape == tuple(layer.compute_output_shape((2, 5, 6, 5)))


def test_separable_transposed_inner_norm_and_activation_match_torch():
    twin = randomize(leanconv.DepthwiseSeparableConvTranspose2d(
        4, 6, 3, 2, "same", norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU))
    layer = lk.DepthwiseSeparableConv2DTranspose(6, 3, 2, "same", mid_norm=True, mid_activation="relu")
    check_twin(layer, twin, nhwc(2, 5, 5, 4))


@pytest.mark.parametrize("conv", ["dense", "dsconv", "asymmetric"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_resize_conv_matches_torch(conv, interpolation):
    twin = randomize(leanconv.ResizeConv2d(5, 6, 3, mode=interpolation, conv=conv))
    y = check_twin(lk.ResizeConv2D(6, 3, interpolation=interpolation, conv=conv), twin, nhwc(2, 5, 7, 5))
    assert y.shape == (2, 10, 14, 6)


def test_resize_conv_strided_same_matches_torch():
    twin = randomize(leanconv.ResizeConv2d(3, 4, 3, stride=2, scale_factor=(3, 2)))
    y = check_twin(lk.ResizeConv2D(4, 3, strides=2, size=(3, 2)), twin, nhwc(1, 5, 5, 3))
    assert y.shape == (1, 8, 5, 4)  # ceil(15 / 2), ceil(10 / 2)


# ------------------------------------------------------------------ 'same' padding: Keras vs PyTorch


def test_strided_same_follows_the_tf_rule_not_pytorchs_symmetric_padding():
    """Keras 'same' at stride 2 on an even input pads 0 left, 1 right (TF rule), like leanconv's
    padding='same'; the usual PyTorch idiom padding=k//2 pads 1 on both sides and samples other
    pixels, so it gives the same shape but a different result."""
    x = nhwc(1, 8, 8, 3)
    layer = keras.layers.Conv2D(4, 3, strides=2, padding="same")
    layer(x)
    conv = randomize(leanconv.Conv2d(3, 4, 3, stride=2, padding="same"))
    from leanconv.keras.weights import conv2d
    conv2d(layer, conv)
    got = as_numpy(layer(x))
    np.testing.assert_allclose(got, torch_nhwc(conv, x), **TOL)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    explicit = F.conv2d(F.pad(xt, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)  # TF: extra pixel after
    np.testing.assert_allclose(got, explicit.permute(0, 2, 3, 1).detach().numpy(), **TOL)
    symmetric = F.conv2d(xt, conv.weight, conv.bias, stride=2, padding=1).permute(0, 2, 3, 1).detach().numpy()
    assert symmetric.shape == got.shape and not np.allclose(symmetric, got, **TOL)


@pytest.mark.parametrize("kernel_size,strides", [(3, 2), (4, 2), (5, 3), (2, 2), (1, 2)])
def test_depthwise_transposed_same_is_the_adjoint_of_keras_same_conv(kernel_size, strides):
    """<T x, y> = <x, D y>, D = keras DepthwiseConv2D('same', strides) with the same kernel: an
    independent definition of the TF-rule 'same' transposed conv."""
    c = 3
    t = lk.DepthwiseConv2DTranspose(kernel_size, strides, "same", use_bias=False)
    d = keras.layers.DepthwiseConv2D(kernel_size, strides, "same", use_bias=False)
    x, y = nhwc(2, 5, 6, c), nhwc(2, 5 * strides, 6 * strides, c)
    tx = as_numpy(t(x))
    d(y)
    d.kernel.assign(as_numpy(t.kernel))
    dy = as_numpy(d(y))
    assert tx.shape == y.shape and dy.shape == x.shape
    np.testing.assert_allclose((tx * y).sum(), (x * dy).sum(), rtol=1e-4)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2, 3])
def test_depthwise_transposed_equals_keras_conv2d_transpose_on_one_channel(padding, strides):
    """With one channel a depthwise transposed conv is Keras' own Conv2DTranspose: same output
    size rule and values, for kernels smaller than, equal to and larger than the stride."""
    x = nhwc(2, 5, 6, 1)
    for kernel_size in range(1, 6):
        ours = lk.DepthwiseConv2DTranspose(kernel_size, strides, padding)
        ref = keras.layers.Conv2DTranspose(1, kernel_size, strides, padding)
        ours(x), ref(x)
        ref.kernel.assign(as_numpy(ours.kernel))
        ref.bias.assign(as_numpy(ours.bias))
        a, b = as_numpy(ours(x)), as_numpy(ref(x))
        assert a.shape == b.shape == tuple(ours.compute_output_shape(x.shape))
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_transposed_same_vs_the_pytorch_idiom(kernel_size):
    """nn.ConvTranspose2d has no 'same'; padding p = ceil((k-s)/2), output_padding 2p-(k-s) gives
    in*s too, but for an odd k - s its window sits one pixel later than the TF rule's (Keras,
    leanconv): PyTorch can only add output_padding at the end."""
    s, c = 2, 3
    layer = lk.DepthwiseConv2DTranspose(kernel_size, s, "same", use_bias=False)
    x = nhwc(1, 5, 6, c)
    got = as_numpy(layer(x))
    weight = torch.from_numpy(as_numpy(layer.kernel)).permute(2, 3, 0, 1)  # (C, 1, k, k)
    idiom = F.conv_transpose2d(torch.from_numpy(x).permute(0, 3, 1, 2), weight, stride=s,
                               padding=-(-(kernel_size - s) // 2), output_padding=(kernel_size - s) % 2, groups=c)
    idiom = idiom.permute(0, 2, 3, 1).numpy()
    assert idiom.shape == got.shape
    if (kernel_size - s) % 2 == 0:
        np.testing.assert_allclose(got, idiom, **TOL)
    else:
        assert not np.allclose(got, idiom, **TOL)
        np.testing.assert_allclose(got[:, 1:, 1:], idiom[:, :-1, :-1], **TOL)


# ------------------------------------------------------------------ config, save/load, shapes

LAYERS = {
    "CBAM": (lambda **kw: lk.CBAM(reduction=4, kernel_size=5, **kw), 16),
    "CBAM-common": (lambda **kw: lk.CBAM(reduction=8, variant="common", **kw), 16),
    "AsymmetricConv2D": (lambda **kw: lk.AsymmetricConv2D(6, (3, 5), strides=2, padding="same", mid_norm=True,
                                                          mid_activation="relu", activation="relu", **kw), 4),
    "ASPP": (lambda **kw: lk.ASPP(6, rates=(1, 2), separable=True, dropout=0.1, **kw), 4),
    "SmallBasicBlock": (lambda **kw: lk.SmallBasicBlock(8, batch_norm=True, **kw), 4),
    "DepthwiseConv2DTranspose": (lambda **kw: lk.DepthwiseConv2DTranspose(3, 2, "valid", output_padding=1,
                                                                          depth_multiplier=2, **kw), 4),
    "DepthwiseSeparableConv2DTranspose": (lambda **kw: lk.DepthwiseSeparableConv2DTranspose(
        6, 4, 2, "same", order="pointwise_first", mid_norm=True, **kw), 4),
    "ResizeConv2D": (lambda **kw: lk.ResizeConv2D(6, 3, interpolation="bilinear", conv="dsconv", **kw), 4),
    "ResizeConv2D-asym": (lambda **kw: lk.ResizeConv2D(6, 3, conv="asymmetric", size=(2, 3), **kw), 4),
}


@pytest.fixture(params=sorted(LAYERS))
def made(request):
    make, channels = LAYERS[request.param]
    return make, channels


def test_serialize_round_trip_gives_same_config_and_output(made):
    make, c = made
    layer = make(kernel_regularizer=keras.regularizers.L2(1e-3))
    x = nhwc(2, 7, 8, c)
    layer(x)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(as_numpy(clone(x)), as_numpy(layer(x)))


def test_keras_file_save_and_load_gives_identical_output(made, tmp_path):
    make, c = made
    inp = keras.Input((7, 8, c))
    model = keras.Model(inp, make()(inp))
    x = nhwc(2, 7, 8, c)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(as_numpy(loaded(x)), as_numpy(model(x)))


def test_compute_output_shape_matches_call_and_symbolic_inputs(made):
    make, c = made
    layer = make()
    for shape in [(2, 7, 8, c), (1, 6, 5, c)]:
        assert tuple(layer(nhwc(*shape)).shape) == tuple(layer.compute_output_shape(shape))
    symbolic = make()(keras.Input((None, None, c)))
    expected = make().compute_output_shape((None, None, None, c))
    assert tuple(symbolic.shape) == tuple(expected)
    assert expected[-1] is not None


def test_channels_first_gives_the_transposed_channels_last_output(made):
    make, c = made
    last, first = make(), make(data_format="channels_first")
    x = nhwc(2, 7, 8, c)
    last(x)
    first(np.transpose(x, (0, 3, 1, 2)))
    first.set_weights(last.get_weights())
    got = as_numpy(first(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(np.transpose(got, (0, 2, 3, 1)), as_numpy(last(x)), **TOL)


def test_built_layer_rejects_wrong_rank_and_channel_count(made):
    make, c = made
    layer = make()
    layer(nhwc(1, 7, 8, c))
    with pytest.raises(ValueError, match="ndim=4"):
        layer(nhwc(7, 8, c))
    with pytest.raises(ValueError, match=f"value {c}"):
        layer(nhwc(1, 7, 8, c + 1))


# ------------------------------------------------------------------ argument checks

BAD_ARGS = [
    (lambda: lk.CBAM(reduction=0), r"reduction=0 must be >= 1"),
    (lambda: lk.CBAM(kernel_size=4), r"kernel_size=4 must be odd"),
    (lambda: lk.CBAM(variant="fast"), r"variant='fast' must be one of \('paper', 'common'\)"),
    (lambda: lk.CBAM(data_format="nchw"), r"data_format='nchw' must be one of"),
    (lambda: lk.AsymmetricConv2D(0), r"filters=0 must be >= 1"),
    (lambda: lk.AsymmetricConv2D(4, padding="full"), r"padding='full' must be 'same' or 'valid'"),
    (lambda: lk.AsymmetricConv2D(4, strides=2, dilation_rate=2), r"strides=2 and dilation_rate=2 cannot both be > 1"),
    (lambda: lk.AsymmetricConv2D(4, order="up"), r"order='up' must be one of"),
    (lambda: lk.AsymmetricConv2D(4, mid_filters=0), r"mid_filters=0 must be >= 1"),
    (lambda: lk.AsymmetricConv2D(4, kernel_size=(3, 0)), r"kernel_size=\(3, 0\) must be >= 1"),
    (lambda: lk.AsymmetricConv2D(4, mid_activation="nope"), r"mid_activation='nope' must be None, a Keras"),
    (lambda: lk.AsymmetricConv2D(4, norm_momentum=1.0), r"norm_momentum=1.0 must be a number in \[0, 1\)"),
    (lambda: lk.AsymmetricConv2D(4, norm_epsilon=0), r"norm_epsilon=0 must be a number > 0"),
    (lambda: lk.AsymmetricConv2D(4, kernel_initializer="nope"), r"kernel_initializer='nope' is not a valid"),
    (lambda: lk.ASPP(4, rates=()), r"rates=\(\) must be a non-empty sequence of ints >= 1"),
    (lambda: lk.ASPP(4, rates=(2, 2)), r"rates=\(2, 2\) must be distinct"),
    (lambda: lk.ASPP(4, dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
    (lambda: lk.ASPP(4, separable="yes"), r"separable='yes' must be a bool"),
    (lambda: lk.SmallBasicBlock(6), r"filters=6 must be divisible by 4"),
    (lambda: lk.DepthwiseSeparableConv2DTranspose(4, 3, order="pointwise_first", depth_multiplier=2),
     r"depth_multiplier=2 must be 1 with order='pointwise_first'"),
    (lambda: lk.DepthwiseSeparableConv2DTranspose(4, 3, 2, "same", output_padding=1),
     r"output_padding=1 must be None with padding='same'"),
    (lambda: lk.DepthwiseConv2DTranspose(3, 2, output_padding=2), r"output_padding=2 must be >= 0 and smaller than"),
    (lambda: lk.DepthwiseConv2DTranspose(3, depth_multiplier=0), r"depth_multiplier=0 must be >= 1"),
    (lambda: lk.ResizeConv2D(4, interpolation="area"), r"interpolation='area' must be one of"),
    (lambda: lk.ResizeConv2D(4, conv="tucker2"), r"conv='tucker2' must be one of \('dense', 'dsconv', 'asymmetric'\)"),
    (lambda: lk.ResizeConv2D(4, size=0), r"size=0 must be >= 1"),
]


@pytest.mark.parametrize("make,message", BAD_ARGS)
def test_bad_arguments_raise_naming_argument_value_and_rule(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_load_torch_weights_rejects_mismatches():
    layer = lk.CBAM(reduction=4)
    with pytest.raises(ValueError, match="is not built"):
        lk.load_torch_weights(layer, leanconv.CBAM(16, 4))
    layer(nhwc(1, 5, 5, 16))
    with pytest.raises(ValueError, match="variant 'paper' differs from PyTorch 'common'"):
        lk.load_torch_weights(layer, leanconv.CBAM(16, 4, variant="common"))
    with pytest.raises(ValueError, match=r"channel_gate.reduce.kernel: the Keras weight has shape \(16, 4\)"):
        lk.load_torch_weights(layer, leanconv.CBAM(16, 2))
    with pytest.raises(ValueError, match="expected a PyTorch CBAM, got ASPP"):
        lk.load_torch_weights(layer, leanconv.ASPP(16, 4))
    with pytest.raises(ValueError, match="layer=Dense is not a leanconv Keras layer"):
        lk.load_torch_weights(keras.layers.Dense(3), nn.Linear(3, 3))


def test_missing_keras_gives_an_install_hint(monkeypatch):
    import builtins

    from leanconv.keras import _base

    real_import = builtins.__import__

    def no_keras(name, *args, **kwargs):
        if name == "keras":
            raise ImportError("No module named 'keras'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_keras)
    with pytest.raises(ImportError, match=r"pip install -c constraints.txt 'leanconv\[keras\]'"):
        _base.require_keras()

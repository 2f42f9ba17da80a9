"""Integer layers and quantize(): exact accumulators against NumPy int64 convolutions, requantization
against exact fractions, float agreement of a separable block, int8 digits accuracy, bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import leanconv
from leanconv.quant import (
    ApFixed,
    IntConv2d,
    MinMaxObserver,
    PercentileObserver,
    QParams,
    QuantizedModel,
    accuracy_report,
    hazard_report,
    quantize,
    quantize_weight,
)
from leanconv.quant.dialects import int_range
from tests.support import randomize_norms


def numpy_conv_int(x, w, stride, pads, dilation, groups):
    """Direct int64 convolution in NumPy (sliding windows), independent of torch's conv."""
    top, bottom, left, right = pads
    x = np.pad(np.asarray(x, dtype=np.int64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    w = np.asarray(w, dtype=np.int64)
    n, c, h, wd = x.shape
    o, cpg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (wd - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    opg = o // groups
    for co in range(o):
        g = co // opg
        for i in range(kh):
            for j in range(kw):
                patch = x[:, g * cpg:(g + 1) * cpg, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, co] += np.einsum("nchw,c->nhw", patch, w[co, :, i, j])
    return out


def fraction_requant(acc, factor_raw, bias, relu, narrowing, saturate, out_bits, out_signed, acc_bits=32):
    """The apfixed rule element by element with exact fractions."""
    half = 1 << (acc_bits - 1)
    acc = (acc + half) % (1 << acc_bits) - half
    exact = Fraction(acc * factor_raw, 1 << 31)
    if narrowing == "trunc":
        q = math.floor(exact) if exact >= 0 else math.ceil(exact)
    elif narrowing == "floor":
        q = math.floor(exact)
    else:
        q = math.floor(exact + Fraction(1, 2))
    y = q + bias
    if relu:
        y = max(y, 0)
    low, high = int_range(out_bits, out_signed)
    if saturate:
        return min(max(y, low), high)
    y %= 1 << out_bits
    return y - (1 << out_bits) if out_signed and y >= 1 << (out_bits - 1) else y


CONFIGS = [
    # (C, O, kernel, stride, pads, dilation, groups)
    (16, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # pointwise
    (16, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16),  # depthwise 3x3
    (6, 12, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 6),  # depthwise 5x5 stride 2, multiplier 2
    (5, 7, (3, 1), (1, 1), (1, 1, 0, 0), (1, 1), 1),  # 3x1
    (7, 4, (1, 3), (1, 2), (0, 0, 1, 1), (1, 1), 1),  # 1x3, stride (1, 2)
    (4, 6, (3, 3), (2, 1), (0, 1, 2, 0), (2, 2), 2),  # grouped, dilated, asymmetric pads
]


@pytest.mark.parametrize("c, o, kernel, stride, pads, dilation, groups", CONFIGS)
@pytest.mark.parametrize("narrowing, store", [("trunc", "saturate"), ("floor", "wrap"), ("round", "saturate")])
def test_int_conv_matches_numpy_and_exact_fractions(c, o, kernel, stride, pads, dilation, groups, narrowing, store):
    g = torch.Generator().manual_seed(c * 100 + o)
    weight = torch.randint(-127, 128, (o, c // groups, *kernel), generator=g)
    bias = torch.randint(-300, 300, (o,), generator=g)
    factors = [float(f) for f in torch.rand(o, generator=g, dtype=torch.float64) * 0.02 + 1e-4]
    settings = ApFixed(narrowing=narrowing, store=store)
    layer = IntConv2d.apfixed(weight, bias, factors, settings, relu=True, in_signed=True, stride=stride,
                              padding=pads, dilation=dilation, groups=groups)
    x = torch.randint(-128, 128, (2, c, 11, 13), generator=g)
    acc = layer.accumulate(x)
    assert np.array_equal(acc.numpy(), numpy_conv_int(x.numpy(), weight.numpy(), stride, pads, dilation, groups))
    out = layer(x)
    raws = layer.requant.factor.tolist()
    expected = [[fraction_requant(int(a), raws[ch], int(bias[ch]), True, narrowing, store == "saturate", 8, False)
                 for a in acc[:, ch].reshape(-1).tolist()] for ch in range(o)]
    got = [out[:, ch].reshape(-1).tolist() for ch in range(o)]
    assert got == expected


def test_accumulator_wraps_at_acc_bits():
    weight = torch.full((1, 1, 1, 1), 127)
    layer = IntConv2d.apfixed(weight, [0], 0.5, ApFixed(acc_bits=16, store="wrap"), relu=False, out_signed=True)
    x = torch.tensor([[[[255]]]])  # acc = 32385 fits 16 bits; 2 * that would not
    assert int(layer.accumulate(x)) == 32385
    layer2 = IntConv2d.apfixed(torch.full((1, 2, 1, 1), 127), [0], 0.5, ApFixed(acc_bits=16, store="wrap"),
                               relu=False, out_signed=True)
    acc = 2 * 32385 - (1 << 16)  # wrapped accumulator: -764
    expected = fraction_requant(2 * 32385, layer2.requant.factor.item(), 0, False, "round", False, 8, True, 16)
    assert fraction_requant(acc, layer2.requant.factor.item(), 0, False, "round", False, 8, True, 16) == expected
    stats: dict = {}
    layer2.requant(layer2.accumulate(torch.tensor([[[[255]], [[255]]]])), stats)
    assert stats["acc_overflow"] == 1


def test_tflite_layer_matches_exact_fractions():
    block = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 1))
    x = torch.randn(4, 3, 9, 9)
    for rounding in ("double", "single"):
        q = quantize(block, x, "tflite", rounding=rounding)
        codes = q.quantize_input(x)
        layer = q.layers[1]
        inputs = q.layers[0](codes)
        acc = layer.accumulate(inputs) + layer.requant.bias.reshape(1, -1, 1, 1)
        out = layer(inputs)
        zp = layer.out_q.zero_point
        for ch in range(4):
            m, s = int(layer.requant.multiplier[ch]), int(layer.requant.shift[ch])
            for a, got in list(zip(acc[:, ch].reshape(-1).tolist(), out[:, ch].reshape(-1).tolist()))[:60]:
                exact = Fraction(a * m, 1 << (31 - s))
                if rounding == "single":
                    value = math.floor(exact + Fraction(1, 2))
                else:  # half up at 2**-31, then half away from zero at 2**shift
                    high = math.floor(Fraction(a * m, 1 << 31) + Fraction(1, 2))
                    v = Fraction(high, 1 << -s)
                    value = math.floor(abs(v) + Fraction(1, 2)) * (1 if v >= 0 else -1)
                assert got == max(-128, min(127, value + zp))


def _separable_block() -> nn.Module:
    block = nn.Sequential(
        leanconv.DepthwiseSeparableConv2d(16, 32, 3, padding=1, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU),
        nn.ReLU(),
    )
    randomize_norms(block, torch.Generator().manual_seed(1))
    for m in block.modules():  # moderate BN statistics, like a trained block
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.abs_().add_(0.5)
            m.weight.data.abs_().add_(0.5)
    return block.eval()


def test_separable_block_agrees_with_float_within_one_step():
    block = _separable_block()
    calib = [torch.randn(8, 16, 16, 16) for _ in range(4)]
    test = torch.randn(16, 16, 16, 16)
    shares = {}
    for narrowing in ("round", "trunc"):
        q = quantize(block, calib, "apfixed", narrowing=narrowing)
        report = accuracy_report(q, block, test)
        shares[narrowing] = report.within_one_step
        # the float output recomputed independently: F.conv2d with BN by hand
        dw, bn, pw = block[0].depthwise, block[0].norm, block[0].pointwise
        with torch.no_grad():
            mid = torch.relu(torch.nn.functional.batch_norm(
                torch.nn.functional.conv2d(test, dw.weight, None, 1, 1, 1, 16),
                bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
            reference = torch.relu(torch.nn.functional.conv2d(mid, pw.weight, pw.bias))
        steps = (reference.double() - q(test).double()).abs() / q.output_q.scale
        assert float((steps <= 1).double().mean()) == pytest.approx(report.within_one_step)
    # measured on this block: 89.8% (round), 79.7% (trunc: biased toward zero), tflite 95.3%
    assert shares["round"] >= 0.85, shares
    assert shares["trunc"] >= 0.75, shares
    shares["tflite"] = accuracy_report(quantize(block, calib, "tflite"), block, test).within_one_step
    assert shares["tflite"] >= 0.85, shares
    print("within one step:", {k: f"{v:.1%}" for k, v in shares.items()})


@pytest.fixture(scope="module")
def digits():
    from leanconv.data import load_digits
    from leanconv.models.digits import train_digits_cnn

    data = load_digits()
    torch.manual_seed(0)
    return data, train_digits_cnn(data, epochs=4)


@pytest.mark.parametrize("dialect", ["apfixed", "tflite"])
def test_int8_digits_cnn_loses_at_most_one_point(digits, dialect):
    data, model = digits
    calib = list(data.train_x[:256].split(64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize(model, calib, dialect)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    report = accuracy_report(q, model, data.test_x, data.test_y)
    with torch.no_grad():
        float_accuracy = float((model(data.test_x).argmax(1) == data.test_y).double().mean())
    assert report.float_accuracy == pytest.approx(float_accuracy)
    assert float_accuracy > 0.9
    assert report.int_accuracy >= report.float_accuracy - 0.01, report.to_markdown()
    kinds = [layer.kind for layer in q.layers]
    assert kinds == ["dense"] * 4 + ["pool+linear"]
    if dialect == "apfixed":  # standardized input: int8; ReLU'd maps: uint8, zero point 0
        assert q.layers[0].in_q.ctype == "ap_int<8>" and q.layers[1].in_q.ctype == "ap_uint<8>"
    print(f"{dialect}: {report.to_markdown()}")


def test_hazard_report_counts_saturation_independently():
    block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
    calib = torch.randn(2, 4, 8, 8)
    q = quantize(block, calib, "apfixed")
    x = torch.randn(3, 4, 8, 8) * 3  # beyond the calibrated range: saturates
    report = hazard_report(q, x)
    layer = q.layers[0]
    acc = numpy_conv_int(q.quantize_input(x).numpy(), layer.weight.numpy(), (1, 1), layer.padding, (1, 1), 1)
    raws, bias = layer.requant.factor.tolist(), layer.requant.bias.tolist()
    over = sum(fraction_requant(int(a), raws[ch], bias[ch], True, "round", False, 40, True) > 255
               for ch in range(6) for a in acc[:, ch].reshape(-1))
    row = report.rows[0]
    assert row.saturated == over > 0
    assert row.outputs == acc.size
    assert row.acc_bits_worst == (int((np.abs(layer.weight.numpy()).reshape(6, -1).sum(1) * 128).max())).bit_length() + 1
    assert "saturated" in report.to_markdown()


def test_observers_and_weight_scales_against_numpy():
    values = torch.randn(10_000, dtype=torch.float64)
    mm = MinMaxObserver()
    mm.observe(values[:5000])
    mm.observe(values[5000:])
    assert mm.range() == (float(values.min()), float(values.max()))
    p = PercentileObserver(99.0, max_samples=10_000)
    p.observe(values)
    low, high = p.range()
    assert high == pytest.approx(np.percentile(values.numpy(), 99.0), abs=0.01)
    assert low == pytest.approx(np.percentile(values.numpy(), 1.0), abs=0.01)
    w = torch.randn(5, 3, 3, 3)
    w_q, scale = quantize_weight(w)
    expected_scale = np.abs(w.numpy().reshape(5, -1)).max(1) / 127
    assert np.allclose(scale.numpy(), expected_scale)
    assert np.array_equal(w_q.numpy(), np.clip(np.rint(w.double().numpy() / expected_scale[:, None, None, None]), -127, 127))


def test_save_load_round_trip(tmp_path):
    block = _separable_block()
    x = torch.randn(2, 16, 10, 10)
    q = quantize(block, x, "apfixed", narrowing="floor", store="wrap")
    path = q.save(tmp_path / "q.pt")
    with pytest.raises(FileExistsError, match="pass force=True"):
        q.save(path)
    loaded = QuantizedModel.load(path)
    codes = q.quantize_input(x)
    assert torch.equal(loaded.forward_int(codes), q.forward_int(codes))
    assert loaded.dialect == ApFixed(narrowing="floor", store="wrap")


# ------------------------------------------------------------------------------ bad input


def test_factor_at_or_above_one_is_rejected():
    weight = torch.ones(2, 2, 1, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"conv: factor\[1\]=1.0 must be < 1: ap_fixed<32,1>"):
        IntConv2d.apfixed(weight, [0, 0], [0.5, 1.0])
    # from a float model: an output range far below the input range forces a factor >= 1
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    calib = torch.cat([torch.full((1, 1, 2, 2), -100.0), torch.full((1, 1, 2, 2), 0.01)])
    with pytest.raises(ValueError, match=r"0: factor of output channel 0=.* must be < 1"):
        quantize(model, calib, "apfixed")


def test_channel_mismatch_is_rejected():
    a = IntConv2d.apfixed(torch.ones(4, 3, 1, 1, dtype=torch.int64), [0] * 4, 0.1, name="a")
    b = IntConv2d.apfixed(torch.ones(5, 5, 1, 1, dtype=torch.int64), [0] * 5, 0.1, name="b")
    with pytest.raises(ValueError, match=r"channel mismatch: b takes 5 channels but a gives 4"):
        QuantizedModel([a, b], ApFixed())
    with pytest.raises(ValueError, match=r"a: input has 2 channels, expected 3"):
        a(torch.zeros(1, 2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"a: input codes span \[0, 300\], outside ap_uint<8>"):
        a(torch.tensor([0, 300, 1]).reshape(1, 3, 1, 1))
    with pytest.raises(ValueError, match=r"factor has 2 values, weight has 4 output channels"):
        IntConv2d.apfixed(torch.ones(4, 3, 1, 1, dtype=torch.int64), [0] * 4, [0.1, 0.2])


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


@pytest.mark.parametrize("model, message", [
    (_Residual(), r"unsupported layer: .*does not take only the previous result"),
    (nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sigmoid()), r"unsupported layer: Sigmoid at '1'"),
    (nn.Sequential(nn.Conv2d(3, 3, 1, padding=1, padding_mode="reflect")), r"padding_mode='reflect' \(only 'zeros'\)"),
    (nn.Sequential(nn.Conv2d(3, 3, 1), nn.MaxPool2d(2)), r"unsupported layer: MaxPool2d"),
    (leanconv.ParallelAsymmetricConv2d(3, 4, 3, padding=1), r"unsupported layer"),
])
def test_unsupported_layers_are_named(model, message):
    with pytest.raises(ValueError, match=message):
        quantize(model, torch.randn(2, 3, 8, 8))


def test_bad_arguments_raise_before_work():
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match=r"dialect='int4' must be one of"):
        quantize(model, torch.randn(1, 3, 4, 4), "int4")
    with pytest.raises(ValueError, match=r"observer='mean' must be one of"):
        quantize(model, torch.randn(1, 3, 4, 4), observer="mean")
    with pytest.raises(ValueError, match=r"calib: batch 0 has dtype torch.int64; inputs must be floating point"):
        quantize(model, [torch.zeros(1, 3, 4, 4, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"calib holds no input batches"):
        quantize(model, [])
    with pytest.raises(ValueError, match=r"zero_point=300 must lie in"):
        QParams(0.1, 300)


def test_leanconv_kinds_quantize_exactly_through_their_stages():
    """Every supported kind becomes its integer stages; dynamic 'same' with stride 2 gives asymmetric pads."""
    model = nn.Sequential(
        leanconv.AsymmetricConv2d(3, 8, 3, padding=1, act_layer=nn.ReLU), nn.ReLU(),
        leanconv.DepthwiseConv2d(8, 16, 5, stride=2, padding="same"), nn.ReLU(),
        leanconv.Tucker2Conv2d(16, 8, 3, padding=1, ranks=(4, 4)),
    ).eval()
    x = torch.randn(4, 3, 12, 12)
    q = quantize(model, x, "apfixed", narrowing="round")
    assert [layer.kind for layer in q.layers] == ["asymmetric", "asymmetric", "depthwise", "pointwise", "dense", "pointwise"]
    assert q.layers[2].padding == (1, 2, 1, 2)  # TF 'same' of 12 with k=5, s=2: total 3, extra after
    report = accuracy_report(q, model, torch.randn(4, 3, 12, 12))
    assert report.within_one_step > 0.5


# ------------------------------------------------------------------------------ tampered files

PAYLOAD = 'x\nstatic int pwn = system("touch MARKER");\n//'


def _set(path, value):
    """A tampering: set ``data[path[0]][path[1]]...`` to ``value`` in the saved dict."""
    def tamper(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return tamper


TAMPERINGS = [
    (_set(["layers", 0, "name"], PAYLOAD), r"layers\[0\]\.name='x\\nstatic int pwn = system.* must be a name of "
                                            r"letters, digits, '_' and '\.'"),
    (_set(["layers", 1, "name"], "a b"), r"layers\[1\]\.name='a b' must be a name of"),
    (_set(["layers", 0, "name"], 7), r"layers\[0\]\.name=7 must be a name of"),
    (_set(["input_shape"], [3, "8", 8]), r"input_shape\[1\]='8' must be an int in \[1, 1048576\]"),
    (_set(["input_shape"], [3, 8.0, 8]), r"input_shape\[1\]=8.0 must be an int"),
    (_set(["input_shape"], "3,8,8"), r"input_shape='3,8,8' must be a list of ints >= 1"),
    (_set(["layers", 0, "stride"], ["1", 1]), r"layers\[0\]: stride=\['1', 1\] must be an int or a pair of ints"),
    (_set(["layers", 0, "padding"], [1, 1, 1, "1"]), r"layers\[0\]: padding=\[1, 1, 1, '1'\] must hold ints >= 0"),
    (_set(["layers", 0, "groups"], "1"), r"layers\[0\]: groups='1' must be an int >= 1"),
    (_set(["layers", 0, "weight"], torch.zeros(4, 3, 3, 3)), r"layers\[0\]: 0: weight must be a 4-D integer tensor"),
    (_set(["layers", 0, "in_q", "bits"], "8> x; //"), r"layers\[0\]\.in_q: bits='8> x; //' must be an int in \[2, 32\]"),
    (_set(["layers", 0, "in_q", "scale"], "0.1"), r"layers\[0\]\.in_q: scale='0.1' must be a finite real number"),
    (_set(["layers", 0, "in_q", "signed"], 1), r"layers\[0\]\.in_q: signed=1 must be True or False"),
    (_set(["input_q", "zero_point"], 0.5), r"input_q: zero_point=0.5 must lie in the integer range"),
    (_set(["layers", 0, "requant", "relu"], "yes"), r"layers\[0\]\.requant: relu='yes' must be True or False"),
    (_set(["layers", 0, "requant", "factor"], torch.full((4,), 1e6)),
     r"layers\[0\]\.requant: factor must be a tensor of integers, got dtype torch.float32"),
    (_set(["layers", 0, "requant", "bias"], ["a"] * 4), r"layers\[0\]\.requant: bias must be a tensor of integers"),
    (_set(["layers", 0, "requant", "out", "bits"], 99), r"layers\[0\]\.requant\.out: bits=99 must be an int in"),
    (_set(["layers", 0, "requant", "evil"], 1), r"layers\[0\]\.requant has unknown field\(s\) \['evil'\]"),
    (_set(["layers", 1, "pool"], "16"), r"layers\[1\]: pool='16' must be an int >= 1"),
    (_set(["layers", 1, "type"], "python"), r"layers\[1\]\.type='python' must be one of \('conv', 'linear'\)"),
    (_set(["layers", 0, "code"], "x"), r"layers\[0\] has unknown field\(s\) \['code'\]"),
    (_set(["dialect", "narrowing"], "round\n"), r"narrowing='round\\n' must be one of \('trunc', 'floor', 'round'\)"),
    (_set(["dialect", "acc_bits"], "32"), r"acc_bits='32' must be an int in \[16, 32\]"),
    (_set(["dialect", "evil"], 1), r"dialect has unknown field\(s\) \['evil'\]"),
    (_set(["dialect", "dialect"], "apfixed; rm"), r"dialect='apfixed; rm' must be one of \('apfixed', 'tflite'\)"),
    (_set(["source"], "a\nb"), r"source='a\\nb' must be printable text"),
    (_set(["layers"], "abc"), r"layers=str must be a list of layer dicts"),
    (lambda data: data["layers"][0].pop("requant"), r"layers\[0\] lacks the field\(s\) \['requant'\]"),
]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A real quantized conv + pooled linear model, saved: the file tampered with below."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    q = quantize(model, torch.randn(4, 3, 8, 8))
    path = q.save(tmp_path_factory.mktemp("saved") / "qmodel.pt")
    QuantizedModel.load(path)  # the untampered file loads: every refusal below comes from the tampering
    return path


@pytest.mark.parametrize("tamper, message", TAMPERINGS)
def test_load_refuses_a_tampered_file(saved_model, tmp_path, tamper, message):
    data = torch.load(saved_model, weights_only=True)
    tamper(data)
    torch.save(data, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match=message):
        QuantizedModel.load(tmp_path / "tampered.pt")


def test_load_refuses_tampered_tflite_constants(tmp_path):
    q = quantize(nn.Sequential(nn.Conv2d(3, 4, 1)), torch.randn(2, 3, 4, 4), "tflite")
    assert QuantizedModel.from_dict(q.to_dict()).dialect == q.dialect
    for key, value, message in [("shift", torch.full((4,), 99), r"shift values must be in \[-31, 30\]"),
                                ("multiplier", torch.full((4,), 5), r"multiplier values must be in \[2\*\*30"),
                                ("multiplier", torch.full((4,), 2.0**30), r"multiplier must be a tensor of integers")]:
        data = q.to_dict()
        data["layers"][0]["requant"][key] = value
        with pytest.raises(ValueError, match=r"layers\[0\]\.requant: " + message):
            QuantizedModel.from_dict(data)


class _DashedPath(nn.Module):
    """A module path with a character no generated code may hold."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleDict({"conv-1": nn.Conv2d(2, 2, 1)})

    def forward(self, x):
        return self.convs["conv-1"](x)


def test_layer_names_and_flags_are_checked_when_built():
    weight = torch.ones(2, 2, 1, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"name='a;b' must be a name of letters, digits"):
        IntConv2d.apfixed(weight, [0, 0], 0.5, name="a;b")
    with pytest.raises(ValueError, match=r"relu=1 must be True or False"):
        IntConv2d.apfixed(weight, [0, 0], 0.5, relu=1)
    with pytest.raises(ValueError, match=r"settings \['rounding'\] are not settings of the apfixed dialect"):
        quantize(nn.Sequential(nn.Conv2d(2, 2, 1)), torch.randn(1, 2, 4, 4), "apfixed", rounding="single")
    with pytest.raises(ValueError, match=r"layer path='convs\.conv-1' must be a name of letters, digits"):
        quantize(_DashedPath(), torch.randn(1, 2, 4, 4))
    layer = IntConv2d.apfixed(weight, [0, 0], 0.5, name="features.0.conv")
    q = QuantizedModel([layer], ApFixed(), input_shape=(2, 4, 4))
    layer.name = "features.0\nconv"  # changed after it was built: check() sees it
    with pytest.raises(ValueError, match=r"layers\[0\]: name='features.0\\nconv' must be a name of"):
        q.check()


class _FunctionalHead(nn.Module):
    """relu as a method and as a function, torch.flatten: the chain trace_stages must accept."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(4, 2)

    def forward(self, x):
        return torch.nn.functional.relu(self.fc(torch.flatten(self.pool(self.conv(x).relu_()), 1)))


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x, y):
        return self.conv(x)


def test_trace_stages_reads_the_chain_and_names_what_breaks_it():
    from leanconv.quant.quantization import trace_stages

    stages = trace_stages(_FunctionalHead())
    assert [(s.path, s.relu, s.pool) for s in stages] == [("conv", True, False), ("fc", True, True)]
    conv = nn.Conv2d(3, 3, 1)
    for model, message in [
        (_TwoInputs(), r"a second model input \(fx node 'y'\)"),
        (nn.Sequential(conv, nn.AdaptiveAvgPool2d(1)), r"global pooling at the end must be followed by flatten"),
        (nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 3, 1)), r"conv 2 after global pooling"),
        (nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Linear(3, 2)), r"Linear 2 on the unflattened pooled map"),
        (nn.Sequential(conv, nn.Flatten(), nn.Linear(3, 2)), r"flatten of a feature map that was not globally pooled"),
        (nn.Sequential(conv, nn.BatchNorm2d(3)), r"BatchNorm 1 that could not be folded"),
        (nn.Sequential(conv, nn.ReLU(), nn.ReLU()), r"a ReLU that does not directly follow a conv or linear"),
        (nn.Sequential(conv, nn.AdaptiveAvgPool2d(2)), r"AdaptiveAvgPool2d at '1'"),
        (nn.Sequential(nn.Identity(), nn.Dropout()), r"the model has no conv or linear layer to quantize"),
    ]:
        with pytest.raises(ValueError, match=message):
            trace_stages(model)

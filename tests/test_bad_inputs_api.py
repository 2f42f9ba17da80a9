"""Bad inputs to the Python API, one row each: every row names the exception type and a piece of
text the message must hold (the argument's name), and the message must be one line.

Rows come from the bad-inputs audit (shared/audits/bad-inputs-2026-11-30.md) and from going
through each public entry point's arguments. A few rows keep PyTorch's own error (``TORCH``):
there PyTorch's message already says what is wrong (docs/bad-inputs.md says why each is
acceptable). ``ACCEPTED`` lists inputs the audit flagged that are valid by design; each is
checked against an independent reference so that none is silently wrong.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional

import pytest
import torch
from torch import nn

import leanconv
from leanconv import models
from leanconv.data import load_data
from leanconv.quant import quantize
from leanconv.train.distillation import distill


class Row(NamedTuple):
    """One bad input: what is called, the exception expected and text its message must hold."""

    id: str
    call: Callable[[Path], Any]
    error: Any  # an exception type, or a tuple of them
    needle: str
    owner: Optional[str] = None  # library file whose fix is pending (row is xfail until then)


def digits() -> nn.Module:
    torch.manual_seed(0)
    return models.create("digits_cnn").eval()


def x(n: int = 2, c: int = 1, size: int = 32) -> torch.Tensor:
    return torch.randn(n, c, size, size)


def digits_with(edit: Callable[[nn.Module], None]) -> nn.Module:
    model = digits()
    with torch.no_grad():
        edit(model)
    return model


def conv2_weight(value: float) -> Callable[[nn.Module], None]:
    """Fill conv2's weight (conv1 is the stem, which convert keeps dense)."""
    return lambda m: m.features.conv2.conv.weight.fill_(value)


def linear_only() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 4))


def plan_file(tmp: Path, text: str) -> Path:
    path = tmp / "plan.json"
    path.write_text(text)
    return path


def good_plan(**edits: Any) -> str:
    """A valid digits_cnn plan (dsconv, depth multiplier 1 on conv1), with ``edits`` applied."""
    entry = {"kind": "dsconv", "options": {"depth_multiplier": 1}}
    plan = {"version": 1, "target": "dsconv", "layers": {"features.conv1.conv": entry}}
    for key, value in edits.items():
        if key.startswith("entry_"):
            entry[key[6:]] = value
        elif key.startswith("option_"):
            entry["options"][key[7:]] = value
        else:
            plan[key] = value
    return json.dumps(plan)


def without(text: str, key: str) -> str:
    plan = json.loads(text)
    if key == "options":
        del plan["layers"]["features.conv1.conv"]["options"]
    else:
        del plan[key]
    return json.dumps(plan)


def apply(text: str) -> Callable[[Path], Any]:
    return lambda tmp: leanconv.apply_plan(digits(), plan_file(tmp, text))


def convert(**kwargs: Any) -> Callable[[Path], Any]:
    return lambda tmp: leanconv.convert(digits(), **kwargs)


def tiny() -> nn.Module:
    """A stem and one convertible 3x3 conv: budgets and refits on it take milliseconds."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()


def convert_tiny(**kwargs: Any) -> Callable[[Path], Any]:
    kwargs.setdefault("input_size", (1, 1, 8, 8))
    return lambda tmp: leanconv.convert(tiny(), **kwargs)


def convert_model(make: Callable[[], Any], **kwargs: Any) -> Callable[[Path], Any]:
    """convert on what ``make()`` returns (a model, or something that is not one)."""
    return lambda tmp: leanconv.convert(make(), **kwargs)


V = ValueError
T = TypeError
TV = (TypeError, ValueError)  # "not a module": convert says TypeError, the others ValueError

CONVERT: List[Row] = [
    Row("convert rank=0", convert(rank=0), V, "rank"),
    Row("convert rank=-1", convert(rank=-1), V, "rank"),
    Row("convert rank=1.5", convert(rank=1.5), V, "rank"),
    Row("convert rank='1'", convert(rank="1"), V, "rank"),
    Row("convert rank=True", convert(rank=True), V, "rank"),
    Row("convert tucker2 rank=(0, 4)", convert(to="tucker2", rank=(0, 4)), V, "rank"),
    Row("convert tucker2 rank=(4, 4, 4)", convert(to="tucker2", rank=(4, 4, 4)), V, "rank"),
    Row("convert dsconv rank=(1, 1)", convert(rank=(1, 1)), V, "rank"),
    Row("convert grouped rank=0", convert(to="grouped", rank=0), V, "rank"),
    Row("convert grouped energy=0.9", convert(to="grouped", energy=0.9), V, "grouped"),
    Row("convert energy=0", convert(energy=0), V, "energy"),
    Row("convert energy=1.5", convert(energy=1.5), V, "energy"),
    Row("convert energy=-0.1", convert(energy=-0.1), V, "energy"),
    Row("convert energy=nan", convert(energy=math.nan), V, "energy"),
    Row("convert energy='high'", convert(energy="high"), V, "energy"),
    Row("convert mac_budget=0", convert_tiny(mac_budget=0), V, "mac_budget"),
    Row("convert mac_budget=-5", convert_tiny(mac_budget=-5), V, "mac_budget"),
    Row("convert mac_budget='x'", convert_tiny(mac_budget="x"), V, "mac_budget"),
    Row("convert mac_budget without input_size", convert(mac_budget=10**6), V, "input_size"),
    Row("convert latency_budget=inf", convert(latency_budget=math.inf, input_size=(1, 1, 32, 32)), V,
        "latency_budget"),
    Row("convert latency_budget=0", convert(latency_budget=0.0, input_size=(1, 1, 32, 32)), V, "latency_budget"),
    Row("convert latency_budget=-1", convert(latency_budget=-1.0, input_size=(1, 1, 32, 32)), V, "latency_budget"),
    Row("convert latency_budget=nan", convert(latency_budget=math.nan, input_size=(1, 1, 32, 32)), V,
        "latency_budget"),
    Row("convert rank and energy", convert(rank=1, energy=0.5), V, "at most one"),
    Row("convert to='bogus'", convert(to="bogus"), V, "to="),
    Row("convert to=5", convert(to=5), V, "to="),
    Row("convert to='transposed'", convert(to="transposed"), V, "to="),
    Row("convert order='bogus'", convert(order="bogus"), V, "order"),
    Row("convert tucker2 order='pointwise_first'", convert(to="tucker2", order="pointwise_first"), V, "order"),
    Row("convert core='bogus'", convert(to="tucker2", core="bogus"), V, "core"),
    Row("convert permute='yes'", convert(to="grouped", rank=2, permute="yes"), V, "permute"),
    Row("convert include=5", convert(include=5), V, "include"),
    Row("convert exclude=[1]", convert(exclude=[1]), V, "exclude"),
    Row("convert input_size=(1, 3, 32, 32)", convert(rank=1, calib=[x()], input_size=(1, 3, 32, 32)), V, "input"),
    Row("convert input_size=(0, 1, 32, 32)", convert_tiny(mac_budget=10**6, input_size=(0, 1, 8, 8)), V,
        "input_size"),
    Row("convert input_size='abc'", convert(mac_budget=10**6, input_size="abc"), V, "input_size"),
    Row("convert calib int tensor", convert(rank=1, calib=[torch.ones(2, 1, 32, 32, dtype=torch.long)]), V,
        "calib"),
    Row("convert calib with NaN", convert(rank=1, calib=[torch.full((2, 1, 32, 32), math.nan)]), V, "calib"),
    Row("convert calib with inf", convert(rank=1, calib=[torch.full((2, 1, 32, 32), math.inf)]), V, "calib"),
    Row("convert calib wrong channel count", convert(rank=1, calib=[x(c=3)]), V, "channels"),
    Row("convert calib a string", convert(rank=1, calib="digits"), V, "calib"),
    Row("convert calib an int", convert(rank=1, calib=5), V, "calib"),
    Row("convert calib empty list", convert(rank=1, calib=[]), V, "calib"),
    Row("convert calib list of strings", convert(rank=1, calib=["a", "b"]), V, "calib"),
    Row("convert calib dicts without a tensor", convert(rank=1, calib=[{"label": 1}]), V, "calib"),
    Row("convert model a string", convert_model(lambda: "digits_cnn", rank=1), T, "model"),
    Row("convert model None", convert_model(lambda: None, rank=1), T, "model"),
    Row("convert model a class", convert_model(lambda: models.DigitsCNN, rank=1), T, "model"),
    Row("convert NaN weights", convert_model(lambda: digits_with(conv2_weight(math.nan)), rank=1), V,
        "features.conv2"),
    Row("convert inf weights", convert_model(lambda: digits_with(conv2_weight(math.inf)), rank=1), V,
        "features.conv2"),
    Row("convert meta-device model", convert_model(lambda: digits().to("meta"), rank=1), V, "meta"),
    Row("convert inplace='no'", convert(rank=1, inplace="no"), V, "inplace"),
]


def auto(**kwargs: Any) -> Callable[[Path], Any]:
    """convert(to='auto') of the tiny model at 8x8 on onnxruntime for a 2x speedup, with ``kwargs``
    changed (None drops an argument): every row is refused before anything is measured."""
    request = dict(to="auto", target="onnxruntime", target_speedup=2, input_size=(1, 1, 8, 8))
    request.update(kwargs)
    return lambda tmp: leanconv.convert(tiny(), **{k: v for k, v in request.items() if v is not None})


AUTO: List[Row] = [
    Row("convert auto without target", auto(target=None), V, "target"),
    Row("convert auto target=5", auto(target=5), V, "target"),
    Row("convert auto target='nope'", auto(target="nope"), V, "target"),
    Row("convert auto precision='fp64'", auto(precision="fp64"), V, "precision"),
    Row("convert auto precision=32", auto(precision=32), V, "precision"),
    Row("convert auto onnxruntime precision='bf16'", auto(precision="bf16"), V, "bf16"),
    Row("convert auto torch-compile precision='int8'", auto(target="torch-compile", precision="int8"), V, "int8"),
    Row("convert auto target_speedup=0", auto(target_speedup=0), V, "target_speedup"),
    Row("convert auto target_speedup=-1", auto(target_speedup=-1), V, "target_speedup"),
    Row("convert auto target_speedup=nan", auto(target_speedup=math.nan), V, "target_speedup"),
    Row("convert auto target_speedup=inf", auto(target_speedup=math.inf), V, "target_speedup"),
    Row("convert auto target_speedup='2'", auto(target_speedup="2"), V, "target_speedup"),
    Row("convert auto target_speedup=True", auto(target_speedup=True), V, "target_speedup"),
    Row("convert auto latency_budget=0", auto(target_speedup=None, latency_budget=0.0), V, "latency_budget"),
    Row("convert auto target_speedup and latency_budget", auto(latency_budget=1.0), V, "exactly one"),
    Row("convert auto neither target_speedup nor latency_budget", auto(target_speedup=None), V, "exactly one"),
    Row("convert auto without input_size", auto(input_size=None), V, "input_size"),
    Row("convert auto rank=1", auto(rank=1), V, "rank"),
    Row("convert auto energy=0.9", auto(energy=0.9), V, "energy"),
    Row("convert auto mac_budget", auto(mac_budget=1000), V, "mac_budget"),
    Row("convert auto order='auto'", auto(order="auto"), V, "order"),
    Row("convert auto core='asymmetric'", auto(core="asymmetric"), V, "core"),
    Row("convert auto permute=True", auto(permute=True), V, "permute"),
    Row("convert auto kinds=['nope']", auto(kinds=["nope"]), V, "kinds"),
    Row("convert auto kinds=['dense']", auto(kinds=["dense"]), V, "kinds"),
    Row("convert auto kinds='dsconv'", auto(kinds="dsconv"), V, "kinds"),
    Row("convert auto kinds=[]", auto(kinds=[]), V, "kinds"),
    Row("convert auto accept_slower='yes'", auto(accept_slower="yes"), V, "accept_slower"),
    Row("convert auto threads=0", auto(threads=0), V, "threads"),
    Row("convert auto threads=1.5", auto(threads=1.5), V, "threads"),
    Row("convert dsconv target_speedup=2", convert_tiny(target_speedup=2), V, "target_speedup"),
    Row("convert dsconv target='onnxruntime'", convert_tiny(target="onnxruntime"), V, "target"),
    Row("convert dsconv precision='fp32'", convert_tiny(precision="fp32"), V, "precision"),
    Row("convert dsconv kinds=['dsconv']", convert_tiny(kinds=["dsconv"]), V, "kinds"),
    Row("convert dsconv accept_slower=True", convert_tiny(accept_slower=True), V, "accept_slower"),
]

PROFILE: List[Row] = [
    Row("profile model a string", lambda t: leanconv.profile("digits_cnn", (1, 1, 32, 32)), TV, "model"),
    Row("profile model None", lambda t: leanconv.profile(None, (1, 1, 32, 32)), TV, "model"),
    Row("profile 3-channel input to digits", lambda t: leanconv.profile(digits(), (1, 3, 32, 32)), V, "input"),
    Row("profile input_size with a 0", lambda t: leanconv.profile(digits(), (1, 1, 0, 32)), V, "input_size"),
    Row("profile input_size=-1", lambda t: leanconv.profile(digits(), -1), V, "input_size"),
    Row("profile input_size='abc'", lambda t: leanconv.profile(digits(), "abc"), V, "input_size"),
    Row("profile input_size=(1, 1, 32)", lambda t: leanconv.profile(digits(), (1, 1, 32)), V, "input"),
    Row("profile two inputs for a one-input model",
        lambda t: leanconv.profile(digits(), [(1, 1, 32, 32), (1, 1, 8, 8)]), V, "input"),
    Row("profile no input at all", lambda t: leanconv.profile(digits()), V, "input"),
    Row("profile batch_size=0", lambda t: leanconv.profile(digits(), (1, 32, 32), batch_size=0), V, "batch_size"),
    Row("profile batch_size=-2", lambda t: leanconv.profile(digits(), (1, 32, 32), batch_size=-2), V,
        "batch_size"),
    Row("profile batch_size=1.5", lambda t: leanconv.profile(digits(), (1, 32, 32), batch_size=1.5), V,
        "batch_size"),
    Row("profile device='bogus'", lambda t: leanconv.profile(digits(), (1, 1, 32, 32), device="bogus"), V,
        "device"),
    Row("profile dtype='float'", lambda t: leanconv.profile(digits(), (1, 1, 32, 32), dtype="float"), V, "dtype"),
    Row("profile repeats=0", lambda t: leanconv.profile(digits(), (1, 1, 8, 8), device="cpu",
                                                        measure_latency=True, repeats=0), V, "repeats"),
    Row("profile inputs a string", lambda t: leanconv.profile(digits(), inputs="abc"), V, "inputs"),
]

COMPARE: List[Row] = [
    Row("compare in_channels=0", lambda t: leanconv.compare(0, 8, 3, 8), V, "in_channels"),
    Row("compare in_channels=-1", lambda t: leanconv.compare(-1, 8, 3, 8), V, "in_channels"),
    Row("compare in_channels=1.5", lambda t: leanconv.compare(1.5, 8, 3, 8), V, "in_channels"),
    Row("compare out_channels=0", lambda t: leanconv.compare(8, 0, 3, 8), V, "out_channels"),
    Row("compare kernel_size=0", lambda t: leanconv.compare(8, 8, 0, 8), V, "kernel_size"),
    Row("compare kernel larger than input, valid", lambda t: leanconv.compare(8, 8, 5, 3, padding="valid"), V,
        "too small"),
    Row("compare input_size=(8,)", lambda t: leanconv.compare(8, 8, 3, (8,)), V, "input_size"),
    Row("compare input_size=0", lambda t: leanconv.compare(8, 8, 3, 0), V, "input_size"),
    Row("compare stride=0", lambda t: leanconv.compare(8, 8, 3, 8, stride=0), V, "stride"),
    Row("compare padding=-1", lambda t: leanconv.compare(8, 8, 3, 8, padding=-1), V, "padding"),
    Row("compare padding='bogus'", lambda t: leanconv.compare(8, 8, 3, 8, padding="bogus"), V, "padding"),
    Row("compare dilation=0", lambda t: leanconv.compare(8, 8, 3, 8, dilation=0), V, "dilation"),
    Row("compare kinds=['bogus']", lambda t: leanconv.compare(8, 8, 3, 8, kinds=["bogus"]), V, "kinds"),
    Row("compare kinds=5", lambda t: leanconv.compare(8, 8, 3, 8, kinds=5), V, "kinds"),
    Row("compare upsample=0", lambda t: leanconv.compare(8, 8, 3, 8, upsample=0), V, "upsample"),
    Row("compare batch_size=0", lambda t: leanconv.compare(8, 8, 3, 8, batch_size=0), V, "batch_size"),
    Row("compare min_run_time=0 with measure", lambda t: leanconv.compare(8, 8, 3, 8, measure=True, min_run_time=0),
        V, "min_run_time"),
]

def explain(kind: str, shape: tuple, **kwargs: Any) -> Callable[[Path], Any]:
    """explain one ``kind`` on ``shape`` (in_channels from the shape, 3x3 unless given)."""
    kwargs.setdefault("kernel_size", 3)
    return lambda tmp: leanconv.explain(kind, shape, in_channels=shape[-3], **kwargs)


EXPLAIN: List[Row] = [
    Row("explain kind 'bogus'", explain("bogus", (1, 8, 8, 8), out_channels=8), V, "bogus"),
    Row("explain input_size=(32, 56)", lambda t: leanconv.explain("dsconv", (32, 56), in_channels=56, kernel_size=3,
                                                                  out_channels=64), V, "input_size"),
    Row("explain out_channels=0", explain("dsconv", (1, 8, 8, 8), out_channels=0), V, "out_channels"),
    Row("explain depthwise 32 -> 48", explain("depthwise", (1, 32, 8, 8), out_channels=48), V, "out_channels"),
    Row("explain depth_multiplier='abc'", explain("dsconv", (1, 8, 8, 8), out_channels=8, depth_multiplier="abc"), V,
        "depth_multiplier"),
    Row("explain option bogus=1", explain("dsconv", (1, 8, 8, 8), out_channels=8, bogus=1), V, "bogus"),
    Row("explain padding=-1", explain("dsconv", (1, 8, 8, 8), out_channels=8, padding=-1), V, "padding"),
    Row("explain lang='fr'", explain("dsconv", (1, 8, 8, 8), out_channels=8, lang="fr"), V, "lang"),
    Row("explain conv=5", lambda t: leanconv.explain(5, (1, 8, 8, 8)), TV, "conv"),
    Row("explain module with wrong input channels", lambda t: leanconv.explain(nn.Conv2d(8, 8, 3), (1, 4, 8, 8)), V,
        "input"),
]


def negative_var(model: nn.Module) -> None:
    model.features.conv1.norm.running_var[0] = -1.0


FUSE: List[Row] = [
    Row("fuse model a string", lambda t: leanconv.fuse("digits_cnn"), TV, "model"),
    Row("fuse model None", lambda t: leanconv.fuse(None), TV, "model"),
    Row("fuse BN running_var negative", lambda t: leanconv.fuse(digits_with(negative_var)), V, "running_var"),
    Row("fuse BN running_var NaN", lambda t: leanconv.fuse(digits_with(
        lambda m: m.features.conv1.norm.running_var.fill_(math.nan))), V, "running_var"),
    Row("fuse meta-device model", lambda t: leanconv.fuse(digits().to("meta")), V, "meta"),
    Row("fuse inplace='no'", lambda t: leanconv.fuse(digits(), inplace="no"), V, "inplace"),
]

QUANT_BLOCK = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()).eval()


def quant(calib: Any = None, model: Any = None, **kwargs: Any) -> Callable[[Path], Any]:
    return lambda tmp: quantize(QUANT_BLOCK if model is None else model, torch.randn(4, 3, 8, 8)
                                if calib is None else calib, **kwargs)


QUANTIZE: List[Row] = [
    Row("quantize calib wrong channel count", quant(torch.randn(4, 5, 8, 8)), V, "channels"),
    Row("quantize calib all zeros", quant(torch.zeros(4, 3, 8, 8)), V, "calib"),
    Row("quantize calib with NaN", quant(torch.full((4, 3, 8, 8), math.nan)), V, "calib"),
    Row("quantize calib int tensor", quant(torch.ones(4, 3, 8, 8, dtype=torch.long)), V, "calib"),
    Row("quantize calib empty list", quant([]), V, "calib"),
    Row("quantize calib a string", quant("digits"), V, "calib"),
    Row("quantize calib 0 images", quant(torch.randn(0, 3, 8, 8)), V, "calib"),
    Row("quantize model a string", quant(model="digits_cnn"), TV, "model"),
    Row("quantize dialect='bogus'", quant(dialect="bogus"), V, "dialect"),
    Row("quantize observer='bogus'", quant(observer="bogus"), V, "observer"),
    Row("quantize percentile=200", quant(observer="percentile", percentile=200), V, "percentile"),
    Row("quantize percentile=10", quant(observer="percentile", percentile=10), V, "percentile"),
    Row("quantize min_factor_bits=-1", quant(min_factor_bits=-1), V, "min_factor_bits"),
    Row("quantize min_factor_bits=40", quant(min_factor_bits=40), V, "min_factor_bits"),
    Row("quantize narrowing='bogus'", quant(narrowing="bogus"), V, "narrowing"),
    Row("quantize store='bogus'", quant(store="bogus"), V, "store"),
    Row("quantize tflite rounding='bogus'", quant(dialect="tflite", rounding="bogus"), V, "rounding"),
    Row("quantize unknown setting", quant(bogus=1), V, "bogus"),
    Row("quantize unsupported layer (MaxPool)", quant(model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)).eval()),
        V, "MaxPool2d"),
]

PLAN: List[Row] = [
    Row("apply_plan truncated plan.json", apply(good_plan()[:60]), V, "plan"),
    Row("apply_plan missing 'layers'", apply(without(good_plan(), "layers")), V, "layers"),
    Row("apply_plan a list", apply("[1, 2]"), V, "plan"),
    Row("apply_plan option device='meta'", apply(good_plan(option_device="meta")), V, "device"),
    Row("apply_plan 'layers' a list", apply(good_plan(layers=[1])), V, "layers"),
    Row("apply_plan kind 'bogus'", apply(good_plan(entry_kind="bogus")), V, "bogus"),
    Row("apply_plan kind 'transposed'", apply(good_plan(entry_kind="transposed")), V, "transposed"),
    Row("apply_plan layer not in the model", apply(json.dumps({"version": 1, "target": "dsconv", "layers": {
        "features.nope": {"kind": "dsconv", "options": {}}}})), V, "features.nope"),
    Row("apply_plan layer is not a conv", apply(json.dumps({"version": 1, "target": "dsconv", "layers": {
        "fc": {"kind": "dsconv", "options": {}}}})), V, "fc"),
    Row("apply_plan version=True", apply(good_plan(version=True)), V, "version"),
    Row("apply_plan version=99", apply(good_plan(version=99)), V, "version"),
    Row("apply_plan depth_multiplier=0", apply(good_plan(option_depth_multiplier=0)), V, "depth_multiplier"),
    Row("apply_plan depth_multiplier=10**9", apply(good_plan(option_depth_multiplier=10**9)), V,
        "depth_multiplier"),
    Row("apply_plan unknown option", apply(good_plan(option_bogus=1)), V, "bogus"),
    Row("apply_plan empty file", apply(""), V, "plan"),
    Row("apply_plan nonexistent file", lambda t: leanconv.apply_plan(digits(), t / "nope.json"), FileNotFoundError,
        "nope.json"),
    Row("apply_plan plan=5", lambda t: leanconv.apply_plan(digits(), 5), TV, "plan"),
    Row("apply_plan model a string", lambda t: leanconv.apply_plan("digits_cnn", plan_file(t, good_plan())), T,
        "model"),
]

TINY = torch.utils.data.TensorDataset(torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,)))


def teach(**kwargs: Any) -> Callable[[Path], Any]:
    data = kwargs.pop("data", [(TINY.tensors[0], TINY.tensors[1])])
    student = kwargs.pop("student", None)
    return lambda tmp: distill(digits() if student is None else student, digits(), data, progress=False,
                              max_steps=1, **kwargs)


DISTILL: List[Row] = [
    Row("distill student a string", teach(student="digits_cnn"), TV, "student"),
    Row("distill data 'nosuch'", teach(data="nosuch"), V, "data"),
    Row("distill data an int", teach(data=5), V, "data"),
    Row("distill data 3-channel images", teach(data=[(x(8, 3), torch.zeros(8, dtype=torch.long))]), V, "channels"),
    Row("distill epochs=-1", teach(epochs=-1), V, "epochs"),
    Row("distill lr=0", teach(lr=0.0), V, "lr"),
    Row("distill lr=-1", teach(lr=-1.0), V, "lr"),
    Row("distill lr=nan", teach(lr=math.nan), V, "lr"),
    Row("distill temperature=0", teach(temperature=0.0), V, "temperature"),
    Row("distill alpha=1.5", teach(alpha=1.5), V, "alpha"),
    Row("distill alpha=-0.1", teach(alpha=-0.1), V, "alpha"),
    Row("distill batch_size=0", teach(batch_size=0), V, "batch_size"),
    Row("distill max_steps=0", lambda t: distill(digits(), digits(), [TINY.tensors], progress=False, max_steps=0),
        V, "max_steps"),
    Row("distill feature_paths=['nope']", teach(feature_paths=["nope"]), V, "nope"),
    Row("distill feature_weight=-1", teach(feature_weight=-1.0), V, "feature_weight"),
    Row("distill num_workers=-1", teach(num_workers=-1), V, "num_workers"),
]


def rgb() -> nn.Module:
    """A 3-channel model (the digits are 1-channel images)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()


def opt(data: Any = "splits", model: Callable[[], nn.Module] = digits, **kwargs: Any) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        given = SPLITS() if isinstance(data, str) and data == "splits" else data
        options = {"rank": 1, "epochs": 0, "sweep": False, "progress": False, "min_run_time": 0.01,
                   "batch_sizes": (1,), "calib_images": 8}
        options.update(kwargs)
        options = {k: v for k, v in options.items() if v is not Ellipsis}
        return leanconv.optimize(model(), given, **options)

    return run


@functools.lru_cache(maxsize=1)
def SPLITS() -> Any:
    return load_data("digits")


OPTIMIZE: List[Row] = [
    Row("optimize data=5", opt(data=5), V, "data"),
    Row("optimize data='nosuch'", opt(data="nosuch"), V, "data"),
    Row("optimize rank=0", opt(rank=0), V, "rank"),
    Row("optimize mac_fraction=2", opt(rank=..., mac_fraction=2.0), V, "mac_fraction"),
    Row("optimize mac_fraction=0", opt(rank=..., mac_fraction=0.0), V, "mac_fraction"),
    Row("optimize mac_fraction='half'", opt(rank=..., mac_fraction="half"), V, "mac_fraction"),
    Row("optimize target_speedup=0", opt(rank=..., target_speedup=0.0), V, "target_speedup"),
    Row("optimize no target", opt(rank=...), V, "rank"),
    Row("optimize rank and mac_fraction", opt(mac_fraction=0.5), V, "mac_fraction"),
    Row("optimize epochs=-1", opt(epochs=-1), V, "epochs"),
    Row("optimize lr=0 with epochs", opt(epochs=1, lr=0.0), V, "lr"),
    Row("optimize alpha=2", opt(alpha=2.0), V, "alpha"),
    Row("optimize calib_images=0", opt(calib_images=0), V, "calib_images"),
    Row("optimize batch_sizes=() with out", lambda t: opt(batch_sizes=(), out=t / "report")(t), V, "batch_sizes"),
    Row("optimize batch_sizes=(0,)", opt(batch_sizes=(0,)), V, "batch_sizes"),
    Row("optimize to='bogus'", opt(to="bogus"), V, "to="),
    Row("optimize min_run_time=0", opt(min_run_time=0.0), V, "min_run_time"),
    Row("optimize 3-channel model on 1-channel data", opt(model=rgb), V, "channels"),
    Row("optimize existing out without force", lambda t: opt(out=_existing(t))(t), FileExistsError, "exists"),
]


def _existing(tmp: Path) -> Path:
    folder = tmp / "exists"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    return folder


def conv(kind: str = "dense", *args: Any, **kwargs: Any) -> Callable[[Path], Any]:
    full = (8, 16, 3) if not args else args
    return lambda tmp: leanconv.create_conv2d(kind, *full, **kwargs)


CREATE: List[Row] = [
    Row("create_conv2d kind 'bogus'", conv("bogus"), V, "bogus"),
    Row("create_conv2d in_channels=0", conv("dense", 0, 16, 3), V, "in_channels"),
    Row("create_conv2d in_channels=1.5", conv("dense", 1.5, 16, 3), V, "in_channels"),
    Row("create_conv2d in_channels='8'", conv("dense", "8", 16, 3), V, "in_channels"),
    Row("create_conv2d out_channels=-1", conv("dense", 8, -1, 3), V, "out_channels"),
    Row("create_conv2d kernel_size=0", conv("dense", 8, 16, 0), V, "kernel_size"),
    Row("create_conv2d kernel_size=(3, 3, 3)", conv("dense", 8, 16, (3, 3, 3)), V, "kernel_size"),
    Row("create_conv2d stride=0", conv(stride=0), V, "stride"),
    Row("create_conv2d padding=-1", conv(padding=-1), V, "padding"),
    Row("create_conv2d padding='bogus'", conv(padding="bogus"), V, "padding"),
    Row("create_conv2d dilation=0", conv(dilation=0), V, "dilation"),
    Row("create_conv2d padding_mode='bogus'", conv(padding_mode="bogus"), V, "padding_mode"),
    Row("create_conv2d grouped groups=3", conv("grouped", 8, 16, 3, groups=3), V, "groups"),
    Row("create_conv2d depthwise 8 -> 12", conv("depthwise", 8, 12, 3), V, "out_channels"),
    Row("create_conv2d dsconv depth_multiplier=0", conv("dsconv", depth_multiplier=0), V, "depth_multiplier"),
    Row("create_conv2d dsconv order='bogus'", conv("dsconv", order="bogus"), V, "order"),
    Row("create_conv2d option bogus=1", conv("dsconv", bogus=1), V, "bogus"),
    Row("create_conv2d tucker2 ranks=(0, 4)", conv("tucker2", ranks=(0, 4)), V, "ranks"),
    Row("create_conv2d transposed output_padding=5", conv("transposed", 8, 16, 3, stride=2, output_padding=5), V,
        "output_padding"),
]

LAYERS: List[Row] = [
    Row("CBAM reduction=0", lambda t: leanconv.CBAM(16, reduction=0), V, "reduction"),
    Row("CBAM variant='bogus'", lambda t: leanconv.CBAM(16, variant="bogus"), V, "variant"),
    Row("CBAM kernel_size=4", lambda t: leanconv.CBAM(16, kernel_size=4), V, "kernel_size"),
    Row("SqueezeExcite channels=0", lambda t: leanconv.SqueezeExcite(0), V, "channels"),
    Row("SqueezeExcite reduction=0", lambda t: leanconv.SqueezeExcite(16, reduction=0), V, "reduction"),
    Row("DepthwiseSeparableConv2d in_channels=0", lambda t: leanconv.DepthwiseSeparableConv2d(0, 8, 3), V,
        "in_channels"),
    Row("Conv2d groups=3 on 8 channels", lambda t: leanconv.Conv2d(8, 16, 3, groups=3), V, "groups"),
    Row("InvertedResidual stride=3", lambda t: leanconv.InvertedResidual(8, 8, stride=3), V, "stride"),
    Row("InvertedResidual expand_ratio=0", lambda t: leanconv.InvertedResidual(8, 8, expand_ratio=0), V,
        "expand_ratio"),
    Row("ASPP rates=()", lambda t: leanconv.ASPP(8, 8, rates=()), V, "rates"),
    Row("ASPP dropout=1.5", lambda t: leanconv.ASPP(8, 8, dropout=1.5), V, "dropout"),
    Row("Tucker2Conv2d core='bogus'", lambda t: leanconv.Tucker2Conv2d(8, 8, 3, core="bogus"), V, "core"),
    Row("ResizeConv2d scale_factor=0", lambda t: leanconv.ResizeConv2d(8, 8, scale_factor=0), V, "scale_factor"),
    Row("ResizeConv2d mode='bogus'", lambda t: leanconv.ResizeConv2d(8, 8, mode="bogus"), V, "mode"),
    Row("Conv2d 3-D input", lambda t: leanconv.Conv2d(8, 8, 3)(torch.randn(8, 9, 9)), V, "input"),
    Row("Conv2d wrong channel count", lambda t: leanconv.Conv2d(8, 8, 3)(torch.randn(1, 7, 9, 9)), V, "channels"),
    Row("DepthwiseSeparableConv2d wrong channel count",
        lambda t: leanconv.DepthwiseSeparableConv2d(8, 8, 3)(torch.randn(1, 4, 9, 9)), V, "channels"),
]

# PyTorch's own message is kept: it already says what is wrong (docs/bad-inputs.md).
R = RuntimeError
TORCH: List[Row] = [
    Row("Conv2d input smaller than kernel", lambda t: leanconv.Conv2d(8, 8, 3)(torch.randn(1, 8, 2, 2)), R,
        "Kernel size can't be greater than actual input size"),
    Row("Conv2d same stride 2 1x1 input reflect", lambda t: leanconv.Conv2d(
        8, 8, 5, stride=2, padding="same", padding_mode="reflect")(torch.randn(1, 8, 1, 1)), R,
        "Padding size should be less than the corresponding input dimension"),
    Row("Conv2d reflect padding 3 on 2x2", lambda t: leanconv.Conv2d(
        8, 8, 3, padding=3, padding_mode="reflect")(torch.randn(1, 8, 2, 2)), R,
        "Padding size should be less than the corresponding input dimension"),
    Row("Conv2d int64 input", lambda t: leanconv.Conv2d(8, 8, 3)(torch.ones(1, 8, 4, 4, dtype=torch.long)), R,
        "should be the same"),
    Row("Conv2d float64 input, float32 weights", lambda t: leanconv.Conv2d(8, 8, 3)(
        torch.randn(1, 8, 4, 4, dtype=torch.float64)), R, "should be the same"),
    Row("Conv2d complex input", lambda t: leanconv.Conv2d(8, 8, 3)(torch.randn(1, 8, 4, 4, dtype=torch.cfloat)),
        R, "should be the same"),
    Row("apply_plan + load_state_dict with the old keys", lambda t: leanconv.apply_plan(
        digits(), plan_file(t, good_plan())).load_state_dict(digits().state_dict()), R, "Missing key(s)"),
]

DATA: List[Row] = [
    Row("load_data folder:/nonexistent", lambda t: load_data("folder:/nonexistent"), V, "/nonexistent"),
    Row("load_data 'imagenet'", lambda t: load_data("imagenet"), V, "data="),
    Row("load_data cifar10:/nonexistent", lambda t: load_data("cifar10:/nonexistent"), V, "/nonexistent"),
    Row("load_data spec=5", lambda t: load_data(5), V, "5"),
    Row("load_data digits size=0", lambda t: load_data("digits", size=0), V, "size"),
    Row("load_data digits test_fraction=1.5", lambda t: load_data("digits", test_fraction=1.5), V,
        "test_fraction"),
    Row("load_data mode='bogus'", lambda t: load_data("digits", mode="bogus"), V, "mode"),
]

GROUPS = {"convert": CONVERT, "convert to='auto'": AUTO, "profile": PROFILE, "compare": COMPARE, "explain": EXPLAIN,
          "fuse": FUSE, "quantize": QUANTIZE, "apply_plan": PLAN, "distill": DISTILL, "optimize": OPTIMIZE,
          "create_conv2d": CREATE, "layers": LAYERS, "data": DATA}
ROWS: List[Row] = [row for rows in GROUPS.values() for row in rows]


# pending rows that today only fail after a long run (a whole conversion or a measurement): not run
# until their owner checks the argument up front
SLOW_PENDING: set = set()


def params(rows: List[Row]) -> List[Any]:
    """Rows as pytest params; a row whose fix is pending in a library file is xfail (strict)."""
    def marks(row: Row) -> List[Any]:
        if not row.owner:
            return []
        return [pytest.mark.xfail(strict=True, run=row.id not in SLOW_PENDING, reason=f"owner: {row.owner}")]

    return [pytest.param(row, id=row.id, marks=marks(row)) for row in rows]


@pytest.mark.parametrize("row", params(ROWS))
def test_a_bad_input_is_one_line_naming_the_argument(row: Row, tmp_path: Path) -> None:
    with pytest.raises(row.error) as info:
        row.call(tmp_path)
    message = str(info.value)
    assert row.needle in message, message
    assert len(message.strip().splitlines()) == 1, message


@pytest.mark.parametrize("row", params(TORCH))
def test_pytorch_s_own_message_where_it_is_already_clear(row: Row, tmp_path: Path) -> None:
    with pytest.raises(row.error) as info:
        row.call(tmp_path)
    assert row.needle in str(info.value), str(info.value)


def test_the_docs_count_these_rows() -> None:
    """docs/bad-inputs.md's "Python API" row: tried, one clear line, PyTorch's own message, not yet
    clear (pending), silently wrong."""
    pending = sum(1 for row in ROWS if row.owner)
    doc = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in doc.read_text(encoding="utf-8").splitlines() if line.startswith("| Python API |")]
    assert len(rows) == 1, rows
    assert [int(cell) for cell in rows[0][1:]] == [len(ROWS) + len(TORCH), len(ROWS) - pending, len(TORCH), pending, 0]


# ------------------------------------------------------------ flagged by the audit, valid by design
# Each is checked against an independent reference, so none is silently wrong.

@pytest.mark.parametrize("options,note", [
    ({"rank": 10000}, "would cost"),
    ({"to": "asymmetric", "rank": 10000}, "would cost"),
    ({"to": "grouped", "rank": 3}, "must be divisible by groups=3"),
])
def test_a_rank_no_layer_can_use_leaves_every_layer_dense_and_says_why(options: dict, note: str) -> None:
    model = digits()
    inputs = x()
    with torch.no_grad():
        expected = model(inputs)
    result = leanconv.convert(model, **options)
    assert dict(result.plan.layers) == {}
    table = [line for line in result.to_markdown().splitlines() if line.startswith("| features.conv")]
    assert len(table) == 3 and all("| no |" in line and note in line for line in table), table
    with torch.no_grad():
        torch.testing.assert_close(result.model(inputs), expected, rtol=0, atol=0)


def test_profile_of_a_model_without_convs_counts_its_linear_macs_and_says_so() -> None:
    report = leanconv.profile(linear_only(), (1, 16))
    assert report.total_macs == 16 * 4  # in_features x out_features at batch 1
    assert any("no convolution" in note for note in report.notes), report.notes


def test_quantize_of_a_training_model_uses_eval_statistics_and_leaves_the_model_training() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    calib = torch.randn(16, 3, 8, 8)
    qmodel = quantize(model, calib)
    assert model.training and model[1].training
    reference = torch.nn.functional.relu(torch.nn.functional.batch_norm(
        torch.nn.functional.conv2d(calib, model[0].weight, model[0].bias), model[1].running_mean,
        model[1].running_var, model[1].weight, model[1].bias, training=False, eps=model[1].eps)).detach()
    error = (qmodel(calib) - reference).abs().max().item()
    assert error < 0.05 * reference.abs().max().item(), error


def test_calibration_as_x_y_tuples_gives_the_conversion_of_the_plain_batches() -> None:
    batches = [x(8, size=8), x(8, size=8)]
    plain = leanconv.convert(tiny(), rank=1, calib=batches)
    assert plain.refitted
    tuples = leanconv.convert(tiny(), rank=1, calib=[(b, torch.zeros(8, dtype=torch.long)) for b in batches])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.cat(batches), torch.zeros(16)),
                                         batch_size=8)
    from_loader = leanconv.convert(tiny(), rank=1, calib=loader)
    probe = x(4, size=8)
    with torch.no_grad():
        expected = plain.model(probe)
        torch.testing.assert_close(tuples.model(probe), expected)
        torch.testing.assert_close(from_loader.model(probe), expected)


def test_cbam_with_a_reduction_above_its_channels_keeps_one_hidden_channel_as_documented() -> None:
    """CBAM's hidden width is max(1, C // reduction) (its docstring): 16 // 32 -> 1, a working gate."""
    cbam = leanconv.CBAM(16, reduction=32).eval()
    assert "max(1, C // reduction)" in type(cbam).__doc__
    assert (cbam.channel_gate.mlp.reduce.out_features, cbam.channel_gate.mlp.expand.in_features) == (1, 1)
    inputs = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        mlp = cbam.channel_gate.mlp
        pooled = [inputs.amax(dim=(2, 3)), inputs.mean(dim=(2, 3))]
        gate = torch.sigmoid(sum(mlp.expand(torch.relu(mlp.reduce(p))) for p in pooled))
        torch.testing.assert_close(cbam.channel_gate(inputs), inputs * gate[:, :, None, None])

"""``leanconv.explain``: what a conv does to shapes and what it costs, with the user's numbers.

For every conv stage of the layer (one for ``nn.Conv2d``, two for a depthwise separable conv,
...): what kind it is, the weight layout, the effective kernel extent ``d*(k-1)+1``, the output
size formula with the numbers substituted, and the params and MACs formulas with numbers. In
English or Chinese (``lang='zh'``). The facts the seed pages got wrong are stated correctly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from leanconv.analysis.counting import ModuleCall, outside_inference_mode, trace_calls, trace_model
from leanconv.analysis.profiling import conv_kind
from leanconv.kinds import get_kind
from leanconv.kinds import create_conv2d

LANGS = ("en", "zh")

_FACTS = {
    "en": {
        "depthwise": [
            "A depthwise conv does not halve the output height: the output size follows the formula above like any conv; only a stride of 2 halves it.",
            "A depthwise conv is not a special case of a pointwise conv: depthwise filters space within each channel, pointwise mixes channels at each pixel.",
        ],
        "dilation": "Dilation enlarges the receptive field to d*(k-1)+1 without more weights; it does not upsample.",
    },
    "zh": {
        "depthwise": [
            "深度卷积不会使输出高度减半：输出尺寸和任何卷积一样按上面的公式计算，只有步长为 2 时才减半。",
            "深度卷积不是逐点卷积的特例：深度卷积在每个通道内做空间滤波，逐点卷积在每个像素上混合通道。",
        ],
        "dilation": "空洞（膨胀）卷积把感受野扩大到 d*(k-1)+1 而不增加权重；它不能上采样。",
    },
}

_WORDS = {
    "en": dict(stage="stage", input="input", weight="weight", layout_conv="layout (C_out, C_in/groups, kh, kw)",
               layout_t="layout (C_in, C_out/groups, kh, kw) for a transposed conv", output="output",
               extent="effective kernel extent d*(k-1)+1", params="params", macs="MACs", same="padding='same': out = ceil(in / stride)",
               same_t="padding='same': out = in * stride", total="total", ratio="vs a dense conv with the same channels and kernel",
               per_input="transposed MACs count input positions", mac_note="MAC = one multiply-accumulate; FLOPs = 2 x MACs"),
    "zh": dict(stage="阶段", input="输入", weight="权重", layout_conv="布局 (C_out, C_in/groups, kh, kw)",
               layout_t="转置卷积的布局为 (C_in, C_out/groups, kh, kw)", output="输出",
               extent="有效卷积核范围 d*(k-1)+1", params="参数量", macs="乘加次数 (MACs)", same="padding='same'：输出 = ceil(输入 / 步长)",
               same_t="padding='same'：输出 = 输入 * 步长", total="合计", ratio="相对于相同通道和卷积核的普通卷积",
               per_input="转置卷积的 MACs 按输入位置计", mac_note="一次 MAC = 一次乘加；FLOPs = 2 x MACs"),
}


@dataclass
class StageExplanation:
    """The facts for one conv stage, with numbers."""

    path: str
    kind: str
    input_shape: Tuple[int, ...]
    weight_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    params: int
    macs: int
    lines: List[str] = field(default_factory=list)


@dataclass
class Explanation:
    """What :func:`explain` returns: per-stage facts and the rendered text (``str()``)."""

    stages: List[StageExplanation]
    total_params: int
    total_macs: int
    dense_macs: Optional[int]
    text: str

    def __str__(self) -> str:
        return self.text


def _dim_lines(call: ModuleCall, module: nn.Module, words: dict) -> List[str]:
    """Output size per dimension with the user's numbers substituted."""
    lines = []
    padding_arg = getattr(module, "padding_arg", None)
    for axis, name in ((0, "H"), (1, "W")):
        n_in = call.input_shape[2 + axis]
        n_out = call.output_shape[2 + axis]
        k, s, d = module.kernel_size[axis], module.stride[axis], module.dilation[axis]
        extent = d * (k - 1) + 1
        if call.transposed:
            p = module.padding[axis]
            op = module.output_padding[axis]
            if padding_arg == "same":
                lines.append(f"{name}_out = {n_in}*{s} = {n_out}   ({words['same_t']})")
            else:
                lines.append(f"{name}_out = ({n_in}-1)*{s} - 2*{p} + {d}*({k}-1) + {op} + 1 = {n_out}")
        elif padding_arg == "same":
            lines.append(f"{name}_out = ceil({n_in}/{s}) = {n_out}   ({words['same']})")
        else:
            p = module.padding[axis] if not isinstance(module.padding, str) else 0
            lines.append(f"{name}_out = floor(({n_in} + 2*{p} - {d}*({k}-1) - 1) / {s}) + 1 = {n_out}")
        if d > 1:
            lines.append(f"  {words['extent']}: {d}*({k}-1)+1 = {extent}")
    return lines


def _stage(call: ModuleCall, lang: str) -> StageExplanation:
    words = _WORDS[lang]
    kind = conv_kind(call)
    module = call.module
    w = call.weight_shape
    kh, kw = w[2], w[3]
    g = call.groups
    bias = getattr(module, "bias", None) is not None
    params = math.prod(w) + (module.out_channels if bias else 0)
    lines = [f"{words['stage']} {call.path or '(conv)'}: {get_kind(kind).explanation[lang]}"]
    lines.append(f"  {words['input']}  {tuple(call.input_shape)}")
    layout = words["layout_t"] if call.transposed else words["layout_conv"]
    lines.append(f"  {words['weight']} {tuple(w)}  [{layout}]")
    lines.append(f"  {words['output']} {tuple(call.output_shape)}")
    lines += ["  " + line for line in _dim_lines(call, module, words)]
    bias_text = f" + {module.out_channels}" if bias else ""
    lines.append(f"  {words['params']} = {' * '.join(map(str, w))}{bias_text} = {params:,}")
    if call.transposed:
        n, c, h, wd = call.input_shape
        lines.append(f"  {words['macs']} = N*C_in*H*W*(C_out/g)*kh*kw = {n}*{c}*{h}*{wd}*{w[1]}*{kh}*{kw} = {call.macs:,}"
                     f"   ({words['per_input']})")
    else:
        n, o, h, wd = call.output_shape
        lines.append(f"  {words['macs']} = N*C_out*H_out*W_out*(C_in/g)*kh*kw = {n}*{o}*{h}*{wd}*{w[1]}*{kh}*{kw} = {call.macs:,}")
    if kind == "grouped":
        lines.append(f"  groups = {g}: {g}x " + ("fewer params and MACs than dense" if lang == "en" else "倍少于普通卷积的参数和 MACs"))
    if kind == "depthwise":
        lines += ["  " + fact for fact in _FACTS[lang]["depthwise"]]
    if max(getattr(module, "dilation", (1, 1))) > 1:
        lines.append("  " + _FACTS[lang]["dilation"])
    return StageExplanation(call.path, kind, call.input_shape, w, call.output_shape, params, call.macs, lines)


@outside_inference_mode
def explain(
    conv: Union[nn.Module, str],
    input_size: Sequence[int],
    lang: str = "en",
    **kind_args,
) -> Explanation:
    """Explain a conv layer (any module whose work is convolutions) on an input of ``input_size``.

    ``conv`` is a module (``nn.Conv2d``, ``nn.ConvTranspose2d``, any leanconv layer) or a kind
    name, in which case ``kind_args`` are ``create_conv2d``'s arguments::

        explain(nn.Conv2d(32, 32, 3, padding=1, groups=32), (1, 32, 56, 56), lang="zh")
        explain("dsconv", (1, 32, 56, 56), in_channels=32, out_channels=64, kernel_size=3)
    """
    if lang not in LANGS:
        raise ValueError(f"lang={lang!r} must be one of {LANGS}")
    size = tuple(input_size)
    if len(size) == 3:
        size = (1, *size)
    if len(size) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
        raise ValueError(f"input_size={tuple(input_size)} must be (N, C, H, W) or (C, H, W) with positive ints")
    if isinstance(conv, str):
        with torch.device("meta"):
            module = create_conv2d(conv, **kind_args)
        calls, output = trace_calls(module.eval(), [torch.empty(size, device="meta")])
    elif isinstance(conv, nn.Module):
        if kind_args:
            raise ValueError(f"keyword arguments {sorted(kind_args)} are only for a kind name, not a module")
        module = conv
        trace = trace_model(conv, [size])
        calls, output = trace.calls, trace.output
    else:
        raise ValueError(f"conv={conv!r} must be an nn.Module or a conv kind name")
    convs = [c for c in calls if c.is_conv]
    if not convs:
        raise ValueError(f"{type(module).__name__} runs no convolution to explain")
    stages = [_stage(c, lang) for c in convs]
    total_params = sum(p.numel() for p in module.parameters())
    total_macs = sum(c.macs for c in calls)
    words = _WORDS[lang]
    lines = [f"{type(module).__name__}: {words['input']} {size} -> {words['output']} {tuple(output.shape)}", ""]
    for s in stages:
        lines += s.lines + [""]
    lines.append(f"{words['total']}: {words['params']} {total_params:,}, {words['macs']} {total_macs:,}  ({words['mac_note']})")
    dense_macs = None
    if len(convs) > 1 and not any(c.transposed for c in convs):
        kernel = max((c.weight_shape[2], c.weight_shape[3]) for c in convs)
        c_in, c_out = size[1], output.shape[1]
        dense_macs = output.numel() * c_in * kernel[0] * kernel[1]
        dense_params = c_out * c_in * kernel[0] * kernel[1]
        lines.append(
            f"{words['ratio']} ({c_in}->{c_out}, {kernel[0]}x{kernel[1]}): {words['params']} "
            f"{total_params / dense_params:.3f}x, {words['macs']} {total_macs / dense_macs:.3f}x"
        )
    return Explanation(stages, total_params, total_macs, dense_macs, "\n".join(lines))


__all__ = ["Explanation", "StageExplanation", "explain"]

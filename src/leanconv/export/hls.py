"""HLS C++ for an apfixed-quantized conv chain, with golden data and a self-checking testbench.

:func:`export_hls` writes, into a new folder:

* ``leanconv_kernels.h`` / ``kernels.cpp``: one function per layer in seed 004's style
  (``ap_uint<8>``/``ap_int<8>`` arrays with zero-padded buffers ``[C][H+2p][W+2p]``, ``ap_int<8>``
  weights, ``ap_int<16>`` bias, ``ap_fixed<32,1>`` factor, an ``ap_int<32>`` ``mid_result``),
  and a top function chaining them through intermediate buffers. Weights, biases and factors
  are constant arrays (``weights='const'``) or function arguments (``weights='args'``);
  ``pragmas=True`` adds Vitis HLS pipeline/unroll pragmas. Every layer writes zeros to its
  output buffer's border, so the next layer's zero padding holds.
* ``weights.h``: the integer constants (factors as exact decimals of ``F / 2**31``).
* ``golden/``: input codes and every layer's output from the Python reference
  (:meth:`QuantizedModel.forward_all`).
* ``tb.cpp``: runs every layer on its golden input and the top function on the model input,
  compares every output value (and every border value) exactly, prints the first mismatches
  and exits 1 on any.
* ``Makefile``: ``make check`` builds with g++ against the ``ap_types`` headers found in the
  installed ``hls4ml`` package (:func:`find_ap_types`; never copied) and runs the testbench.
* ``hazards.md``: the hazard report on the golden inputs.

:func:`check_hls` runs ``make check`` and returns the result; ``export_hls(check=True)`` runs it
in the staging folder, before the output folder appears, so the output is complete when it
appears and no compiler still runs in it. ``make`` runs as its own process group: any way out
(an exception, Ctrl-C, SIGTERM, the timeout) kills the group and waits for it; if leanconv itself
is killed (SIGKILL cannot be caught) a small supervisor in the group sees the pipe to leanconv
close and kills the group. Compiling in the staging folder, a leftover compiler can never write
into a finished output, and the next write removes that staging folder (:mod:`leanconv._files`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from leanconv import _files
from leanconv._validate import check_choice
from leanconv.quant.hazards import hazard_report
from leanconv.quant.layers import IntConv2d
from leanconv.quant.model import QuantizedModel

WEIGHT_MODES = ("const", "args")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CPP_KEYWORDS = frozenset("""
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char16_t char32_t class compl
    const constexpr const_cast continue decltype default delete do double dynamic_cast else enum explicit export
    extern false float for friend goto if inline int long mutable namespace new noexcept not not_eq nullptr
    operator or or_eq private protected public register reinterpret_cast return short signed sizeof static
    static_assert static_cast struct switch template this thread_local throw true try typedef typeid typename
    union unsigned using virtual void volatile wchar_t while xor xor_eq""".split())
# names the generated files define or use themselves: a layer function may not take them
_GENERATED_NAMES = frozenset("""
    main top bottom input output chain dir compared mismatches open_golden read_values fill compare
    narrow_trunc narrow_floor narrow_round ap_int ap_uint ap_fixed""".split())
_NUMBERED_NAME = re.compile(r"(buf|gold|buffer|f)[0-9]+")
_MAKE_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+,@:~=-]+")


def find_ap_types() -> Optional[Path]:
    """The ``ap_types`` folder (``ap_int.h``, ``ap_fixed.h``) inside the installed ``hls4ml`` package.

    Located through the package's import spec without importing it; None when hls4ml is not
    installed or the headers are not where hls4ml keeps them.
    """
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        folder = Path(root) / "templates" / "vivado" / "ap_types"
        if (folder / "ap_fixed.h").is_file() and (folder / "ap_int.h").is_file():
            return folder
    return None


@dataclass
class HlsCheck:
    """Result of building and running the testbench: ``passed`` only on an exact match."""

    passed: bool
    returncode: int
    output: str
    compared: int
    mismatches: int


@dataclass
class HlsProject:
    """What :func:`export_hls` wrote; ``check``: the testbench result with ``check=True``, else None."""

    directory: Path
    files: List[str]
    top: str
    functions: List[str]
    vectors: int
    ap_types: Optional[Path]
    hazards: str
    check: Optional[HlsCheck] = None


@dataclass
class _Buffer:
    """An activation buffer: interior ``(C, H, W)``, border ``(top, bottom, left, right)``, type."""

    channels: int
    height: int
    width: int
    border: Tuple[int, int, int, int]
    ctype: str

    @property
    def dims(self) -> str:
        top, bottom, left, right = self.border
        return f"[{self.channels}][{self.height + top + bottom}][{self.width + left + right}]"


# ------------------------------------------------------------------------------ validation


def _reserved(name: str) -> bool:
    """A C++ keyword or a name the generated files use themselves."""
    return name in _CPP_KEYWORDS or name in _GENERATED_NAMES or bool(_NUMBERED_NAME.fullmatch(name))


def _default_names(qmodel) -> List[str]:
    """C function names from the layer paths: ``features.0.conv`` -> ``features_0_conv``, ``0`` -> ``layer_0``."""
    names = [re.sub(r"\W", "_", layer.name).strip("_") or f"layer{i}" for i, layer in enumerate(qmodel.layers)]
    names = [n if re.match(r"[A-Za-z_]", n) and not _reserved(n) else f"layer_{n}" for n in names]
    return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _layer_names(qmodel, names: Optional[Sequence[str]], top: str) -> List[str]:
    """The C function name of every layer (given, or from the layer paths), checked against C++ and each other."""
    names = _default_names(qmodel) if names is None else list(names)
    if len(names) != len(qmodel.layers):
        raise ValueError(f"names has {len(names)} entries, the model has {len(qmodel.layers)} layers")
    for name in names:
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name) or _reserved(name):
            raise ValueError(f"function name {name!r} must be a C identifier (letters, digits, _), not a keyword "
                             "nor a name the generated code uses itself")
    if len(set(names + [top])) != len(names) + 1:
        raise ValueError(f"names={names} and top={top!r} must all differ")
    return names


def _check_exportable(qmodel) -> None:
    if not isinstance(qmodel, QuantizedModel):
        raise ValueError(f"qmodel={type(qmodel).__name__} must be a leanconv.quant.QuantizedModel")
    qmodel.check()  # names, shapes and integers are pasted into the C++: re-checked, they may have changed
    if qmodel.dialect.name != "apfixed":
        raise ValueError(f"dialect={qmodel.dialect.name!r}: HLS export needs the 'apfixed' dialect (ap_fixed factors)")
    for layer in qmodel.layers:
        if not isinstance(layer, IntConv2d):
            raise ValueError(f"unsupported layer: {layer.name} ({layer.kind}); HLS export covers conv layers "
                             "(pointwise, depthwise, dense, grouped, asymmetric), not linear layers")


def _golden_inputs(qmodel, inputs, vectors: int, seed: int) -> torch.Tensor:
    if inputs is None:
        if qmodel.input_shape is None or len(qmodel.input_shape) != 3:
            raise ValueError("inputs=None needs qmodel.input_shape (C, H, W): pass inputs of shape (N, C, H, W)")
        low, high = qmodel.input_q.range
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(low, high + 1, (vectors, *qmodel.input_shape), generator=generator)
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise ValueError(f"inputs must be an (N, C, H, W) tensor, got {type(inputs).__name__} "
                         f"{tuple(getattr(inputs, 'shape', ()))}")
    channels = qmodel.layers[0].in_channels
    if inputs.shape[1] != channels:
        raise ValueError(f"channel mismatch: inputs have {inputs.shape[1]} channels, {qmodel.layers[0].name} "
                         f"takes {channels}")
    codes = qmodel.quantize_input(inputs) if inputs.is_floating_point() else inputs.to(torch.int64)
    qmodel.layers[0].check_input(codes)
    return codes


def _buffers(qmodel, hw: Tuple[int, int], margin: int) -> List[_Buffer]:
    buffers = []
    h, w = hw
    for layer in qmodel.layers:
        border = tuple(max(p, margin) for p in layer.padding)
        buffers.append(_Buffer(layer.in_channels, h, w, border, layer.in_q.ctype))  # type: ignore[arg-type]
        h, w = layer.output_hw(h, w)
    last = qmodel.layers[-1]
    buffers.append(_Buffer(last.out_channels, h, w, (margin,) * 4, last.out_q.ctype))  # type: ignore[arg-type]
    return buffers


# ------------------------------------------------------------------------------ C++ text


def _weight_layout(layer) -> Tuple[str, str]:
    """Array dims and the index expression, in the seed's shapes where they apply."""
    out, per_group, kh, kw = layer.weight.shape
    if per_group == 1:  # depthwise-like: weight[co][kh][kw]
        return f"[{out}][{kh}][{kw}]", "[co][kh][kw]"
    if (kh, kw) == (1, 1):  # pointwise: weight[co][ci]
        return f"[{out}][{per_group}]", "[co][ci]"
    return f"[{out}][{per_group}][{kh}][{kw}]", "[co][ci][kh][kw]"


def _nested(values: torch.Tensor) -> str:
    if values.dim() == 1:
        return "{" + ", ".join(str(int(v)) for v in values) + "}"
    return "{" + ", ".join(_nested(v) for v in values) + "}"


def _squeezed_weight(layer) -> torch.Tensor:
    weight = layer.weight
    if weight.shape[1] == 1:
        return weight[:, 0]
    if weight.shape[2:] == (1, 1):
        return weight[:, :, 0, 0]
    return weight


def _factor_literal(raw: int) -> str:
    """An exact decimal of ``raw / 2**31`` (a double holds it exactly, so the load does not floor)."""
    return f"{raw / 2.0**31!r}"


def _weights_header(qmodel, names: List[str]) -> str:
    lines = ["// Integer constants of each layer, generated by leanconv from the Python reference.",
             "#ifndef LEANCONV_WEIGHTS_H", "#define LEANCONV_WEIGHTS_H", "", '#include "leanconv_kernels.h"', ""]
    for name, layer in zip(names, qmodel.layers):
        requant = layer.requant
        dims, _ = _weight_layout(layer)
        bias_bits = requant.settings.bias_bits
        lines.append(f"static const ap_int<8> {name}_weight{dims} = {_nested(_squeezed_weight(layer))};")
        lines.append(f"static const ap_int<{bias_bits}> {name}_bias[{layer.out_channels}] = {_nested(requant.bias)};")
        raws = [int(f) for f in requant.factor]
        if requant.per_channel:
            literals = ", ".join(_factor_literal(f) for f in raws)
            lines.append(f"// raw ap_fixed<32,1> values: {raws}")
            lines.append(f"static const ap_fixed<32, 1> {name}_factor[{layer.out_channels}] = {{{literals}}};")
        else:
            lines.append(f"static const ap_fixed<32, 1> {name}_factor = {_factor_literal(raws[0])};  // raw {raws[0]}")
        lines.append("")
    return "\n".join(lines + ["#endif"]) + "\n"


def _param_decls(layer, name: str, prefix: bool) -> List[str]:
    """Weight/bias/factor parameters of a layer function (or of the top function with ``prefix``)."""
    dims, _ = _weight_layout(layer)
    p = f"{name}_" if prefix else ""
    bias_bits = layer.requant.settings.bias_bits
    factor = f"const ap_fixed<32, 1> {p}factor[{layer.out_channels}]" if layer.requant.per_channel \
        else f"const ap_fixed<32, 1> {p}factor"
    return [f"const ap_int<8> {p}weight{dims}", f"const ap_int<{bias_bits}> {p}bias[{layer.out_channels}]", factor]


def _signature(layer, name: str, inp: _Buffer, out: _Buffer, weights: str) -> str:
    params = [f"const {inp.ctype} bottom{inp.dims}", f"{out.ctype} top{out.dims}"]
    if weights == "args":
        params += _param_decls(layer, name, prefix=False)
    return f"void {name}({', '.join(params)})"


def _layer_comment(layer) -> List[str]:
    """Two comment lines: the conv's geometry, then its requantization settings (validated values only)."""
    settings = layer.requant.settings
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    return [
        f"// {layer.name}: {layer.kind} conv {layer.in_channels}->{layer.out_channels}, kernel {kh}x{kw}, "
        f"stride {sh}x{sw}, dilation {dh}x{dw}, padding (t,b,l,r) {layer.padding}, groups {layer.groups};",
        f"// requantization: narrowing '{settings.narrowing}', store '{settings.store}', "
        f"relu {'on' if layer.requant.relu else 'off'}",
    ]


def _zero_border(out: _Buffer) -> List[str]:
    """Loops writing zeros to the output buffer's border (none without a border)."""
    if not any(out.border):
        return []
    top_b, _, left_b, _ = out.border
    oh_total, ow_total = out.height + out.border[0] + out.border[1], out.width + out.border[2] + out.border[3]
    return [
        "  // zero border: the next layer's zero padding",
        f"  for (int c = 0; c < {out.channels}; c++)",
        f"    for (int h = 0; h < {oh_total}; h++)",
        f"      for (int w = 0; w < {ow_total}; w++)",
        f"        if (h < {top_b} || h >= {top_b + out.height} || w < {left_b} || w >= {left_b + out.width}) "
        "top[c][h][w] = 0;",
    ]


def _accumulate(layer, inp: _Buffer, out: _Buffer, ref: str, pragmas: bool) -> List[str]:
    """The output loops opened and the exact ``mid_result`` accumulated over the kernel window."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    per_group, out_per_group = layer.weight.shape[1], layer.out_channels // layer.groups
    row0, col0 = inp.border[0] - layer.padding[0], inp.border[2] - layer.padding[2]
    _, index = _weight_layout(layer)
    cin = f"(co / {out_per_group}) * {per_group} + ci" if layer.groups > 1 else "ci"
    lines = [
        f"  for (int co = 0; co < {layer.out_channels}; co++) {{",
        f"    for (int h = 0; h < {out.height}; h++) {{",
        f"      for (int w = 0; w < {out.width}; w++) {{",
    ] + (["#pragma HLS PIPELINE II=1"] if pragmas else []) + [
        f"        ap_int<{layer.requant.settings.acc_bits}> mid_result = 0;",
        f"        for (int ci = 0; ci < {per_group}; ci++) {{",
        f"          for (int kh = 0; kh < {kh}; kh++) {{",
        f"            for (int kw = 0; kw < {kw}; kw++) {{",
    ] + (["#pragma HLS UNROLL"] if pragmas else [])
    return lines + [
        f"              mid_result += {ref}weight{index} * bottom[{cin}][{row0} + h * {sh} + kh * {dh}]"
        f"[{col0} + w * {sw} + kw * {dw}];",
        "            }", "          }", "        }",
    ]


def _requantize_and_store(layer, out: _Buffer, ref: str) -> List[str]:
    """Bias plus the narrowed ``mid_result * factor``, ReLU, the store (saturating or plain), loops closed."""
    settings = layer.requant.settings
    factor = f"{ref}factor[co]" if layer.requant.per_channel else f"{ref}factor"
    acc, sum_bits = settings.acc_bits, max(settings.acc_bits, settings.bias_bits) + 1
    low, high = layer.out_q.range
    lines = [f"        ap_int<{sum_bits}> y = {ref}bias[co] + narrow_{settings.narrowing}<{acc}>(mid_result, {factor});"]
    if layer.requant.relu:
        lines.append("        if (y < 0) y = 0;  // ReLU")
    target = f"top[co][{out.border[0]} + h][{out.border[2]} + w]"
    if settings.store == "saturate":
        lines.append(f"        {target} = y > {high} ? ap_int<{sum_bits}>({high}) : "
                     f"(y < {low} ? ap_int<{sum_bits}>({low}) : y);")
    else:
        lines.append(f"        {target} = y;  // plain store: keeps the low {layer.out_q.bits} bits (wraps)")
    return lines + ["      }", "    }", "  }", "}", ""]


def _layer_function(layer, name: str, inp: _Buffer, out: _Buffer, weights: str, pragmas: bool) -> str:
    """One layer's C++ function: comment, signature, zero border, exact accumulation, requantization."""
    ref = "" if weights == "args" else f"{name}_"
    body = _layer_comment(layer) + [_signature(layer, name, inp, out, weights) + " {"] + _zero_border(out)
    body += _accumulate(layer, inp, out, ref, pragmas) + _requantize_and_store(layer, out, ref)
    return "\n".join(body)


_NARROW_HELPERS = """// acc * factor is exact (ap_fixed<W+32, W+1>); these narrow it to an integer:
// toward zero (assigning to ap_int), floor (a default ap_fixed, AP_TRN), half up (AP_RND).
template <int W> ap_int<W> narrow_trunc(ap_int<W> acc, ap_fixed<32, 1> factor) {
  ap_int<W> q = acc * factor;
  return q;
}
template <int W> ap_int<W> narrow_floor(ap_int<W> acc, ap_fixed<32, 1> factor) {
  ap_fixed<W, W> q = acc * factor;
  return ap_int<W>(q);
}
template <int W> ap_int<W> narrow_round(ap_int<W> acc, ap_fixed<32, 1> factor) {
  ap_fixed<W, W, AP_RND> q = acc * factor;
  return ap_int<W>(q);
}
"""


def _weight_args(name: str, weights: str) -> List[str]:
    """A layer's weight, bias and factor arguments when ``weights='args'`` (none for constants)."""
    return [f"{name}_weight", f"{name}_bias", f"{name}_factor"] if weights == "args" else []


def _kernels(qmodel, names, buffers, top, weights, pragmas) -> Tuple[str, str]:
    signatures = [_signature(layer, name, buffers[i], buffers[i + 1], weights)
                  for i, (layer, name) in enumerate(zip(qmodel.layers, names))]
    top_params = [f"const {buffers[0].ctype} input{buffers[0].dims}", f"{buffers[-1].ctype} output{buffers[-1].dims}"]
    if weights == "args":
        for layer, name in zip(qmodel.layers, names):
            top_params += _param_decls(layer, name, prefix=True)
    top_signature = f"void {top}({', '.join(top_params)})"
    header = ["// Generated by leanconv export-hls from a quantized model (apfixed dialect).",
              "#ifndef LEANCONV_KERNELS_H", "#define LEANCONV_KERNELS_H", "", "#include \"ap_int.h\"",
              "#include \"ap_fixed.h\"", "", _NARROW_HELPERS]
    header += [s + ";" for s in signatures] + ["", top_signature + ";", "", "#endif", ""]
    source = ['#include "leanconv_kernels.h"']
    if weights == "const":
        source.append('#include "weights.h"')
    source.append("")
    for i, (layer, name) in enumerate(zip(qmodel.layers, names)):
        source.append(_layer_function(layer, name, buffers[i], buffers[i + 1], weights, pragmas))
    calls = []
    for i, name in enumerate(names):
        src = "input" if i == 0 else f"buffer{i}"
        dst = "output" if i == len(names) - 1 else f"buffer{i + 1}"
        args = [src, dst] + _weight_args(name, weights)
        calls.append(f"  {name}({', '.join(args)});")
    source.append(f"// the whole chain: {' -> '.join(names)}")
    source.append(top_signature + " {")
    for i in range(1, len(names)):
        source.append(f"  static {buffers[i].ctype} buffer{i}{buffers[i].dims};")
    source += calls + ["}", ""]
    return "\n".join(header), "\n".join(source)


_TB_FILL_AND_COMPARE = [
    "// values (C, H, W) into the interior of a bordered buffer; the border set to zero",
    "template <typename T, int C, int HB, int WB>",
    "static void fill(T (&buf)[C][HB][WB], const int* values, int top, int left, int h, int w) {",
    "  for (int c = 0; c < C; c++)",
    "    for (int y = 0; y < HB; y++)",
    "      for (int x = 0; x < WB; x++) {",
    "        bool inside = y >= top && y < top + h && x >= left && x < left + w;",
    "        buf[c][y][x] = inside ? values[(c * h + (y - top)) * w + (x - left)] : 0;",
    "      }",
    "}",
    "",
    "template <typename T, int C, int HB, int WB>",
    "static void compare(const char* what, int vector, T (&buf)[C][HB][WB], const int* expected, int top,",
    "                    int left, int h, int w) {",
    "  for (int c = 0; c < C; c++)",
    "    for (int y = 0; y < HB; y++)",
    "      for (int x = 0; x < WB; x++) {",
    "        bool inside = y >= top && y < top + h && x >= left && x < left + w;",
    "        int want = inside ? expected[(c * h + (y - top)) * w + (x - left)] : 0;",
    "        int got = buf[c][y][x].to_int();",
    "        compared++;",
    "        if (got != want) {",
    "          if (mismatches < 10)",
    "            printf(\"MISMATCH %s vector %d %s[%d][%d][%d]: got %d expected %d\\n\", what, vector,",
    "                   inside ? \"out\" : \"border\", c, y - top, x - left, got, want);",
    "          mismatches++;",
    "        }",
    "      }",
    "}",
    "",
]


def _tb_includes(weights: str) -> List[str]:
    """The testbench's opening comment and includes (``weights.h`` for weights passed as arguments)."""
    lines = ["// Testbench generated by leanconv: every layer on its golden input, then the top function;",
             "// every output value and every border value compared exactly with the Python reference.",
             "#include <cstdio>", "#include <cstdlib>", '#include "leanconv_kernels.h"']
    return lines + (['#include "weights.h"'] if weights == "args" else [])


def _tb_golden_readers(vectors: int) -> List[str]:
    """The match counters, ``open_golden`` (checks a golden file's header; its error names ``vectors``)
    and ``read_values``."""
    return [
        "",
        "static long compared = 0, mismatches = 0;",
        "",
        "static FILE* open_golden(const char* dir, const char* name, int c, int h, int w) {",
        "  char path[4096];",
        "  snprintf(path, sizeof(path), \"%s/%s.txt\", dir, name);",
        "  FILE* f = fopen(path, \"r\");",
        "  int n, fc, fh, fw;",
        "  if (!f || fscanf(f, \"%d %d %d %d\", &n, &fc, &fh, &fw) != 4 || fc != c || fh != h || fw != w) {",
        f"    fprintf(stderr, \"cannot read %s (expected header N %d %d %d with N >= {vectors})\\n\", path, c, h, w);",
        "    exit(2);",
        "  }",
        "  return f;",
        "}",
        "",
        "static void read_values(FILE* f, int* values, long count) {",
        "  for (long i = 0; i < count; i++)",
        "    if (fscanf(f, \"%d\", &values[i]) != 1) { fprintf(stderr, \"golden file ended early\\n\"); exit(2); }",
        "}",
        "",
    ]


def _tb_helpers(vectors: int) -> List[str]:
    """The golden-file readers, then ``fill`` and ``compare``."""
    return _tb_golden_readers(vectors) + _TB_FILL_AND_COMPARE


def _tb_declarations(names: List[str], buffers: List[_Buffer]) -> List[str]:
    """``main``'s start: a buffer and a golden array per activation, the chain's output, the golden files."""
    lines = ["int main(int argc, char** argv) {", "  const char* dir = argc > 1 ? argv[1] : \"golden\";"]
    for i, buf in enumerate(buffers):
        lines.append(f"  static {buf.ctype} buf{i}{buf.dims};")
        lines.append(f"  static int gold{i}[{buf.channels * buf.height * buf.width}];")
    lines.append(f"  static {buffers[-1].ctype} chain{buffers[-1].dims};")
    for i, (buf, file) in enumerate(zip(buffers, ["input"] + list(names))):
        lines.append(f"  FILE* f{i} = open_golden(dir, \"{file}\", {buf.channels}, {buf.height}, {buf.width});")
    return lines


def _tb_fill(index: int, buf: _Buffer) -> str:
    """Load golden values ``gold<index>`` into the bordered buffer ``buf<index>``."""
    return f"    fill(buf{index}, gold{index}, {buf.border[0]}, {buf.border[2]}, {buf.height}, {buf.width});"


def _tb_compare(what: str, output: str, index: int, buf: _Buffer) -> str:
    """Compare the buffer ``output`` with golden ``gold<index>``, every value and border, under ``what``."""
    return (f"    compare(\"{what}\", v, {output}, gold{index}, {buf.border[0]}, {buf.border[2]}, {buf.height}, "
            f"{buf.width});")


def _tb_vector_loop(names: List[str], buffers: List[_Buffer], top: str, weights: str, vectors: int) -> List[str]:
    """Per vector: read every golden file, run each layer on its golden input, then the top function."""
    lines = [f"  for (int v = 0; v < {vectors}; v++) {{"]
    for i, buf in enumerate(buffers):
        lines.append(f"    read_values(f{i}, gold{i}, {buf.channels * buf.height * buf.width}L);")
    lines.append(_tb_fill(0, buffers[0]))
    for i, name in enumerate(names):
        if i > 0:  # each layer on the golden input: a mismatch stays in the layer that made it
            lines.append(_tb_fill(i, buffers[i]))
        lines.append(f"    {name}({', '.join([f'buf{i}', f'buf{i + 1}'] + _weight_args(name, weights))});")
        lines.append(_tb_compare(name, f"buf{i + 1}", i + 1, buffers[i + 1]))
    top_args = ["buf0", "chain"] + [arg for name in names for arg in _weight_args(name, weights)]
    lines.append(_tb_fill(0, buffers[0]))
    lines.append(f"    {top}({', '.join(top_args)});")
    lines.append(_tb_compare(top, "chain", len(names), buffers[-1]))
    return lines + ["  }"]


def _tb_verdict(vectors: int, layers: int) -> List[str]:
    """``main``'s end: FAIL and exit 1 on any mismatch, else PASS with the count of values compared."""
    return ["  if (mismatches) {",
            "    printf(\"FAIL: %ld of %ld values differ from the Python reference\\n\", mismatches, compared);",
            "    return 1;",
            "  }",
            f"  printf(\"PASS: %ld values match the Python reference bit for bit ({vectors} vectors, "
            f"{layers} layers and the top function)\\n\", compared);",
            "  return 0;", "}", ""]


def _testbench(names: List[str], buffers: List[_Buffer], top: str, weights: str, vectors: int) -> str:
    """``tb.cpp``: includes, golden-file helpers, ``fill``/``compare``, and a ``main`` that checks every
    layer on its golden input and the top function on the model input, exiting 1 on any mismatch."""
    lines = _tb_includes(weights) + _tb_helpers(vectors) + _tb_declarations(names, buffers)
    lines += _tb_vector_loop(names, buffers, top, weights, vectors) + _tb_verdict(vectors, len(names))
    return "\n".join(lines)


def _makefile(ap_types: Optional[Path]) -> str:
    found = f"AP_TYPES ?= {ap_types}" if ap_types else \
        "AP_TYPES ?= $(error AP_TYPES is not set: pip install hls4ml, or pass AP_TYPES=/path/to/ap_types)"
    return "\n".join([
        "# Generated by leanconv export-hls. `make check` builds the C simulation with g++ and runs it.",
        "# AP_TYPES: the Xilinx ap_types headers, found inside the installed hls4ml package.",
        found,
        "CXX ?= g++",
        "CXXFLAGS ?= -O1 -std=c++14",
        "",
        "tb: tb.cpp kernels.cpp leanconv_kernels.h weights.h",
        "\t$(CXX) $(CXXFLAGS) -I$(AP_TYPES) -o tb tb.cpp kernels.cpp",
        "",
        "check: tb",
        "\t./tb golden",
        "",
        "clean:",
        "\trm -f tb",
        "",
        ".PHONY: check clean",
        "",
    ])


def _golden_text(values: torch.Tensor) -> str:
    n, c, h, w = values.shape
    rows = [f"{n} {c} {h} {w}"]
    flat = values.reshape(n * c * h, w).tolist()
    rows += [" ".join(str(v) for v in row) for row in flat]
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------ public API


def _check_options(weights: str, margin: int, vectors: int, top: str) -> None:
    """``weights``, ``margin``, ``vectors`` and ``top`` of :func:`export_hls`, before any work."""
    check_choice(weights, "weights", WEIGHT_MODES)
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin={margin!r} must be an int >= 0")
    if isinstance(vectors, bool) or not isinstance(vectors, int) or vectors < 1:
        raise ValueError(f"vectors={vectors!r} must be an int >= 1")
    if not isinstance(top, str) or not _IDENTIFIER.fullmatch(top) or _reserved(top):
        raise ValueError(f"top={top!r} must be a C identifier (letters, digits, _), not a keyword nor a name "
                         "the generated code uses itself")


def _check_run_options(timeout: float, cxxflags: Optional[str], name: str = "timeout") -> None:
    """``timeout`` (seconds, > 0) and ``cxxflags`` (None or text) of a testbench run, before any work."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ValueError(f"{name}={timeout!r} must be a finite number of seconds > 0")
    if cxxflags is not None and not isinstance(cxxflags, str):
        raise TypeError(f"cxxflags={cxxflags!r} must be a str or None")


def _ap_types_folder(ap_types: Optional[Union[str, os.PathLike]]) -> Optional[Path]:
    """The headers folder to write into the Makefile: ``ap_types``, else hls4ml's, else None."""
    headers = Path(ap_types) if ap_types is not None else find_ap_types()
    if headers is not None and not (headers / "ap_fixed.h").is_file():
        raise ValueError(f"ap_types={str(headers)!r} must be a folder holding ap_fixed.h and ap_int.h")
    if headers is not None and not _MAKE_SAFE_PATH.fullmatch(str(headers)):
        raise ValueError(f"ap_types={str(headers)!r} must be a path of letters, digits and _ . / + , @ : ~ = - "
                         "(it is written into the Makefile)")
    return headers


def export_hls(
    qmodel,
    out_dir: Union[str, os.PathLike],
    inputs: Optional[torch.Tensor] = None,
    vectors: int = 2,
    seed: int = 0,
    names: Optional[Sequence[str]] = None,
    top: str = "leanconv_top",
    weights: str = "const",
    pragmas: bool = False,
    margin: int = 0,
    force: bool = False,
    ap_types: Optional[Union[str, os.PathLike]] = None,
    check: bool = False,
    cxxflags: Optional[str] = None,
    check_timeout: float = 600.0,
) -> HlsProject:
    """Write an HLS C++ project for ``qmodel`` (apfixed, conv layers) into the new folder ``out_dir``.

    ``inputs``: float inputs (quantized with the model's input scale) or integer codes, shape
    ``(N, C, H, W)``; None: ``vectors`` random codes over the input type's full range (seeded),
    at ``qmodel.input_shape``. ``names``: C function names per layer (default from the layer
    paths). ``weights``: ``'const'`` arrays or ``'args'``. ``margin``: a border of at least this
    many zeros around every buffer (``margin=1`` gives the seed's ``[16][34][66]`` buffers
    everywhere). Everything is validated before anything is written (the model too: its names
    and integers are pasted into the C++); the folder is written atomically and an existing one
    is replaced only with ``force=True``. ``check=True`` builds and runs the testbench (``make
    check``, ``cxxflags`` as in :func:`check_hls`, at most ``check_timeout`` seconds) in the
    staging folder before the folder appears; ``project.check`` holds the result (the folder
    appears whether it passed or not). Missing tools are a ``RuntimeError`` before any work.
    """
    _check_exportable(qmodel)
    _check_options(weights, margin, vectors, top)
    _check_run_options(check_timeout, cxxflags, "check_timeout")
    names = _layer_names(qmodel, names, top)
    out_dir = _files.check_new_folder(out_dir, force, flag="force=True", name="out_dir")
    codes = _golden_inputs(qmodel, inputs, vectors, seed)
    headers = _ap_types_folder(ap_types)
    run_check = functools.partial(_run_check, env=_make_env(headers is None), timeout=check_timeout,
                                  cxxflags=cxxflags) if check else None
    outputs = qmodel.forward_all(codes)
    hazards = hazard_report(qmodel, codes).to_markdown()
    buffers = _buffers(qmodel, (codes.shape[2], codes.shape[3]), margin)
    header, source = _kernels(qmodel, names, buffers, top, weights, pragmas)
    files: Dict[str, str] = {
        "leanconv_kernels.h": header,
        "kernels.cpp": source,
        "weights.h": _weights_header(qmodel, names),
        "tb.cpp": _testbench(names, buffers, top, weights, codes.shape[0]),
        "Makefile": _makefile(headers),
        "hazards.md": "# Hazards before code generation\n\n" + hazards,
        "golden/input.txt": _golden_text(codes),
    }
    for name, values in zip(names, outputs):
        files[f"golden/{name}.txt"] = _golden_text(values)
    result = _write_folder(out_dir, files, force, run_check)
    return HlsProject(out_dir, sorted(files), top, names, codes.shape[0], headers, hazards, result)


def _write_folder(out_dir: Path, files: Dict[str, str], force: bool,
                  run_check: Optional[Callable[[Path], HlsCheck]]) -> Optional[HlsCheck]:
    """Write every file into a staging folder beside ``out_dir``, run the testbench there if asked,
    then move the folder into place (an error or interruption removes it: nothing appears)."""
    with _files.staged_folder(out_dir, force) as staging:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return None if run_check is None else run_check(staging)


# ------------------------------------------------------------------------------ running make

# Runs the command in its process group and kills the group when the pipe from leanconv closes:
# leanconv holds the only write end, so that happens when it exits, however it exits (even SIGKILL).
_SUPERVISOR = """\
import os, signal, subprocess, sys, threading


def watch(fd):
    while os.read(fd, 64):
        pass
    os.killpg(0, signal.SIGKILL)


threading.Thread(target=watch, args=(int(sys.argv[1]),), daemon=True).start()
code = subprocess.call(sys.argv[2:])
sys.exit(128 - code if code < 0 else code)
"""


def _make_env(needs_ap_types: bool) -> Dict[str, str]:
    """The environment for ``make``; RuntimeError when make, the compiler or the ap_types headers are missing."""
    for tool in ("make", os.environ.get("CXX", "g++")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: the testbench needs make and a C++ compiler")
    env = dict(os.environ)
    if needs_ap_types and not env.get("AP_TYPES"):
        found = find_ap_types()
        if found is None:
            raise RuntimeError("the ap_types headers were not found: pip install hls4ml (or set AP_TYPES)")
        env["AP_TYPES"] = str(found)
    return env


def _stop(process: subprocess.Popen) -> None:
    """Kill ``process``'s group (all of make, g++ and the testbench) and wait for it, Ctrl-C held meanwhile."""
    with _files.signals_held():
        if os.name == "posix":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # not yet waited for: the group id is still ours
        else:
            process.kill()
        process.wait()


def _run_in_group(command: List[str], directory: Path, env: Dict[str, str], timeout: float) -> Tuple[int, str, str]:
    """Run ``command`` in ``directory`` as a new process group and wait for it; no way out of here
    leaves any of it running (see the module doc). Returns the exit code, stdout and stderr."""
    read_end, write_end = os.pipe() if os.name == "posix" else (-1, -1)
    try:
        supervised = [sys.executable, "-I", "-c", _SUPERVISOR, str(read_end)] if os.name == "posix" else []
        process = subprocess.Popen(supervised + command, cwd=directory, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   pass_fds=(read_end,) if os.name == "posix" else (), start_new_session=True)
    except BaseException:
        if os.name == "posix":
            os.close(write_end)
        raise
    finally:
        if os.name == "posix":
            os.close(read_end)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process)
        raise RuntimeError(f"{command[0]} did not finish within {timeout:g} s in {str(directory)!r}: "
                           "stopped it and everything it started") from None
    except BaseException:
        _stop(process)
        raise
    finally:
        if os.name == "posix":
            os.close(write_end)
    return process.returncode, stdout, stderr


def _run_check(directory: Path, env: Dict[str, str], timeout: float, cxxflags: Optional[str]) -> HlsCheck:
    """``make check`` in ``directory`` (see :func:`_run_in_group`), its output read into an :class:`HlsCheck`."""
    command = ["make", "--no-print-directory", "check"]  # run in directory
    if cxxflags is not None:
        command.append(f"CXXFLAGS={cxxflags}")
    returncode, stdout, stderr = _run_in_group(command, directory, env, timeout)
    passed = returncode == 0 and "PASS:" in stdout
    compared = mismatches = 0
    match = re.search(r"PASS: (\d+) values", stdout)
    if match:
        compared = int(match.group(1))
    match = re.search(r"FAIL: (\d+) of (\d+) values", stdout)
    if match:
        mismatches, compared = int(match.group(1)), int(match.group(2))
    return HlsCheck(passed, returncode, stdout + stderr, compared, mismatches)


def check_hls(directory: Union[str, os.PathLike], timeout: float = 600.0, cxxflags: Optional[str] = None) -> HlsCheck:
    """Build and run an exported project's testbench (``make check``); ``passed`` on an exact match.

    ``cxxflags`` overrides the Makefile's ``CXXFLAGS`` (e.g. ``-O0 -std=c++14`` builds faster).
    Raises ``RuntimeError`` when ``make`` or ``g++`` is missing, the ``ap_types`` headers cannot
    be found (install hls4ml), or the run takes longer than ``timeout`` seconds (it is stopped).
    Make and everything it starts are stopped and waited for on any way out (see the module doc).
    """
    directory = Path(directory)
    _check_run_options(timeout, cxxflags)
    if not (directory / "Makefile").is_file():
        raise ValueError(f"directory={str(directory)!r} must be a folder written by export_hls (no Makefile)")
    env = _make_env("$(error" in (directory / "Makefile").read_text())
    return _run_check(directory, env, timeout, cxxflags)


__all__ = ["HlsCheck", "HlsProject", "check_hls", "export_hls", "find_ap_types"]

"""S11: the seed's HLS conv1x1 and DW_CONV_3x3 (uint8, int8 weights, ap_fixed<32,1> factor), generated and checked.

Seed 004 hand-writes two HLS kernels for a 16-channel 32x64 map in zero-padded [16][34][66]
buffers: DW_CONV_3x3 and conv1x1, with int8 weights, an int16 bias, an ap_int<32> accumulator
and one ap_fixed<32,1> factor per layer. Here a float depthwise separable block (3x3 depthwise,
BN, ReLU, then 1x1, ReLU) is quantized in that dialect, its hazards are reported, the kernels
are generated with the seed's signatures, and the generated C++ is compiled with g++ against
the ap_types headers from hls4ml and checked bit for bit against the Python integer reference.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

import leanconv
from leanconv.export.hls import check_hls, export_hls, find_ap_types
from leanconv.quant import accuracy_report, hazard_report, quantize

torch.manual_seed(0)
C, H, W = 16, 32, 64

# A float separable block with trained-looking BN statistics.
block = nn.Sequential(
    leanconv.DepthwiseSeparableConv2d(C, C, 3, padding=1, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU),
    nn.ReLU(),
).eval()
bn = block[0].norm
with torch.no_grad():
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.uniform_(-0.1, 0.3)

# Calibration and test data: post-ReLU maps, as the seed's uint8 `bottom` buffers hold.
calib = [torch.relu(torch.randn(4, C, H, W)) for _ in range(4)]
test = torch.relu(torch.randn(4, C, H, W))

# The seed's choices: one factor per layer, `mid_result * factor` narrowed toward zero (a plain
# cast), the result stored with saturation (the seed stores to ap_uint<8> without one: it wraps).
qmodel = quantize(block, calib, "apfixed", narrowing="trunc", store="saturate", per_channel=False)
print(qmodel)
for layer in qmodel.layers:
    raw = int(layer.requant.factor[0])
    print(f"{layer.name:>14}: {layer.kind:9} in {layer.in_q.ctype} scale {layer.in_q.scale:.5f} -> "
          f"out {layer.out_q.ctype} scale {layer.out_q.scale:.5f}; factor raw {raw} = {raw / 2**31:.8f}; "
          f"bias range [{int(layer.requant.bias.min())}, {int(layer.requant.bias.max())}]")

print("\nHazards on the calibration data:")
print(hazard_report(qmodel, calib).to_markdown())

for narrowing in ("trunc", "round"):
    q = quantize(block, calib, "apfixed", narrowing=narrowing, per_channel=False)
    report = accuracy_report(q, block, test)
    print(f"narrowing {narrowing!r}: {report.within_one_step:.1%} of the {report.outputs:,} block outputs lie within one "
          f"quantization step of float (mean error {report.mean_error_steps:.2f} steps)")

# What a plain store (the seed's) would do on the same data: values above 255 wrap (300 -> 44).
wrapping = quantize(block, calib, "apfixed", narrowing="trunc", store="wrap", per_channel=False)
wrapped = hazard_report(wrapping, test)
print(f"plain (wrapping) store: {sum(r.saturated for r in wrapped.rows)} outputs above 255 would wrap on these inputs")
try:
    leanconv.quant.check_factor(1.0, 8)
except ValueError as error:
    print(f"a factor of 1.0 is refused: {error}")

folder = Path(tempfile.mkdtemp(prefix="leanconv_s11_"))
try:
    project = export_hls(qmodel, folder / "hls", names=["DW_CONV_3x3", "conv1x1"], top="separable_block",
                         weights="args", margin=1, vectors=2)
    kernels = (project.directory / "kernels.cpp").read_text().splitlines()
    print("\nGenerated signatures (the seed's, with the weights as arguments):")
    for line in kernels:
        if line.startswith("void "):
            print("  " + line.rstrip(" {"))
    print("chain: DW_CONV_3x3 -> conv1x1, both reading and writing [16][34][66] buffers at offset 1 "
          "(the seed's conv1x1 indexes bottom[c][h][w] from 0, i.e. reads the zero border: off by one pixel)")
    if shutil.which("g++") and shutil.which("make") and find_ap_types():
        result = check_hls(project.directory)
        print(result.output.strip().splitlines()[-1])
        print("g++ testbench:", "PASS, bit-exact" if result.passed else f"FAIL ({result.mismatches} mismatches)")
        if not result.passed:
            raise SystemExit(1)
    else:
        print("g++, make or the hls4ml ap_types headers are missing: the testbench was written but not built")
finally:
    shutil.rmtree(folder, ignore_errors=True)

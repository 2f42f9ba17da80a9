"""S2 (seed 000): 1x3 and 3x1 convs in parallel, combined.

Two ways to combine the branches: concatenate them (Inception-v3, ParallelAsymmetricConv2d), or
add them to a 3x3 conv, each with its BN (ACNet's ACBlock), which fuses into ONE 3x3 conv for
deployment with exactly the same output.
"""

import torch

import leanconv
from _show import compare_table, console, stage_table

C, O, H, W = 32, 64, 28, 28
concat_spec = leanconv.ConvSpec.create(C, O, 3, padding=1)
stage_table("1x3 and 3x1 in parallel, concatenated", "asym_parallel", concat_spec, (H, W))
parallel = leanconv.ParallelAsymmetricConv2d(C, O, 3, padding=1)
x = torch.randn(2, C, H, W)
console.print(f"ParallelAsymmetricConv2d: {tuple(x.shape)} -> {tuple(parallel(x).shape)} "
              f"({O - O // 2} channels from 1x3, {O // 2} from 3x1)")

block = leanconv.ACBlock(C, O, 3, padding=1)
stage_table("ACBlock: 3x3 + 1x3 + 3x1, BN each, summed", "acblock", leanconv.ConvSpec.create(C, O, 3, padding=1, bias=False), (H, W))
# Pretend it was trained: give every BN non-trivial statistics, then deploy.
for bn in [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
block.eval()
fused = block.fuse()
with torch.no_grad():
    difference = (block(x) - fused(x)).abs().max().item()
console.print(f"ACBlock.fuse() -> {fused}; max |difference| = {difference:.2e}")
assert difference < 1e-4

dense = leanconv.get_kind("dense")
compare_table(
    "cost (training form vs deployed)",
    [
        ("dense 3x3", dense.params(concat_spec), dense.macs(concat_spec, (H, W))),
        ("parallel 1x3|3x1 (concat)", leanconv.get_kind("asym_parallel").params(concat_spec),
         leanconv.get_kind("asym_parallel").macs(concat_spec, (H, W))),
        ("ACBlock (training)", sum(p.numel() for p in block.parameters()),
         leanconv.get_kind("acblock").macs(concat_spec, (H, W))),
        ("ACBlock fused (deployed)", sum(p.numel() for p in fused.parameters()), dense.macs(concat_spec, (H, W))),
    ],
    baseline="dense 3x3",
)

"""Run every seed example, S1 to S11 in order, each in a process of its own.

S7 (the seed's Keras model MEAN_Spot with CBAM) is ``keras_mean_spot_cbam.py``: it runs with
Keras on its torch backend and, where Keras is not installed, says so and is counted as
skipped. Each script runs as ``python <script>`` from this folder, so it gets the environment
it sets for itself (the Keras backend, one thread for its tiny model) whatever ran before it.
Exits non-zero, naming the scripts, if any example failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

HERE = Path(__file__).resolve().parent
# (seed row of shared/SEEDS.md, script), in the order of the rows
SEED_EXAMPLES: Tuple[Tuple[str, str], ...] = (
    ("S1", "s1_asymmetric_3x3.py"),
    ("S2", "s2_parallel_asymmetric.py"),
    ("S3", "s3_aspp_separable.py"),
    ("S4", "s4_pointwise_channels.py"),
    ("S5", "s5_bottleneck.py"),
    ("S6", "s6_lprnet_block.py"),
    ("S7", "keras_mean_spot_cbam.py"),
    ("S8", "s8_depthwise.py"),
    ("S9", "s9_conv_shapes.py"),
    ("S10", "s10_separable_upsampling.py"),
    ("S11", "s11_int8_hls.py"),
)
SKIPPED_MARK = " skipped: "  # what an example prints when an optional extra it needs is absent


def summary_line(path: Path) -> str:
    """The first line of the script's docstring: what it demonstrates."""
    parts = path.read_text(encoding="utf-8").split('"""')
    return parts[1].strip().splitlines()[0] if len(parts) > 1 and parts[1].strip() else ""


def run_example(path: Path) -> Tuple[int, str]:
    """Run one script in its own process (stdout and stderr pass through); its exit code and stdout."""
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "torch"))
    result = subprocess.run([sys.executable, path.name], cwd=HERE, env=env, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    return result.returncode, result.stdout


def main() -> int:
    from rich.console import Console
    from rich.rule import Rule

    console = Console(width=120)
    failed: List[str] = []
    skipped: List[str] = []
    for row, script in SEED_EXAMPLES:
        path = HERE / script
        console.print(Rule(f"[bold]{row}: {path.stem}[/bold]"))
        console.print(f"[italic]{summary_line(path)}[/italic]")
        start = time.perf_counter()
        code, out = run_example(path)
        if code != 0:
            failed.append(f"{row} {script} (exit {code})")
        elif SKIPPED_MARK in out:
            skipped.append(f"{row} {script}")
        console.print(f"[dim]{script} {'failed' if code else 'done'} in {time.perf_counter() - start:.1f} s[/dim]")
    ran = len(SEED_EXAMPLES) - len(failed) - len(skipped)
    console.print(Rule(f"{ran} of {len(SEED_EXAMPLES)} seed examples ran"
                       + (f"; skipped: {', '.join(skipped)}" if skipped else "")
                       + (f"; FAILED: {', '.join(failed)}" if failed else "")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

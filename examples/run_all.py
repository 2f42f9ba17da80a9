"""Run every seed example (S1-S6, S8-S11; S7 is examples/keras_mean_spot_cbam.py) in turn."""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted(p for p in HERE.glob("s*_*.py"))


def main() -> int:
    sys.path.insert(0, str(HERE))
    from rich.console import Console
    from rich.rule import Rule

    console = Console(width=120)
    for path in EXAMPLES:
        doc = (path.read_text().split('"""')[1].strip().splitlines() or [""])[0]
        console.print(Rule(f"[bold]{path.stem}[/bold]"))
        console.print(f"[italic]{doc}[/italic]")
        start = time.perf_counter()
        runpy.run_path(str(path), run_name="__main__")
        console.print(f"[dim]{path.name} done in {time.perf_counter() - start:.1f} s[/dim]")
    console.print(Rule(f"{len(EXAMPLES)} seed examples ran"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``leanconv train``: distill a converted model from its original, in one process or under
torchrun, e.g.::

    torchrun --nproc_per_node 2 -m leanconv.cli train digits_cnn --weights teacher.pt \\
        --converted converted/ --data digits --epochs 3 --out distilled.pt

``--converted`` is a ``leanconv convert`` output folder (``plan.json`` rebuilds the student on a
fresh MODEL, ``model.pt`` holds its weights). Rank 0 writes ``--out`` (the student's
state_dict, atomically; it loads into ``apply_plan(MODEL, plan.json)``) and ``--history``
(JSON) and prints the loss table; ``--rank-dir`` makes every rank save its own state_dict
there as ``rank<R>.pt`` (to check that the ranks agree).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict

from leanconv.cli.common import MODEL_HELP, check_converted, given, load_converted, load_model, load_weights, \
    non_negative_int, positive_float, positive_int, unit_float

DESCRIPTION = __doc__.split("\n\n")[0].replace("``", "")


def _save(state: Dict[str, Any], path: Path, force: bool = True) -> None:
    """torch.save through a temporary file in the same folder, then rename (no half files)."""
    import torch

    from leanconv._files import atomic_file

    with atomic_file(path, replace=force) as tmp:
        torch.save(state, tmp)


def cmd_train(args: argparse.Namespace) -> int:
    """Distill the ``--converted`` student from MODEL (the teacher); rank 0 writes ``--out``."""
    from leanconv._files import check_new_file, write_atomic
    from leanconv.data import load_data
    from leanconv.train.distillation import distill

    out = check_new_file(args.out, args.force)
    history = check_new_file(args.history, args.force, name="--history") if args.history else None
    check_converted(args.converted)
    teacher = load_weights(load_model(args.model), args.weights)
    student, plan = load_converted(args.model, args.converted)
    data = load_data(args.data, size=args.size).train
    result = distill(student, teacher, data, epochs=args.epochs, lr=args.lr, temperature=args.temperature,
                     feature_paths=list(plan.layers) if args.features else None,
                     feature_weight=args.feature_weight, batch_size=args.batch_size, max_steps=args.max_steps,
                     seed=args.seed, progress=not args.no_progress, **given(alpha=args.alpha))
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    rank = int(os.environ.get("RANK", "0"))
    if args.rank_dir:
        _save(state, Path(args.rank_dir) / f"rank{rank}.pt")
    if rank == 0:
        _save(state, out, args.force)
        if history is not None:
            write_atomic(history, json.dumps(result.to_dict(), indent=2), replace=args.force, name="--history")
        print(result.to_markdown())
        print(f"wrote {out}" + (f" and {history}" if history else ""))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``leanconv train``."""
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--weights", default=None, help="the teacher's state_dict (.pt); default: MODEL as built")
    parser.add_argument("--converted", required=True, help="a leanconv convert output folder (plan.json, model.pt)")
    parser.add_argument("--data", required=True, help="digits | cifar10:PATH | folder:PATH | PATH")
    parser.add_argument("--size", type=positive_int, default=None, help="image size for digits / folder data")
    parser.add_argument("--out", required=True, help="where rank 0 writes the distilled state_dict (.pt)")
    parser.add_argument("--force", action="store_true", help="replace --out / --history if they exist")
    parser.add_argument("--history", default=None, help="also write the loss history as JSON here")
    parser.add_argument("--epochs", type=non_negative_int, default=1)
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument("--batch-size", type=positive_int, default=64, help="per process")
    parser.add_argument("--temperature", type=positive_float, default=4.0)
    parser.add_argument("--alpha", type=unit_float, default=None,
                        help="weight of the soft (teacher) term (default: leanconv.train.DEFAULT_ALPHA)")
    parser.add_argument("--features", action="store_true", help="also match the converted layers' outputs (MSE)")
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--max-steps", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank-dir", default=None, help="every rank saves its state_dict here as rank<R>.pt")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=cmd_train)


def add_commands(sub: Any) -> None:
    """Register ``train``."""
    add_arguments(sub.add_parser("train", help="distill a converted model from its original (torchrun-ready)",
                                 description=DESCRIPTION))


__all__ = ["add_arguments", "add_commands", "cmd_train"]

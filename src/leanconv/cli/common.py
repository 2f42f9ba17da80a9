"""What every ``leanconv`` command shares: its arguments (model, weights, input shape, --out and
--force, --format), loading models, weights and calibration data, and writing results.

Nothing here imports torch at module level: ``leanconv --help`` must not pay for it. Every user
error is raised as ``ValueError`` (or ``FileExistsError``/``FileNotFoundError`` for files) naming
the argument; :func:`leanconv.cli.main` prints it as one line and exits 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

MODEL_HELP = "built-in name, package.module:callable or path/to/file.py:callable"
CALIB_HELP = "digits | random:N | file.pt with an (N,C,H,W) tensor"
WIDE = 100_000  # console width when stdout is a file or a pipe: tables are never cut


def parse_shape(text: str) -> Tuple[int, ...]:
    """``'1,3,224,224'`` (or ``1x3x224x224``) as a tuple of positive ints (an argparse type)."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated ints, e.g. 1,3,224,224") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must contain positive ints")
    return values


def _number(text: str, kind: type, rule: str, ok: Any) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be {rule}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be {rule}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    return _number(text, int, "an int >= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an int >= 0."""
    return _number(text, int, "an int >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    return _number(text, float, "a finite number > 0", lambda v: 0 < v < float("inf"))


def unit_float(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    return _number(text, float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


def add_model(parser: argparse.ArgumentParser, weights_help: Optional[str] = None) -> None:
    """The MODEL positional and, with ``weights_help``, ``--weights``."""
    parser.add_argument("model", help=MODEL_HELP)
    if weights_help:
        parser.add_argument("--weights", default=None, help=weights_help)


def add_out(parser: argparse.ArgumentParser, help: str, required: bool = True, default: Optional[str] = None,
            force_help: str = "replace --out if it exists") -> None:
    """``--out`` and ``--force``."""
    parser.add_argument("--out", required=required, default=default, help=help)
    parser.add_argument("--force", action="store_true", help=force_help)


def add_device(parser: argparse.ArgumentParser, what: str = "runs the model") -> None:
    """``--device``: where the command runs the model (default: the CPU)."""
    parser.add_argument("--device", default=None, help=f"where it {what}: cpu (default), cuda, cuda:1, ...")


def check_device(text: Optional[str]) -> Optional[str]:
    """``--device`` as a torch device name; CUDA asked on a machine without it is one line."""
    if text is None:
        return None
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {text!r} is not a device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {text!r} must be cpu or cuda")
    return str(device)


def check_choice(value: str, flag: str, choices: Sequence[str], hint: str = "") -> str:
    """``value`` if it is one of ``choices``, else ValueError ``--to='x' must be one of [...]``."""
    if value not in choices:
        raise ValueError(f"{flag}={value!r} must be one of {sorted(choices)}{hint}")
    return value


def load_model(spec: str) -> Any:
    """A model from a built-in name, ``package.module:callable`` or ``path/to/file.py:callable``."""
    import torch

    from leanconv import models

    if spec in models.MODELS:
        return models.create(spec)
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"MODEL={spec!r} must be a built-in name ({', '.join(models.list_models())}), "
                         "package.module:callable or path/to/file.py:callable")
    module = _import_target(spec, target)
    if not hasattr(module, attr):
        raise ValueError(f"MODEL={spec!r}: {target!r} has no attribute {attr!r}")
    factory = getattr(module, attr)
    if callable(factory) and not isinstance(factory, torch.nn.Module):
        try:
            factory = factory()
        except TypeError as error:
            raise ValueError(f"MODEL={spec!r} must be callable without arguments: {error}") from None
    if not isinstance(factory, torch.nn.Module):
        raise ValueError(f"MODEL={spec!r} gave a {type(factory).__name__}, not a torch.nn.Module")
    return factory


def _import_target(spec: str, target: str) -> Any:
    """The module of ``MODEL``: a .py file run as a module, or an importable package.module."""
    import importlib
    import importlib.util

    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"MODEL file {target!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except SyntaxError as error:
            raise ValueError(f"MODEL file {target!r} is not valid Python: {error}") from None
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as error:
        if error.name and (target == error.name or target.startswith(error.name + ".")):
            raise ValueError(f"MODEL={spec!r}: no module {target!r} can be imported; MODEL must be a built-in name, "
                             "package.module:callable or path/to/file.py:callable") from None
        raise  # the module exists but needs a package that is missing: the optional-package message


def load_tensors(path: str, flag: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code."""
    import pickle

    import torch

    where = Path(path)
    if where.is_dir():
        raise ValueError(f"{flag}={str(path)!r} is a folder; name a .pt file")
    if not where.is_file():
        raise FileNotFoundError(f"{flag}={str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        said = str(error).strip().split(". ")[0] or type(error).__name__  # torch's "Weights only load failed"
        raise ValueError(f"{flag}={str(path)!r} holds pickled objects other than tensors; leanconv refuses to load "
                         f"them, as loading them could run code ({said})") from None
    except EOFError:
        raise ValueError(f"{flag}={str(path)!r} is empty or cut short: not a file from torch.save") from None
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{flag}={str(path)!r} is not a readable torch.save file (corrupt or another format): "
                         f"{reason[:120]}") from None


def state_mismatch(model: Any, state: Any) -> Optional[str]:
    """What keeps ``state`` from loading into ``model`` (missing/unexpected keys, shapes), or None."""
    import torch

    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        return "it holds no state_dict (a dict of tensors)"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if isinstance(own[k], torch.Tensor) and isinstance(state.get(k), torch.Tensor)
              and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the model's keys missing (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} keys the model does not have (e.g. {unexpected[0]!r})")
    if shapes:
        first = shapes[0]
        problems.append(f"{len(shapes)} shapes differ (e.g. {first!r}: {tuple(state[first].shape)} in the file, "
                        f"{tuple(own[first].shape)} in the model)")
    return "; ".join(problems) or None


def load_weights(model: Any, path: Optional[str], flag: str = "--weights") -> Any:
    """Load a state_dict file into ``model`` (if ``path``); a mismatch is a ValueError naming ``flag``."""
    if path:
        state = load_tensors(path, flag)
        problem = state_mismatch(model, state)
        if problem:
            raise ValueError(f"{flag}={str(path)!r} does not fit the model: {problem}")
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as error:
            raise ValueError(f"{flag}={str(path)!r} does not fit the model: "
                             f"{str(error).strip().splitlines()[0]}") from None
    return model


def check_fits(model: Any, shape: Sequence[int], what: str) -> None:
    """``model`` runs on an input of ``shape`` (traced on the meta device: nothing is computed); else one
    ValueError that starts with ``what`` (the option the shape came from)."""
    from leanconv.analysis import traced_shapes

    try:
        traced_shapes(model, tuple(shape))
    except ValueError as error:
        raise ValueError(f"{what}: inputs of shape {tuple(shape)} do not fit MODEL: {error}") from None


def check_converted(folder: str, flag: str = "--converted") -> Path:
    """``folder`` as a Path if it holds a ``leanconv convert`` output's plan.json and model.pt."""
    base = Path(folder)
    for needed in ("plan.json", "model.pt"):
        if not (base / needed).is_file():
            raise ValueError(f"{flag}={folder!r} must hold plan.json and model.pt (leanconv convert --out); "
                             f"{needed} is missing")
    return base


def load_converted(model_spec: str, folder: str, flag: str = "--converted") -> Tuple[Any, dict]:
    """MODEL rebuilt by a ``leanconv convert`` folder's plan.json, with its model.pt weights, and the
    :class:`~leanconv.conversion.plan.Plan` (checked field by field on load)."""
    from leanconv.conversion.plan import Plan

    base = check_converted(folder, flag)
    plan = Plan.load(base / "plan.json")
    return load_weights(plan.apply(load_model(model_spec)), str(base / "model.pt"), flag), plan


def input_shape(given: Optional[Sequence[int]], model: str, required: bool = True) -> Optional[Tuple[int, ...]]:
    """``--input`` or the built-in model's default input shape; ValueError when neither and ``required``."""
    from leanconv.models import DEFAULT_INPUTS

    shape = tuple(given) if given else DEFAULT_INPUTS.get(model, (None,))[0]
    if shape is None and required:
        raise ValueError(f"--input N,C,H,W is required for MODEL={model!r}")
    return shape


def calibration_batches(spec: Optional[str], shape: Sequence[int], batch: int = 64) -> Optional[List[Any]]:
    """Calibration batches from ``digits``, ``random:N`` or a .pt file holding an (N, C, H, W) tensor."""
    import torch

    if spec is None:
        return None
    if spec == "digits":
        from leanconv.data import load_digits

        return list(load_digits(size=shape[-1]).train_x[:256].split(batch))
    if spec.startswith("random:"):
        count = spec.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--calib={spec!r}: N in random:N must be a positive int")
        generator = torch.Generator().manual_seed(0)
        return list(torch.randn((int(count), *shape[1:]), generator=generator).split(batch))
    if not Path(spec).is_file():
        raise FileNotFoundError(f"--calib={spec!r} must be digits, random:N or an existing .pt file holding an "
                                "(N, C, H, W) tensor")
    tensor = load_tensors(spec, "--calib")
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
        raise ValueError(f"--calib={spec!r} must hold an (N, C, H, W) tensor")
    return list(tensor.split(batch))


def check_out_folder(args: argparse.Namespace) -> Path:
    """Refuse ``--out`` before any work (see :mod:`leanconv._files`)."""
    from leanconv._files import check_new_folder

    return check_new_folder(args.out, args.force)


def write_text(text: str, out: Optional[str], force: bool) -> None:
    """``text`` to stdout, or atomically to the file ``out`` (an existing one only with ``force``)."""
    from leanconv._files import atomic_file, check_new_file

    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
        return
    path = check_new_file(out, force)
    with atomic_file(path, replace=force) as tmp:
        tmp.write_text(text)
    print(f"wrote {path}")


def console(stderr: bool = False) -> Any:
    """A rich Console; on a file or a pipe as wide as any table needs (nothing is cut to 80 columns)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr) if stream.isatty() else Console(stderr=stderr, width=WIDE)


def rows_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows of dicts as CSV text, the first row's keys as the header."""
    rows = list(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def warn_untrained(model_spec: str, weights: Optional[str], command: str) -> None:
    """Without ``--weights``, one line on stderr: the model's initial (untrained) weights were used,
    and converting or optimizing those measures nothing useful."""
    if not weights:
        print(f"leanconv {command}: no --weights given: worked on {model_spec}'s untrained initial weights",
              file=sys.stderr)


def given(**options: Any) -> Dict[str, Any]:
    """The options the user gave (not None): the rest keep the library's defaults."""
    return {name: value for name, value in options.items() if value is not None}


__all__ = ["add_device", "check_device", "add_model", "add_out", "calibration_batches", "check_choice", "check_converted", "check_fits",
           "check_out_folder", "console", "given", "input_shape", "load_converted", "load_model", "load_tensors",
           "load_weights", "non_negative_int", "parse_shape", "positive_float", "positive_int", "rows_csv",
           "state_mismatch", "unit_float", "warn_untrained", "write_text"]

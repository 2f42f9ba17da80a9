"""The ``leanconv`` command: one parser, one module per command group, one error policy.

Command groups: :mod:`~leanconv.cli.analysis` (kinds, profile, explain, compare),
:mod:`~leanconv.cli.conversion` (convert), :mod:`~leanconv.cli.deployment` (bench, quantize,
export-hls), :mod:`~leanconv.cli.optimization` (optimize, demo), :mod:`~leanconv.cli.training`
(train); :mod:`~leanconv.cli.common` holds what they share. Building the parser imports no
torch (``leanconv --help`` starts fast); each command imports what it needs when it runs.

A user error (a bad value, a missing file, an output that exists without ``--force``, a missing
optional package) is one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import signal
import sys
import threading
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

from leanconv import __version__
from leanconv.cli import analysis, conversion, deployment, optimization, training

GROUPS = (analysis, conversion, deployment, optimization, training)

# optional package (top-level import name) -> the leanconv extra that installs it
EXTRAS = {"sklearn": "data", "PIL": "data", "matplotlib": "plot", "onnx": "onnx", "onnxscript": "onnx",
          "onnxruntime": "onnx", "keras": "keras", "hls4ml": "hls"}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit code 2, like
    every other user error of the command; subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``leanconv`` parser with every command group's subcommands."""
    parser = OneLineParser(
        prog="leanconv",
        description="Make convolutional networks lean: efficient conv kinds, their shapes and costs.",
    )
    parser.add_argument("--version", action="version", version=f"leanconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def user_error(error: BaseException) -> Optional[str]:
    """The one-line message for a user error, or None for a bug (which keeps its traceback)."""
    if isinstance(error, ImportError):
        missing = error if error.name else error.__cause__  # a library re-raise names the extra itself
        top = (getattr(missing, "name", None) or "").split(".")[0]
        if top in ("", "leanconv"):  # a broken leanconv import is a bug
            return None
        if missing is not error:
            return str(error).strip().splitlines()[0]
        hint = f"pip install 'leanconv[{EXTRAS[top]}]'" if top in EXTRAS else f"pip install {top}"
        return f"needs the optional package {top!r}, which is not installed: {hint}"
    if isinstance(error, (ValueError, OSError, pickle.UnpicklingError)):
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    return None


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (staging folders are removed) instead of killing the process."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """Run one command; user errors become one line on stderr and exit code 2."""
    try:
        with _sigterm_as_exit():
            return int(func(args))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_error(error)
        if message is None:
            raise
        print(f"{prog}: {message}", file=sys.stderr)
        return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``leanconv`` command; returns the exit code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the command's own parser, so the line names the command and its --help
            commands = parser._subparsers._group_actions[0].choices if parser._subparsers else {}
            commands.get(getattr(args, "command", None), parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as done:  # --help, --version (0) or a bad argument (2, one line already printed)
        return done.code if isinstance(done.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_command(args.func, args, f"leanconv {args.command}")


__all__ = ["OneLineParser", "build_parser", "main", "run_command", "user_error"]

"""Run the Python code blocks of a Markdown page and check what they print.

The conventions, written for page authors in docs/README.md ("How the pages are tested"):

- Every fenced block opened with ```` ```python ```` runs. The blocks of one page run in order,
  in one namespace, in a process of their own whose working directory is an empty temporary
  folder, under a time limit, with one CPU thread and ``KERAS_BACKEND=torch``. The process is
  forked from a server that has imported torch, leanconv and Keras once (a fresh interpreter
  where there is no ``fork``).
- A block whose first line is ``# not run`` is shown, not run (a sketch that needs your own
  model or data). A block whose first line is ``# requires: keras, g++`` runs only when every
  name is an importable module or a program on PATH; otherwise it is skipped, and the test of
  the page reports the skip with that reason once the other blocks have passed.
- A ``print(...)`` with a trailing comment is a claim about its output: the comment must begin
  with what the call printed (whitespace runs compare equal), optionally followed by an
  explanation (``print(x.shape[1])   # 64: the pointwise stage sets the width``). Numbers may be
  written with thousands separators and with words between them: ``# 2,400 params, 1,964,576
  MACs`` accepts the printed ``2400 1964576``, provided every word printed also appears in the
  comment. A print without a comment is not checked.
- A ```` ```output ```` block right after a ``python`` block holds that block's whole standard
  output, compared line by line (trailing spaces and blank lines at either end ignored).

``run_page`` has the page run (this file, run as ``--serve``, is the server) and returns what happened;
``check_page`` turns that into a pytest pass, failure or skip. Line numbers in errors and
tracebacks are those of the Markdown file.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})\s*(?P<info>[^`\s]*)[^`]*$")
NOT_RUN = "# not run"
REQUIRES = re.compile(r"^#\s*requires:\s*(?P<names>.+)$")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
WORD = re.compile(r"[A-Za-z_]\w*")


@dataclass
class Block:
    """One fenced ``python`` block: where it starts, its code, and how it is to be treated."""

    index: int
    line: int  # line number, in the page, of the block's first code line
    code: str
    status: str  # "run", "not run" or "requires"
    requires: tuple[str, ...] = ()
    output: str | None = None  # the ```output block that follows it, if any


@dataclass
class PageResult:
    """What running one page gave: per-block outcome, the first failure, the skips."""

    page: str
    blocks: list[dict] = field(default_factory=list)
    failure: str | None = None
    skipped: list[str] = field(default_factory=list)
    stderr: str = ""
    prints: list[dict] = field(default_factory=list)  # what each print call printed, in page order

    @property
    def ran(self) -> int:
        return sum(1 for b in self.blocks if b["outcome"] == "passed")


def parse_blocks(text: str) -> list[Block]:
    """The fenced ``python`` blocks of a Markdown text, each with the ``output`` block after it."""
    lines = text.splitlines()
    fences: list[tuple[str, int, list[str], int, int]] = []  # info, first code line, body, open, close
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, info = m.group("indent"), m.group("ticks"), m.group("info").lower()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^[ \t]*{ticks}`*\s*$", lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        fences.append((info, i + 2, body, i, j))
        i = j + 1
    blocks: list[Block] = []
    for n, (info, first, body, _open, close) in enumerate(fences):
        if info != "python":
            continue
        code = "\n".join(body) + "\n"
        head = body[0].strip() if body else ""
        status, requires = "run", ()
        if head.lower() == NOT_RUN:
            status = "not run"
        elif REQUIRES.match(head):
            status = "requires"
            requires = tuple(s.strip() for s in REQUIRES.match(head).group("names").split(",") if s.strip())
        output = None
        if n + 1 < len(fences) and fences[n + 1][0] == "output":
            between = lines[close + 1:fences[n + 1][3]]
            if all(not s.strip() for s in between):
                output = "\n".join(fences[n + 1][2])
        blocks.append(Block(len(blocks), first, code, status, requires, output))
    return blocks


def missing_requirements(names: tuple[str, ...]) -> list[str]:
    """The names that are neither an importable module nor a program on PATH."""
    missing = []
    for name in names:
        importable = False
        if re.fullmatch(r"[A-Za-z_][\w.]*", name):
            with contextlib.suppress(ImportError, ValueError):
                importable = importlib.util.find_spec(name) is not None
        if not importable and shutil.which(name) is None:
            missing.append(name)
    return missing


# ------------------------------------------------------------------ output claims


def _normal(text: str) -> str:
    return " ".join(text.split())


def _numbers(text: str) -> list[float]:
    return [float(s.replace(",", "")) for s in NUMBER.findall(text)]


def claim_holds(printed: str, comment: str) -> bool:
    """Does ``comment`` begin with ``printed`` (see the module docstring for the number rule)?"""
    got, want = _normal(printed), _normal(comment)
    if not got:
        return False
    if want.startswith(got):
        rest = want[len(got):]
        # the claim must not run on into a longer number or word: "4" is not "42" or "4.5"
        if not rest or not (rest[0].isalnum() or rest[0] == "_" or re.match(r"[.,]\d", rest)):
            return True
    numbers = _numbers(got)
    if not numbers:
        return False
    if not set(WORD.findall(NUMBER.sub(" ", got))) <= set(WORD.findall(NUMBER.sub(" ", want))):
        return False
    return _numbers(want)[:len(numbers)] == numbers


def print_calls(source: str) -> list[tuple[int, int, str | None]]:
    """``(first line, last line, trailing comment or None)`` of every ``print(...)`` call, in
    source order."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.line[:tok.start[1]].strip():
            comments[tok.start[0]] = tok.string[1:].strip()
    calls = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            calls.append((node.lineno, node.end_lineno, comments.get(node.end_lineno) or comments.get(node.lineno)))
    return sorted(calls)


def print_claims(source: str) -> list[tuple[int, int, str]]:
    """``(first line, last line, comment)`` of every ``print(...)`` call with a trailing comment."""
    return [(first, last, comment) for first, last, comment in print_calls(source) if comment]


# ------------------------------------------------------------------ the child process


class _Recorder:
    """A ``print`` for the page's namespace: writes to the captured stdout and remembers which
    page line printed what."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.by_line: dict[int, list[str]] = {}

    def __call__(self, *args, sep=" ", end="\n", file=None, flush=False) -> None:
        if file is not None and file is not sys.stdout:
            print(*args, sep=sep, end=end, file=file, flush=flush)
            return
        text = (" " if sep is None else sep).join(map(str, args)) + ("\n" if end is None else end)
        sys.stdout.write(text)
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != self.filename:
            frame = frame.f_back
        if frame is not None:
            self.by_line.setdefault(frame.f_lineno, []).append(text)


def _short_traceback(filename: str) -> str:
    """The exception with the frames from the page and below (the runner's own frames dropped)."""
    etype, value, tb = sys.exc_info()
    frames = traceback.extract_tb(tb)
    start = next((k for k, f in enumerate(frames) if f.filename == filename), 0)
    lines = traceback.format_list(frames[start:]) + traceback.format_exception_only(etype, value)
    return "".join(lines)[-4000:]


def _run_blocks(page: Path, page_requires: tuple[str, ...]) -> PageResult:
    result = PageResult(str(page))
    filename = str(page.resolve())
    blocks = parse_blocks(page.read_text(encoding="utf-8"))
    page_missing = missing_requirements(page_requires)
    recorder = _Recorder(filename)
    namespace: dict = {"__name__": "__main__", "print": recorder}
    for block in blocks:
        where = f"{page.name} block {block.index + 1} (line {block.line})"
        missing = page_missing or (missing_requirements(block.requires) if block.status == "requires" else [])
        if block.status == "not run":
            result.blocks.append({"line": block.line, "outcome": "not run"})
            continue
        if missing:
            result.blocks.append({"line": block.line, "outcome": "skipped"})
            result.skipped.append(f"{where} needs {', '.join(missing)}")
            continue
        source = "\n" * (block.line - 1) + block.code  # line numbers of the page
        out = io.StringIO()
        try:
            code = compile(source, filename, "exec")
            with contextlib.redirect_stdout(out):
                exec(code, namespace)
        except BaseException:  # noqa: BLE001 - report anything the page raises, SystemExit included
            result.blocks.append({"line": block.line, "outcome": "failed"})
            result.failure = f"{where} raised:\n{_short_traceback(filename)}\nprinted before:\n{out.getvalue()[-2000:]}"
            return result
        problems = []
        for first, last, comment in print_calls(source):
            printed = "".join(t for n in range(first, last + 1) for t in recorder.by_line.get(n, []))
            result.prints.append({"block": block.index, "line": first, "printed": printed})
            if comment and not claim_holds(printed, comment):
                problems.append(f"line {first}: printed {_normal(printed)!r}, the comment says {comment!r}")
        if block.output is not None:
            got = [s.rstrip() for s in out.getvalue().strip("\n").splitlines()]
            want = [s.rstrip() for s in block.output.strip("\n").splitlines()]
            if got != want:
                problems.append("the output block differs from what the code printed:\n"
                                + "\n".join(got) + "\n--- the page says ---\n" + "\n".join(want))
        if problems:
            result.blocks.append({"line": block.line, "outcome": "failed"})
            result.failure = f"{where}: " + "\n".join(problems)
            return result
        result.blocks.append({"line": block.line, "outcome": "passed"})
    return result


def _child(argv: list[str]) -> int:
    page, report = Path(argv[0]), Path(argv[1])
    requires = tuple(argv[2:])
    result = _run_blocks(page, requires)
    report.write_text(json.dumps(asdict(result)), encoding="utf-8")
    return 0


# Imported once by the server before it forks a process per page, so that a page does not pay
# for importing torch (and Keras) again. A page's process is still its own: what one page does
# to these modules is gone when its process ends.
PRELOAD = ("numpy", "torch", "leanconv", "leanconv.conversion.pipeline", "leanconv.quant", "leanconv.export.hls",
           "leanconv.analysis", "leanconv.keras")


def _preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(Exception):  # an optional extra that is absent: its pages skip
            importlib.import_module(name)
    with contextlib.suppress(Exception):  # warm the meta-device counting path once
        import torch
        import leanconv
        leanconv.profile(torch.nn.Conv2d(1, 1, 1), (1, 1, 2, 2))


def _serve() -> int:
    """Read one JSON request per line (page, report, requires, cwd, timeout), fork a process that
    runs the page, answer one JSON line: ``{"status": "done" | "timeout" | "crashed"}``."""
    protocol = os.fdopen(os.dup(1), "w")  # the replies; nothing else may write to this pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # whatever is printed while preloading goes nowhere
    _preload()
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pid = os.fork()
        if pid == 0:  # the page's process
            code = 1
            try:
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.chdir(request["cwd"])
                code = _child([request["page"], request["report"], *request["requires"]])
            except BaseException:  # noqa: BLE001 - the report is missing; the parent says so
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(log)
        deadline = time.monotonic() + request["timeout"]
        status = "crashed"
        while True:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = "done" if os.waitstatus_to_exitcode(code) == 0 else "crashed"
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = "timeout"
                break
            time.sleep(0.02)
        protocol.write(json.dumps({"status": status}) + "\n")
        protocol.flush()


# ------------------------------------------------------------------ the parent side

# one thread: small ops (per-channel SVDs) are far slower with 2 threads on a busy CPU, and
# float results do not depend on the thread count
CHILD_ENV = {"KERAS_BACKEND": "torch", "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
             "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class _Server:
    """The forking server process, started on first use and kept for the test session."""

    process: subprocess.Popen | None = None

    @classmethod
    def request(cls, payload: dict) -> str:
        for attempt in range(2):
            if cls.process is None or cls.process.poll() is not None:
                cls.process = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--serve"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, **CHILD_ENV))
                atexit.register(cls.close)
            try:
                cls.process.stdin.write(json.dumps(payload) + "\n")
                cls.process.stdin.flush()
                answer = cls.process.stdout.readline()
            except (BrokenPipeError, OSError):
                answer = ""
            if answer:
                return json.loads(answer)["status"]
            cls.close()
        return "crashed"

    @classmethod
    def close(cls) -> None:
        if cls.process is not None:
            with contextlib.suppress(Exception):
                cls.process.stdin.close()
                cls.process.wait(timeout=10)
            with contextlib.suppress(Exception):
                cls.process.kill()
            cls.process = None


def run_page(page: Path, requires: tuple[str, ...] = (), timeout: float = 300.0) -> PageResult:
    """Run the page's blocks in a process of their own (cwd: an empty temporary folder).

    Where ``os.fork`` exists, the process is forked from a server that has already imported
    torch, leanconv and (if installed) Keras; elsewhere it is a fresh interpreter."""
    page = Path(page).resolve()
    with tempfile.TemporaryDirectory(prefix="leanconv-docs-") as tmp:
        report, log, work = Path(tmp) / ".report.json", Path(tmp) / ".log", Path(tmp) / "work"
        work.mkdir()
        if hasattr(os, "fork"):
            status = _Server.request({"page": str(page), "report": str(report), "log": str(log),
                                      "requires": list(requires), "cwd": str(work), "timeout": timeout})
            stderr = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.exists() else ""
        else:
            try:
                proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(page), str(report), *requires],
                                      cwd=work, env=dict(os.environ, **CHILD_ENV), capture_output=True, text=True,
                                      timeout=timeout)
                status, stderr = ("done" if proc.returncode == 0 else "crashed"), proc.stderr[-3000:]
            except subprocess.TimeoutExpired:
                status, stderr = "timeout", ""
        if status == "timeout":
            return PageResult(str(page), failure=f"{page.name}: did not finish in {timeout:.0f} s", stderr=stderr)
        if not report.exists():
            return PageResult(str(page), failure=f"{page.name}: the page's process ended ({status}) with no report",
                              stderr=stderr)
        data = json.loads(report.read_text(encoding="utf-8"))
    result = PageResult(**data)
    result.stderr = stderr
    return result


def check_page(page: Path, requires: tuple[str, ...] = (), timeout: float = 300.0) -> PageResult:
    """Fail the calling test on the page's first failure; skip it (with the reason) if blocks
    were skipped for missing requirements after the others passed."""
    return assert_result(run_page(page, requires, timeout))


def assert_result(result: PageResult) -> PageResult:
    """Fail the calling test on the result's failure; skip it if blocks were skipped."""
    import pytest

    if result.failure:
        pytest.fail(f"{result.failure}\n--- stderr (tail) ---\n{result.stderr}", pytrace=False)
    if result.skipped:
        pytest.skip(f"{result.ran} block(s) passed; skipped: " + "; ".join(result.skipped))
    return result


def check_translation(page: Path, original: Path, original_result: PageResult) -> None:
    """Check a translated page whose code is the original's, token for token, without running
    it again: each of its print comments must hold for what the original's run printed at the
    same print call. Fails or skips the calling test as :func:`check_page` would."""
    import pytest

    if original_result.failure:
        pytest.fail(f"{original.name} (whose code this page shares) failed: {original_result.failure}", pytrace=False)
    if original_result.skipped:
        pytest.skip(f"{original.name} (whose code this page shares): " + "; ".join(original_result.skipped))
    ran = {b["line"] for b in original_result.blocks if b["outcome"] == "passed"}
    en_blocks = [b for b in parse_blocks(Path(original).read_text(encoding="utf-8"))]
    tr_blocks = parse_blocks(Path(page).read_text(encoding="utf-8"))
    printed = {}
    for record in original_result.prints:
        printed.setdefault(record["block"], []).append(record["printed"])
    problems = []
    for en, tr in zip(en_blocks, tr_blocks):
        if en.line not in ran:
            continue
        calls = print_calls("\n" * (tr.line - 1) + tr.code)
        outputs = printed.get(en.index, [])
        assert len(calls) == len(outputs), f"{page.name} line {tr.line}: print calls differ from {original.name}"
        for (first, _last, comment), out in zip(calls, outputs):
            if comment and not claim_holds(out, comment):
                problems.append(f"line {first}: {original.name} printed {_normal(out)!r}, the comment says {comment!r}")
        if tr.output is not None and tr.output.strip("\n") != (en.output or "").strip("\n"):
            problems.append(f"line {tr.line}: the output block differs from {original.name}'s")
    if problems:
        pytest.fail(f"{page.name}: " + "\n".join(problems), pytrace=False)


if __name__ == "__main__":
    sys.exit(_serve() if sys.argv[1:] == ["--serve"] else _child(sys.argv[1:]))

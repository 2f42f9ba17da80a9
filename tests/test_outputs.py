"""Output folders and files: never over the working directory or a folder leanconv did not write,
created exclusively at the end, replaced (``--force``) so that an interruption leaves the old or
the new output complete, never a mix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from leanconv import _files
from leanconv._files import MARKER, atomic_file, check_new_file, check_new_folder, staged_folder


def listing(folder: Path) -> dict:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def write_output(out: Path, prefix: str, count: int, force: bool = False) -> None:
    with staged_folder(out, force) as staging:
        for i in range(count):
            (staging / f"{prefix}{i}.txt").write_text(prefix)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("precious")
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("out", [".", "", "..", "./", "WORK", "/"])
def test_refuses_the_working_directory_and_its_ancestors_even_with_force(workdir, out):
    out = str(workdir) if out == "WORK" else out
    with pytest.raises(ValueError, match=r"^--out=.* (is the working directory or a folder above it|must name|is the root)"):
        check_new_folder(out, force=True)
    with pytest.raises(ValueError):
        with staged_folder(out, force=True):
            pytest.fail("staging must not start")
    assert listing(workdir) == {"mine.txt": "precious"}
    assert sorted(p.name for p in workdir.parent.iterdir()) == ["work"]


def test_refuses_a_folder_leanconv_did_not_write_even_with_force(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"^--out='.*theirs' exists; pass --force to replace it$"):
        check_new_folder(theirs, force=False)
    with pytest.raises(ValueError, match=rf"leanconv did not write \(no {MARKER} file\): not replacing it, even with --force"):
        write_output(theirs, "new", 3, force=True)
    assert listing(theirs) == {"notes.txt": "keep"}
    (tmp_path / "file").write_text("a file")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_new_folder(tmp_path / "file", force=True)
    (tmp_path / "link").symlink_to(theirs)
    with pytest.raises(ValueError, match="is a symbolic link"):
        check_new_folder(tmp_path / "link", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link", "theirs"]  # no staging left


def test_force_replaces_an_empty_folder_and_a_leanconv_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_output(out, "first", 2, force=True)
    assert set(listing(out)) == {MARKER, "first0.txt", "first1.txt"}
    write_output(out, "second", 1, force=True)
    assert set(listing(out)) == {MARKER, "second0.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # neither staging nor the old folder left
    assert oct(out.stat().st_mode & 0o777) == "0o755" and oct((out / "second0.txt").stat().st_mode & 0o777) == "0o644"


def test_unwritable_out_is_refused_before_any_work_naming_out(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^--out='.*file/sub/out' cannot be created: '.*file' is a file"):
        check_new_folder(tmp_path / "file" / "sub" / "out", force=False)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match=r"^--out='.*locked/out' is not writable: Permission denied"):
            check_new_folder(locked / "out", force=False)
    with pytest.raises(ValueError, match="is a folder: name a file"):
        check_new_file(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] + (["locked"] if os.geteuid() else [])


@pytest.mark.parametrize("exclusive_rename", ["renameat2", "claim_then_rename"])
def test_a_folder_created_meanwhile_is_never_replaced_without_force(tmp_path, monkeypatch, exclusive_rename):
    if exclusive_rename == "claim_then_rename":
        monkeypatch.setattr(_files, "_RENAMEAT2", None)
    elif _files._RENAMEAT2 is None:
        pytest.skip("renameat2 is Linux only")
    out = tmp_path / "out"
    with pytest.raises(FileExistsError) as raised:
        with staged_folder(out) as staging:
            (staging / "result.txt").write_text("mine")
            out.mkdir()  # appears while the command runs (empty: rename(2) alone would replace it)
    message = str(raised.value)
    assert message.startswith(f"--out={str(out)!r} was created while leanconv ran: not replacing it without --force")
    kept = Path(message.rsplit("kept in ", 1)[1].strip("'"))
    assert (kept / "result.txt").read_text() == "mine" and list(out.iterdir()) == []


def test_force_never_replaces_a_foreign_folder_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="became something leanconv did not write") as raised:
        with staged_folder(out, force=True) as staging:
            (staging / "result.txt").write_text("mine")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert listing(out) == {"theirs.txt": "theirs"}
    kept = Path(str(raised.value).rsplit("kept in ", 1)[1].strip("'"))
    assert (kept / "result.txt").read_text() == "mine"


def test_an_error_while_writing_leaves_the_old_output_and_no_staging(tmp_path):
    out = tmp_path / "out"
    write_output(out, "old", 2)
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out, force=True) as staging:
            (staging / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert set(listing(out)) == {MARKER, "old0.txt", "old1.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_signals_held_delivers_sigint_only_after_the_block():
    # in a fresh interpreter: a SIGINT to a process that has run OpenVINO int8 models (earlier
    # tests of this session load them) crashes inside OpenVINO, whoever handles the signal
    script = textwrap.dedent("""
        import os, signal, time
        from leanconv._files import signals_held
        reached_end = False
        try:
            with signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                reached_end = True
        except KeyboardInterrupt:
            print("interrupted after the block" if reached_end else "interrupted inside the block")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "interrupted after the block", run.stderr


def test_atomic_file_without_replace_keeps_a_file_that_appeared(tmp_path):
    path = tmp_path / "report.md"
    with pytest.raises(FileExistsError, match=r"was created while leanconv ran.*kept in") as raised:
        with atomic_file(path, replace=False) as tmp:
            tmp.write_text("mine")
            path.write_text("theirs")
    assert path.read_text() == "theirs"
    assert Path(str(raised.value).rsplit("kept in ", 1)[1].strip("'")).read_text() == "mine"
    with atomic_file(path) as tmp:
        tmp.write_text("forced")
    assert path.read_text() == "forced"


# ------------------------------------------------------------------------ other processes

WRITER = textwrap.dedent("""
    import shutil, sys, time
    from pathlib import Path
    from leanconv import _files

    out, prefix, count, phase = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]

    def slow_remove(path, ignore_errors=False):  # the delete of the replaced folder, slowed down
        print("deleting", flush=True)
        for item in sorted(Path(path).iterdir()):
            item.unlink()
            time.sleep(0.005)
        Path(path).rmdir()

    _files._remove_tree = slow_remove
    with _files.staged_folder(out, force=phase != "race") as staging:
        for i in range(count):
            (staging / f"{prefix}{i}.txt").write_text(prefix)
        if phase == "write":
            print("writing", flush=True)
            time.sleep(60)
        if phase == "race":  # both runs passed the start check before either installs
            (out.parent / f"ready-{prefix}").touch()
            while len(list(out.parent.glob("ready-*"))) < 2:
                time.sleep(0.01)
    print("done", flush=True)
""")


def start_writer(tmp_path: Path, out: Path, prefix: str, count: int, phase: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(out), prefix, str(count), phase],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", ["write", "delete"])
def test_a_signal_during_a_forced_replacement_leaves_old_or_new_complete(tmp_path, sig, phase):
    out = tmp_path / "out"
    write_output(out, "old", 300)
    old = listing(out)
    writer = start_writer(tmp_path, out, "new", 200, phase)
    line = writer.stdout.readline().strip()
    assert line == ("writing" if phase == "write" else "deleting"), writer.stderr.read()
    time.sleep(0.2)  # well inside the slow step
    writer.send_signal(sig)
    writer.wait(timeout=60)
    assert writer.returncode != 0
    now = listing(out)
    if phase == "write":
        assert now == old
    else:
        assert now == {MARKER: old[MARKER], **{f"new{i}.txt": "new" for i in range(200)}}


def test_two_runs_into_the_same_new_folder_one_fails_clearly(tmp_path):
    out = tmp_path / "out"
    writers = [start_writer(tmp_path, out, prefix, 50, "race") for prefix in ("a", "b")]
    results = [(w.wait(timeout=60), w.stderr.read()) for w in writers]
    assert sorted(code for code, _ in results) == [0, 1]
    winner, loser = ("a", "b") if results[0][0] == 0 else ("b", "a")
    assert set(listing(out)) == {MARKER} | {f"{winner}{i}.txt" for i in range(50)}
    message = [err for code, err in results if code][0].strip().splitlines()[-1]
    assert f"FileExistsError: --out={str(out)!r} was created while leanconv ran" in message
    kept = Path(message.rsplit("kept in ", 1)[1].strip("'"))
    assert set(listing(kept)) == {MARKER} | {f"{loser}{i}.txt" for i in range(50)}


# ------------------------------------------------------------------------ the commands

MODEL_FILE = """
import torch, leanconv

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(leanconv.DepthwiseSeparableConv2d(4, 6, 3, padding=1), torch.nn.ReLU()).eval()
"""


@pytest.fixture
def qmodel_file(tmp_path):
    import torch

    from leanconv.quant import quantize

    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    path = tmp_path / "q.pt"
    quantize(block, torch.randn(4, 3, 8, 8)).save(path)
    return path


def folder_commands(tmp_path: Path, qmodel: Path) -> dict:
    (tmp_path / "net.py").write_text(MODEL_FILE)
    model = f"{tmp_path / 'net.py'}:build"
    return {
        "convert": ["convert", model, "--rank", "1", "--input", "1,4,8,8"],
        "quantize": ["quantize", model, "--calib", "random:8", "--input", "1,4,8,8"],
        "export-hls": ["export-hls", str(qmodel), "--vectors", "1"],
        "optimize": ["optimize", model, "--data", "digits", "--rank", "1"],
        "demo": ["demo"],
    }


def run_main(argv, capsys):
    from leanconv.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", ["convert", "quantize", "export-hls", "optimize", "demo"])
@pytest.mark.parametrize("out", [".", "", ".."])
def test_commands_refuse_the_working_directory_with_force(workdir, qmodel_file, capsys, command, out):
    argv = folder_commands(workdir.parent, qmodel_file)[command] + ["--out", out, "--force"]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"leanconv {command}: --out={out!r} ")
    assert listing(workdir) == {"mine.txt": "precious"}


@pytest.mark.parametrize("command", ["convert", "quantize", "export-hls"])
def test_commands_keep_a_folder_created_while_they_run(tmp_path, qmodel_file, capsys, monkeypatch, command):
    import contextlib

    real = _files.staged_folder
    out = tmp_path / "out"

    @contextlib.contextmanager
    def intruded(target, force=False, *args, **kwargs):
        with real(target, force, *args, **kwargs) as staging:
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
            yield staging

    monkeypatch.setattr(_files, "staged_folder", intruded)
    code, _, err = run_main(folder_commands(tmp_path, qmodel_file)[command] + ["--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--out={str(out)!r} was created while leanconv ran: not replacing it without --force" in err
    assert listing(out) == {"theirs.txt": "theirs"}


def test_export_hls_into_an_existing_folder_is_one_line(tmp_path, qmodel_file, capsys):
    out = tmp_path / "hls"
    assert run_main(["export-hls", str(qmodel_file), "--vectors", "1", "--out", str(out)], capsys)[0] == 0
    code, _, err = run_main(["export-hls", str(qmodel_file), "--vectors", "1", "--out", str(out)], capsys)
    assert (code, err) == (2, f"leanconv export-hls: --out={str(out)!r} exists; pass --force to replace it\n")


def test_write_atomic_lives_in_files_and_writes_whole_text(tmp_path):
    import leanconv.analysis.profiling as profiling
    from leanconv._files import write_atomic

    assert not hasattr(profiling, "write_atomic") or profiling.write_atomic is write_atomic
    write_atomic(tmp_path / "a" / "report.md", "x" * 10_000)
    assert (tmp_path / "a" / "report.md").read_text() == "x" * 10_000
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["report.md"]


# ------------------------------------------------------------------------ what killed runs leave

FILE_WRITER = textwrap.dedent("""
    import sys, time
    from leanconv._files import atomic_file

    with atomic_file(sys.argv[1]) as tmp:
        tmp.write_text("half")
        print("writing", flush=True)
        time.sleep(60)
""")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def kill_when(process: subprocess.Popen, line: str) -> None:
    """SIGKILL ``process`` once it printed ``line`` (a SIGKILL cannot be caught: nothing is cleaned up)."""
    assert process.stdout.readline().strip() == line, process.stderr.read()
    process.kill()
    process.wait(timeout=60)


def hidden(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def renamed(name: str, base: str = None, machine: str = None, pid: int = None, start: str = None) -> str:
    """A staging name of a real run with another base name, machine, owner pid or start time."""
    prefix, old_machine, old_pid, old_start, rest = name.rsplit("-", 4)
    if base is not None:
        prefix = f".{base}.leanconv"
    return "-".join([prefix, machine or old_machine, str(pid or old_pid), start or old_start, rest])


@pytest.mark.skipif(os.name != "posix", reason="kills with SIGKILL")
def test_the_next_write_removes_what_killed_runs_left_and_nothing_else(tmp_path):
    (tmp_path / "file_writer.py").write_text(FILE_WRITER)
    killed_file = subprocess.Popen([sys.executable, str(tmp_path / "file_writer.py"), str(tmp_path / "r.md")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_when(killed_file, "writing")
    [stale_file] = hidden(tmp_path)
    assert stale_file.startswith(".r.md.leanconv-") and (tmp_path / stale_file).read_text() == "half"
    killed = start_writer(tmp_path, tmp_path / "a", "a", 3, "write")
    kill_when(killed, "writing")  # its own start removed the temporary file the first one left
    [stale_folder] = hidden(tmp_path)
    assert stale_folder.startswith(".a.leanconv-") and (tmp_path / stale_folder / MARKER).is_file()
    live = start_writer(tmp_path, tmp_path / "b", "b", 3, "write")
    try:
        assert live.stdout.readline().strip() == "writing", live.stderr.read()
        [live_folder] = [n for n in hidden(tmp_path) if n.startswith(".b.leanconv-")]
        # not leanconv's: a dead owner's name but no marker; a dead owner on another machine or container
        foreign = tmp_path / renamed(stale_folder, base="c", pid=dead_pid())
        foreign.mkdir()
        (foreign / "theirs.txt").write_text("theirs")
        elsewhere = tmp_path / renamed(stale_folder, base="d", machine="f" * 8, pid=dead_pid())
        elsewhere.mkdir()
        (elsewhere / MARKER).write_text("")
        write_output(tmp_path / "out", "new", 1)
        assert hidden(tmp_path) == sorted([live_folder, foreign.name, elsewhere.name])
        assert (tmp_path / live_folder / "b0.txt").read_text() == "b" and listing(foreign) == {"theirs.txt": "theirs"}
    finally:
        live.kill()
        live.wait(timeout=60)
    _files.write_atomic(tmp_path / "r.md", "whole")  # the live owner is gone now: its folder goes too
    assert hidden(tmp_path) == sorted([foreign.name, elsewhere.name]) and (tmp_path / "r.md").read_text() == "whole"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="start times are read from /proc (Linux)")
def test_a_reused_pid_is_not_the_owner_and_a_set_aside_old_output_waits_for_the_new_one(tmp_path):
    out = tmp_path / "out"
    write_output(out, "old", 100)
    writer = start_writer(tmp_path, out, "new", 3, "delete")
    kill_when(writer, "deleting")  # killed while the replaced output was being deleted
    [aside] = hidden(tmp_path)
    assert aside.startswith(".out.leanconv-") and aside.endswith(".old")
    assert set(listing(out)) == {MARKER, "new0.txt", "new1.txt", "new2.txt"}
    # the pid of this very process, with another start time: a reused pid, so its owner is gone
    reused = tmp_path / renamed(aside, base="x", pid=os.getpid(), start="0123abcd").replace(".old", ".tmp")
    # a set-aside old output whose new output never arrived (killed between the two renames): kept
    only_copy = tmp_path / renamed(aside, base="y", pid=dead_pid())
    for folder in (reused, only_copy):
        folder.mkdir()
        (folder / MARKER).write_text("")
        (folder / "result.txt").write_text("r")
    write_output(tmp_path / "z", "z", 1)
    assert hidden(tmp_path) == [only_copy.name]
    (tmp_path / "y").mkdir()
    write_output(tmp_path / "z", "z", 1, force=True)
    assert hidden(tmp_path) == []


READ_ONLY_WRITES = textwrap.dedent("""
    import sys
    from pathlib import Path
    from leanconv._files import staged_folder, write_atomic
    from leanconv.cli import main

    ro = Path(sys.argv[1])
    writes = (lambda: write_atomic(ro / "r.md", "text", name="path"), lambda: staged_folder(ro / "out").__enter__())
    for write in writes:
        try:
            write()
        except ValueError as error:
            print(error)
    main(["compare", "--in-channels", "4", "--out-channels", "8", "--size", "8", "--out", str(ro / "c.md")])
""")


def test_a_read_only_file_system_is_one_line_naming_out(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    mount = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro none "$1" && shift && exec "$@"', "sh", str(ro)]
    try:
        probe = subprocess.run(mount + ["true"], capture_output=True, timeout=60)
    except FileNotFoundError:
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs a private read-only mount (unshare -rm, user namespaces)")
    run = subprocess.run(mount + [sys.executable, "-c", READ_ONLY_WRITES, str(ro)], capture_output=True, text=True,
                         timeout=300)
    assert run.stdout.splitlines() == [
        f"path={str(ro / 'r.md')!r} cannot be written: Read-only file system in {str(ro)!r}",
        f"--out={str(ro / 'out')!r} is not writable: Read-only file system in {str(ro)!r}",
    ], run.stdout + run.stderr
    assert run.stderr == (f"leanconv compare: --out={str(ro / 'c.md')!r} is not writable: Read-only file system "
                          f"in {str(ro)!r}\n")


def test_single_file_writers_refuse_a_folder_and_folder_writers_a_file_in_one_line(tmp_path, capsys):
    folder, file = tmp_path / "exists", tmp_path / "file"
    folder.mkdir()
    file.write_text("keep")
    with pytest.raises(ValueError, match=rf"^path={str(folder)!r} is a folder: name a file$"):
        _files.write_atomic(folder, "text", name="path")
    with pytest.raises(ValueError, match=r"^--out='.*exists' is a folder: name a file$"):
        with atomic_file(folder):
            pytest.fail("writing must not start")
    compare = ["compare", "--in-channels", "4", "--out-channels", "8", "--size", "8", "--out", str(folder), "--force"]
    assert run_main(compare, capsys)[::2] == (2, f"leanconv compare: --out={str(folder)!r} is a folder: name a file\n")
    (tmp_path / "net.py").write_text(MODEL_FILE)
    convert = ["convert", f"{tmp_path / 'net.py'}:build", "--rank", "1", "--input", "1,4,8,8", "--out", str(file),
               "--force"]
    assert run_main(convert, capsys)[::2] == (2, f"leanconv convert: --out={str(file)!r} exists and is not a folder: "
                                                 "not replacing it, even with --force\n")
    assert listing(folder) == {} and file.read_text() == "keep" and hidden(tmp_path) == []


def test_long_output_names_still_fit_beside_their_staging_names(tmp_path):
    _files.write_atomic(tmp_path / ("f" * 240), "text")
    write_output(tmp_path / ("d" * 240), "x", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d" * 240, "f" * 240]

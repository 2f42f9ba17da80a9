"""Output files and folders written all at once, and never over something leanconv did not write.

Every command that writes a folder (``convert``, ``quantize``, ``export-hls``, ``optimize``,
``demo``) goes through :func:`staged_folder`:

1. before any work, :func:`check_new_folder` refuses an ``--out`` that is empty, ``.``, the
   working directory or a folder above it, a symbolic link, a file, a folder that exists
   without ``--force``, or a non-empty folder without leanconv's :data:`MARKER` file (even with
   ``--force``), and probes that the place is writable;
2. the results are written into a staging folder beside ``--out`` (same file system), which
   carries the marker;
3. at the end the staging folder is renamed onto ``--out`` by an exclusive rename (it fails if
   ``--out`` exists: a folder that appeared meanwhile is never replaced without ``--force``, and
   of two concurrent runs exactly one wins). With ``--force`` the old folder is first renamed
   aside, the new one moved in (SIGINT/SIGTERM held during the two renames), and only then is
   the old one deleted: an interruption leaves the old or the new output complete, never a mix.

An error or Ctrl-C while writing removes the staging folder and leaves any earlier result as it was.

A SIGKILL (or a power loss) cannot be caught, so staging folders, temporary files and the folder
holding a replaced output while it is deleted carry their owner in their names:
``.<name>.leanconv-<machine>-<pid>-<start>-<random>.tmp`` (``.old`` for the holder). ``<machine>``
hashes the host name and the PID namespace, ``<start>`` the boot id and the process start time,
so a reused pid is not mistaken for the owner. The next write into the same parent folder
(:func:`_remove_stale`) removes those whose owner is gone: only names of that form, written on
this machine, holding the :data:`MARKER` file (or empty; a temporary file: a regular file), and an
``.old`` holder only once ``<name>`` exists again (until then it may hold the only complete
output). Anything else, and anything of a live process, is never touched. A result kept on
purpose after a failed install is renamed ``.<name>.kept-<random>``
so it is never removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Union

PathArg = Union[str, os.PathLike]

MARKER = ".leanconv-output"
"""The file leanconv writes in every output folder: only such folders are replaced by ``--force``."""

_MARKER_TEXT = "This folder was written by leanconv; `--force` may replace it as a whole.\n"

# Deleting a replaced folder; a test swaps in a slow version to interrupt it half way.
_remove_tree: Callable[..., None] = shutil.rmtree


# ------------------------------------------------------------------ owners of staging names

_STAGING_NAME = re.compile(r"\.(?P<base>.+)\.leanconv-(?P<machine>[0-9a-f]{8})-(?P<pid>[1-9][0-9]*)-"
                           r"(?P<start>[0-9a-f]{8})-[A-Za-z0-9_]+\.(?P<kind>tmp|old)")
_UNKNOWN_START = "00000000"
_machine_tags: Dict[int, str] = {}


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _machine_tag() -> str:
    """This host and PID namespace: pids of another machine or container mean nothing here."""
    pid = os.getpid()
    if pid not in _machine_tags:
        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:
            namespace = ""
        _machine_tags[pid] = _short_hash(f"{socket.gethostname()}|{namespace}")
    return _machine_tags[pid]


def _pid_exists(pid: int) -> bool:
    """False only when no process ``pid`` exists (an unreadable one counts as existing)."""
    if os.name != "posix":
        return True  # Windows: os.kill would terminate the process, never probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # another user's process: it exists
    return True


def _start_tag(pid: int) -> Optional[str]:
    """The boot id and start time of process ``pid``, hashed; None when no such process exists,
    :data:`_UNKNOWN_START` when it exists but its start time cannot be read (no /proc)."""
    if not _pid_exists(pid):
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            start = int(stat_file.read().rsplit(b")", 1)[1].split()[19])  # the name in (...) may hold spaces
    except (OSError, IndexError, ValueError):
        return _UNKNOWN_START
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot_file:
            boot = boot_file.read().strip()
    except OSError:
        boot = ""
    return _short_hash(f"{boot}|{start}")


def _owner_prefix(base: str) -> str:
    """The start of a staging name for ``base`` owned by this process (see the module doc); a long
    ``base`` is shortened to keep the name within file systems' 255 bytes."""
    pid = os.getpid()
    return f".{base[:120]}.leanconv-{_machine_tag()}-{pid}-{_start_tag(pid) or _UNKNOWN_START}-"


def _owner_gone(match: "re.Match[str]") -> bool:
    """True only when the staging name's owner certainly no longer runs (same machine, pid gone or reused)."""
    if match["machine"] != _machine_tag():
        return False
    now = _start_tag(int(match["pid"]))
    if now is None:
        return True
    return now != _UNKNOWN_START and match["start"] != _UNKNOWN_START and now != match["start"]


def _remove_stale_entry(entry: "os.DirEntry[str]", kind: str) -> None:
    """Remove one stale staging entry if it is leanconv's: a folder with the marker (or empty), a regular file."""
    path = Path(entry.path)
    if entry.is_dir(follow_symlinks=False):
        try:
            marked = stat.S_ISREG(os.lstat(path / MARKER).st_mode)
        except OSError:
            marked = False
        if marked:
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only an empty folder: a kill before the marker was written
    elif kind == "tmp" and entry.is_file(follow_symlinks=False):
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_stale(parent: Path) -> None:
    """Remove what killed leanconv runs left in ``parent`` (see the module doc); never anything else."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        match = _STAGING_NAME.fullmatch(entry.name)
        if match is None or not _owner_gone(match):
            continue
        if match["kind"] == "old" and not os.path.lexists(parent / match["base"]):
            continue  # killed between the two renames: this may be the only complete output
        _remove_stale_entry(entry, match["kind"])


def _keep(path: Path, base: str) -> Path:
    """Rename a result kept on purpose (its path goes into an error message) so no cleanup removes it."""
    kept = path.parent / f".{base}.kept-{uuid.uuid4().hex[:12]}"
    try:
        os.rename(path, kept)
    except OSError:
        return path
    return kept


def _describe(name: str, out: PathArg) -> str:
    return f"{name}={os.fspath(out)!r}"


def _resolved(out: PathArg, name: str) -> Path:
    """``out`` as an absolute path (its parent's symlinks resolved); refuses '', '.', the working
    directory and its ancestors (which contain the staging folder and the caller's files)."""
    text = os.fspath(out)
    if not str(text).strip():
        raise ValueError(f"{_describe(name, out)} must name an output folder (it is empty)")
    absolute = Path(os.path.abspath(text))
    if not absolute.name:
        raise ValueError(f"{_describe(name, out)} is the root folder: choose a new folder for the output")
    target = Path(os.path.realpath(absolute.parent)) / absolute.name
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ValueError(f"{_describe(name, out)} is the working directory or a folder above it: "
                         "choose a new folder for the output")
    return target


def _check_writable(target: Path, name: str, out: PathArg) -> None:
    """Probe, with a real temporary folder, that ``target``'s nearest existing ancestor takes new entries."""
    place = target.parent
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise ValueError(f"{_describe(name, out)} cannot be created: {str(place)!r} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=place, prefix=_owner_prefix(target.name), suffix=".tmp"))
    except OSError as error:
        raise ValueError(f"{_describe(name, out)} is not writable: {error.strerror} in {str(place)!r}") from None


def _is_ours(folder: Path) -> bool:
    """True for an empty folder or one holding leanconv's marker file."""
    return (folder / MARKER).is_file() or not any(folder.iterdir())


def _check_replaceable(target: Path, force: bool, name: str, out: PathArg, flag: str) -> None:
    if target.is_symlink():
        raise ValueError(f"{_describe(name, out)} is a symbolic link: name the folder itself")
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"{_describe(name, out)} exists and is not a folder: not replacing it, even with {flag}")
    if not force:
        raise FileExistsError(f"{_describe(name, out)} exists; pass {flag} to replace it")
    if not _is_ours(target):
        raise ValueError(f"{_describe(name, out)} is a non-empty folder leanconv did not write (no {MARKER} file): "
                         f"not replacing it, even with {flag}; remove it yourself or choose another {name}")


def check_new_folder(out: PathArg, force: bool, flag: str = "--force", name: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be written safely; returns ``Path(out)``.

    Raises ``FileExistsError`` when ``out`` exists and ``force`` is not set, ``ValueError`` for an
    unsafe or unwritable ``out`` (see the module doc). Both messages name ``name``, not a temporary path.
    """
    target = _resolved(out, name)
    _check_replaceable(target, force, name, out, flag)
    _check_writable(target, name, out)
    return Path(out)


def check_new_file(path: PathArg, force: bool, flag: str = "--force", name: str = "--out") -> Path:
    """Refuse, before any work, an output file that exists (without ``force``), is a folder or
    cannot be created; returns ``Path(path)``."""
    target = _resolved(path, name)
    if target.is_dir():
        raise ValueError(f"{_describe(name, path)} is a folder: name a file")
    if target.exists() and not force:
        raise FileExistsError(f"{_describe(name, path)} exists; pass {flag} to replace it")
    _check_writable(target, name, path)
    return Path(path)


def _renameat2() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return function


_RENAMEAT2 = _renameat2()
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def _rename_new(source: Path, destination: Path) -> None:
    """Rename ``source`` to ``destination``, raising FileExistsError if ``destination`` exists:
    never replaces anything (Linux: renameat2 RENAME_NOREPLACE; else an exclusive claim first)."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # not supported by this file system
            raise OSError(code, os.strerror(code), str(destination))
    if os.name == "nt":  # Windows' rename never replaces
        os.rename(source, destination)
    elif source.is_dir():
        os.mkdir(destination)  # the exclusive claim; rename then replaces this empty folder
        os.rename(source, destination)
    else:
        os.link(source, destination)  # exclusive
        os.unlink(source)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (re-raised on exit) so a few steps that must run together do.

    Python-level handlers, not a signal mask: torch's worker threads would take a masked signal.
    Only the main thread can set handlers; elsewhere nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda received, frame: caught.append(received)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in caught:
            signal.raise_signal(number)


def _make_public(staging: Path) -> None:
    """mkdtemp folders are private; results are ordinary world-readable files (executables stay
    executable: a compiled testbench) and folders."""
    for root, dirs, files in os.walk(staging):
        for entry in files:
            path = os.path.join(root, entry)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644)
        for entry in dirs:
            os.chmod(os.path.join(root, entry), 0o755)
    os.chmod(staging, 0o755)


def _replace(staging: Path, target: Path, label: str, flag: str) -> None:
    """``target`` (a leanconv folder) aside, ``staging`` in, then the old one deleted."""
    if target.is_symlink() or not target.is_dir() or not _is_ours(target):
        staging = _keep(staging, target.name)
        raise ValueError(f"{label} became something leanconv did not write while it ran: not replacing it, "
                         f"even with {flag}; this run's result is kept in {str(staging)!r}")
    # the old folder goes into a marked holder, so a kill while deleting it leaves a folder still marked ours
    holder = Path(tempfile.mkdtemp(dir=target.parent, prefix=_owner_prefix(target.name), suffix=".old"))
    (holder / MARKER).write_text(_MARKER_TEXT)
    with signals_held():
        os.rename(target, holder / target.name)  # into a new folder: nothing there to replace
        try:
            _rename_new(staging, target)
        except FileExistsError:
            holder, staging = _keep(holder, target.name), _keep(staging, target.name)
            raise FileExistsError(f"{label} was created again while leanconv replaced it; the old output is in "
                                  f"{str(holder / target.name)!r}, this run's result in {str(staging)!r}") from None
    try:
        _remove_tree(holder / target.name)
        shutil.rmtree(holder)
    except BaseException:
        print(f"leanconv: {label} holds the new output; removing the old one was interrupted: "
              f"delete {str(holder)!r}", file=sys.stderr)
        raise


def _install(staging: Path, target: Path, force: bool, label: str, flag: str) -> None:
    """Move the finished ``staging`` folder to ``target`` without ever replacing what is not ours."""
    try:
        _rename_new(staging, target)
        return
    except FileExistsError:
        if not force:
            staging = _keep(staging, target.name)
            raise FileExistsError(f"{label} was created while leanconv ran: not replacing it without {flag}; "
                                  f"this run's result is kept in {str(staging)!r}") from None
    _replace(staging, target, label, flag)


def _new_staging(target: Path, folder: bool, label: str) -> Path:
    """A new staging folder (or empty file) named for this process beside ``target``, after removing
    what killed runs left there; a file system that refuses it is one ValueError naming ``label``."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(target.parent)
        if folder:
            return Path(tempfile.mkdtemp(dir=target.parent, prefix=_owner_prefix(target.name), suffix=".tmp"))
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=_owner_prefix(target.name), suffix=".tmp")
        os.close(handle)
        return Path(name)
    except OSError as error:
        raise ValueError(f"{label} cannot be written: {error.strerror or error} in {str(target.parent)!r}") from None


@contextlib.contextmanager
def staged_folder(out: PathArg, force: bool = False, flag: str = "--force", name: str = "--out") -> Iterator[Path]:
    """Yield an empty staging folder to write into; on success it becomes ``out`` (see the module
    doc for the checks and the exclusive install), on any exception while writing it is removed."""
    check_new_folder(out, force, flag, name)
    target = _resolved(out, name)
    staging = _new_staging(target, True, _describe(name, out))
    try:
        (staging / MARKER).write_text(_MARKER_TEXT)
        yield staging
        _make_public(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _install(staging, target, force, _describe(name, out), flag)


@contextlib.contextmanager
def atomic_file(path: PathArg, replace: bool = True, flag: str = "--force", name: str = "--out") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it becomes ``path``
    (world-readable), on any exception it is removed: readers never see half a file.

    ``replace=False`` installs it exclusively: a ``path`` that appeared meanwhile is kept and
    ``FileExistsError`` says where this run's file is.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{_describe(name, path)} is a folder: name a file")
    tmp = _new_staging(path, False, _describe(name, path))
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are ordinary files
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not replace:
        try:
            _rename_new(tmp, path)
        except FileExistsError:
            tmp = _keep(tmp, path.name)
            raise FileExistsError(f"{_describe(name, path)} was created while leanconv ran: not replacing it "
                                  f"without {flag}; this run's result is kept in {str(tmp)!r}") from None
        return
    try:
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise ValueError(f"{_describe(name, path)} cannot be replaced: {error.strerror or error}") from None
        raise


def write_atomic(path: PathArg, text: str, replace: bool = True, flag: str = "--force", name: str = "--out") -> None:
    """Write ``text`` to ``path`` through :func:`atomic_file` (no half files; see ``replace`` there)."""
    with atomic_file(path, replace, flag, name) as tmp:
        tmp.write_text(text)


__all__ = ["MARKER", "atomic_file", "check_new_file", "check_new_folder", "signals_held", "staged_folder", "write_atomic"]

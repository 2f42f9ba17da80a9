"""Output files and folders written all at once: a command's results appear complete or not at all.

Every command that writes a folder (``convert``, ``quantize``, ``export-hls``, ``optimize``,
``demo``) fills a staging folder beside the destination and renames it into place at the end;
an error or Ctrl-C removes the staging folder and leaves any earlier result untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union


def check_new_folder(out: Union[str, os.PathLike], force: bool, flag: str = "--force") -> Path:
    """``out`` as a Path; raises FileExistsError when it exists and ``force`` is not set."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass {flag} to replace it")
    return out


@contextlib.contextmanager
def staged_folder(out: Union[str, os.PathLike], force: bool = False, flag: str = "--force") -> Iterator[Path]:
    """Yield an empty folder to write into; on success it becomes ``out`` (replacing an existing
    ``out`` only when ``force``), on any exception it is removed. Files end up world-readable."""
    out = check_new_folder(out, force, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield staging
        for root, dirs, files in os.walk(staging):
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        os.chmod(staging, 0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``
    (world-readable), on any exception it is removed: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["atomic_file", "check_new_folder", "staged_folder"]

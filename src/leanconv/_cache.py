"""Where leanconv keeps what it can reuse between runs (measured latencies, the demo's trained model).

``LEANCONV_CACHE_DIR`` wins, then ``$XDG_CACHE_HOME/leanconv``, then ``~/.cache/leanconv``.
Nothing in the cache is needed for correctness: deleting it only costs time.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict

try:  # the lock is POSIX; elsewhere saves merge without it
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from leanconv._files import write_atomic


def cache_dir() -> Path:
    """The user cache folder for leanconv (not created here)."""
    explicit = os.environ.get("LEANCONV_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "leanconv"


@dataclass(frozen=True)
class TableKind:
    """What a cache table holds: its name in warnings, the rule its values keep, and what
    becomes of an entry that breaks it."""

    name: str  # 'latency'
    valid: Callable[[Any], bool]
    rule: str  # 'a positive number of ms'
    redo: str = "measuring again"


def read_table(path: Path, kind: TableKind, warn: bool = True) -> Dict[str, Any]:
    """The entries of the JSON object in ``path`` whose value keeps ``kind``'s rule (an absent
    file: none). Anything else is dropped, with one warning naming the file: a wrong cache entry
    is computed again, never used."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as error:
        data, problem = {}, f"unreadable ({error})"
    else:
        problem = "" if isinstance(data, dict) else f"a {type(data).__name__}, not an object"
        data = data if isinstance(data, dict) else {}
    table = {key: value for key, value in data.items() if isinstance(key, str) and kind.valid(value)}
    if len(table) < len(data):
        problem = problem or f"{len(data) - len(table)} entries that are not {kind.rule}"
    if problem and warn:
        warnings.warn(f"{kind.name} cache {str(path)!r} is {problem}: ignoring that and {kind.redo}", stacklevel=4)
    return table


def merge_table(path: Path, new: Dict[str, Any], kind: TableKind) -> Dict[str, Any]:
    """Merge ``new`` into the JSON table in ``path`` under a lock and write it atomically, so that
    processes sharing the cache never lose each other's entries; returns the merged table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {**read_table(path, kind, warn=False), **new}
        write_atomic(path, json.dumps(merged, indent=1, sort_keys=True))
    return merged


__all__ = ["TableKind", "cache_dir", "merge_table", "read_table"]

"""Where leanconv keeps what it can reuse between runs (measured latencies, the demo's trained model).

``LEANCONV_CACHE_DIR`` wins, then ``$XDG_CACHE_HOME/leanconv``, then ``~/.cache/leanconv``.
Nothing in the cache is needed for correctness: deleting it only costs time.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache folder for leanconv (not created here)."""
    explicit = os.environ.get("LEANCONV_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "leanconv"


__all__ = ["cache_dir"]

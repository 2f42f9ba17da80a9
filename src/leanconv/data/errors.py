"""The error a loader raises when its local folder or files are missing (nothing is downloaded)."""

from __future__ import annotations


class DataNotFoundError(FileNotFoundError, ValueError):
    """A data folder or file is missing. It is a ``FileNotFoundError`` and, because the path
    is an argument the user gave, a ``ValueError`` too (the CLI reports those without a
    traceback). The message names the path and the files that were expected there."""


__all__ = ["DataNotFoundError"]

"""Candidates' fitted errors, kept on disk so that a second search of one model fits nothing again.

A candidate's error (:class:`~leanconv.conversion.candidates.CandidateFit`) depends on the
model's weights, the calibration images, the layer, the candidate and the fitting settings, not
on the deployment target; so :func:`data_key` hashes the model (architecture and every tensor of
its state) with the images, and :func:`fit_key` adds the rest. Entries are JSON numbers checked on
reading (nothing from the file reaches ``pickle``); a wrong one is fitted again. The file is
``<cache_dir>/fits.json`` and shares :mod:`leanconv._cache`'s locked, atomic merge.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv._cache import TableKind, cache_dir, merge_table, read_table
from leanconv.conversion.candidates import Candidate, CandidateFit
from leanconv.conversion.surgery import jsonable

FIT_VERSION = 1
"""Raised when the fitting code changes what it computes: older entries stop matching."""


def data_key(model: nn.Module, images: Optional[Sequence[torch.Tensor]]) -> str:
    """A hash of everything a layer's fit reads besides the candidate: the model's architecture
    and state (names, dtypes, shapes, values) and the calibration images."""
    digest = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        _add_tensor(digest, name, tensor)
    for index, batch in enumerate(images or []):
        _add_tensor(digest, f"image batch {index}", batch)
    return digest.hexdigest()[:32]


def _add_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    data = tensor.detach().cpu().contiguous()
    digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")


def fit_key(data: str, path: str, candidate: Candidate, **settings: Any) -> str:
    """The cache key of one candidate's fit: the data hash, the layer, the candidate, the
    fitting ``settings`` (images used, held-out share, accumulation dtype), the code's version."""
    fixed = {name: str(value) for name, value in sorted(settings.items())}
    return (f"fit v{FIT_VERSION}|torch {torch.__version__}|{data}|{path}|"
            f"{candidate.kind}|{json.dumps(jsonable(candidate.options), sort_keys=True)}|"
            f"{json.dumps(fixed, sort_keys=True)}")


def _is_fit(value: object) -> bool:
    """``[error, fitted_error or null, weight_error, refit]`` with non-negative finite errors."""
    if not isinstance(value, list) or len(value) != 4:
        return False
    error, fitted, weight, refit = value
    return (_is_error(error) and (fitted is None or _is_error(fitted)) and _is_error(weight)
            and isinstance(refit, bool))


def _is_error(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


_FITS = TableKind("fit", _is_fit, "[error, fitted error, weight error, refit]", "fitting again")
_SCORES = TableKind("whole-model score", _is_error, "a non-negative finite number", "scoring again")


def score_key(data: str, choice: Sequence[Tuple[str, Candidate]], **settings: Any) -> str:
    """The cache key of a mix's whole-model score: the data hash (model, and the images fitted
    and scored on), each converted layer's candidate, the fitting ``settings``, the code's version."""
    mix = [[path, candidate.kind, jsonable(candidate.options)] for path, candidate in sorted(choice, key=lambda c: c[0])]
    fixed = {name: str(value) for name, value in sorted(settings.items())}
    return (f"score v{FIT_VERSION}|torch {torch.__version__}|{data}|{json.dumps(mix, sort_keys=True)}|"
            f"{json.dumps(fixed, sort_keys=True)}")


class FitCache:
    """Fitted errors per :func:`fit_key`, persisted as JSON in ``path`` (default
    ``<cache_dir>/fits.json``), and whole-model scores per :func:`score_key` beside it
    (``scores.json``)."""

    def __init__(self, path: Optional[Path] = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "fits.json"
        self.scores_path = self.path.with_name("scores.json")
        self._table: Dict[str, List[Any]] = read_table(self.path, _FITS)
        self._new: Dict[str, List[Any]] = {}
        self._scores: Dict[str, float] = read_table(self.scores_path, _SCORES)
        self._new_scores: Dict[str, float] = {}

    def known_score(self, key: str) -> Optional[float]:
        """The cached whole-model score of ``key`` (None: not scored yet)."""
        value = self._scores.get(key)
        return None if value is None else float(value)

    def remember_score(self, key: str, score: float) -> None:
        """Keep ``score`` under ``key`` (written by :meth:`save`); a non-finite one is not kept."""
        if _is_error(score):
            self._scores[key] = self._new_scores[key] = float(score)

    def known(self, key: str) -> Optional[CandidateFit]:
        """The cached fit of ``key`` (None: not fitted yet)."""
        entry = self._table.get(key)
        if entry is None:
            return None
        error, fitted, weight, refit = entry
        return CandidateFit(float(error), math.nan if fitted is None else float(fitted), float(weight), refit)

    def remember(self, key: str, fit: CandidateFit) -> None:
        """Keep ``fit`` under ``key`` (written by :meth:`save`); a fit with a non-finite error is not kept."""
        entry = [fit.error, None if math.isnan(fit.fitted_error) else fit.fitted_error, fit.weight_error, fit.refit]
        if _is_fit(entry):
            self._table[key] = self._new[key] = entry

    def save(self) -> None:
        """Merge the new fits and scores into their files (locked, atomic)."""
        if self._new:
            self._table.update(merge_table(self.path, self._new, _FITS))
            self._new = {}
        if self._new_scores:
            self._scores.update(merge_table(self.scores_path, self._new_scores, _SCORES))
            self._new_scores = {}


__all__ = ["FIT_VERSION", "FitCache", "data_key", "fit_key", "score_key"]

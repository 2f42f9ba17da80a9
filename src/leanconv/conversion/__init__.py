"""Conversion of trained convs into efficient kinds, as a pipeline of rooms:

- ``factorize``: pure tensor math, a dense kernel into a kind's optimal weights (each kind's
  registry entry in :mod:`leanconv.kinds` names its function);
- ``select``: the rank modes (rank, energy, MAC budget, latency budget) and their typed results;
- ``latency``: measured per-layer latency, cached on disk;
- ``surgery``: build a replacement module with given weights and swap it into a model;
- ``plan``: the typed, versioned plan that records a conversion and rebuilds it;
- ``refitting``: data-aware least squares of each converted layer's last stage;
- ``pipeline``: :func:`leanconv.convert`, which reads as plan, choose, apply.

This package re-exports nothing (the registry imports ``factorize`` from it, so importing the
package must stay light); the public functions are ``leanconv.convert``, ``leanconv.apply_plan``
and ``leanconv.save_plan``.
"""

"""The on-disk latency cache: bad files are ignored with one warning naming them, bad entries are
measured again, and processes sharing the file never lose each other's timings. Timings here
are scripted; nothing is timed."""

from __future__ import annotations

import json
import multiprocessing
import warnings

import pytest
import torch
from torch import nn

from leanconv.conversion.latency import LatencyCache


def one_ms(module, x):
    return 1.0


@pytest.mark.parametrize("content, problem", [
    ("[]", "a list, not an object"),
    ("null", "a NoneType, not an object"),
    ('"fast"', "a str, not an object"),
    ("{not json", "unreadable"),
    ('{"a": -1.0, "b": "3", "c": 2.0, "d": Infinity}', "3 entries that are not a positive number of ms"),
])
def test_a_bad_cache_file_is_ignored_with_one_warning_naming_it(tmp_path, content, problem):
    path = tmp_path / "lat.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match=f"latency cache '{path}' is {problem}") as caught:
        cache = LatencyCache(path, measure=one_ms)
    assert len(caught) == 1
    assert cache.latency("conv", nn.Conv2d(2, 2, 3), (1, 2, 8, 8)) == 1.0 and cache.measured == 1
    cache.save()
    saved = json.loads(path.read_text())
    assert all(isinstance(v, float) and v > 0 for v in saved.values())
    if problem.startswith("3 entries"):
        assert saved["c"] == 2.0 and "a" not in saved  # the good entry is kept, the bad ones are not


def test_two_caches_on_one_file_keep_both_sets_of_timings(tmp_path):
    path = tmp_path / "lat.json"
    first, second = LatencyCache(path, measure=one_ms), LatencyCache(path, measure=one_ms)
    first.latency("a", nn.Conv2d(2, 2, 3), (1, 2, 8, 8))
    second.latency("b", nn.Conv2d(2, 2, 3), (1, 2, 8, 8))
    first.save()
    second.save()  # used to write its own table over the first one's
    assert len(json.loads(path.read_text())) == 2


def _fill(path: str, tag: str) -> None:
    cache = LatencyCache(path, measure=one_ms)
    for i in range(20):
        cache.latency(f"{tag}{i}", nn.Identity(), (1, 1))
        cache.save()


def test_processes_sharing_the_cache_lose_nothing(tmp_path):
    """Three processes, 20 distinct keys each, saving after every timing: all 60 are kept."""
    path = tmp_path / "lat.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_fill, args=(str(path), tag)) for tag in "xyz"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert all(w.exitcode == 0 for w in workers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn or merged-wrong file would warn here
        assert len(json.loads(path.read_text())) == 60

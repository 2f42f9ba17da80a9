"""Shared test settings: deterministic seeds, float64 where numerics are compared."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "leanconv",
    max_examples=int(os.environ.get("LEANCONV_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("leanconv")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

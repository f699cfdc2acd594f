"""Shared fixtures: a fixed seed with torch's global state restored afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_global_state():
    """Tests run with one torch thread (fast and repeatable on 2 cores); restored afterwards."""
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


@pytest.fixture
def seed() -> int:
    """Seeds torch's global generator (restored after the test) and returns the seed."""
    torch.manual_seed(1234)
    return 1234


@pytest.fixture
def rng(seed) -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(seed)

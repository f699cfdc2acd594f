"""C2ST (sbibm recipe): ~0.5 for two halves of one reference sample, ~1 for different samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from surrogate.metrics.c2st import c2st
from surrogate.simulators.sbi_tasks import load_reference

LOCAL_SBIBM = Path(__file__).resolve().parents[2] / "datasets" / "sbibm"


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return load_reference("two_moons", 1, root=LOCAL_SBIBM).samples  # (10000, 2)


def test_two_halves_of_one_reference_sample(reference):
    # 5000 vs 5000: accuracy of a chance classifier has sd ~ 0.5 / sqrt(10000) = 0.005
    assert c2st(reference[:5000], reference[5000:]) == pytest.approx(0.5, abs=0.025)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_clearly_different_samples(reference):
    # fewer samples and epochs than sbibm (max_iter=10000) keep this fast; the full setting is
    # in the slow test below
    shifted = reference[5000:6000] + torch.tensor([0.5, 0.0])  # crescents of width ~0.1 moved by 0.5
    assert c2st(reference[:1000], shifted, max_iter=100) > 0.97
    mirrored = -reference[5000:6000]  # the other pair of moons
    assert c2st(reference[:1000], mirrored, max_iter=100) > 0.97


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_deterministic_and_affine_invariant(rng):
    a = rng.normal(size=(300, 3))
    b = rng.normal(size=(300, 3)) * 1.5
    first = c2st(a, b, max_iter=50)
    assert c2st(a, b, max_iter=50) == first  # seeded classifier and folds
    assert first > 0.55
    # z-scoring with the reference's statistics makes the test invariant to a common affine map
    scale, shift = np.array([10.0, 0.1, 3.0]), np.array([5.0, -2.0, 0.0])
    assert c2st(a * scale + shift, b * scale + shift, max_iter=50) == pytest.approx(first, abs=0.02)


@pytest.mark.slow
def test_full_size_sbibm_setting():
    """10,000 vs 10,000 samples as in sbibm: observation 1 against observation 2 reference."""
    root = LOCAL_SBIBM
    first = load_reference("two_moons", 1, root=root).samples
    second = load_reference("two_moons", 2, root=root).samples
    assert c2st(first, second) > 0.99
    assert c2st(first, first + torch.tensor([0.5, 0.0])) > 0.99


def test_errors():
    with pytest.raises(ValueError, match="same dim"):
        c2st(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="NaN"):
        c2st(np.full((10, 2), np.nan), np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"shape \(N, dim\)"):
        c2st(np.zeros(10), np.zeros((10, 1)))

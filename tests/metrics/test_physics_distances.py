"""Fréchet and kernel physics distances: analytic Gaussian answers, zero for one distribution, order."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from surrogate.metrics.physics_distances import (
    frechet_physics_distance,
    kernel_physics_distance,
    normalise_features,
)


def _analytic_frechet(mu1, c1, mu2, c2) -> float:
    root = scipy.linalg.sqrtm(c1 @ c2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * root))


def test_fpd_extrapolates_to_the_gaussian_frechet_distance():
    """Two correlated 3-d Gaussians: the extrapolated FPD equals the closed form within 3 of its
    errors and 5 %; the value at finite N alone is biased upwards by about b/N."""
    rng = np.random.default_rng(0)
    mu1, mu2 = np.zeros(3), np.array([0.3, -0.2, 0.1])
    c1 = np.array([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
    c2 = np.array([[1.3, 0.0, 0.1], [0.0, 0.8, 0.0], [0.1, 0.0, 0.6]])
    a = rng.multivariate_normal(mu1, c1, size=60_000)
    b = rng.multivariate_normal(mu2, c2, size=60_000)
    expected = _analytic_frechet(mu1, c1, mu2, c2)
    value, error = frechet_physics_distance(a, b, min_samples=2000, max_samples=20000, num_batches=10,
                                            normalise=False, seed=1)
    assert error > 0 and abs(value - expected) < max(3 * error, 0.05 * expected)
    same, same_error = frechet_physics_distance(a, rng.multivariate_normal(mu1, c1, size=60_000), min_samples=2000,
                                                max_samples=20000, num_batches=10, normalise=False, seed=1)
    assert 0.0 <= same < max(3 * same_error, 1e-3)


def test_kpd_is_unbiased_for_one_distribution_and_grows_with_the_difference():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20_000, 4))
    same, error = kernel_physics_distance(a, rng.normal(size=(20_000, 4)), batch_size=2000, seed=3)
    assert abs(same) < 3 * error + 1e-6
    shifts = [kernel_physics_distance(a, rng.normal(size=(20_000, 4)) + d, batch_size=2000, seed=3)
              for d in (0.2, 0.4, 0.8)]  # measured 0.0089 +- 0.0017, 0.037 +- 0.002, 0.147 +- 0.004
    assert all(v > 3 * e for v, e in shifts) and shifts[0][0] < shifts[1][0] < shifts[2][0]


def test_kpd_blocks_give_the_direct_sum():
    """The blocked kernel sums equal the direct unbiased MMD² formula on a small sample."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(40, 3)) + 0.3

    def k(p, q):
        return (p @ q.T / 3 + 1.0) ** 4

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    direct = ((kxx.sum() - np.trace(kxx)) / (50 * 49) + (kyy.sum() - np.trace(kyy)) / (40 * 39) - 2 * kxy.mean())
    from surrogate.metrics import physics_distances

    assert physics_distances._mmd2_unbiased(x, y, 4) == pytest.approx(direct, rel=1e-10)


def test_normalisation_uses_the_reference_maxima_and_errors_are_named():
    ref = np.array([[1.0, -4.0, 0.0], [2.0, 2.0, 0.0]])
    gen = np.array([[4.0, 1.0, 3.0]])
    a, b = normalise_features(ref, gen)
    np.testing.assert_allclose(a, [[0.5, -1.0, 0.0], [1.0, 0.5, 0.0]])
    np.testing.assert_allclose(b, [[2.0, 0.25, 3.0]])
    with pytest.raises(ValueError, match="same D"):
        kernel_physics_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="generated features contain non-finite"):
        frechet_physics_distance(np.zeros((5, 2)), np.full((5, 2), np.nan))

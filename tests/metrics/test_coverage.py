"""Expected coverage and SBC: calibrated, over-confident and conservative posteriors of a
conjugate Gaussian model (theta ~ N(0, 1), x ~ N(theta, 1), exact posterior N(x/2, 1/2))."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surrogate.metrics.coverage import expected_coverage
from surrogate.metrics.posterior_plots import plot_coverage, plot_pairs


class GaussianPosterior:
    """N(x/2 + bias, width^2 / 2) per dimension; width 1 and bias 0 is exact."""

    def __init__(self, width: float = 1.0, bias: float = 0.0):
        self.width, self.bias = width, bias

    def _q(self, x):
        return torch.distributions.Normal(x / 2 + self.bias, self.width * 0.5**0.5)

    def sample(self, shape, *, x):
        return self._q(x).sample(shape)

    def log_prob(self, theta, *, x):
        return self._q(x).log_prob(theta).sum(-1)


@pytest.fixture
def pairs(seed):
    theta = torch.randn(400, 2)
    return theta, theta + torch.randn(400, 2)


def test_exact_posterior_is_calibrated(pairs):
    result = expected_coverage(GaussianPosterior(), *pairs, num_samples=300)
    # max |ECDF - uniform| over 400 ranks: 95 % quantile ~ 1.36 / sqrt(400) = 0.068
    assert result.max_calibration_error < 0.08
    assert (result.sbc_ks_pvalues > 0.001).all()
    assert result.sbc_ranks.shape == (400, 2)
    assert result.sbc_ranks.min() >= 0 and result.sbc_ranks.max() <= 300


def test_overconfident_and_conservative_are_detected(pairs):
    narrow = expected_coverage(GaussianPosterior(width=0.5), *pairs, num_samples=300)
    wide = expected_coverage(GaussianPosterior(width=2.0), *pairs, num_samples=300)
    assert narrow.coverage_area < -0.15  # coverage below the diagonal
    assert wide.coverage_area > 0.15
    biased = expected_coverage(GaussianPosterior(bias=0.5), *pairs, num_samples=300)
    assert (biased.sbc_ks_pvalues < 1e-3).all()


def test_summary_and_plots(pairs, tmp_path):
    result = expected_coverage(GaussianPosterior(), *pairs, num_samples=100, levels=np.array([0.5, 0.9]))
    summary = result.to_dict()
    assert summary["levels"] == [0.5, 0.9] and len(summary["coverage"]) == 2
    plot_coverage(result, tmp_path / "coverage.png")
    plot_pairs({"a": torch.randn(500, 3), "b": np.random.default_rng(0).normal(size=(300, 3))},
               tmp_path / "pairs.png", true_parameters=torch.zeros(3))
    for name in ("coverage.png", "pairs.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors(pairs, tmp_path):
    theta, x = pairs
    with pytest.raises(ValueError, match="same length"):
        expected_coverage(GaussianPosterior(), theta, x[:-1])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        expected_coverage(GaussianPosterior(), theta[:, 0], x)
    with pytest.raises(ValueError, match="levels"):
        expected_coverage(GaussianPosterior(), theta, x, levels=np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="same dimension"):
        plot_pairs({"a": np.zeros((5, 2)), "b": np.zeros((5, 3))}, tmp_path / "p.png")

"""Calibration of an amortised posterior over many simulated observations.

For pairs ``(theta_i, x_i)`` drawn from the joint ``p(theta) p(x | theta)`` and ``S`` samples
``theta_i^s ~ q(theta | x_i)`` of the posterior estimate:

- **Expected coverage** of the highest-posterior-density (HPD) regions (Hermans et al. 2022):
  the HPD rank ``r_i = (1/S) sum_s 1[q(theta_i^s | x_i) > q(theta_i | x_i)]`` is the smallest
  credibility level whose HPD region contains ``theta_i``. The empirical coverage at level
  ``alpha`` is ``mean_i 1[r_i < alpha]``; it equals ``alpha`` for a calibrated posterior, lies
  below it for an over-confident one and above it for a conservative one.
- **Simulation-based calibration** (SBC, Talts et al. 2018): per dimension ``d`` the rank
  ``sum_s 1[theta_{i,d}^s < theta_{i,d}]`` in ``0..S`` is uniform for a calibrated posterior;
  a Kolmogorov-Smirnov p-value per dimension summarises it.

The posterior is any object with ``sample(sample_shape, x=x)`` returning ``(*sample_shape, B, D)``
for ``x`` of shape ``(B, *x_shape)`` and ``log_prob(theta, x=x)`` returning ``(*, B)`` for
``theta`` of shape ``(*, B, D)`` (e.g. :class:`surrogate.models.npe.NeuralPosterior`).

Example:
    >>> import torch
    >>> class Exact:  # the exact posterior of x ~ N(theta, 1), theta ~ N(0, 1): N(x/2, 1/2)
    ...     def _q(self, x): return torch.distributions.Normal(x / 2, 0.5 ** 0.5)
    ...     def sample(self, shape, *, x): return self._q(x).sample(shape)
    ...     def log_prob(self, theta, *, x): return self._q(x).log_prob(theta).sum(-1)
    >>> _ = torch.manual_seed(0)
    >>> theta = torch.randn(300, 1); x = theta + torch.randn(300, 1)
    >>> result = expected_coverage(Exact(), theta, x, num_samples=200)
    >>> result.max_calibration_error < 0.1
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from surrogate.checks import check_int

__all__ = ["REPORTED_LEVELS", "CoverageResult", "expected_coverage"]

REPORTED_LEVELS = (0.5, 0.8, 0.95)
"""Credibility levels whose coverage every report states (:meth:`CoverageResult.to_dict`)."""


@dataclass(frozen=True)
class CoverageResult:
    """Calibration diagnostics of a posterior estimate.

    Attributes:
        levels: credibility levels ``(L,)`` in (0, 1).
        coverage: empirical HPD coverage at those levels ``(L,)``.
        hpd_ranks: HPD rank of each true parameter ``(N,)`` in [0, 1].
        sbc_ranks: SBC ranks ``(N, D)`` (integers in ``0..num_samples``).
        num_samples: posterior samples per observation ``S``.
    """

    levels: np.ndarray
    coverage: np.ndarray
    hpd_ranks: np.ndarray
    sbc_ranks: np.ndarray
    num_samples: int

    @property
    def num_observations(self) -> int:
        """Number of simulated observations ``N``."""
        return int(self.hpd_ranks.shape[0])

    @property
    def max_calibration_error(self) -> float:
        """``max |coverage(alpha) - alpha|`` over ``levels``."""
        return float(np.max(np.abs(self.coverage - self.levels)))

    @property
    def coverage_area(self) -> float:
        """Signed mean of ``coverage - alpha`` over ``levels``: > 0 conservative, < 0 over-confident."""
        return float(np.mean(self.coverage - self.levels))

    @property
    def sbc_ks_pvalues(self) -> np.ndarray:
        """Kolmogorov-Smirnov p-value of uniformity of the SBC ranks per dimension ``(D,)``."""
        u = (self.sbc_ranks + 0.5) / (self.num_samples + 1)
        return np.array([stats.kstest(u[:, d], "uniform").pvalue for d in range(u.shape[1])])

    def coverage_at(self, level: float) -> float:
        """Empirical HPD coverage at one credibility ``level`` in (0, 1), from the ranks
        (``mean_i 1[r_i < level]``, whether or not ``level`` is one of ``levels``).

        Raises:
            ValueError: ``level`` outside (0, 1).
        """
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        return float(np.mean(self.hpd_ranks < level))

    def to_dict(self) -> dict:
        """Summary as plain JSON-able data (levels, coverage, errors, p-values, and
        ``coverage_at`` the coverage at the 50, 80 and 95 % levels keyed ``"0.5"``, ``"0.8"``,
        ``"0.95"``)."""
        return {
            "num_observations": self.num_observations,
            "num_samples": self.num_samples,
            "levels": self.levels.tolist(),
            "coverage": self.coverage.tolist(),
            "max_calibration_error": self.max_calibration_error,
            "coverage_area": self.coverage_area,
            "sbc_ks_pvalues": self.sbc_ks_pvalues.tolist(),
            "coverage_at": {str(level): self.coverage_at(level) for level in REPORTED_LEVELS},
        }


def expected_coverage(
    posterior,
    theta: Tensor,
    x: Tensor,
    *,
    num_samples: int = 1000,
    levels: np.ndarray | None = None,
    batch_size: int = 100,
) -> CoverageResult:
    """HPD expected coverage and SBC ranks of ``posterior`` over simulated pairs ``(theta, x)``.

    Arguments:
        posterior: object with ``sample((S,), x=x)`` and ``log_prob(theta, x=x)`` (see module
            docstring), batched over observations.
        theta: true parameters ``(N, D)`` drawn from the prior.
        x: their simulated observations ``(N, *x_shape)``.
        num_samples: posterior samples ``S`` per observation.
        levels: credibility levels in (0, 1); default 99 levels ``0.01 .. 0.99``.
        batch_size: observations per call to the posterior.

    Returns:
        A :class:`CoverageResult`.

    Raises:
        ValueError: ``theta`` and ``x`` of different lengths, ``theta`` not 2-D, non-finite
            values, ``num_samples < 1``.

    References:
        Hermans, Delaunoy, Rozet, Wehenkel, Begy & Louppe (2022), "A Trust Crisis in
        Simulation-Based Inference?", arXiv:2110.06581.
        Talts, Betancourt, Simpson, Vehtari & Gelman (2018), "Validating Bayesian Inference
        Algorithms with Simulation-Based Calibration", arXiv:1804.06788.
    """
    theta = torch.as_tensor(theta, dtype=torch.float32)
    x = torch.as_tensor(x, dtype=torch.float32)
    if theta.ndim != 2:
        raise ValueError(f"theta must have shape (N, D), got {tuple(theta.shape)}")
    if x.shape[0] != theta.shape[0]:
        raise ValueError(f"theta and x must have the same length, got {theta.shape[0]} and {x.shape[0]}")
    if not bool(torch.isfinite(theta).all() & torch.isfinite(x).all()):
        raise ValueError("theta and x must be finite")
    num_samples = check_int("num_samples", num_samples, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    levels = np.linspace(0.01, 0.99, 99) if levels is None else np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or np.any((levels <= 0) | (levels >= 1)):
        raise ValueError("levels must be a 1-D array of values in (0, 1)")

    hpd, sbc = [], []
    with torch.no_grad():
        for start in range(0, theta.shape[0], batch_size):
            t = theta[start : start + batch_size]  # (B, D)
            xb = x[start : start + batch_size]
            samples = posterior.sample((num_samples,), x=xb)  # (S, B, D)
            lp_samples = posterior.log_prob(samples, x=xb)  # (S, B)
            lp_true = posterior.log_prob(t[None], x=xb)[0]  # (B,)
            hpd.append((lp_samples > lp_true).double().mean(0))
            sbc.append((samples < t).sum(0))
    hpd_ranks = torch.cat(hpd).numpy()
    sbc_ranks = torch.cat(sbc).numpy().astype(np.int64)
    coverage = (hpd_ranks[None, :] < levels[:, None]).mean(axis=1)
    return CoverageResult(levels=levels, coverage=coverage, hpd_ranks=hpd_ranks, sbc_ranks=sbc_ranks, num_samples=num_samples)

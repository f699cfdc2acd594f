"""Validation pieces of the NPE family, with explicit arguments: one sbibm observation scored
against its reference posterior (:func:`evaluate`) and calibration over held-out simulations
(:func:`coverage`). :func:`surrogate.pipelines.npe.validate` runs them for a pipeline file.

References:
    Lueckmann et al. (2021), sbibm, arXiv:2101.04653 (reference posteriors, C2ST); Hermans et
    al. (2022), arXiv:2110.06581 (expected coverage); Talts et al. (2018), arXiv:1804.06788 (SBC).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from torch import Tensor

from surrogate.models.npe import NeuralPosterior
from surrogate.simulators.sbi_tasks import ReferencePosterior

if TYPE_CHECKING:
    from surrogate.metrics.coverage import CoverageResult

__all__ = ["coverage", "evaluate"]


def evaluate(posterior: NeuralPosterior, reference: ReferencePosterior, *, num_samples: int, c2st: bool = True,
             pair_plot: str | os.PathLike | None = None, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Samples the posterior of one sbibm observation and scores it against the reference.

    Arguments:
        posterior: the trained posterior.
        reference: the observation ``x_obs`` and its reference samples ``(10000, D)``.
        num_samples: posterior samples (rejection against the prior).
        c2st: compute the C2ST accuracy (:func:`surrogate.metrics.c2st.c2st`) on balanced sets:
            as many reference samples as posterior samples (chance level 0.5).
        pair_plot: if given, a PNG pair plot of both sample sets and the true parameters.
        labels: parameter names for the plot (default ``theta_1 ...``).

    Returns:
        ``{"num_observation", "acceptance_rate", "c2st" (if computed)}``.

    Raises:
        LowAcceptanceError: see :meth:`~surrogate.models.npe.NeuralPosterior.sample`.
    """
    from surrogate.metrics.c2st import c2st as c2st_accuracy
    from surrogate.metrics.posterior_plots import plot_pairs

    samples, acceptance = posterior.sample_with_acceptance((num_samples,), x=reference.observation)
    samples = samples.cpu()
    entry: dict[str, Any] = {"num_observation": reference.num_observation, "acceptance_rate": float(acceptance)}
    if c2st:
        n_ref = min(len(reference.samples), len(samples))
        entry["c2st"] = c2st_accuracy(reference.samples[:n_ref], samples[:n_ref])
    if pair_plot is not None:
        labels = list(labels or [f"theta_{i + 1}" for i in range(samples.shape[-1])])
        plot_pairs({"reference": reference.samples, "NPE": samples}, pair_plot, labels=labels,
                   true_parameters=reference.true_parameters,
                   title=f"{reference.task}, observation {reference.num_observation}")
    return entry


def coverage(posterior: NeuralPosterior, theta: Tensor, x: Tensor, *, num_samples: int,
             plot: str | os.PathLike | None = None, labels: Sequence[str] | None = None,
             title: str | None = None) -> CoverageResult:
    """Expected HPD coverage and SBC over held-out simulations ``(theta, x)``
    (:func:`surrogate.metrics.coverage.expected_coverage`); posterior samples come from torch's
    global generator.

    Arguments:
        posterior: the trained posterior.
        theta: true parameters ``(N, D)``, drawn from the prior, not trained on.
        x: their simulations ``(N, *x_shape)``.
        num_samples: posterior samples per simulation.
        plot: if given, a PNG of coverage against credibility level.
        labels: parameter names for the plot (default ``theta_1 ...``).
        title: title of the plot.

    Returns:
        A :class:`surrogate.metrics.coverage.CoverageResult`.

    Raises:
        ValueError: see :func:`~surrogate.metrics.coverage.expected_coverage`.
    """
    from surrogate.metrics.coverage import expected_coverage
    from surrogate.metrics.posterior_plots import plot_coverage

    result = expected_coverage(posterior, theta, x, num_samples=num_samples)
    if plot is not None:
        labels = list(labels or [f"theta_{i + 1}" for i in range(theta.shape[1])])
        plot_coverage(result, plot, labels=labels, title=title)
    return result

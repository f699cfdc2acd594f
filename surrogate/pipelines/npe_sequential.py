"""Sequential NPE for one observation ``x_o``: SNPE-C (atomic proposals) and truncated
sequential NPE (TSNPE), round by round, from any simulator ``theta (n, D) -> x (n, ...)``.

- :class:`TruncatedPrior`: the prior restricted to the highest-posterior-density (HPD) region
  of the current posterior at ``x_o`` holding ``1 - epsilon`` of its mass, sampled by rejection
  from the prior (TSNPE's proposal).
- :func:`run_sequential`: ``rounds`` rounds of ``simulations_per_round`` simulations. Round 1
  is plain NPE on prior simulations. Later rounds draw from the proposal (SNPE-C: the current
  posterior at ``x_o``; TSNPE: :class:`TruncatedPrior`), simulate, and go on training the same
  flow (with round 1's z-scoring; as ``sbi`` does unless ``retrain_from_scratch``) on all
  rounds' simulations with :func:`~surrogate.pipelines.npe_training.train_npe` (each round's
  simulations are split once into training and validation: a simulation keeps its side in
  every later round, so a continued flow is never validated on what it was trained on): the
  atomic loss (:func:`surrogate.losses.atomic_npe_loss`) for SNPE-C, the plain NPE loss for
  TSNPE (the truncated prior leaves the posterior at ``x_o`` unchanged inside the region).
  ``retrain_from_scratch=True`` trains a new flow every round instead.

The result is a posterior for ``x_o`` (and observations near it), not an amortised one: its
coverage over prior simulations says little away from ``x_o``.

Example:
    >>> from surrogate.simulators.sbi_tasks import get_task
    >>> task = get_task("gaussian_linear")
    >>> x_o = task.simulate(task.prior.sample((1,)))[0]
    >>> result = run_sequential(task.simulate, task.prior, x_o, method="tsnpe", rounds=2,
    ...                         simulations_per_round=300, max_epochs=2, progress=False,
    ...                         flow_kwargs={"hidden_features": 16, "num_transforms": 2})
    >>> result.posterior.sample((5,), x=x_o).shape
    torch.Size([5, 10])

References:
    Greenberg, Nonnenmacher & Macke (2019), arXiv:1905.07488 (SNPE-C / APT); Deistler, Goncalves
    & Macke (2022), arXiv:2210.04815 (TSNPE).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from surrogate.losses import atomic_npe_loss, npe_loss
from surrogate.models.npe import LowAcceptanceError, NeuralPosterior
from surrogate.pipelines.npe_training import NPE_DEFAULTS, NPEResult, train_npe

__all__ = ["METHODS", "SequentialResult", "TruncatedPrior", "run_sequential"]

METHODS = ("npe", "snpe_c", "tsnpe")
"""``[inference] method``: one round of amortised NPE, SNPE-C, or TSNPE."""


class TruncatedPrior:
    """The prior truncated to the HPD region of ``posterior`` at ``x_o`` with mass ``1 - epsilon``:
    ``{theta : log q(theta | x_o) >= t}``, ``t`` the ``epsilon``-quantile of ``log q`` over
    ``num_samples`` posterior samples.

    Arguments:
        posterior: the current posterior estimate.
        prior: the prior (event shape ``(D,)``).
        x_o: the observation ``x_shape``.
        epsilon: posterior mass left outside the region, in (0, 1) (1e-4 in the paper).
        num_samples: posterior samples that fix the threshold.
        max_proposals: prior draws before :class:`~surrogate.models.npe.LowAcceptanceError`.

    Raises:
        ValueError: ``epsilon`` outside (0, 1) or ``num_samples < 1``.

    References:
        Deistler, Goncalves & Macke (2022), arXiv:2210.04815, section 3 (eq. 5).
    """

    def __init__(self, posterior: NeuralPosterior, prior: Distribution, x_o: Tensor, *, epsilon: float = 1e-4,
                 num_samples: int = 10_000, max_proposals: int = 10_000_000):
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.posterior, self.prior, self.x_o = posterior, prior, torch.as_tensor(x_o, dtype=torch.float32)
        self.epsilon, self.max_proposals = float(epsilon), int(max_proposals)
        with torch.no_grad():
            samples = posterior.sample((num_samples,), x=self.x_o)
            log_q = posterior.log_prob(samples, x=self.x_o)
        self.threshold = float(torch.quantile(log_q.double(), self.epsilon))

    def contains(self, theta: Tensor) -> Tensor:
        """Boolean mask ``(N,)``: ``theta (N, D)`` inside the HPD region (and the prior's support)."""
        with torch.no_grad():
            return self.posterior.log_prob(theta, x=self.x_o) >= self.threshold

    def sample(self, n: int, *, chunk: int = 10_000) -> tuple[Tensor, float]:
        """``n`` prior samples inside the region, by rejection.

        Returns:
            ``(theta (n, D), acceptance rate)``.

        Raises:
            LowAcceptanceError: fewer than ``n`` accepted within ``max_proposals`` draws.
        """
        kept, accepted, proposed = [], 0, 0
        while accepted < n:
            if proposed >= self.max_proposals:
                raise LowAcceptanceError(f"truncated prior: {accepted} of {n} samples after {proposed} prior draws "
                                         f"(epsilon {self.epsilon}); the HPD region is too small for rejection")
            theta = self.prior.sample((chunk,)).float()
            inside = theta[self.contains(theta)]
            kept.append(inside)
            accepted += inside.shape[0]
            proposed += chunk
        return torch.cat(kept)[:n], accepted / proposed


@dataclass
class SequentialResult:
    """What :func:`run_sequential` returns.

    Attributes:
        posterior: the last round's posterior.
        rounds: one dict per round: ``round``, ``num_simulations`` (so far), ``proposal``,
            ``acceptance_rate`` (TSNPE's rejection rate), ``train_seconds``, ``simulate_seconds``,
            ``best_validation_loss``, and what ``callback`` returned.
        theta, x: all simulations ``(N, D)``, ``(N, *x_shape)``.
        results: the :class:`~surrogate.pipelines.npe_training.NPEResult` of every round.
    """

    posterior: NeuralPosterior
    rounds: list[dict[str, Any]] = field(default_factory=list)
    theta: Tensor | None = None
    x: Tensor | None = None
    results: list[NPEResult] = field(default_factory=list)


def _validation_split(n: int, fraction: float, *, seed: int) -> Tensor:
    """Boolean mask ``(n,)`` holding out ``round(fraction n)`` (at least one) of a round's ``n``
    simulations, drawn with ``seed`` (``fraction`` is checked by ``train_npe``)."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: max(1, round(fraction * n))]] = True
    return mask


def run_sequential(simulate: Callable[[Tensor], Tensor], prior: Distribution, x_o: Tensor, *, method: str,
                   rounds: int, simulations_per_round: int, num_atoms: int = 10, epsilon: float = 1e-4,
                   retrain_from_scratch: bool = False, seed: int = 0,
                   callback: Callable[[int, NeuralPosterior], dict] | None = None,
                   **train_kwargs: Any) -> SequentialResult:
    """Sequential NPE at one observation (see the module documentation).

    Arguments:
        simulate: ``theta (n, D) -> x (n, *x_shape)`` (NaN rows for failed simulations, dropped
            and counted by :func:`~surrogate.pipelines.npe_training.train_npe`); called with
            torch's global generator seeded per round.
        prior: the prior (event shape ``(D,)``).
        x_o: the observation, ``x_shape`` or flattened (reshaped to the simulations' shape).
        method: one of :data:`METHODS` (``"npe"``: ``rounds`` is ignored, one round).
        rounds: rounds ``>= 1``.
        simulations_per_round: simulations per round.
        num_atoms: SNPE-C's atoms per simulation (:func:`~surrogate.losses.atomic_npe_loss`).
        epsilon: TSNPE's posterior mass outside the truncation region.
        retrain_from_scratch: train a new flow every round; ``False`` continues the previous
            round's (its weights, z-scoring and embedding net; a new optimizer and schedule).
        seed: round ``r`` (from 0) draws and trains with ``seed + 10 r``.
        callback: ``callback(round, posterior) -> dict`` after each round (C2ST, coverage ...),
            merged into that round's entry.
        train_kwargs: more :func:`~surrogate.pipelines.npe_training.train_npe` arguments
            (``flow_kwargs``, ``max_epochs``, ``out_dir`` ...; ``out_dir`` gets ``round_<r>/``;
            ``validation_fraction`` is held out of each round's new simulations, with its seed).

    Returns:
        A :class:`SequentialResult`.

    Raises:
        ValueError: an unknown method, ``rounds < 1``, ``simulations_per_round < 1``, or an
            ``x_o`` whose size is not the simulations'.
        LowAcceptanceError: a proposal that cannot be sampled.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if rounds < 1 or simulations_per_round < 1:
        raise ValueError(f"rounds and simulations_per_round must be >= 1, got {rounds} and {simulations_per_round}")
    rounds = 1 if method == "npe" else rounds
    x_o = torch.as_tensor(x_o, dtype=torch.float32)
    out_dir = train_kwargs.pop("out_dir", None)
    result = SequentialResult(posterior=None)  # type: ignore[arg-type]
    thetas, xs, held_out, posterior = [], [], [], None
    fraction = train_kwargs.pop("validation_fraction", NPE_DEFAULTS["validation_fraction"])
    for r in range(rounds):
        s = seed + 10 * r
        acceptance, proposal = 1.0, "prior"
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            if r == 0:
                theta = prior.sample((simulations_per_round,)).float()
            elif method == "snpe_c":
                proposal = "posterior"
                with torch.no_grad():
                    theta = posterior.sample((simulations_per_round,), x=x_o)
            else:
                proposal = f"truncated prior (epsilon {epsilon:g})"
                theta, acceptance = TruncatedPrior(posterior, prior, x_o, epsilon=epsilon).sample(simulations_per_round)
            x = torch.as_tensor(simulate(theta), dtype=torch.float32)
        if r == 0:
            if x_o.numel() != x[0].numel():
                raise ValueError(f"x_o has {x_o.numel()} values, the simulations {tuple(x.shape[1:])} per simulation")
            x_o = x_o.reshape(x.shape[1:])
        simulate_seconds = time.perf_counter() - t0
        thetas.append(theta)
        xs.append(x)
        held_out.append(_validation_split(len(theta), fraction, seed=s))
        loss = npe_loss if (r == 0 or method == "tsnpe") else functools.partial(
            atomic_npe_loss, prior=prior, num_atoms=num_atoms)
        if r == 0 or retrain_from_scratch:
            build = train_kwargs
        else:  # the previous round's flow holds the embedding net
            build = {k: v for k, v in train_kwargs.items() if k != "embedding_net"} | {"flow": posterior.flow}
        fitted = train_npe(torch.cat(thetas), torch.cat(xs), prior=prior, seed=s, loss=loss,
                           validation_fraction=fraction, validation_mask=torch.cat(held_out),
                           out_dir=None if out_dir is None else f"{out_dir}/round_{r + 1}", **build)
        posterior = fitted.posterior
        entry = {"round": r + 1, "num_simulations": sum(len(t) for t in thetas), "proposal": proposal,
                 "acceptance_rate": acceptance, "simulate_seconds": simulate_seconds,
                 "train_seconds": fitted.train_seconds, "best_validation_loss": fitted.best_validation_loss,
                 "num_dropped": fitted.num_dropped}
        if callback is not None:
            entry.update(callback(r + 1, posterior))
        result.rounds.append(entry)
        result.results.append(fitted)
    result.posterior = posterior
    result.theta, result.x = torch.cat(thetas), torch.cat(xs)
    return result

"""Neural posterior estimation (NPE): a conditional flow ``q(theta | x)`` and the posterior object.

- :func:`build_npe_flow`: an ``nflows`` flow over ``theta`` conditioned on ``x`` with z-scoring of
  both built in (statistics from the training simulations, stored as buffers; constant features
  are only centred, never divided by zero).
- :class:`NeuralPosterior`: ``posterior.sample((n,), x=x_obs)`` and
  ``posterior.log_prob(theta, x=x_obs)``, batched over observations, with rejection of samples
  outside the prior's support (bounded number of proposals, acceptance rate reported,
  :class:`LowAcceptanceError` when it is too low).

The objective is :func:`surrogate.losses.npe_loss`; training on simulations is
:func:`surrogate.pipelines.npe_training.train_npe` (or ten lines of your own with
:class:`surrogate.train.steps.LikelihoodStep`).

Example:
    >>> import torch
    >>> from surrogate.simulators.sbi_tasks import get_task, simulate_dataset
    >>> task = get_task("two_moons")
    >>> theta, x = simulate_dataset(task, 200, seed=0)
    >>> _ = torch.manual_seed(0)
    >>> flow = build_npe_flow(theta, x, kind="nsf", hidden_features=16, num_transforms=2)
    >>> posterior = NeuralPosterior(flow, task.prior, x_shape=(2,))
    >>> posterior.sample((10,), x=x[:3]).shape
    torch.Size([10, 3, 2])
    >>> posterior.log_prob(theta[:4], x=x[0]).shape
    torch.Size([4])

References:
    Papamakarios & Murray (2016), "Fast epsilon-free Inference of Simulation Models with Bayesian
    Conditional Density Estimation", arXiv:1605.06376.
    Greenberg, Nonnenmacher & Macke (2019), "Automatic Posterior Transformation for
    Likelihood-Free Inference", arXiv:1905.07488 (NPE with flows; leakage correction by rejection
    against the prior).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from nflows.flows import Flow
from torch import Tensor, nn
from torch.distributions import Distribution

from surrogate.checks import warn_outside
from surrogate.models.flows import build_flow
from surrogate.nn.embeddings import MarginalGaussianize, Standardize, quantile_knots, zscore_statistics

__all__ = ["Z_SCORE_X", "EnsemblePosterior", "LowAcceptanceError", "NeuralPosterior", "build_npe_flow"]


Z_SCORE_X = ("independent", "structured", "gaussianize", "none")
"""Preprocessing options for the observations ``x`` (see :func:`build_npe_flow`)."""


class LowAcceptanceError(RuntimeError):
    """Rejection sampling against the prior accepts too few proposals (the estimate puts most of
    its mass outside the prior's support)."""


def build_npe_flow(
    theta: Tensor,
    x: Tensor,
    *,
    kind: str = "nsf",
    embedding_net: nn.Module | None = None,
    z_score_theta: bool = True,
    z_score_x: str = "independent",
    **flow_kwargs: Any,
) -> Flow:
    """A conditional flow ``q(theta | x)`` with z-scoring fitted on ``(theta, x)``.

    Arguments:
        theta: training parameters ``(N, D)`` (for the statistics and ``D``).
        x: training observations ``(N, *x_shape)``.
        kind: flow family, see :func:`surrogate.models.flows.build_flow`.
        embedding_net: summary network applied after z-scoring ``x``; must map
            ``(B, *x_shape)`` to ``(B, E)`` and have an ``out_features`` attribute (as
            :class:`~surrogate.nn.embeddings.MLPEmbedding` and
            :class:`~surrogate.nn.embeddings.CNNEmbedding` do). Without it, ``x`` is flattened.
        z_score_theta: z-score ``theta`` per dimension (as the flow's first transform).
        z_score_x: ``"independent"`` (per feature), ``"structured"`` (one mean/std for all
            features, for images), ``"gaussianize"`` (each feature mapped through its empirical
            CDF to a normal quantile, :class:`~surrogate.nn.embeddings.MarginalGaussianize`; for
            heavy-tailed vector features) or ``"none"``.
        flow_kwargs: passed to :func:`~surrogate.models.flows.build_flow` (``hidden_features``,
            ``num_transforms``, ``num_bins``, ``seed`` ...).

    Returns:
        An :class:`nflows.flows.Flow` with ``log_prob(theta (B, D), context=x (B, *x_shape))``
        and ``sample(n, context=x (B, *x_shape)) -> (B, n, D)``.

    Raises:
        ValueError: unknown ``z_score_x``, ``"gaussianize"`` with non-vector ``x``, an
            embedding net without ``out_features``.
    """
    if z_score_x not in Z_SCORE_X:
        raise ValueError(f"z_score_x must be one of {Z_SCORE_X}, got {z_score_x!r}")
    x_shape = tuple(x.shape[1:])
    layers: list[nn.Module] = []
    if z_score_x == "gaussianize":
        if len(x_shape) != 1:
            raise ValueError(f"z_score_x='gaussianize' needs vector observations (N, F), got x of shape {tuple(x.shape)}")
        layers.append(MarginalGaussianize(quantile_knots(x)))
    elif z_score_x != "none":
        mean, std = zscore_statistics(x, structured=z_score_x == "structured")
        layers.append(Standardize(mean, std))
    if embedding_net is not None:
        if not hasattr(embedding_net, "out_features"):
            raise ValueError("embedding_net needs an `out_features` attribute (the summary dimension)")
        layers.append(embedding_net)
        context_features = int(embedding_net.out_features)
    else:
        layers.append(nn.Flatten(start_dim=1) if len(x_shape) > 1 else nn.Identity())
        context_features = int(np.prod(x_shape))
    loc = scale = None
    if z_score_theta:
        loc, scale = zscore_statistics(theta)
    return build_flow(
        kind,
        theta.shape[1],
        context_features,
        embedding_net=nn.Sequential(*layers),
        loc=loc,
        scale=scale,
        **flow_kwargs,
    )


class _RejectionSampler(nn.Module):
    """Rejection sampling of a proposal ``q(theta | x)`` against the prior's support, shared by
    :class:`NeuralPosterior` (its flow) and :class:`EnsemblePosterior` (the mixture of its
    members' flows). A subclass provides ``_check_x``, ``in_support``, ``_propose(m, x)`` (``m``
    proposals for each observation of ``x``: ``(A, m, D)``), ``min_acceptance`` and
    ``max_proposals``."""

    last_acceptance_rate: Tensor | None = None

    # -- sampling --------------------------------------------------------------------------
    def sample(self, sample_shape: Sequence[int] = (), *, x: Tensor, max_chunk: int = 200_000) -> Tensor:
        """Samples of ``q(theta | x)`` inside the prior's support (rejection sampling: the
        estimate truncated to the support and renormalised).

        Arguments:
            sample_shape: e.g. ``(n,)``.
            x: one observation ``x_shape`` or a batch ``(B, *x_shape)``.
            max_chunk: most flow samples drawn at once (memory bound).

        Returns:
            ``(*sample_shape, D)`` for one observation, ``(*sample_shape, B, D)`` for a batch.
            The acceptance rates are in ``last_acceptance_rate``.

        Raises:
            ValueError: wrong ``x`` shape or non-finite ``x``.
            LowAcceptanceError: the acceptance rate of an observation is below
                ``min_acceptance`` (after at least 1000 proposals), or ``max_proposals``
                proposals gave fewer than ``n`` accepted samples.
        """
        samples, _ = self.sample_with_acceptance(sample_shape, x=x, max_chunk=max_chunk)
        return samples

    @torch.no_grad()
    def sample_with_acceptance(
        self, sample_shape: Sequence[int] = (), *, x: Tensor, max_chunk: int = 200_000
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`sample`, also returning the acceptance rate per observation (``()`` or ``(B,)``)."""
        x, single = self._check_x(x)
        sample_shape = torch.Size(sample_shape)
        n = int(sample_shape.numel())
        if n < 1:
            raise ValueError(f"sample_shape must contain at least one sample, got {tuple(sample_shape)}")
        batch = x.shape[0]
        limit = self.max_proposals if self.max_proposals is not None else math.ceil(n / self.min_acceptance)
        accepted: list[list[Tensor]] = [[] for _ in range(batch)]
        counts = torch.zeros(batch, dtype=torch.long)
        proposed = torch.zeros(batch, dtype=torch.long)
        inside = torch.zeros(batch, dtype=torch.long)  # all proposals in the support, kept or not
        while bool((counts < n).any()):
            active = torch.nonzero(counts < n).flatten()
            rate = torch.where(proposed > 0, inside / proposed.clamp(min=1), torch.ones(batch, dtype=torch.double))
            rate = rate.clamp(min=self.min_acceptance)
            need = ((n - counts[active]) / rate[active] * 1.1).ceil().max().item() + 16
            per_obs = int(max(1, min(need, max_chunk // len(active))))
            draws = self._propose(per_obs, x[active]).cpu()  # (A, m, D)
            ok = self.in_support(draws)  # (A, m)
            for row, b in enumerate(active.tolist()):
                good = draws[row][ok[row]][: n - int(counts[b])]
                accepted[b].append(good)
                counts[b] += good.shape[0]
                inside[b] += int(ok[row].sum())
                proposed[b] += per_obs
            self._check_acceptance(counts, inside, proposed, n, limit)
        acceptance = (inside.double() / proposed.double()).float()
        stacked = torch.stack([torch.cat(a)[:n] for a in accepted], dim=1).to(x.device)  # (n, B, D)
        if single:
            stacked, acceptance = stacked[:, 0], acceptance[0]
        self.last_acceptance_rate = acceptance
        return stacked.reshape(*sample_shape, *stacked.shape[1:]), acceptance

    def _check_acceptance(self, counts: Tensor, inside: Tensor, proposed: Tensor, n: int, limit: int) -> None:
        rate = inside.double() / proposed.clamp(min=1).double()
        low = (proposed >= 1000) & (rate < self.min_acceptance) & (counts < n)
        over = (proposed >= limit) & (counts < n)
        bad = torch.nonzero(low | over).flatten()
        if len(bad):
            b = int(bad[0])
            raise LowAcceptanceError(
                f"rejection sampling against the prior: for observation {b} only {int(inside[b])} of "
                f"{int(proposed[b])} proposals fell inside the prior's support (acceptance rate "
                f"{float(rate[b]):.2e}, minimum {self.min_acceptance:.1e}; at most {limit} proposals for "
                f"{n} samples). The posterior estimate puts most of its mass outside the prior's support: "
                "x may lie outside the range of the training simulations, or "
                "the estimator needs more simulations or training"
            )


class NeuralPosterior(_RejectionSampler):
    """Amortised posterior ``q(theta | x)`` restricted to the prior's support.

    Arguments:
        flow: trained conditional flow (``log_prob(theta, context=x)``, ``sample(n, context=x)``),
            e.g. from :func:`build_npe_flow`.
        prior: the prior (a :class:`torch.distributions.Distribution` with event shape ``(D,)``);
            its ``support`` is used for rejection.
        x_shape: shape of one observation, e.g. ``(2,)`` or ``(1, 32, 32)``.
        min_acceptance: smallest acceptable fraction of proposals inside the prior's support.
        max_proposals: hard bound on the proposals per observation and call; default
            ``ceil(n / min_acceptance)``.
        x_range: ``(low, high)``, each of shape ``x_shape``: the smallest and largest value of
            each feature over the training simulations. An observation with a feature outside
            that range widened by :attr:`X_RANGE_MARGIN` of its width on either side gives an
            :class:`~surrogate.checks.ExtrapolationWarning` naming the feature and the range.
            ``None``: no check.

    Attributes:
        last_acceptance_rate: acceptance rate per observation ``(B,)`` (or ``()`` for one
            observation) of the last call to :meth:`sample`.

    Raises:
        ValueError: ``min_acceptance`` outside (0, 1], a prior whose event shape is not ``(D,)``.
    """

    def __init__(
        self,
        flow: Flow,
        prior: Distribution,
        x_shape: Sequence[int],
        *,
        min_acceptance: float = 1e-3,
        max_proposals: int | None = None,
        x_range: tuple[Tensor, Tensor] | None = None,
    ):
        super().__init__()
        if not 0 < min_acceptance <= 1:
            raise ValueError(f"min_acceptance must be in (0, 1], got {min_acceptance}")
        if len(prior.event_shape) != 1:
            raise ValueError(f"the prior must have event shape (D,), got {tuple(prior.event_shape)}")
        self.flow = flow
        self.prior = prior
        self.theta_dim = int(prior.event_shape[0])
        self.x_shape = tuple(int(s) for s in x_shape)
        self.min_acceptance = float(min_acceptance)
        self.max_proposals = max_proposals
        self.x_range = None if x_range is None else tuple(torch.as_tensor(r, dtype=torch.float32).reshape(self.x_shape)
                                                          for r in x_range)
        self.last_acceptance_rate: Tensor | None = None

    X_RANGE_MARGIN = 0.1
    """Fraction of a feature's training range added on either side before an observation counts
    as outside the training simulations."""

    # -- helpers ---------------------------------------------------------------------------
    def _device(self) -> torch.device:
        for p in self.flow.parameters():
            return p.device
        return torch.device("cpu")

    def _check_x(self, x: Tensor) -> tuple[Tensor, bool]:
        """Returns ``x`` as ``(B, *x_shape)`` and whether it was a single observation."""
        x = torch.as_tensor(x, dtype=torch.float32, device=self._device())
        n = len(self.x_shape)
        if tuple(x.shape) == self.x_shape:
            single, x = True, x.unsqueeze(0)
        elif x.ndim == n + 1 and tuple(x.shape[1:]) == self.x_shape:
            single = False
        else:
            raise ValueError(
                f"x must have shape {self.x_shape} (one observation) or (B, {', '.join(map(str, self.x_shape))}) "
                f"(a batch), got {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or infinite values")
        if self.x_range is not None:
            self._warn_outside_training(x)
        return x, single

    def _warn_outside_training(self, x: Tensor) -> None:
        low, high = (r.to(x.device) for r in self.x_range)
        margin = self.X_RANGE_MARGIN * (high - low)
        outside = ((x < low - margin) | (x > high + margin)).reshape(len(x), -1).any(0)
        for feature in torch.nonzero(outside).flatten().tolist()[:3]:  # the first three suffice to tell
            values = x.reshape(len(x), -1)[:, feature]
            warn_outside(f"observation feature {feature}", float(values.min()), float(values.max()),
                         (float(low.flatten()[feature]), float(high.flatten()[feature])),
                         source="training simulations", stacklevel=4)

    def in_support(self, theta: Tensor) -> Tensor:
        """Boolean mask ``(*)`` of ``theta (*, D)`` inside the prior's support (NaN is outside)."""
        inside = self.prior.support.check(theta.cpu()).to(theta.device)  # the prior lives on the CPU
        if inside.shape == theta.shape:  # an elementwise constraint
            inside = inside.all(-1)
        return inside & torch.isfinite(theta).all(-1)

    def _propose(self, m: int, x: Tensor) -> Tensor:
        return self.flow.sample(m, context=x)

    # -- density ---------------------------------------------------------------------------
    def log_prob(self, theta: Tensor, *, x: Tensor) -> Tensor:
        """``log q(theta | x)``, ``-inf`` outside the prior's support.

        The density is the flow's, not renormalised for the mass outside the support (the
        acceptance rate of :meth:`sample` estimates that mass: the truncated density is
        ``log_prob - log(acceptance)``).

        Arguments:
            theta: ``(*, D)`` for one observation ``x`` of shape ``x_shape``; ``(*, B, D)`` for a
                batch ``x`` of shape ``(B, *x_shape)``.
            x: one observation or a batch.

        Returns:
            ``(*)`` or ``(*, B)`` log densities.

        Raises:
            ValueError: wrong shapes or non-finite values.
        """
        x, single = self._check_x(x)
        theta = torch.as_tensor(theta, dtype=torch.float32, device=x.device)
        if theta.ndim < 1 or theta.shape[-1] != self.theta_dim:
            raise ValueError(f"theta must have shape (*, {self.theta_dim}), got {tuple(theta.shape)}")
        if torch.isnan(theta).any():
            raise ValueError("theta contains NaN")
        if not single and (theta.ndim < 2 or theta.shape[-2] != x.shape[0]):
            raise ValueError(
                f"for a batch of {x.shape[0]} observations theta must have shape (*, {x.shape[0]}, {self.theta_dim}), "
                f"got {tuple(theta.shape)}"
            )
        batch_shape = theta.shape[:-1]
        flat = theta.reshape(-1, self.theta_dim)
        if single:
            context = x.expand(flat.shape[0], *self.x_shape)
        else:
            context = x.repeat(flat.shape[0] // x.shape[0], *([1] * len(self.x_shape)))
        inside = self.in_support(flat)
        logp = torch.full((flat.shape[0],), -math.inf, device=x.device)
        if bool(inside.any()):
            logp[inside] = self.flow.log_prob(flat[inside], context=context[inside])
        return logp.reshape(batch_shape)

class EnsemblePosterior(_RejectionSampler):
    """The equal-weight mixture ``(1/K) sum_k q_k(theta | x)`` of ``K`` posteriors trained on the
    same simulations with different seeds: wider than its members where they disagree, a way to
    make an over-confident NPE more conservative (chosen by measured coverage).

    The mixture of the members' flows is truncated to the prior's support as a whole, as a single
    :class:`NeuralPosterior` is: :meth:`log_prob` is the mixture's density inside the support
    (not renormalised), and :meth:`sample` draws from the mixture (a member chosen uniformly for
    each proposal) and rejects proposals outside the support. A member that puts little of its
    mass inside the support thus gets a small share of the samples instead of failing the
    sampling; the acceptance rate is the mixture's, the mean of the members'.

    Arguments:
        posteriors: ``K >= 1`` :class:`NeuralPosterior` with the same prior and ``x_shape``; the
            mixture uses the first member's prior support, observation checks and
            ``max_proposals``, and the smallest ``min_acceptance`` of the members.

    Raises:
        ValueError: no member, or members with different ``theta_dim`` or ``x_shape``.

    References:
        Hermans et al. (2022), arXiv:2110.06581, section 4 (ensembles of NPE are more
        conservative); Lakshminarayanan, Pritzel & Blundell (2017), arXiv:1612.01474.
    """

    def __init__(self, posteriors: Sequence[NeuralPosterior]):
        super().__init__()
        if not posteriors:
            raise ValueError("EnsemblePosterior needs at least one posterior")
        first = posteriors[0]
        bad = [k for k, p in enumerate(posteriors) if (p.theta_dim, p.x_shape) != (first.theta_dim, first.x_shape)]
        if bad:
            raise ValueError(f"EnsemblePosterior: member {bad[0]} has theta_dim {posteriors[bad[0]].theta_dim} and "
                             f"x_shape {posteriors[bad[0]].x_shape}, member 0 {first.theta_dim} and {first.x_shape}")
        self.members = nn.ModuleList(posteriors)
        self.prior, self.theta_dim, self.x_shape = first.prior, first.theta_dim, first.x_shape
        self.min_acceptance = min(p.min_acceptance for p in posteriors)
        self.max_proposals = first.max_proposals

    def _check_x(self, x: Tensor) -> tuple[Tensor, bool]:
        return self.members[0]._check_x(x)

    def in_support(self, theta: Tensor) -> Tensor:
        """Boolean mask ``(*)`` of ``theta`` ``(*, D)`` inside the prior's support."""
        return self.members[0].in_support(theta)

    def _propose(self, m: int, x: Tensor) -> Tensor:
        """``m`` draws of the untruncated mixture per observation: multinomial member counts,
        each member's flow sampled, the draws shuffled (so that any prefix is a mixture sample)."""
        counts = torch.bincount(torch.randint(len(self.members), (m,)), minlength=len(self.members)).tolist()
        draws = torch.cat([member.flow.sample(c, context=x) for member, c in zip(self.members, counts) if c], dim=1)
        return draws[:, torch.randperm(m, device=draws.device)]

    def log_prob(self, theta: Tensor, *, x: Tensor) -> Tensor:
        """``log (1/K) sum_k q_k(theta | x)``; shapes as :meth:`NeuralPosterior.log_prob`."""
        logs = torch.stack([m.log_prob(theta, x=x) for m in self.members])
        return torch.logsumexp(logs, 0) - math.log(len(self.members))

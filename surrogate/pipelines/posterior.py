"""Neural posterior estimation (NPE): a conditional flow ``q(theta | x)`` trained on simulations.

The pieces, usable on their own (house style: network, objective and loop apart):

- :func:`build_npe_flow`: an ``nflows`` flow over ``theta`` conditioned on ``x`` with z-scoring of
  both built in (statistics from the training simulations, stored as buffers; constant features
  are only centred, never divided by zero).
- :func:`npe_loss`: the NPE objective, ``-mean log q(theta | x)`` over a batch.
- :class:`NeuralPosterior`: ``posterior.sample((n,), x=x_obs)`` and
  ``posterior.log_prob(theta, x=x_obs)``, batched over observations, with rejection of samples
  outside the prior's support (bounded number of proposals, acceptance rate reported,
  :class:`LowAcceptanceError` when it is too low).
- :func:`train_npe`: checks the simulations, drops the invalid ones, splits off a validation set
  and trains with :func:`surrogate.train.fit` and :class:`surrogate.train.steps.LikelihoodStep`
  with early stopping on the validation loss.
- :func:`run_npe_pipeline`: the ``surrogate run pipelines/npe_two_moons.toml`` pipeline on an
  sbibm task (simulate, train, sample for observations 1-10, C2ST, coverage, report + PNGs).

**Invalid simulations.** Rows of ``(theta, x)`` with a NaN or infinite value in ``theta`` or
``x`` are dropped before training and counted (``NPEResult.num_dropped``, and in the pipeline
report); with ``drop_invalid=False`` they raise ``ValueError`` instead. NPE of the posterior
restricted to valid simulations equals the true posterior only if failures do not depend on
``theta`` in a way that matters; report the count.

Example:
    >>> import torch
    >>> from surrogate.simulators.sbi_tasks import get_task, simulate_dataset
    >>> task = get_task("two_moons")
    >>> theta, x = simulate_dataset(task, 500, seed=0)
    >>> result = train_npe(theta, x, prior=task.prior, max_epochs=2, progress=False,
    ...                    flow_kwargs={"hidden_features": 16, "num_transforms": 2})
    >>> result.posterior.sample((10,), x=x[:3]).shape
    torch.Size([10, 3, 2])
    >>> result.posterior.log_prob(theta[:4], x=x[0]).shape
    torch.Size([4])

References:
    Papamakarios & Murray (2016), arXiv:1605.06376; Greenberg, Nonnenmacher & Macke (2019),
    arXiv:1905.07488 (NPE with flows; leakage correction by rejection against the prior).
    Lueckmann et al. (2021), sbibm, arXiv:2101.04653.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from nflows.flows import Flow
from torch import Tensor, nn
from torch.distributions import Distribution

from surrogate.models.flows import build_flow
from surrogate.nn.embeddings import MarginalGaussianize, Standardize, quantile_knots, zscore_statistics
from surrogate.train import distributed, fit
from surrogate.train.steps import CosineLikelihoodStep, LikelihoodStep

__all__ = [
    "Z_SCORE_X",
    "EpochBatchSampler",
    "LowAcceptanceError",
    "NPEResult",
    "NeuralPosterior",
    "build_npe_flow",
    "check_simulations",
    "npe_loss",
    "run_npe_pipeline",
    "train_npe",
]


Z_SCORE_X = ("independent", "structured", "gaussianize", "none")
"""Preprocessing options for the observations ``x`` (see :func:`build_npe_flow`)."""


class LowAcceptanceError(RuntimeError):
    """Rejection sampling against the prior accepts too few proposals (the estimate puts most of
    its mass outside the prior's support)."""


# --------------------------------------------------------------------------------------------
# Input checks


def check_simulations(theta: Tensor, x: Tensor, *, drop_invalid: bool = True) -> tuple[Tensor, Tensor, int]:
    """Validates paired simulations and removes the non-finite ones.

    Arguments:
        theta: parameters ``(N, D)``.
        x: simulator outputs ``(N, *x_shape)``.
        drop_invalid: drop rows with NaN/inf in ``theta`` or ``x`` (and count them); if
            ``False`` such rows raise.

    Returns:
        ``(theta, x, num_dropped)`` as float32 tensors.

    Raises:
        ValueError: ``theta`` not 2-D, ``x`` without a batch dimension, different lengths,
            non-finite rows with ``drop_invalid=False``, or no valid row left.
    """
    theta = torch.as_tensor(theta, dtype=torch.float32)
    x = torch.as_tensor(x, dtype=torch.float32)
    if theta.ndim != 2:
        raise ValueError(f"theta must have shape (N, D), got {tuple(theta.shape)}")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (N, *x_shape) with at least one feature axis, got {tuple(x.shape)}")
    if theta.shape[0] != x.shape[0]:
        raise ValueError(
            f"theta and x must have the same number of simulations, got {theta.shape[0]} and {x.shape[0]}"
        )
    finite = torch.isfinite(theta).all(1) & torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    dropped = int((~finite).sum())
    if dropped and not drop_invalid:
        raise ValueError(f"{dropped} of {theta.shape[0]} simulations contain NaN or inf (pass drop_invalid=True to drop them)")
    if dropped == theta.shape[0]:
        raise ValueError(f"all {dropped} simulations contain NaN or inf; nothing to train on")
    return theta[finite], x[finite], dropped


# --------------------------------------------------------------------------------------------
# Network and objective


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
        flow_kwargs: passed to :func:`~surrogate.models.flows.build_flow`.

    Returns:
        An :class:`nflows.flows.Flow` with ``log_prob(theta (B, D), context=x (B, *x_shape))``.

    Raises:
        ValueError: unknown ``z_score_x``, an embedding net without ``out_features``.
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


def npe_loss(flow: Flow, batch: Mapping[str, Tensor]) -> Tensor:
    """NPE loss ``-mean_i log q(theta_i | x_i)`` (a scalar) of a batch ``{"theta": (B, D), "x": (B, *x_shape)}``."""
    return -flow.log_prob(batch["theta"], context=batch["x"]).mean()


# --------------------------------------------------------------------------------------------
# The posterior object


class NeuralPosterior(nn.Module):
    """Amortised posterior ``q(theta | x)`` restricted to the prior's support.

    Arguments:
        flow: trained conditional flow (``log_prob(theta, context=x)``, ``sample(n, context=x)``).
        prior: the prior (a :class:`torch.distributions.Distribution` with event shape ``(D,)``);
            its ``support`` is used for rejection.
        x_shape: shape of one observation, e.g. ``(2,)`` or ``(1, 32, 32)``.
        min_acceptance: smallest acceptable fraction of proposals inside the prior's support.
        max_proposals: hard bound on the proposals per observation and call; default
            ``ceil(n / min_acceptance)``.

    Attributes:
        last_acceptance_rate: acceptance rate per observation ``(B,)`` (or ``()`` for one
            observation) of the last call to :meth:`sample`.
    """

    def __init__(
        self,
        flow: Flow,
        prior: Distribution,
        x_shape: Sequence[int],
        *,
        min_acceptance: float = 1e-3,
        max_proposals: int | None = None,
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
        self.last_acceptance_rate: Tensor | None = None

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
        return x, single

    def in_support(self, theta: Tensor) -> Tensor:
        """Boolean mask ``(*)`` of ``theta (*, D)`` inside the prior's support (NaN is outside)."""
        inside = self.prior.support.check(theta.cpu()).to(theta.device)  # the prior lives on the CPU
        if inside.shape == theta.shape:  # an elementwise constraint
            inside = inside.all(-1)
        return inside & torch.isfinite(theta).all(-1)

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

    # -- sampling --------------------------------------------------------------------------
    def sample(self, sample_shape: Sequence[int] = (), *, x: Tensor, max_chunk: int = 200_000) -> Tensor:
        """Samples of ``q(theta | x)`` inside the prior's support (rejection sampling).

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
        samples, acceptance = self.sample_with_acceptance(sample_shape, x=x, max_chunk=max_chunk)
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
            draws = self.flow.sample(per_obs, context=x[active]).cpu()  # (A, m, D)
            ok = self.in_support(draws)  # (A, m)
            for row, b in enumerate(active.tolist()):
                good = draws[row][ok[row]][: n - int(counts[b])]
                accepted[b].append(good)
                counts[b] += good.shape[0]
                inside[b] += int(ok[row].sum())
                proposed[b] += per_obs
            self._check_acceptance(counts, inside, proposed, n, limit)
        acceptance = (inside.double() / proposed.double()).float()
        device = x.device
        stacked = torch.stack([torch.cat(a)[:n] for a in accepted], dim=1).to(device)  # (n, B, D)
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


# --------------------------------------------------------------------------------------------
# Training


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields index tensors of shuffled mini-batches; the order of an epoch depends only on
    ``(seed, epoch)`` (``set_epoch`` is called by :func:`surrogate.train.fit`), so resuming is exact.

    With ``world_size`` ranks, the epoch's permutation is cut into global batches of
    ``batch_size * world_size`` indices and rank ``r`` yields slice ``r`` of each: the ranks
    together see exactly the batches of one rank with ``batch_size * world_size``. An incomplete
    last global batch is dropped when ``world_size > 1`` (every rank must take the same number of
    steps, with equal shares); a single rank keeps it.

    Arguments:
        num_items: dataset size ``N``.
        batch_size: indices per batch and rank.
        seed: shuffling seed (the same on every rank).
        rank, world_size: this rank and the number of ranks.

    Raises:
        ValueError: non-positive sizes, a bad rank, or fewer items than one global batch.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if num_items < 1 or batch_size < 1:
            raise ValueError(f"num_items and batch_size must be >= 1, got {num_items} and {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
        if world_size > 1 and num_items < batch_size * world_size:
            raise ValueError(f"{num_items} items are fewer than one global batch of {batch_size} x {world_size} ranks")
        self.num_items, self.batch_size, self.seed, self.epoch = num_items, batch_size, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of epoch ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=generator)
        if self.world_size == 1:
            return iter(order.split(self.batch_size))
        step = self.batch_size * self.world_size
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return iter([order[start + lo : start + hi] for start in range(0, len(self) * step, step)])

    def __len__(self) -> int:
        if self.world_size == 1:
            return math.ceil(self.num_items / self.batch_size)
        return self.num_items // (self.batch_size * self.world_size)


class _PairDataset(torch.utils.data.Dataset):
    """In-memory ``(theta, x)`` indexed by a tensor of indices (a whole batch at once)."""

    def __init__(self, theta: Tensor, x: Tensor):
        self.theta, self.x = theta, x

    def __len__(self) -> int:
        return self.theta.shape[0]

    def __getitem__(self, index: Tensor) -> dict[str, Tensor]:
        return {"theta": self.theta[index], "x": self.x[index]}


@dataclass
class NPEResult:
    """What :func:`train_npe` returns.

    Attributes:
        posterior: the trained :class:`NeuralPosterior`.
        fit: the :class:`surrogate.train.FitResult` (steps, history, early stopping).
        num_train, num_validation: simulations used for training and validation.
        num_dropped: simulations dropped for NaN/inf values.
        epochs: epochs trained (fractional at the end).
        train_seconds: wall time of the training loop, in s.
        train_cpu_seconds: CPU time of this process during training, in s (all threads).
        best_validation_loss: lowest validation ``-mean log q``.
        validation_index: indices ``(num_validation,)`` of the held-out simulations among the
            valid (kept) ones.
    """

    posterior: NeuralPosterior
    fit: Any
    num_train: int
    num_validation: int
    num_dropped: int
    epochs: float
    train_seconds: float
    train_cpu_seconds: float
    best_validation_loss: float | None
    validation_index: Tensor | None = None
    history: list[dict] = field(default_factory=list)


def train_npe(
    theta: Tensor,
    x: Tensor,
    *,
    prior: Distribution,
    kind: str = "nsf",
    flow_kwargs: Mapping[str, Any] | None = None,
    embedding_net: nn.Module | None = None,
    z_score_theta: bool = True,
    z_score_x: str = "independent",
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 5.0,
    validation_fraction: float = 0.1,
    patience: int = 20,
    max_epochs: int = 1000,
    lr_schedule: str = "constant",
    drop_invalid: bool = True,
    min_acceptance: float = 1e-3,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> NPEResult:
    """Trains NPE on simulations ``(theta_i, x_i)`` drawn from the prior and the simulator.

    Validation: a random ``validation_fraction`` of the simulations is held out; its mean
    ``-log q(theta | x)`` is evaluated after every epoch, training stops after ``patience``
    epochs without improvement (or ``max_epochs``) and the best weights are restored.

    Arguments:
        theta: parameters ``(N, D)`` drawn from ``prior``.
        x: simulator outputs ``(N, *x_shape)``.
        prior: the prior (:class:`torch.distributions.Distribution`, event shape ``(D,)``).
        kind: flow family (``"nsf"``, ``"maf"``, ``"maf_rqs"``).
        flow_kwargs: more :func:`surrogate.models.flows.build_flow` arguments
            (``hidden_features``, ``num_transforms``, ``num_bins`` ...).
        embedding_net: optional summary network for ``x`` (see :func:`build_npe_flow`).
        z_score_theta, z_score_x: z-scoring, see :func:`build_npe_flow`.
        batch_size: simulations per optimizer step and rank (see :class:`EpochBatchSampler`
            for several ranks: every rank holds all simulations and trains on its slice of each
            global batch; gradients are averaged by :class:`LikelihoodStep`).
        learning_rate: Adam(W) learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping (total 2-norm), ``None`` for none.
        validation_fraction: held-out fraction in (0, 1).
        patience: epochs without validation improvement before stopping.
        max_epochs: upper bound on epochs.
        lr_schedule: ``"constant"``, or ``"cosine"``: decay to 0 over ``max_epochs`` epochs
            (:class:`CosineLikelihoodStep`).
        drop_invalid: drop (and count) simulations with NaN/inf; ``False`` raises on them.
        min_acceptance: passed to :class:`NeuralPosterior`.
        seed: seeds the split, initialisation, shuffling and training (torch's global generator
            is restored afterwards).
        out_dir: if given, checkpoints and ``log.csv`` of :func:`surrogate.train.fit` go here.
        progress: progress bar.
        device: where to train (under :func:`surrogate.train.distributed.init_distributed` with
            several ranks, each rank's own device).

    Returns:
        An :class:`NPEResult`.

    Raises:
        ValueError: bad shapes, lengths, NaN with ``drop_invalid=False``, a prior whose event
            shape does not match ``theta``, a validation split leaving an empty set.
    """
    theta, x, dropped = check_simulations(theta, x, drop_invalid=drop_invalid)
    if tuple(prior.event_shape) != (theta.shape[1],):
        raise ValueError(f"prior event shape {tuple(prior.event_shape)} does not match theta dimension {theta.shape[1]}")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    n = theta.shape[0]
    n_val = max(1, int(round(validation_fraction * n)))
    if n - n_val < 1:
        raise ValueError(f"{n} valid simulations are too few to split off a validation set")
    if batch_size < 1 or patience < 1 or max_epochs < 1:
        raise ValueError("batch_size, patience and max_epochs must be >= 1")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")

    ctx = distributed.context()
    device = distributed.resolve_device(str(device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        perm = torch.randperm(n)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        theta_tr, x_tr = theta[train_idx], x[train_idx]
        theta_val, x_val = theta[val_idx].to(device), x[val_idx].to(device)
        flow = build_npe_flow(
            theta_tr, x_tr, kind=kind, embedding_net=embedding_net, z_score_theta=z_score_theta,
            z_score_x=z_score_x, seed=seed, **dict(flow_kwargs or {}),
        ).to(device)
        sampler = EpochBatchSampler(theta_tr.shape[0], batch_size, seed=seed, rank=ctx.rank,
                                    world_size=ctx.world_size)
        loader = torch.utils.data.DataLoader(_PairDataset(theta_tr, x_tr), sampler=sampler, batch_size=None)
        steps_per_epoch = len(sampler)
        optimizer = torch.optim.AdamW(flow.parameters(), lr=learning_rate, weight_decay=weight_decay)
        if lr_schedule == "cosine":
            step = CosineLikelihoodStep(flow, optimizer, npe_loss, total_steps=max_epochs * steps_per_epoch,
                                        max_grad_norm=max_grad_norm)
        else:
            step = LikelihoodStep(flow, optimizer, npe_loss, max_grad_norm=max_grad_norm)

        def validation() -> float:
            total = 0.0
            for start in range(0, n_val, 8192):
                batch = {"theta": theta_val[start : start + 8192], "x": x_val[start : start + 8192]}
                total += float(npe_loss(flow, batch)) * batch["theta"].shape[0]
            return total / n_val

        t0, c0 = time.perf_counter(), time.process_time()
        result = fit(
            step, loader, max_steps=max_epochs * steps_per_epoch, out_dir=out_dir,
            checkpoint_every=None, seed=seed + 1, progress=progress, log_every=steps_per_epoch,
            validation=validation, validate_every=steps_per_epoch, patience=patience,
            config={"kind": kind, "flow_kwargs": dict(flow_kwargs or {}), "batch_size": batch_size,
                    "learning_rate": learning_rate, "seed": seed},
        )
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    flow.eval()
    posterior = NeuralPosterior(flow, prior, tuple(x.shape[1:]), min_acceptance=min_acceptance)
    return NPEResult(
        posterior=posterior, fit=result, num_train=int(theta_tr.shape[0]), num_validation=n_val,
        num_dropped=dropped, epochs=result.steps / steps_per_epoch, train_seconds=seconds,
        train_cpu_seconds=cpu_seconds,
        best_validation_loss=result.best_validation, validation_index=val_idx, history=result.history,
    )


# --------------------------------------------------------------------------------------------
# Pipeline: `surrogate run pipelines/npe_two_moons.toml`

_PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {"pipeline": "npe", "output_dir": "runs/npe", "seed": 0, "threads": 0, "device": "cpu"},
    "task": {"name": "two_moons", "num_simulations": 10_000, "observations": list(range(1, 11)),
             "reference_root": None},
    "flow": {"kind": "nsf", "hidden_features": 50, "num_transforms": 5, "num_blocks": 2, "num_bins": 10,
             "tail_bound": 3.0, "linear": None, "activation": "relu", "dropout_probability": 0.0},
    "embedding": {"kind": "none", "out_features": 32, "hidden_features": [64, 64]},
    "training": {"batch_size": 256, "learning_rate": 1e-3, "weight_decay": 0.0, "max_grad_norm": 5.0,
                 "validation_fraction": 0.1, "patience": 20, "max_epochs": 1000, "lr_schedule": "constant",
                 "drop_invalid": True,
                 "z_score_theta": True, "z_score_x": "independent"},
    "sampling": {"num_samples": 10_000, "min_acceptance": 1e-3},
    "evaluation": {"c2st": True, "pair_plots": True, "coverage_observations": 200, "coverage_samples": 1000},
}


def _merge_config(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Defaults overlaid with ``config``; unknown sections or keys raise ``ValueError``."""
    merged = {section: dict(values) for section, values in _PIPELINE_DEFAULTS.items()}
    for section, values in config.items():
        if section not in merged:
            raise ValueError(f"NPE pipeline config: unknown section [{section}]; known: {sorted(merged)}")
        if not isinstance(values, Mapping):
            raise ValueError(f"NPE pipeline config: [{section}] must be a table, got {type(values).__name__}")
        for key, value in values.items():
            if key not in merged[section]:
                raise ValueError(
                    f"NPE pipeline config: unknown key {key!r} in [{section}]; known: {sorted(merged[section])}"
                )
            merged[section][key] = value
    if merged["run"]["pipeline"] != "npe":
        raise ValueError(f"NPE pipeline config: [run] pipeline must be 'npe', got {merged['run']['pipeline']!r}")
    return merged


def _embedding_from_config(cfg: Mapping[str, Any], x_dim: int) -> nn.Module | None:
    from surrogate.nn.embeddings import MLPEmbedding

    if cfg["kind"] == "none":
        return None
    if cfg["kind"] == "mlp":
        return MLPEmbedding(x_dim, int(cfg["out_features"]), hidden_features=tuple(cfg["hidden_features"]))
    raise ValueError(f"NPE pipeline config: [embedding] kind must be 'none' or 'mlp', got {cfg['kind']!r}")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    from surrogate.data.hdf5 import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def run_npe_pipeline(
    config: Mapping[str, Any], out_dir: str | os.PathLike | None = None, *, progress: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Simulates an sbibm task, trains NPE, evaluates it against the reference posteriors and
    writes a report.

    Steps: draw ``[task] num_simulations`` pairs from the prior and simulator (seed ``[run]
    seed``); train (:func:`train_npe`, checkpoints and ``log.csv`` in ``out_dir/train``); for each
    of ``[task] observations`` (1-10) draw ``[sampling] num_samples`` posterior samples with
    rejection against the prior, compute the C2ST against the sbibm reference samples and write
    a pair plot ``pairs_obs<k>.png``; compute HPD expected coverage and SBC over
    ``[evaluation] coverage_observations`` fresh simulations (``coverage.png``); write
    ``report.json``. Global torch settings (threads) are left to the caller (the CLI applies
    ``[run] threads``).

    Arguments:
        config: the parsed TOML (sections ``run``, ``task``, ``flow``, ``embedding``,
            ``training``, ``sampling``, ``evaluation``; see ``pipelines/npe_two_moons.toml``);
            missing keys take the defaults.
        out_dir: output folder; default ``[run] output_dir``.
        progress: show training progress.
        base_dir: folder against which a relative ``[task] reference_root`` is resolved (the
            TOML file's folder); ``None``: the current working directory.

    Under several ranks (:func:`surrogate.train.distributed.init_distributed`) every rank
    simulates the same data and trains its share of each batch; rank 0 alone evaluates and
    writes the report while the others wait, then return ``{}``.

    Returns:
        The report (also written to ``out_dir/report.json``).

    Raises:
        ValueError: unknown sections or keys, bad values.
        FileNotFoundError: the sbibm reference files are missing.
    """
    from surrogate.metrics.c2st import c2st
    from surrogate.metrics.coverage import expected_coverage
    from surrogate.metrics.posterior_plots import plot_coverage, plot_pairs
    from surrogate.simulators.sbi_tasks import get_task, load_reference, simulate_dataset

    cfg = _merge_config(config)
    run, task_cfg, train_cfg = cfg["run"], cfg["task"], cfg["training"]
    out = Path(out_dir if out_dir is not None else run["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    seed = int(run["seed"])
    task = get_task(task_cfg["name"])
    observations = [int(k) for k in task_cfg["observations"]]
    # Read the references first: a missing file fails before the expensive part.
    root = task_cfg["reference_root"]
    if root is not None and base_dir is not None and not Path(root).is_absolute():
        root = Path(base_dir) / root
    references = [load_reference(task.name, k, root=root) for k in observations]

    theta, x = simulate_dataset(task, int(task_cfg["num_simulations"]), seed=seed)
    flow_kwargs = {k: v for k, v in cfg["flow"].items() if k != "kind"}
    result = train_npe(
        theta, x, prior=task.prior, kind=cfg["flow"]["kind"], flow_kwargs=flow_kwargs,
        embedding_net=_embedding_from_config(cfg["embedding"], task.x_dim),
        z_score_theta=bool(train_cfg["z_score_theta"]), z_score_x=str(train_cfg["z_score_x"]),
        batch_size=int(train_cfg["batch_size"]), learning_rate=float(train_cfg["learning_rate"]),
        weight_decay=float(train_cfg["weight_decay"]),
        max_grad_norm=None if train_cfg["max_grad_norm"] is None else float(train_cfg["max_grad_norm"]),
        validation_fraction=float(train_cfg["validation_fraction"]), patience=int(train_cfg["patience"]),
        max_epochs=int(train_cfg["max_epochs"]), lr_schedule=str(train_cfg["lr_schedule"]),
        drop_invalid=bool(train_cfg["drop_invalid"]),
        min_acceptance=float(cfg["sampling"]["min_acceptance"]), seed=seed, out_dir=out / "train",
        progress=progress, device=run["device"],
    )
    if not distributed.context().is_main:
        distributed.barrier()  # with several ranks, rank 0 evaluates and writes the report
        return {}
    posterior = result.posterior
    labels = [f"theta_{i + 1}" for i in range(task.theta_dim)]
    per_observation = []
    files = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        for ref in references:
            samples, acceptance = posterior.sample_with_acceptance(
                (int(cfg["sampling"]["num_samples"]),), x=ref.observation
            )
            entry = {"num_observation": ref.num_observation, "acceptance_rate": float(acceptance)}
            if cfg["evaluation"]["c2st"]:
                # balanced sets (chance level 0.5): as many reference samples as estimate samples
                n_ref = min(len(ref.samples), len(samples))
                entry["c2st"] = c2st(ref.samples[:n_ref], samples[:n_ref].cpu())
            if cfg["evaluation"]["pair_plots"]:
                name = f"pairs_obs{ref.num_observation}.png"
                plot_pairs({"reference": ref.samples, "NPE": samples.cpu()}, out / name, labels=labels,
                           true_parameters=ref.true_parameters,
                           title=f"{task.name}, observation {ref.num_observation}")
                files.append(name)
            per_observation.append(entry)

        coverage = None
        n_cov = int(cfg["evaluation"]["coverage_observations"])
        if n_cov > 0:
            theta_c, x_c = simulate_dataset(task, n_cov, seed=seed + 3)
            cov = expected_coverage(posterior, theta_c, x_c, num_samples=int(cfg["evaluation"]["coverage_samples"]))
            coverage = cov.to_dict()
            plot_coverage(cov, out / "coverage.png", labels=labels, title=f"{task.name}: calibration")
            files.append("coverage.png")

    c2sts = [e["c2st"] for e in per_observation if "c2st" in e]
    report = {
        "task": task.name,
        "num_simulations": int(task_cfg["num_simulations"]),
        "num_dropped": result.num_dropped,
        "num_train": result.num_train,
        "num_validation": result.num_validation,
        "epochs": result.epochs,
        "train_seconds": result.train_seconds,
        "best_validation_loss": result.best_validation_loss,
        "stopped_early": bool(result.fit.stopped_early),
        "c2st_mean": float(np.mean(c2sts)) if c2sts else None,
        "observations": per_observation,
        "coverage": coverage,
        "checkpoint": str(result.fit.checkpoint) if result.fit.checkpoint is not None else None,
        "files": files,
        "config": cfg,
    }
    _write_json(out / "report.json", report)
    distributed.barrier()
    return report

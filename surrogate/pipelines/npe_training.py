"""Training NPE on simulations from Python: :func:`train_npe` and its pieces.

- :func:`check_simulations`: shape checks of paired simulations, non-finite rows dropped (or
  refused) and counted.
- :func:`epoch_batches`: shuffled mini-batches whose order depends only on ``(seed, epoch)``,
  split across ranks (torch's ``DistributedSampler`` and ``BatchSampler``).
- :data:`NPE_DEFAULTS`: the one set of default settings, shared by :func:`train_npe` and the
  pipeline file's schema (:mod:`surrogate.pipelines.npe`).
- :func:`train_npe`: checks the simulations, splits off a validation set, builds the flow
  (:func:`surrogate.models.npe.build_npe_flow`) and trains it with :func:`surrogate.train.fit`,
  :class:`surrogate.train.steps.LikelihoodStep` and :func:`surrogate.losses.npe_loss`, with early
  stopping on the validation loss; returns an :class:`NPEResult` holding the
  :class:`~surrogate.models.npe.NeuralPosterior`.

The pipeline file's stages (``surrogate run pipelines/npe_two_moons.toml``) are in
:mod:`surrogate.pipelines.npe`.

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
    arXiv:1905.07488. Lueckmann et al. (2021), sbibm, arXiv:2101.04653.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.utils.data import BatchSampler, DistributedSampler

from surrogate.losses import npe_loss
from surrogate.models.npe import NeuralPosterior, build_npe_flow
from surrogate.train import distributed
from surrogate.train.loop import FitResult, fit
from surrogate.train.steps import LikelihoodStep, make_lr_scheduler

__all__ = ["FLOW_DEFAULT_KEYS", "NPE_DEFAULTS", "NPEResult", "check_simulations", "epoch_batches", "train_npe"]


NPE_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    # the flow: surrogate.models.npe.build_npe_flow / surrogate.models.flows.build_flow arguments
    "kind": "nsf", "hidden_features": 64, "num_transforms": 5, "num_blocks": 2, "num_bins": 10, "tail_bound": 3.0,
    "z_score_theta": True, "z_score_x": "independent",
    # training
    "batch_size": 256, "learning_rate": 1e-3, "weight_decay": 0.0, "max_grad_norm": 5.0, "validation_fraction": 0.1,
    "patience": 30, "max_epochs": 150, "lr_schedule": "cosine", "drop_invalid": True,
    # sampling
    "min_acceptance": 1e-3,
})
"""The default NPE settings, defined once: :func:`train_npe`'s keyword defaults and the pipeline
file's (``[model]``, ``[train]``, ``[validate] min_acceptance`` of
:class:`surrogate.pipelines.npe.NPEConfig`) both come from here. Measured with these settings
(``benchmarks/npe_vs_sbi.py``, one thread, 10 observations, ``benchmarks/results/npe_vs_sbi.json``):
mean C2ST 0.681 (two_moons, 10^3 simulations), 0.543 (two_moons, 10^4), 0.867 (slcp, 10^4) and
0.546 (gaussian_linear, 10^4), against 0.771, 0.567, 0.883 and 0.545 for the ``sbi`` package's
NPE defaults on the same simulations."""

FLOW_DEFAULT_KEYS = ("hidden_features", "num_transforms", "num_blocks", "num_bins", "tail_bound")
"""Entries of :data:`NPE_DEFAULTS` that :func:`train_npe` passes in ``flow_kwargs`` unless given."""


def _finite_rows(theta: Tensor, x: Tensor) -> Tensor:
    """Boolean mask ``(N,)`` of the simulations whose ``theta (N, D)`` and ``x (N, ...)`` are all finite."""
    return torch.isfinite(theta).all(1) & torch.isfinite(x.reshape(x.shape[0], -1)).all(1)


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
    finite = _finite_rows(theta, x)
    dropped = int((~finite).sum())
    if dropped and not drop_invalid:
        raise ValueError(f"{dropped} of {theta.shape[0]} simulations contain NaN or inf (pass drop_invalid=True to drop them)")
    if dropped == theta.shape[0]:
        raise ValueError(f"all {dropped} simulations contain NaN or inf; nothing to train on")
    return theta[finite], x[finite], dropped


def epoch_batches(num_items: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                  world_size: int = 1) -> BatchSampler:
    """Shuffled mini-batches of indices for in-memory data, with torch's samplers: a
    ``DistributedSampler`` (the epoch's permutation drawn from ``seed + epoch``; rank ``r`` takes
    every ``W``-th index from ``r``) cut into batches by a ``BatchSampler``.

    :func:`surrogate.train.fit` calls ``set_epoch`` on the inner ``DistributedSampler``, so the
    order depends only on ``(seed, epoch)`` and a resume is exact. Batch ``k`` of the ``W`` ranks
    together holds exactly batch ``k`` of one rank with ``batch_size * W`` (the permutation does
    not depend on ``W``). With several ranks the incomplete last batch is dropped (every rank
    must take the same number of steps with equal shares); a single rank keeps it.

    Arguments:
        num_items: dataset size ``N``.
        batch_size: indices per batch and rank.
        seed: shuffling seed (the same on every rank).
        rank, world_size: this rank and the number of ranks.

    Returns:
        A ``BatchSampler`` yielding lists of ``batch_size`` indices (for ``DataLoader(...,
        sampler=..., batch_size=None)`` over a dataset indexed by a whole batch).

    Raises:
        ValueError: non-positive sizes, a bad rank, or fewer items than one global batch.
    """
    if num_items < 1 or batch_size < 1:
        raise ValueError(f"num_items and batch_size must be >= 1, got {num_items} and {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
    if world_size > 1 and num_items < batch_size * world_size:
        raise ValueError(f"{num_items} items are fewer than one global batch of {batch_size} x {world_size} ranks")
    sampler = DistributedSampler(range(num_items), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=world_size > 1)
    return BatchSampler(sampler, batch_size, drop_last=world_size > 1)


class _PairDataset(torch.utils.data.Dataset):
    """In-memory ``(theta, x)`` indexed by a list of indices (a whole batch at once)."""

    def __init__(self, theta: Tensor, x: Tensor):
        self.theta, self.x = theta, x

    def __len__(self) -> int:
        return self.theta.shape[0]

    def __getitem__(self, index: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(index)
        return {"theta": self.theta[index], "x": self.x[index]}


@dataclass
class NPEResult:
    """What :func:`train_npe` returns.

    Attributes:
        posterior: the trained :class:`~surrogate.models.npe.NeuralPosterior`.
        fit: the :class:`surrogate.train.FitResult` (steps, history, early stopping).
        num_train, num_validation: simulations used for training and validation.
        num_dropped: simulations dropped for NaN/inf values.
        epochs: epochs trained (fractional at the end).
        train_seconds: wall time of the training loop, in s.
        train_cpu_seconds: CPU time of this process during training, in s (all threads).
        best_validation_loss: lowest validation ``-mean log q``.
        validation_index: indices ``(num_validation,)`` of the held-out simulations among the
            valid (kept) ones.
        history: the logged rows of :func:`surrogate.train.fit`.
    """

    posterior: NeuralPosterior
    fit: FitResult
    num_train: int
    num_validation: int
    num_dropped: int
    epochs: float
    train_seconds: float
    train_cpu_seconds: float
    best_validation_loss: float | None
    validation_index: Tensor | None = None
    history: list[dict] = field(default_factory=list)


def _check_arguments(n: int, prior: Distribution, theta_dim: int, *, validation_fraction: float, batch_size: int,
                     patience: int | None, max_epochs: int | None, max_steps: int | None, lr_schedule: str,
                     validation_mask: Tensor | None = None) -> int:
    """Checks the training arguments; returns the size of the validation set."""
    if tuple(prior.event_shape) != (theta_dim,):
        raise ValueError(f"prior event shape {tuple(prior.event_shape)} does not match theta dimension {theta_dim}")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    n_val = max(1, int(round(validation_fraction * n))) if validation_mask is None else int(validation_mask.sum())
    if n_val < 1:
        raise ValueError(f"validation_mask holds none of the {n} valid simulations: nothing to validate on")
    if n - n_val < 1:
        raise ValueError(f"{n} valid simulations are too few to split off a validation set")
    if batch_size < 1 or (patience is not None and patience < 1):
        raise ValueError(f"batch_size and patience must be >= 1, got {batch_size} and {patience}")
    if max_epochs is None and max_steps is None:
        raise ValueError("set max_epochs or max_steps (or both: training stops at the first)")
    if any(limit is not None and limit < 1 for limit in (max_epochs, max_steps)):
        raise ValueError(f"max_epochs and max_steps must be >= 1, got {max_epochs} and {max_steps}")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    return n_val


def _validation_loss(flow: nn.Module, theta: Tensor, x: Tensor, chunk: int = 8192,
                     loss: Callable[..., Tensor] = npe_loss) -> Callable[[], float]:
    """The mean ``loss`` (default ``-log q(theta | x)``) over the held-out set, in chunks (a
    function for ``fit``)."""

    def validation() -> float:
        total = 0.0
        for start in range(0, theta.shape[0], chunk):
            batch = {"theta": theta[start : start + chunk], "x": x[start : start + chunk]}
            total += float(loss(flow, batch)) * batch["theta"].shape[0]
        return total / theta.shape[0]

    return validation


def train_npe(
    theta: Tensor,
    x: Tensor,
    *,
    prior: Distribution,
    kind: str = NPE_DEFAULTS["kind"],
    flow_kwargs: Mapping[str, Any] | None = None,
    embedding_net: nn.Module | None = None,
    z_score_theta: bool = NPE_DEFAULTS["z_score_theta"],
    z_score_x: str = NPE_DEFAULTS["z_score_x"],
    batch_size: int = NPE_DEFAULTS["batch_size"],
    learning_rate: float = NPE_DEFAULTS["learning_rate"],
    weight_decay: float = NPE_DEFAULTS["weight_decay"],
    max_grad_norm: float | None = NPE_DEFAULTS["max_grad_norm"],
    validation_fraction: float = NPE_DEFAULTS["validation_fraction"],
    validation_mask: Tensor | None = None,
    patience: int | None = NPE_DEFAULTS["patience"],
    max_epochs: int | None = NPE_DEFAULTS["max_epochs"],
    max_steps: int | None = None,
    lr_schedule: str = NPE_DEFAULTS["lr_schedule"],
    warmup_steps: int = 0,
    final_lr_fraction: float = 0.0,
    drop_invalid: bool = NPE_DEFAULTS["drop_invalid"],
    min_acceptance: float = NPE_DEFAULTS["min_acceptance"],
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool | str = False,
    checkpoint_every: int | None = None,
    log_every: int | None = None,
    num_workers: int = 0,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    loss: Callable[..., Tensor] = npe_loss,
    flow: nn.Module | None = None,
) -> NPEResult:
    """Trains NPE on simulations ``(theta_i, x_i)`` drawn from the prior and the simulator.

    The defaults are :data:`NPE_DEFAULTS` (those of the pipeline file): a spline coupling flow
    (5 transforms of width 64, 10 bins), AdamW at 1e-3 with cosine decay, batches of 256, at most
    150 epochs, early stopping after 30 epochs without a better validation loss.

    Validation: a random ``validation_fraction`` of the simulations is held out; its mean
    ``-log q(theta | x)`` is evaluated after every epoch, training stops after ``patience``
    epochs without improvement (or ``max_epochs`` epochs / ``max_steps`` steps, whichever
    comes first) and the best weights are restored.

    Arguments:
        theta: parameters ``(N, D)`` drawn from ``prior``.
        x: simulator outputs ``(N, *x_shape)``.
        prior: the prior (:class:`torch.distributions.Distribution`, event shape ``(D,)``).
        kind: flow family (``"nsf"``, ``"maf"``, ``"maf_rqs"``).
        flow_kwargs: more :func:`surrogate.models.flows.build_flow` arguments
            (``hidden_features``, ``num_transforms``, ``num_bins`` ...); those of
            :data:`FLOW_DEFAULT_KEYS` left out take :data:`NPE_DEFAULTS`.
        embedding_net: optional summary network for ``x`` (see
            :func:`~surrogate.models.npe.build_npe_flow`).
        z_score_theta, z_score_x: z-scoring, see :func:`~surrogate.models.npe.build_npe_flow`.
        batch_size: simulations per optimizer step and rank (see :func:`epoch_batches`
            for several ranks: every rank holds all simulations and trains on its slice of each
            global batch; gradients are averaged by ``LikelihoodStep``).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping (total 2-norm), ``None`` for none.
        validation_fraction: held-out fraction in (0, 1).
        validation_mask: boolean ``(N,)``: the simulations to hold out, in place of a random
            ``validation_fraction`` of them (sequential rounds keep a simulation on the same
            side of the split in every round, so that a continued flow is never validated on
            simulations it was trained on).
        patience: epochs without validation improvement before stopping (``None``: never).
        max_epochs, max_steps: upper bounds on epochs and optimizer steps (``None``: no bound;
            at least one must be set).
        lr_schedule: ``"constant"``, or ``"cosine"``: decay to ``final_lr_fraction`` times the
            rate over the run's steps (:func:`surrogate.train.steps.make_lr_scheduler`).
        warmup_steps: linear learning-rate warm-up steps.
        final_lr_fraction: final rate of the cosine schedule as a fraction of the initial one.
        drop_invalid: drop (and count) simulations with NaN/inf; ``False`` raises on them.
        min_acceptance: passed to :class:`~surrogate.models.npe.NeuralPosterior`.
        seed: seeds the split, initialisation, shuffling and training (torch's global generator
            is restored afterwards).
        out_dir: if given, checkpoints and ``log.csv`` of :func:`surrogate.train.fit` go here.
        resume: continue from the latest checkpoint in ``out_dir`` (``True``, ``False`` or ``"anyway"``,
            as :func:`surrogate.train.fit`).
        checkpoint_every: steps between checkpoints (``None``: only the final one).
        log_every: steps per logged row (``None``: one row per epoch).
        num_workers: ``DataLoader`` worker processes.
        config: plain data stored in the checkpoints (default: the flow and optimizer settings).
        progress: progress bar.
        device: where to train (under :func:`surrogate.train.distributed.init_distributed` with
            several ranks, each rank's own device).
        loss: the objective ``loss(flow, batch) -> scalar``, also the validation loss:
            :func:`surrogate.losses.npe_loss`, or (with ``functools.partial``)
            :func:`~surrogate.losses.atomic_npe_loss` (SNPE-C rounds) or
            :func:`~surrogate.losses.balanced_npe_loss`.
        flow: a flow to continue training (a copy of it: the caller's is left alone), e.g. the
            previous round's ``posterior.flow`` in sequential NPE, with its z-scoring and
            embedding net; ``None`` builds a new one from ``kind``, ``flow_kwargs``,
            ``embedding_net`` and the z-scoring settings, which are then unused.

    Returns:
        An :class:`NPEResult`.

    Raises:
        ValueError: bad shapes, lengths, NaN with ``drop_invalid=False``, a prior whose event
            shape does not match ``theta``, a validation split (or ``validation_mask``) leaving an
            empty set, a ``validation_mask`` of another length than ``theta``, bad
            training settings, or both ``flow`` and ``embedding_net``.
    """
    if flow is not None and embedding_net is not None:
        raise ValueError("train_npe: give either a flow to continue (it holds its embedding net) or an "
                         "embedding_net for a new flow, not both")
    if validation_mask is not None:
        validation_mask = torch.as_tensor(validation_mask, dtype=torch.bool)
        if validation_mask.shape != (len(theta),):
            raise ValueError(f"validation_mask must have shape ({len(theta)},) like theta's rows, got "
                             f"{tuple(validation_mask.shape)}")
        validation_mask = validation_mask[_finite_rows(torch.as_tensor(theta, dtype=torch.float32),
                                                      torch.as_tensor(x, dtype=torch.float32))]
    theta, x, dropped = check_simulations(theta, x, drop_invalid=drop_invalid)
    n = theta.shape[0]
    n_val = _check_arguments(n, prior, theta.shape[1], validation_fraction=validation_fraction, batch_size=batch_size,
                             patience=patience, max_epochs=max_epochs, max_steps=max_steps, lr_schedule=lr_schedule,
                             validation_mask=validation_mask)
    flow_kwargs = {**{k: NPE_DEFAULTS[k] for k in FLOW_DEFAULT_KEYS}, **(flow_kwargs or {})}
    ctx = distributed.context()
    device = distributed.resolve_device(str(device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        perm = torch.randperm(n)
        if validation_mask is None:
            val_idx, train_idx = perm[:n_val], perm[n_val:]
        else:
            val_idx, train_idx = torch.nonzero(validation_mask).flatten(), torch.nonzero(~validation_mask).flatten()
        theta_tr, x_tr = theta[train_idx], x[train_idx]
        if flow is None:
            flow = build_npe_flow(theta_tr, x_tr, kind=kind, embedding_net=embedding_net, z_score_theta=z_score_theta,
                                  z_score_x=z_score_x, seed=seed, **flow_kwargs)
        else:
            flow = copy.deepcopy(flow).train()
        flow = flow.to(device)
        sampler = epoch_batches(theta_tr.shape[0], batch_size, seed=seed, rank=ctx.rank, world_size=ctx.world_size)
        loader = torch.utils.data.DataLoader(_PairDataset(theta_tr, x_tr), sampler=sampler, batch_size=None,
                                             num_workers=num_workers)
        steps_per_epoch = len(sampler)
        limits = [max_epochs * steps_per_epoch] if max_epochs is not None else []
        total = min(limits + ([max_steps] if max_steps is not None else []))  # optimizer steps of the run
        optimizer = torch.optim.AdamW(flow.parameters(), lr=learning_rate, weight_decay=weight_decay)
        scheduler = make_lr_scheduler(optimizer, schedule=lr_schedule, total_steps=total, warmup_steps=warmup_steps,
                                      final_lr_fraction=final_lr_fraction)
        step = LikelihoodStep(flow, optimizer, loss, scheduler=scheduler, max_grad_norm=max_grad_norm)
        if config is None:
            config = {"kind": kind, "flow_kwargs": flow_kwargs, "batch_size": batch_size,
                      "learning_rate": learning_rate, "seed": seed}
        t0, c0 = time.perf_counter(), time.process_time()
        result = fit(
            step, loader, max_steps=total, out_dir=out_dir, checkpoint_every=checkpoint_every, resume=resume,
            seed=seed + 1, progress=progress, log_every=log_every or steps_per_epoch,
            validation=_validation_loss(flow, theta[val_idx].to(device), x[val_idx].to(device), loss=loss),
            validate_every=steps_per_epoch, patience=patience, config=config,
        )
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    flow.eval()
    posterior = NeuralPosterior(flow, prior, tuple(x.shape[1:]), min_acceptance=min_acceptance)
    return NPEResult(
        posterior=posterior, fit=result, num_train=int(theta_tr.shape[0]), num_validation=n_val,
        num_dropped=dropped, epochs=result.steps / steps_per_epoch, train_seconds=seconds,
        train_cpu_seconds=cpu_seconds, best_validation_loss=result.best_validation, validation_index=val_idx,
        history=result.history,
    )

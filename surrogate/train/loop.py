"""The one training loop, shared by every model family.

``fit`` drives a *step* (see :mod:`surrogate.train.steps`): a callable object whose
``__call__(batch)`` does all the optimisation work for one batch and returns the metrics to log,
with ``modules`` (the networks whose weights are checkpointed) and ``state_dict()`` /
``load_state_dict()`` (optimizers, schedulers, counters). The loop only feeds batches, logs,
validates and checkpoints, so a user can replace it with ten lines of their own::

    for epoch in range(n_epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            metrics = step(batch)

Resuming is exact: the checkpoint stores the position in the data stream (epoch and batch),
the step's state and torch's random number generator state, and datasets or samplers with
``set_epoch`` reproduce their order from ``(seed, epoch)``, so a run killed and resumed ends
with the same weights as one that never stopped (tested in ``tests/train/test_loop.py``).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import torch

from surrogate.train import distributed
from surrogate.train.checkpoint import (
    set_rng_state,
)
from surrogate.train.log import MetricLog
from surrogate.train.run_state import Checkpoints, Position, check_resume, restore, single_writer

__all__ = ["STOP_SIGNALS", "FitResult", "Step", "TrainingInterrupted", "fit"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""Signals after which :func:`fit` writes a checkpoint and raises :class:`TrainingInterrupted`
(Slurm sends SIGTERM before a kill, and ``--signal=USR1@<seconds>`` ahead of the time limit)."""


class Step(Protocol):
    """What :func:`fit` drives: one call per batch, returning metrics to log.

    Attributes:
        modules: the plain (unwrapped) networks by name, whose weights checkpoints store.
    """

    modules: Mapping[str, torch.nn.Module]

    def __call__(self, batch: Any) -> Mapping[str, float]: ...

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that a resumed run needs, as plain data."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict`."""


class TrainingInterrupted(Exception):
    """A stop signal arrived: a checkpoint was written after ``step`` steps; run the same command
    again (with resume) to continue.

    Attributes:
        step: optimisation steps done.
        checkpoint: the checkpoint written (``None`` without ``out_dir``).
        signal_name: e.g. ``"SIGTERM"``.
    """

    exit_status = 75  # EX_TEMPFAIL: "try again"; the batch templates requeue on it

    def __init__(self, step: int, checkpoint: Path | None, signal_name: str):
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint {checkpoint}; "
                         "run the same command again to resume")
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        steps: optimisation steps done in total (including those before a resume).
        history: the logged rows (``step``, ``epoch``, averaged metrics, ``seconds``), plus
            ``validation`` rows when a validation function was given.
        best_validation: lowest validation value seen, or ``None``.
        stopped_early: whether early stopping ended the run before ``max_steps``.
        checkpoint: the last checkpoint written, or ``None``.
    """

    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    best_validation: float | None = None
    stopped_early: bool = False
    checkpoint: Path | None = None


# ------------------------------------------------------------------------------ stop signals


class _StopSignals:
    """Records :data:`STOP_SIGNALS` while training (main thread only); restores the old handlers.

    A single process stops after the step during which a signal arrived. Several ranks agree
    (one collective) only at logging and checkpoint boundaries, so that every rank stops after
    the same step without a collective per step: the stop then comes up to ``log_every`` steps
    after the signal; keep that well below the warning time of the scheduler (Slurm's
    ``--signal=USR1@<seconds>``).
    """

    def __init__(self, enabled: bool):
        self.received: str | None = None
        self._old: dict[int, Any] = {}
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self) -> "_StopSignals":
        if self.enabled:
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def agreed(self, boundary: bool) -> str | None:
        """The signal to stop on now (the same answer on every rank), or ``None``."""
        if not distributed.context().distributed:
            return self.received
        if boundary and distributed.any_rank(self.received is not None):  # every rank calls it here
            return self.received or "a stop signal on another rank"
        return None


# ------------------------------------------------------------------------------ early stopping


class _EarlyStopping:
    """Validates, remembers the best value and weights, and counts validations without gain."""

    def __init__(self, step: Step, validation: Callable[[], float] | None, patience: int | None,
                 saved: Mapping[str, Any]):
        self.step, self.validation, self.patience = step, validation, patience
        self.best: float | None = saved.get("best_validation")
        self.bad = int(saved.get("bad_validations", 0))
        self.best_states: dict[str, dict] | None = None
        self.last_step = -1

    def state(self) -> dict[str, Any]:
        return {"best_validation": self.best, "bad_validations": self.bad}

    def __call__(self, at: Position, log: MetricLog) -> bool:
        """Validates (a collective); returns True when training should stop."""
        self.last_step = at.step
        modes = {name: m.training for name, m in self.step.modules.items()}
        for m in self.step.modules.values():
            m.eval()
        with torch.no_grad():
            value = distributed.all_reduce_mean({"validation": float(self.validation())})["validation"]
        for name, m in self.step.modules.items():
            m.train(modes[name])
        log.validation(at.step, at.epoch, value)
        if math.isfinite(value) and (self.best is None or value < self.best):
            self.best, self.bad = value, 0
            self.best_states = {k: copy.deepcopy(m.state_dict()) for k, m in self.step.modules.items()}
        else:
            self.bad += 1
        return self.patience is not None and self.bad >= self.patience

    def restore_best(self) -> bool:
        """With ``patience``, loads the best weights seen in this process; True if it did."""
        if self.patience is None or self.best_states is None:
            return False
        for name, module in self.step.modules.items():
            module.load_state_dict(self.best_states[name])
        return True


# ------------------------------------------------------------------------------ checkpoints


# ------------------------------------------------------------------------------ data


def _set_epoch(loader: Iterable[Any], epoch: int) -> None:
    """Calls ``set_epoch(epoch)`` on the loader's dataset, sampler and batch sampler that have it,
    and on the sampler inside a ``BatchSampler`` (e.g. a ``DistributedSampler``)."""
    for name in ("dataset", "sampler", "batch_sampler"):
        holder = getattr(loader, name, None)
        for candidate in (holder, getattr(holder, "sampler", None)):
            if hasattr(candidate, "set_epoch"):
                candidate.set_epoch(epoch)


def _epoch_batches(loader: Iterable[Any], at: Position, rng: Mapping[str, Any] | None) -> Iterator[Any]:
    """The batches of epoch ``at.epoch`` after the ``at.batch_in_epoch`` already consumed.

    Raises:
        ValueError: the epoch has no batch at all.
    """
    _set_epoch(loader, at.epoch)
    iterator = iter(loader)
    if rng is not None:
        # A DataLoader draws a worker seed from the global generator in iter(); the
        # checkpointed state was taken after that draw, so restore it afterwards.
        set_rng_state(rng)
    empty = sum(1 for _ in itertools.islice(iterator, at.batch_in_epoch)) == 0
    for batch in iterator:
        empty = False
        yield batch
    if empty:
        raise ValueError("the loader yielded no batch in an epoch: is the dataset empty or batch_size > its size "
                         "with drop_last?")


def _check_arguments(max_steps: int, out_dir: Any, resume: bool | str, checkpoint_every: int | None,
                     every: Mapping[str, int]) -> None:
    if resume not in (True, False, "anyway"):
        raise ValueError(f"resume must be True, False or 'anyway', got {resume!r}")
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (where the checkpoints are)")
    if checkpoint_every is not None and checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 1 (or 0 or None: only the final checkpoint), "
                         f"got {checkpoint_every}")
    for name, value in every.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


# ------------------------------------------------------------------------------ fit


def fit(
    step: Step,
    loader: Iterable[Any],
    *,
    max_steps: int,
    out_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 3,
    config: Mapping[str, Any] | None = None,
    resume: bool | str = False,
    seed: int | None = None,
    progress: bool = True,
    log_every: int = 10,
    validation: Callable[[], float] | None = None,
    validate_every: int = 100,
    patience: int | None = None,
    handle_signals: bool = True,
) -> FitResult:
    """Trains by calling ``step(batch)`` for ``max_steps`` batches, looping over epochs.

    Arguments:
        step: the step object (``modules``, ``__call__(batch) -> metrics``, ``state_dict()``,
            ``load_state_dict(state)``; see :mod:`surrogate.train.steps`).
        loader: a re-iterable of batches, e.g. a ``DataLoader``. At the start of every epoch
            ``set_epoch(epoch)`` is called on ``loader.dataset``, ``loader.sampler`` and
            ``loader.batch_sampler`` where they have it. An exact resume needs the order of an
            epoch to depend only on the epoch (true of
            :class:`surrogate.data.shower_dataset.CaloShowerDataset` and of ``DistributedSampler``; not
            of ``DataLoader(shuffle=True)``, which draws its order from the global generator).
        max_steps: total number of optimisation steps (a resumed run counts those already done).
        out_dir: where ``checkpoints/step_XXXXXXXX.pt`` and ``log.csv`` go; ``None`` writes
            nothing.
        checkpoint_every: steps between checkpoints; ``None`` or 0: none but the final one,
            which is always written when ``out_dir`` is set.
        keep_checkpoints: how many of the most recent checkpoints to keep.
        config: plain-data experiment configuration, stored in every checkpoint.
        resume: continue from the latest checkpoint in ``out_dir`` if there is one (restoring
            weights, the step's state, data position and the torch RNG state), provided that
            ``config`` differs from the checkpoint's only in settings that leave the training
            trajectory alone (:data:`~surrogate.train.checkpoint.RESUME_NEUTRAL`; those changes
            are printed); ``"anyway"`` resumes whatever changed. ``False`` starts afresh: the
            checkpoints of an earlier run in ``out_dir`` are moved to
            ``checkpoints.replaced-<time>``.
        seed: if given and the run is not resumed, ``torch.manual_seed(seed)`` is called first,
            so the step's noise is reproducible; ``None`` leaves the global generator alone.
        progress: show a tqdm progress bar with the latest metrics.
        log_every: steps over which metrics are averaged into one logged row.
        validation: optional function returning a number to minimise (e.g. a held-out loss),
            evaluated (modules in eval mode, without gradients) every ``validate_every`` steps
            and at the end.
        validate_every: steps between validations.
        patience: with ``validation``, stop after this many validations without improvement
            and restore the weights of the best one (seen since the last start or resume).
        handle_signals: on SIGTERM or SIGUSR1 (:data:`STOP_SIGNALS`) write a checkpoint after
            the step in progress (several ranks: at the next multiple of ``log_every`` or
            ``checkpoint_every``) and raise :class:`TrainingInterrupted` (a requeued batch job
            then resumes from it). A signal during the last step ends the run normally.

    **One writer**: rank 0 holds the lock of ``out_dir`` (:func:`surrogate.rundir.lock_run_directory`)
    while training, and removes the temporaries that killed runs left there.

    **Across ranks** (after :func:`surrogate.train.distributed.init_distributed`; the step
    wraps its networks for data parallelism, each rank's loader reads its own shard): the
    logged metrics and the validation value are averaged over ranks; only rank 0 shows the
    progress bar and writes ``log.csv`` and checkpoints (then all ranks pass a barrier); ranks
    communicate only at logging, validation and checkpoint steps, where they also agree on stop
    signals, so a signal on any rank stops all of them at the same step. ``seed`` seeds rank
    ``r`` with ``seed + r``. Checkpoints hold every rank's RNG state: a resume with the same
    world size is exact; with another world size the run continues at the start of the next
    epoch (the rest of the interrupted epoch is skipped), each rank reseeded from
    ``(seed + rank, step)``.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: ``max_steps`` or ``checkpoint_every`` < 0, ``log_every`` or
            ``validate_every`` < 1, ``resume`` without ``out_dir``, an epoch of ``loader``
            yields no batch, or the checkpoint does not match the step (modules, state).
        FileNotFoundError: resuming, the checkpoint rank 0 chose is missing on another rank
            (``out_dir`` not on a shared file system).
        surrogate.rundir.RunDirectoryLocked: another live process trains in ``out_dir``.
        ValueError: resuming, ``config`` changes a setting that alters the trajectory (named),
            and ``resume`` is not ``"anyway"``.
        TrainingInterrupted: a stop signal arrived (see ``handle_signals``).
    """
    _check_arguments(max_steps, out_dir, resume, checkpoint_every,
                     {"log_every": log_every, "validate_every": validate_every})
    out = Path(out_dir) if out_dir is not None else None
    with single_writer(out):
        checkpoints = Checkpoints(out, step, config, keep_checkpoints)
        found = checkpoints.latest() if resume else checkpoints.set_aside()
        if found is not None:
            check_resume(found, config, anyway=resume == "anyway")
        at, rng, saved = restore(step, found, seed) if found is not None else (Position(), None, {})
        if found is None and seed is not None:
            torch.manual_seed(distributed.rank_seed(seed))
        early = _EarlyStopping(step, validation, patience, saved)
        result = FitResult(steps=at.step, checkpoint=found, best_validation=early.best)
        stop, interrupted = at.step >= max_steps, None

        log = MetricLog(out, at.step, max_steps=max_steps, progress=progress)
        with _StopSignals(handle_signals) as signals, log:
            while not stop:
                batches, rng = _epoch_batches(loader, at, rng), None  # the saved RNG state only once
                for batch in batches:
                    log.add(step(batch))
                    at.advance()
                    if at.step % log_every == 0 or at.step == max_steps:
                        log.row(at.step, at.epoch)
                    if validation is not None and at.step % validate_every == 0:
                        stop = early(at, log)
                    save_now = bool(checkpoint_every) and at.step % checkpoint_every == 0
                    if at.step < max_steps:
                        interrupted = signals.agreed(boundary=at.step % log_every == 0 or save_now)
                    stop = stop or interrupted is not None or at.step >= max_steps
                    if save_now and not stop:
                        result.checkpoint = checkpoints.save(at, early.state())
                    if stop:
                        break
                else:
                    at.next_epoch()
            if interrupted is not None:
                raise TrainingInterrupted(at.step, checkpoints.save(at, early.state()), interrupted)
            if validation is not None and early.last_step != at.step:
                early(at, log)
        result.stopped_early = early.restore_best() and at.step < max_steps
        result.steps, result.history, result.best_validation = at.step, log.history, early.best
        result.checkpoint = checkpoints.save(at, early.state()) or result.checkpoint
    return result

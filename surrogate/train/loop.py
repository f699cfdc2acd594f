"""The one training loop, shared by every model family.

``fit`` drives a *step*: a callable object with ``modules`` and ``optimizers`` dictionaries whose
``__call__(batch)`` does all the optimisation work for one batch and returns the metrics to log
(see :mod:`surrogate.train.steps`). The loop only feeds batches, logs, validates and checkpoints,
so a user can replace it with ten lines of their own::

    for epoch in range(n_epochs):
        for batch in loader:
            metrics = step(batch)

Resuming is exact: the checkpoint stores the position in the data stream (epoch and batch) and
torch's random number generator state, and datasets with ``set_epoch`` reproduce their order from
``(seed, epoch)``, so a run killed and resumed ends with the same weights as one that never
stopped (tested in ``tests/train/test_loop.py``).
"""

from __future__ import annotations

import copy
import csv
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch
from tqdm.auto import tqdm

from surrogate.train import distributed
from surrogate.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

__all__ = ["FitResult", "Step", "TrainingInterrupted", "fit"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""Signals after which :func:`fit` writes a checkpoint and raises :class:`TrainingInterrupted`
(Slurm sends SIGTERM before a kill, and ``--signal=USR1@<seconds>`` ahead of the time limit)."""


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


class _StopSignals:
    """Records STOP_SIGNALS while training (main thread only); restores the old handlers."""

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


class Step(Protocol):
    """What :func:`fit` drives: one call per batch, returning metrics to log."""

    modules: Mapping[str, torch.nn.Module]
    optimizers: Mapping[str, torch.optim.Optimizer]

    def __call__(self, batch: Any) -> Mapping[str, float]: ...


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


class _CsvLog:
    """Appends metric rows to ``log.csv``; on resume drops rows after the resumed step. A row
    with a column the file lacks (the first ``validation`` value, say) rewrites the file with
    the wider header, so no value is dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
            if rows and resume_step > 0:
                self.fields = list(rows[0].keys())
                self._rewrite(rows)
            else:
                path.unlink()

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: Mapping[str, float]) -> None:
        if self.fields is None:
            self.fields = list(row.keys())
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
        new = [k for k in row if k not in self.fields]
        if new:
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields = self.fields + new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(
                {k: row.get(k, "") for k in self.fields}
            )


def _prune(out_dir: Path, keep: int) -> None:
    folder = out_dir / "checkpoints"
    files = sorted(folder.glob("step_*.pt"))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)


def fit(
    step: Step,
    loader: Iterable[Any],
    *,
    max_steps: int,
    out_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 3,
    config: Mapping[str, Any] | None = None,
    resume: bool = False,
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
        step: the step object (``modules``, ``optimizers``, ``__call__(batch) -> metrics``).
        loader: a re-iterable of batches, e.g. a ``DataLoader``. If ``loader.dataset`` or
            ``loader.sampler`` has a ``set_epoch(epoch)`` method it is called at the start of
            every epoch. An exact resume needs the order of an epoch to depend only on the
            epoch (true of :class:`surrogate.data.calo.CaloShowerDataset` and of
            ``DistributedSampler``; not of ``DataLoader(shuffle=True)``, which draws its order
            from the global generator).
        max_steps: total number of optimisation steps (a resumed run counts those already done).
        out_dir: where ``checkpoints/step_XXXXXXXX.pt`` and ``log.csv`` go; ``None`` writes
            nothing.
        checkpoint_every: steps between checkpoints (a final one is always written when
            ``out_dir`` is set).
        keep_checkpoints: how many of the most recent checkpoints to keep.
        config: plain-data experiment configuration, stored in every checkpoint.
        resume: continue from the latest checkpoint in ``out_dir`` if there is one (restoring
            weights, optimizer states, data position and the torch RNG state).
        seed: if given and the run is not resumed, ``torch.manual_seed(seed)`` is called first,
            so the step's noise is reproducible; ``None`` leaves the global generator alone.
        progress: show a tqdm progress bar with the latest metrics.
        log_every: steps over which metrics are averaged into one logged row.
        validation: optional function returning a number to minimise (e.g. a held-out loss),
            evaluated every ``validate_every`` steps and at the end.
        validate_every: steps between validations.
        patience: with ``validation``, stop after this many validations without improvement
            and restore the weights of the best one.
        handle_signals: on SIGTERM or SIGUSR1 (:data:`STOP_SIGNALS`) finish the current step,
            write a checkpoint and raise :class:`TrainingInterrupted` (a requeued batch job then
            resumes from it).

    **Across ranks** (after :func:`surrogate.train.distributed.init_distributed`; the step's
    modules wrapped in ``DistributedDataParallel``, each rank's loader reading its own shard):
    the logged metrics and the validation value are averaged over ranks; only rank 0 shows the
    progress bar and writes ``log.csv`` and checkpoints (then all ranks pass a barrier); a stop
    signal on any rank stops all of them at the same step. ``seed`` seeds rank ``r`` with
    ``seed + r``. Checkpoints hold every rank's RNG state: a resume with the same world size is
    exact; with another world size the run continues at the start of the next epoch (the rest of
    the interrupted epoch is skipped), each rank reseeded from ``(seed + rank, step)``.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: ``max_steps`` < 0, ``resume`` without ``out_dir``, an epoch of ``loader``
            yields no batch, or the checkpoint's modules do not match the step's.
        FileNotFoundError: resuming, the checkpoint rank 0 chose is missing on another rank
            (``out_dir`` not on a shared file system).
        TrainingInterrupted: a stop signal arrived (see ``handle_signals``).
    """
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (where the checkpoints are)")
    ctx = distributed.context()
    main = ctx.is_main
    out = Path(out_dir) if out_dir is not None else None
    done, epoch, batch_in_epoch = 0, 0, 0
    extra: dict[str, Any] = {}
    resume_rng: Mapping[str, Any] | None = None
    ckpt_file = None
    if resume and out is not None:
        # rank 0 chooses, so that every rank loads the same step even while files change
        ckpt_file = distributed.broadcast_object(latest_checkpoint(out) if main else None)
        missing = distributed.all_gather_object(ckpt_file is not None and not ckpt_file.exists())
        if any(missing):
            ranks = [r for r, m in enumerate(missing) if m]
            raise FileNotFoundError(f"checkpoint {ckpt_file} chosen by rank 0 is not visible on rank(s) {ranks}: "
                                    "out_dir must be on a file system shared by all ranks")
    if ckpt_file is not None:
        ckpt = load_checkpoint(ckpt_file)
        for name, module in step.modules.items():
            if name not in ckpt["modules"]:
                raise ValueError(f"checkpoint {ckpt_file} has no module {name!r}; it has {sorted(ckpt['modules'])}")
            getattr(module, "module", module).load_state_dict(ckpt["modules"][name])
        for name, opt in step.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        done, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        extra = dict(ckpt.get("extra", {}))
        saved_world = int(extra.get("world_size", 1))
        if saved_world == ctx.world_size:
            resume_rng = extra["rng_ranks"][ctx.rank] if "rng_ranks" in extra else ckpt["rng"]
        else:
            if main:
                print(f"resuming {ckpt_file} (written by {saved_world} ranks) with {ctx.world_size}: "
                      f"continuing at the start of epoch {epoch + int(batch_in_epoch > 0)}")
            if batch_in_epoch > 0:
                epoch, batch_in_epoch = epoch + 1, 0
            torch.manual_seed(distributed.rank_seed(seed or 0) * 1_000_003 + done)
    elif seed is not None:
        torch.manual_seed(distributed.rank_seed(seed))

    log = _CsvLog(out / "log.csv", done) if (out is not None and main) else None
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
    result = FitResult(steps=done, checkpoint=ckpt_file)
    best = extra.get("best_validation")
    result.best_validation = best
    bad_validations = int(extra.get("bad_validations", 0))
    best_states: dict[str, dict] | None = None
    last_validated = -1

    def checkpoint() -> None:
        if out is None:
            return
        path = checkpoint_path(out, done)
        states = distributed.all_gather_object(rng_state())  # collective: every rank takes part
        if main:
            save_checkpoint(
                path, modules=step.modules, optimizers=step.optimizers, config=config, step=done,
                epoch=epoch, batch_in_epoch=batch_in_epoch,
                extra={"best_validation": best, "bad_validations": bad_validations,
                       "world_size": ctx.world_size, "rng_ranks": states},
            )
            _prune(out, keep_checkpoints)
        distributed.barrier()  # no rank goes on (or exits) before the file is in place
        result.checkpoint = path

    def validate() -> bool:
        """Runs validation; returns True when training should stop."""
        nonlocal best, bad_validations, best_states, last_validated
        last_validated = done
        for m in step.modules.values():
            m.eval()
        with torch.no_grad():
            value = distributed.all_reduce_mean({"validation": float(validation())})["validation"]
        for m in step.modules.values():
            m.train()
        result.history.append({"step": done, "validation": value})
        if log is not None:
            log.write({"step": done, "epoch": epoch, "validation": value})
        if math.isfinite(value) and (best is None or value < best):
            best, bad_validations = value, 0
            best_states = {k: copy.deepcopy(getattr(m, "module", m).state_dict()) for k, m in step.modules.items()}
        else:
            bad_validations += 1
        result.best_validation = best
        return patience is not None and bad_validations >= patience

    bar = tqdm(total=max_steps, initial=done, disable=not (progress and main), desc="train", dynamic_ncols=True)
    sums: dict[str, float] = {}
    count, t0 = 0, time.perf_counter()
    stop = done >= max_steps
    signals = _StopSignals(handle_signals)
    interrupted: str | None = None
    with signals, bar:
        while not stop:
            for holder in (getattr(loader, "dataset", None), getattr(loader, "sampler", None)):
                if hasattr(holder, "set_epoch"):
                    holder.set_epoch(epoch)
            iterator = iter(loader)
            if resume_rng is not None:
                # A DataLoader draws a worker seed from the global generator in iter(); the
                # checkpointed state was taken after that draw, so restore it afterwards.
                set_rng_state(resume_rng)
                resume_rng = None
            for _ in range(batch_in_epoch):  # resume mid-epoch: skip what was consumed
                next(iterator, None)
            yielded = batch_in_epoch > 0
            for batch in iterator:
                yielded = True
                metrics = step(batch)
                done += 1
                batch_in_epoch += 1
                bar.update(1)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
                if done % log_every == 0 or done == max_steps:
                    row = {"step": done, "epoch": epoch,
                           **distributed.all_reduce_mean({k: v / count for k, v in sums.items()})}
                    row["seconds"] = time.perf_counter() - t0
                    result.history.append(row)
                    if log is not None:
                        log.write(row)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("step", "epoch", "seconds")})
                    sums, count = {}, 0
                if validation is not None and done % validate_every == 0:
                    stop = validate()
                if checkpoint_every and done % checkpoint_every == 0 and done < max_steps:
                    checkpoint()
                if signals.enabled or ctx.distributed:
                    received = distributed.any_rank(signals.received is not None)
                    if received:
                        interrupted = signals.received or "a stop signal on another rank"
                        stop = True
                if stop or done >= max_steps:
                    stop = True
                    break
            else:
                if not yielded:
                    raise ValueError("the loader yielded no batch in an epoch: is the dataset empty or batch_size > its size with drop_last?")
                epoch, batch_in_epoch = epoch + 1, 0
    if interrupted is not None:
        checkpoint()
        raise TrainingInterrupted(done, result.checkpoint, interrupted)
    if validation is not None and last_validated != done:
        validate()
    if patience is not None and best_states is not None:
        for name, module in step.modules.items():
            getattr(module, "module", module).load_state_dict(best_states[name])
        result.stopped_early = done < max_steps
    result.steps = done
    checkpoint()
    return result

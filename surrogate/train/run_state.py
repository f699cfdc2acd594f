"""Where a training run stands and how it is kept: the position in the data stream, the run
folder's checkpoints (found, written, pruned and set aside, collectively across ranks), the one-
writer lock of the folder, and resuming (the stored configuration compared with the current one,
weights, step state and random state restored). Used by :func:`surrogate.train.fit`."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch

from surrogate.rundir import RunDirectoryLocked, lock_run_directory
from surrogate.train import distributed
from surrogate.train.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_config,
    checkpoint_path,
    config_changes,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)


if TYPE_CHECKING:  # the step protocol of the loop that uses this module
    from surrogate.train.loop import Step
__all__ = [
    "Checkpoints",
    "Position",
    "check_resume",
    "restore",
    "single_writer",
]


@dataclass
class Position:
    """Where training stands: optimisation steps done, the epoch and the batches of it consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def advance(self) -> None:
        self.step += 1
        self.batch_in_epoch += 1

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0


class Checkpoints:
    """Finds, writes and prunes the checkpoints of a run in ``out/checkpoints``; with
    ``out=None`` writes nothing. Every method is a collective: every rank calls it."""

    def __init__(self, out: Path | None, step: Step, config: Mapping[str, Any] | None, keep: int):
        self.out, self.step, self.config, self.keep = out, step, config, keep

    def latest(self) -> Path | None:
        """The latest checkpoint, chosen by rank 0 so that every rank loads the same step.

        Raises:
            FileNotFoundError: the file is not visible on some rank.
        """
        found = distributed.broadcast_object(latest_checkpoint(self.out) if distributed.context().is_main else None)
        missing = distributed.all_gather_object(found is not None and not found.exists())
        if any(missing):
            ranks = [r for r, m in enumerate(missing) if m]
            raise FileNotFoundError(f"checkpoint {found} chosen by rank 0 is not visible on rank(s) {ranks}: "
                                    "out_dir must be on a file system shared by all ranks")
        return found

    def set_aside(self) -> None:
        """A run that does not resume moves the checkpoints of an earlier run in ``out`` to
        ``checkpoints.replaced-<time>`` (rank 0): kept, but never mistaken for this run's (their
        higher steps would otherwise survive pruning and be resumed from later). Returns ``None``."""
        if self.out is None:
            return None
        folder = self.out / "checkpoints"
        if distributed.context().is_main and latest_checkpoint(self.out) is not None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder.rename(folder.with_name(f"checkpoints.replaced-{stamp}"))
            print(f"not resuming: the earlier checkpoints of {self.out} were moved to checkpoints.replaced-{stamp}")
        distributed.barrier()
        return None

    def save(self, at: Position, extra: Mapping[str, Any]) -> Path | None:
        """Rank 0 writes the checkpoint of ``at`` (every rank's RNG state in it), then prunes."""
        if self.out is None:
            return None
        path = checkpoint_path(self.out, at.step)
        states = distributed.all_gather_object(rng_state())
        if distributed.context().is_main:
            save_checkpoint(path, modules=self.step.modules, step_state=self.step.state_dict(), config=self.config,
                            step=at.step, epoch=at.epoch, batch_in_epoch=at.batch_in_epoch,
                            extra={**extra, "world_size": distributed.context().world_size, "rng_ranks": states})
            for old in sorted(path.parent.glob("step_*.pt"))[: -self.keep]:
                old.unlink(missing_ok=True)
        distributed.barrier()  # no rank goes on (or exits) before the file is in place
        return path


@contextlib.contextmanager
def single_writer(out: Path | None) -> Iterator[None]:
    """Rank 0 holds the lock of the run folder ``out`` for the body (every rank raises when it
    cannot: :class:`~surrogate.rundir.RunDirectoryLocked`, naming the other process); abandoned
    temporaries of killed runs there are removed first."""
    if out is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        refused = None
        if distributed.context().is_main:
            try:
                stack.enter_context(lock_run_directory(out))
            except RunDirectoryLocked as exc:
                refused = str(exc)
        refused = distributed.broadcast_object(refused)
        if refused is not None:
            raise RunDirectoryLocked(refused)
        yield


def check_resume(found: Path, config: Mapping[str, Any] | None, *, anyway: bool) -> None:
    """Compares the configuration stored in ``found`` with ``config`` (see
    :func:`~surrogate.train.checkpoint.config_changes`).

    Raises:
        ValueError: a change that alters the training trajectory, unless ``anyway`` (each
            change named with its old and new value).
    """
    if config is None:
        return
    changed, harmless = config_changes(checkpoint_config(found), config)
    if changed and not anyway:
        raise ValueError(f"cannot resume {found}: its run had other settings ({'; '.join(changed)}); these change "
                         "the training, so resume with --resume-anyway (resume='anyway'), start over with "
                         "--no-resume, or use another output_dir")
    if distributed.context().is_main and (changed or harmless):
        print(f"resuming {found} with changed settings: {'; '.join(changed + harmless)}")


def restore(step: Step, path: Path, seed: int | None) -> tuple[Position, Mapping[str, Any] | None, dict]:
    """Loads weights and step state from ``path``.

    Returns:
        The position, this rank's RNG state to restore once the epoch's iterator exists
        (``None`` when the world size changed: the run then continues at the start of the next
        epoch, reseeded from ``(seed + rank, step)``), and the checkpoint's ``extra``.

    Raises:
        ValueError: the checkpoint predates step states or its modules differ from the step's.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("format", 1) < CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {ckpt.get('format', 1)} (no step state), this version "
                         f"resumes format {CHECKPOINT_FORMAT}: start a new run (its weights still load)")
    for name, module in step.modules.items():
        if name not in ckpt["modules"]:
            raise ValueError(f"checkpoint {path} has no module {name!r}; it has {sorted(ckpt['modules'])}")
        module.load_state_dict(ckpt["modules"][name])
    step.load_state_dict(ckpt["step_state"])
    at = Position(ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"])
    extra = dict(ckpt.get("extra", {}))
    ctx, saved_world = distributed.context(), int(extra.get("world_size", 1))
    if saved_world == ctx.world_size:
        return at, extra["rng_ranks"][ctx.rank] if "rng_ranks" in extra else ckpt["rng"], extra
    if ctx.is_main:
        print(f"resuming {path} (written by {saved_world} ranks) with {ctx.world_size}: "
              f"continuing at the start of epoch {at.epoch + int(at.batch_in_epoch > 0)}")
    if at.batch_in_epoch > 0:
        at.next_epoch()
    torch.manual_seed(distributed.rank_seed(seed or 0) * 1_000_003 + at.step)
    return at, None, extra

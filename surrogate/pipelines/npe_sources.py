"""What an NPE pipeline trains on, and what it validates against.

Exactly one source per pipeline file:

- ``[data] task = "two_moons"``: a built-in sbibm task (its prior, simulator and the reference
  posteriors shipped in ``datasets/sbibm``), :mod:`surrogate.simulators.sbi_tasks`;
- ``[simulator] entry_point = "module:function"`` with a ``[prior]`` table: the user's own
  simulator (:mod:`surrogate.simulators.user`), fed parameters drawn from the prior
  (:mod:`surrogate.simulators.priors`);
- ``[data] file = "pairs.h5"`` with a ``[prior]`` table: pairs ``theta`` / ``x`` simulated
  elsewhere (:mod:`surrogate.data.pairs`; held in memory as float32, only the rows used are read).

Held-out simulations for the coverage test are fresh simulations (task, simulator) or the rows of
the file after the training rows. Reference posteriors (C2ST) are the task's, or for the user's
sources a folder in sbibm's layout (``[data] references``); without one, C2ST is skipped.

All functions take the pipeline configuration (:class:`surrogate.pipelines.npe.NPEConfig`) or, for
a saved posterior, its stored plain copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor
from torch.distributions import Distribution

from surrogate.simulators.priors import prior_from_table, prior_names
from surrogate.simulators.sbi_tasks import ReferencePosterior, get_task, load_reference, simulate_dataset

if TYPE_CHECKING:
    from surrogate.pipelines.npe import NPEConfig

__all__ = ["DEFAULT_NUM_SIMULATIONS", "describe", "held_out_pairs", "parameter_labels", "references",
           "stored_prior", "training_pairs"]

DEFAULT_NUM_SIMULATIONS = 10_000
"""Simulations drawn for training from a task or a simulator when ``[data] num_simulations`` is unset."""


def describe(cfg: NPEConfig) -> dict[str, str]:
    """``{"kind": "task" | "simulator" | "file", "name": ...}`` of the pipeline's source (for reports)."""
    if cfg.data.task is not None:
        return {"kind": "task", "name": cfg.data.task}
    if cfg.simulator is not None:
        return {"kind": "simulator", "name": cfg.simulator.entry_point}
    return {"kind": "file", "name": str(cfg.data.file)}


def stored_prior(config: Mapping[str, Any], *, where: str = "[prior]") -> Distribution:
    """The prior of a pipeline configuration in plain form (``cfg.to_dict()`` or a checkpoint's
    copy): the task's, else the ``[prior]`` table rebuilt.

    Raises:
        ValueError: neither a task nor a valid ``[prior]`` table.
    """
    task = (config.get("data") or {}).get("task")
    if task is not None:
        return get_task(task).prior
    if not config.get("prior"):
        raise ValueError(f"{where}: the configuration has neither [data] task nor a [prior] table")
    return prior_from_table(config["prior"], where=where)


def parameter_labels(cfg: NPEConfig) -> list[str]:
    """Names of the parameters for plots: the ``[prior]`` table's names, else ``theta_1 ...``."""
    if cfg.prior is not None:
        return prior_names(cfg.prior)
    return [f"theta_{i + 1}" for i in range(get_task(cfg.data.task).theta_dim)]


def _file_rows(cfg: NPEConfig) -> tuple[int, int]:
    """``(training rows, held-out rows)`` of ``[data] file``: the first ``num_simulations`` rows
    (default: all but the held-out ones), then ``[validate] coverage_observations`` rows."""
    from surrogate.data.pairs import pairs_info

    path = cfg.data.file
    total, dim, _ = pairs_info(path)
    expected = int(stored_prior(cfg.to_dict()).event_shape[0])
    if dim != expected:
        raise ValueError(f"{path}: 'theta' has {dim} columns but [prior] describes {expected} parameters")
    held = cfg.validate.coverage_observations
    train = cfg.data.num_simulations if cfg.data.num_simulations is not None else total - held
    if train < 1 or train + held > total:
        raise ValueError(f"{path}: has {total} rows; [data] num_simulations = {cfg.data.num_simulations} for "
                         f"training and [validate] coverage_observations = {held} held out need "
                         f"{max(train, 1) + held}")
    return train, held


def _check_support(theta: Tensor, prior: Distribution, where: str, offset: int) -> None:
    inside = prior.support.check(theta)
    inside = inside.all(-1) if inside.shape == theta.shape else inside
    bad = torch.nonzero(~inside & torch.isfinite(theta).all(-1)).flatten()
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"{where}: row {offset + row} of 'theta', {theta[row].tolist()}, lies outside the support "
                         f"of [prior] ({len(bad)} such rows): the pairs were not drawn from this prior")


def _simulator_pairs(cfg: NPEConfig, n: int, seed: int) -> tuple[Tensor, Tensor]:
    from surrogate.simulators.user import load_simulator, run_simulator

    prior = stored_prior(cfg.to_dict())
    folder = cfg.source.parent if cfg.source is not None else None
    where = f"{cfg.source} [simulator] entry_point" if cfg.source is not None else "[simulator] entry_point"
    simulator = load_simulator(cfg.simulator.entry_point, folder=folder, where=where)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theta = prior.sample((n,)).float()
    x = run_simulator(simulator, theta, seed=seed + 1, batch_size=cfg.simulator.batch_size,
                      name=cfg.simulator.entry_point)
    return theta, x


def training_pairs(cfg: NPEConfig) -> tuple[Tensor, Tensor]:
    """The training simulations ``(theta (N, D), x (N, *x_shape))``, seeded by ``[run] seed``;
    failed simulations (NaN rows) are kept, for the training to drop and count.

    Raises:
        ValueError: a simulator or file that does not fit the configuration (naming it).
        MemoryError: file rows that would not fit in memory.
    """
    n = cfg.data.num_simulations or DEFAULT_NUM_SIMULATIONS
    if cfg.data.task is not None:
        return simulate_dataset(cfg.data.task, n, seed=cfg.run.seed)
    if cfg.simulator is not None:
        return _simulator_pairs(cfg, n, cfg.run.seed)
    from surrogate.data.pairs import read_pairs

    rows, _ = _file_rows(cfg)
    theta, x = read_pairs(cfg.data.file, stop=rows, copies=3)  # training copies them twice
    _check_support(theta, stored_prior(cfg.to_dict()), str(cfg.data.file), 0)
    return theta, x


def held_out_pairs(cfg: NPEConfig, n: int) -> tuple[Tensor, Tensor, int]:
    """``n`` simulations not trained on, for the coverage test: fresh ones from the task or
    simulator (seed ``[run] seed + 3``), or the file's rows after the training rows.

    Returns:
        ``(theta (M, D), x (M, *x_shape), dropped)``: ``M = n - dropped`` valid pairs (failed
        simulations are dropped and counted).
    """
    seed = cfg.run.seed + 3
    if cfg.data.task is not None:
        theta, x = simulate_dataset(cfg.data.task, n, seed=seed)
    elif cfg.simulator is not None:
        theta, x = _simulator_pairs(cfg, n, seed)
    else:
        from surrogate.data.pairs import read_pairs

        rows, held = _file_rows(cfg)
        theta, x = read_pairs(cfg.data.file, start=rows, stop=rows + min(n, held))
        _check_support(theta, stored_prior(cfg.to_dict()), str(cfg.data.file), rows)
    ok = torch.isfinite(theta).all(1) & torch.isfinite(x.reshape(len(x), -1)).all(1)
    return theta[ok], x[ok], int((~ok).sum())


def references(cfg: NPEConfig) -> list[ReferencePosterior] | None:
    """The reference posteriors of ``[data] observations``: the task's (under ``[data]
    reference_root``, default the repository's ``datasets/sbibm``), or those in the folder
    ``[data] references``; ``None`` when a simulator or file has none (C2ST is then skipped).

    Raises:
        FileNotFoundError: a reference file is missing (naming it).
        ValueError: a file with the wrong number of columns.
    """
    data = cfg.data
    if data.task is not None:
        return [load_reference(data.task, k, root=data.reference_root) for k in data.observations]
    if data.references is None:
        return None
    return [load_reference(data.references, k) for k in data.observations]

"""Simulation-based inference benchmark tasks of sbibm: two_moons, slcp, gaussian_linear,
gaussian_mixture, bernoulli_glm and sir.

Each task is a prior (a :class:`torch.distributions.Distribution`) and a stochastic simulator
``x = simulate(theta)`` (:mod:`surrogate.simulators.sbi_simulators`), written from the task
definitions of sbibm (Lueckmann et al. 2021,
arXiv:2101.04653, appendix T, checked against sbibm's own task code). The reference posterior
samples of observations 1 to 10 are read from the copy of sbibm's files in the repository's
``datasets/sbibm`` (``<task>/num_observation_<n>/{observation.csv,true_parameters.csv,
reference_posterior_samples.csv.bz2}``; card in ``datasets/README.md``); bernoulli_glm's design
matrix is read from there too (``bernoulli_glm/design_matrix.pt``).

All quantities are dimensionless, except sir's rates (per day) and counts.

Example:
    >>> task = get_task("two_moons")
    >>> theta, x = simulate_dataset(task, 100, seed=0)
    >>> theta.shape, x.shape
    (torch.Size([100, 2]), torch.Size([100, 2]))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, LogNormal, MultivariateNormal, Uniform

from surrogate.checks import check_int
from surrogate.data.sbibm_csv import read_csv as _read_csv
from surrogate.simulators.sbi_simulators import (
    GAUSSIAN_LINEAR_VARIANCE,
    GLM_FILTER_LENGTH,
    bernoulli_glm_precision,
    default_sbibm_root,
    simulate_bernoulli_glm,
    simulate_gaussian_linear,
    simulate_gaussian_mixture,
    simulate_sir,
    simulate_slcp,
    simulate_two_moons,
)

__all__ = [
    "ReferencePosterior",
    "SBITask",
    "TASK_NAMES",
    "get_task",
    "load_reference",
    "simulate_dataset",
]

TASK_NAMES = ("two_moons", "slcp", "gaussian_linear", "gaussian_mixture", "bernoulli_glm", "sir")




@dataclass(frozen=True)
class SBITask:
    """A benchmark task: prior, simulator and dimensions.

    Attributes:
        name: one of :data:`TASK_NAMES`.
        theta_dim: dimension of the parameters.
        x_dim: dimension of the observations.
        prior_factory: builds the prior distribution (a fresh object per call).
        simulator: ``simulate(theta (N, theta_dim), *, generator) -> x (N, x_dim)``.
    """

    name: str
    theta_dim: int
    x_dim: int
    prior_factory: Callable[[], Distribution]
    simulator: Callable[..., Tensor]

    @property
    def prior(self) -> Distribution:
        """The prior over ``theta``, event shape ``(theta_dim,)``."""
        return self.prior_factory()

    def simulate(self, theta: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``x`` of shape ``(N, x_dim)`` for ``theta`` of shape ``(N, theta_dim)``."""
        return self.simulator(theta, generator=generator)


def _box_prior(dim: int, half_width: float) -> Distribution:
    return Independent(Uniform(-half_width * torch.ones(dim), half_width * torch.ones(dim)), 1)


def _gaussian_linear_prior() -> Distribution:
    return MultivariateNormal(torch.zeros(10), covariance_matrix=GAUSSIAN_LINEAR_VARIANCE * torch.eye(10))


def _bernoulli_glm_prior() -> Distribution:
    return MultivariateNormal(torch.zeros(GLM_FILTER_LENGTH + 1), precision_matrix=bernoulli_glm_precision())


def _sir_prior() -> Distribution:
    """Independent log-normals: ``log beta ~ N(log 0.4, 0.5^2)``, ``log gamma ~ N(log 0.125, 0.2^2)``."""
    return Independent(LogNormal(torch.tensor([math.log(0.4), math.log(0.125)]), torch.tensor([0.5, 0.2])), 1)


_TASKS = {
    "two_moons": SBITask("two_moons", 2, 2, lambda: _box_prior(2, 1.0), simulate_two_moons),
    "slcp": SBITask("slcp", 5, 8, lambda: _box_prior(5, 3.0), simulate_slcp),
    "gaussian_linear": SBITask("gaussian_linear", 10, 10, _gaussian_linear_prior, simulate_gaussian_linear),
    "gaussian_mixture": SBITask("gaussian_mixture", 2, 2, lambda: _box_prior(2, 10.0), simulate_gaussian_mixture),
    "bernoulli_glm": SBITask("bernoulli_glm", 10, 10, _bernoulli_glm_prior, simulate_bernoulli_glm),
    "sir": SBITask("sir", 2, 10, _sir_prior, simulate_sir),
}
assert tuple(_TASKS) == TASK_NAMES


def get_task(name: str) -> SBITask:
    """The task called ``name`` (one of :data:`TASK_NAMES`).

    Raises:
        ValueError: unknown name.
    """
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available: {TASK_NAMES}")
    return _TASKS[name]


def simulate_dataset(task: SBITask | str, num_simulations: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Draws ``theta`` from the prior and simulates ``x``, reproducibly from ``seed``, without
    touching torch's global generator state.

    Arguments:
        task: an :class:`SBITask` or its name.
        num_simulations: ``N``.
        seed: random seed.

    Returns:
        ``(theta (N, theta_dim), x (N, x_dim))``, float32.
    """
    task = get_task(task) if isinstance(task, str) else task
    num_simulations = check_int("num_simulations", num_simulations, minimum=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theta = task.prior.sample((num_simulations,))
        generator = torch.Generator().manual_seed(seed + 1)
        x = task.simulate(theta, generator=generator)
    return theta, x


@dataclass(frozen=True)
class ReferencePosterior:
    """sbibm reference data of one observation.

    Attributes:
        task: task name (for a directory given by path: its name).
        num_observation: 1 to 10.
        observation: ``x_obs`` of shape ``(x_dim,)``.
        true_parameters: ``theta`` that generated it, ``(theta_dim,)``.
        samples: reference posterior samples ``(10000, theta_dim)``.
        raw_observation: the raw data behind ``observation`` where sbibm stores it
            (``observation_raw.csv``; bernoulli_glm's 100 trials, ``(100,)``), else ``None``.
    """

    task: str
    num_observation: int
    observation: Tensor
    true_parameters: Tensor
    samples: Tensor
    raw_observation: Tensor | None = None


def _task_folder(task: str | os.PathLike, root: str | Path | None) -> tuple[str, Path]:
    """``(name, folder)`` of a task given by name (under ``root``) or by its directory."""
    if isinstance(task, str) and task in _TASKS:
        return task, (Path(root) if root is not None else default_sbibm_root()) / task
    is_path = isinstance(task, os.PathLike) or (isinstance(task, str) and ("/" in task or os.sep in task))
    if not is_path:
        raise ValueError(f"unknown task {task!r}; available: {TASK_NAMES}, or pass the path of a task "
                         "directory in sbibm's layout")
    if root is not None:
        raise ValueError(f"root={str(root)!r} is only used with a task name, but task is a directory: {str(task)!r}")
    folder = Path(task)
    resolved = folder.resolve()
    return (resolved.parent.name if resolved.name == "files" else resolved.name), folder


def load_reference(task: str | os.PathLike, num_observation: int, *,
                   root: str | Path | None = None) -> ReferencePosterior:
    """Reads the sbibm observation, true parameters and reference posterior samples.

    The task's directory holds ``num_observation_<n>/`` (the layout of ``datasets/sbibm``) or
    ``files/num_observation_<n>/`` (the layout of sbibm's package, ``sbibm/tasks/<task>/``), each
    with ``observation.csv``, ``true_parameters.csv`` and ``reference_posterior_samples.csv.bz2``
    (and optionally ``observation_raw.csv``), CSV files with a header row. For a directory named
    after a known task (or ``files/`` inside one) the column counts are checked against the task;
    otherwise ``true_parameters`` and the samples must have as many columns as each other.

    Arguments:
        task: one of :data:`TASK_NAMES` (read from ``<root>/<task>``), or the path of a task
            directory (a :class:`~pathlib.Path`, or a string containing a path separator).
        num_observation: 1 to 10.
        root: folder holding ``<task>/num_observation_<n>/`` for a task name; default
            :func:`default_sbibm_root`. Not allowed with a directory.

    Returns:
        A :class:`ReferencePosterior`.

    Raises:
        ValueError: unknown task name, ``root`` given with a directory, ``num_observation`` out
            of range, or a file with the wrong number of columns.
        FileNotFoundError: a file is missing (names the missing file and how to get it).
    """
    name, folder = _task_folder(task, root)
    num_observation = check_int("num_observation", num_observation, minimum=1, maximum=10)
    sub = f"num_observation_{num_observation}"
    obs_folder = folder / sub
    if not obs_folder.is_dir() and (folder / "files" / sub).is_dir():
        obs_folder = folder / "files" / sub
    files = {
        "observation": obs_folder / "observation.csv",
        "true_parameters": obs_folder / "true_parameters.csv",
        "samples": obs_folder / "reference_posterior_samples.csv.bz2",
    }
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"sbibm reference file(s) missing for task {name!r}, observation {num_observation}: "
            f"{', '.join(missing)}; the repository ships six tasks in datasets/sbibm (pass root=... or the "
            "task directory to point elsewhere, e.g. to sbibm's sbibm/tasks/<task>)"
        )
    arrays = {k: _read_csv(p) for k, p in files.items()}
    if name in _TASKS:
        spec = _TASKS[name]
        expected = {"observation": spec.x_dim, "true_parameters": spec.theta_dim, "samples": spec.theta_dim}
    else:
        expected = {"samples": arrays["true_parameters"].shape[1]}
    for key, dim in expected.items():
        if arrays[key].shape[1] != dim:
            raise ValueError(f"{files[key]}: expected {dim} columns, got {arrays[key].shape[1]}")
    raw_path = obs_folder / "observation_raw.csv"
    raw = torch.from_numpy(_read_csv(raw_path)[0]) if raw_path.is_file() else None
    return ReferencePosterior(
        task=name,
        num_observation=int(num_observation),
        observation=torch.from_numpy(arrays["observation"][0]),
        true_parameters=torch.from_numpy(arrays["true_parameters"][0]),
        samples=torch.from_numpy(arrays["samples"]),
        raw_observation=raw,
    )

"""Simulation-based inference benchmark tasks of sbibm: two_moons, slcp and gaussian_linear.

Each task is a prior (a :class:`torch.distributions.Distribution`) and a stochastic simulator
``x = simulate(theta)``, written from the task definitions of sbibm (Lueckmann et al. 2021,
arXiv:2101.04653, appendix T). The reference posterior samples of observations 1 to 10 are read
from the copy of sbibm's files in the repository's ``datasets/sbibm``
(``<task>/num_observation_<n>/{observation.csv,true_parameters.csv,
reference_posterior_samples.csv.bz2}``; card in ``datasets/README.md``).

All quantities are dimensionless.

Example:
    >>> task = get_task("two_moons")
    >>> theta, x = simulate_dataset(task, 100, seed=0)
    >>> theta.shape, x.shape
    (torch.Size([100, 2]), torch.Size([100, 2]))
"""

from __future__ import annotations

import bz2
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Uniform

from surrogate.checks import check_int

__all__ = [
    "ReferencePosterior",
    "SBITask",
    "TASK_NAMES",
    "default_sbibm_root",
    "gaussian_linear_posterior",
    "get_task",
    "load_reference",
    "simulate_dataset",
    "simulate_gaussian_linear",
    "simulate_slcp",
    "simulate_two_moons",
]

TASK_NAMES = ("two_moons", "slcp", "gaussian_linear")

_GAUSSIAN_LINEAR_VAR = 0.1  # prior and likelihood variance per dimension (sbibm)


def _check_theta(theta: Tensor, dim: int, task: str) -> Tensor:
    theta = torch.as_tensor(theta, dtype=torch.float32)
    if theta.ndim != 2 or theta.shape[1] != dim:
        raise ValueError(f"{task}: theta must have shape (N, {dim}), got {tuple(theta.shape)}")
    return theta


def simulate_two_moons(theta: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """two_moons simulator: a crescent whose position depends on ``|theta_1 - theta_2|``-like
    rotated coordinates, giving a bimodal crescent-shaped posterior.

    ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``, ``p = (r cos a + 0.25, r sin a)``; with
    ``phi = -pi/4``, ``z0 = cos(phi) th1 - sin(phi) th2``, ``z1 = sin(phi) th1 + cos(phi) th2``,
    ``x = p + (-|z0|, z1)``.

    Arguments:
        theta: parameters ``(N, 2)``.
        generator: random generator (default: torch's global one).

    Returns:
        ``x`` of shape ``(N, 2)``, float32.

    References:
        Greenberg, Nonnenmacher & Macke (2019), arXiv:1905.07488; sbibm (arXiv:2101.04653).
    """
    theta = _check_theta(theta, 2, "two_moons")
    n = theta.shape[0]
    a = (torch.rand(n, generator=generator) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(n, generator=generator)
    p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=1)
    c, s = math.cos(-math.pi / 4), math.sin(-math.pi / 4)
    z0 = c * theta[:, 0] - s * theta[:, 1]
    z1 = s * theta[:, 0] + c * theta[:, 1]
    return p + torch.stack([-z0.abs(), z1], dim=1)


def simulate_slcp(theta: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """SLCP simulator ("simple likelihood, complex posterior"): four i.i.d. 2-D Gaussian points.

    ``m = (th1, th2)``, ``s1 = th3^2``, ``s2 = th4^2``, ``rho = tanh(th5)``, covariance
    ``S = [[s1^2, rho s1 s2], [rho s1 s2, s2^2]] + 1e-6 I``; ``x_j ~ N(m, S)``, ``j = 1..4``,
    returned flattened as ``[x1, y1, x2, y2, x3, y3, x4, y4]``. Sampled exactly as
    ``m + (s1 e1, s2 (rho e1 + sqrt(1 - rho^2) e2)) + 1e-3 (e3, e4)`` with standard normal ``e``.

    Arguments:
        theta: parameters ``(N, 5)``.
        generator: random generator (default: torch's global one).

    Returns:
        ``x`` of shape ``(N, 8)``, float32.

    References:
        Papamakarios, Sterratt & Murray (2019), arXiv:1805.07226; sbibm (arXiv:2101.04653).
    """
    theta = _check_theta(theta, 5, "slcp")
    n = theta.shape[0]
    m = theta[:, None, :2]  # (N, 1, 2)
    s1, s2 = theta[:, None, 2] ** 2, theta[:, None, 3] ** 2  # (N, 1)
    rho = torch.tanh(theta[:, None, 4])
    e = torch.randn(n, 4, 4, generator=generator)  # (N, points, 4 normals)
    dx = s1 * e[..., 0]
    dy = s2 * (rho * e[..., 0] + torch.sqrt(1 - rho**2) * e[..., 1])
    jitter = 1e-3 * e[..., 2:]  # the + 1e-6 I of the covariance
    points = m + torch.stack([dx, dy], dim=-1) + jitter  # (N, 4, 2)
    return points.reshape(n, 8)


def simulate_gaussian_linear(theta: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """gaussian_linear simulator: ``x ~ N(theta, 0.1 I)`` in 10 dimensions (0.1 is the variance).

    Arguments:
        theta: parameters ``(N, 10)``.
        generator: random generator (default: torch's global one).

    Returns:
        ``x`` of shape ``(N, 10)``, float32.

    References:
        sbibm (arXiv:2101.04653).
    """
    theta = _check_theta(theta, 10, "gaussian_linear")
    return theta + math.sqrt(_GAUSSIAN_LINEAR_VAR) * torch.randn(theta.shape, generator=generator)


def gaussian_linear_posterior(x: Tensor) -> MultivariateNormal:
    """Exact gaussian_linear posterior: prior N(0, 0.1 I) times likelihood N(x; theta, 0.1 I)
    gives ``N(x / 2, 0.05 I)``.

    Arguments:
        x: observation ``(10,)`` or ``(B, 10)``.

    Returns:
        A :class:`MultivariateNormal` with batch shape ``()`` or ``(B,)``.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.shape[-1:] != (10,) or x.ndim > 2:
        raise ValueError(f"gaussian_linear: x must have shape (10,) or (B, 10), got {tuple(x.shape)}")
    var = _GAUSSIAN_LINEAR_VAR / 2
    return MultivariateNormal(x / 2, covariance_matrix=var * torch.eye(10))


@dataclass(frozen=True)
class SBITask:
    """A benchmark task: prior, simulator and dimensions.

    Attributes:
        name: ``"two_moons"``, ``"slcp"`` or ``"gaussian_linear"``.
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
    return MultivariateNormal(torch.zeros(10), covariance_matrix=_GAUSSIAN_LINEAR_VAR * torch.eye(10))


_TASKS = {
    "two_moons": SBITask("two_moons", 2, 2, lambda: _box_prior(2, 1.0), simulate_two_moons),
    "slcp": SBITask("slcp", 5, 8, lambda: _box_prior(5, 3.0), simulate_slcp),
    "gaussian_linear": SBITask("gaussian_linear", 10, 10, _gaussian_linear_prior, simulate_gaussian_linear),
}


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
        task: task name.
        num_observation: 1 to 10.
        observation: ``x_obs`` of shape ``(x_dim,)``.
        true_parameters: ``theta`` that generated it, ``(theta_dim,)``.
        samples: reference posterior samples ``(10000, theta_dim)``.
    """

    task: str
    num_observation: int
    observation: Tensor
    true_parameters: Tensor
    samples: Tensor


def default_sbibm_root() -> Path:
    """``<repository>/datasets/sbibm``, the copy of the sbibm reference files that ships with the
    repository (card in ``datasets/README.md``)."""
    return (Path(__file__).resolve().parents[2] / "datasets" / "sbibm").resolve()


def _read_csv(path: Path) -> np.ndarray:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", skiprows=1, ndmin=2, dtype=np.float32)


def load_reference(task: str, num_observation: int, *, root: str | Path | None = None) -> ReferencePosterior:
    """Reads the sbibm observation, true parameters and reference posterior samples.

    Arguments:
        task: one of :data:`TASK_NAMES`.
        num_observation: 1 to 10.
        root: folder holding ``<task>/num_observation_<n>/``; default :func:`default_sbibm_root`.

    Returns:
        A :class:`ReferencePosterior`.

    Raises:
        ValueError: unknown task, ``num_observation`` out of range, or a file with the wrong
            number of columns.
        FileNotFoundError: the files are missing (names the path and how to get it).
    """
    spec = get_task(task)
    num_observation = check_int("num_observation", num_observation, minimum=1, maximum=10)
    base = Path(root) if root is not None else default_sbibm_root()
    folder = base / task / f"num_observation_{num_observation}"
    files = {
        "observation": folder / "observation.csv",
        "true_parameters": folder / "true_parameters.csv",
        "samples": folder / "reference_posterior_samples.csv.bz2",
    }
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"sbibm reference file {path} not found; the repository ships them in datasets/sbibm "
                "(pass root=... to point elsewhere, e.g. to a clone of sbibm's reference files)"
            )
    arrays = {k: _read_csv(p) for k, p in files.items()}
    expected = {"observation": spec.x_dim, "true_parameters": spec.theta_dim, "samples": spec.theta_dim}
    for key, dim in expected.items():
        if arrays[key].shape[1] != dim:
            raise ValueError(f"{files[key]}: expected {dim} columns, got {arrays[key].shape[1]}")
    return ReferencePosterior(
        task=task,
        num_observation=int(num_observation),
        observation=torch.from_numpy(arrays["observation"][0]),
        true_parameters=torch.from_numpy(arrays["true_parameters"][0]),
        samples=torch.from_numpy(arrays["samples"]),
    )

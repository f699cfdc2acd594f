"""The simulators of the six sbibm tasks (Lueckmann et al. 2021, arXiv:2101.04653, appendix T,
checked against sbibm's own task code): two_moons, slcp, gaussian_linear (with its exact
posterior), gaussian_mixture, bernoulli_glm (design matrix, prior precision and sufficient
statistics) and sir (the SIR ODE and its binomial observations). The tasks themselves (priors,
registry, reference posteriors) are in :mod:`surrogate.simulators.sbi_tasks`.

All quantities are dimensionless, except sir's rates (per day) and counts.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor
from torch.distributions import MultivariateNormal

from surrogate.checks import check_float

__all__ = [
    "GAUSSIAN_LINEAR_VARIANCE",
    "GLM_FILTER_LENGTH",
    "SIR_DAYS",
    "bernoulli_glm_design_matrix",
    "bernoulli_glm_precision",
    "bernoulli_glm_summary",
    "default_sbibm_root",
    "gaussian_linear_posterior",
    "simulate_bernoulli_glm",
    "simulate_gaussian_linear",
    "simulate_gaussian_mixture",
    "simulate_sir",
    "simulate_slcp",
    "simulate_two_moons",
    "sir_infected_fraction",
]


GAUSSIAN_LINEAR_VARIANCE = 0.1  # prior and likelihood variance per dimension (sbibm)


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
    return theta + math.sqrt(GAUSSIAN_LINEAR_VARIANCE) * torch.randn(theta.shape, generator=generator)


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
    var = GAUSSIAN_LINEAR_VARIANCE / 2
    return MultivariateNormal(x / 2, covariance_matrix=var * torch.eye(10))


_MIXTURE_NARROW_SCALE = 0.1  # standard deviation of gaussian_mixture's narrow component (sbibm)


def simulate_gaussian_mixture(theta: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """gaussian_mixture simulator: ``x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)`` in 2 dimensions.

    One component per simulation (both coordinates share it), each with probability 0.5; the
    standard deviations are 1 and 0.1 (variances 1 and 0.01).

    Arguments:
        theta: parameters ``(N, 2)``.
        generator: random generator (default: torch's global one).

    Returns:
        ``x`` of shape ``(N, 2)``, float32.

    Raises:
        ValueError: ``theta`` not of shape ``(N, 2)``.

    References:
        Sisson, Fan & Tanaka (2007), PNAS 104, 1760; sbibm (arXiv:2101.04653, appendix T).
    """
    theta = _check_theta(theta, 2, "gaussian_mixture")
    narrow = torch.rand(theta.shape[0], 1, generator=generator) < 0.5
    scale = torch.where(narrow, _MIXTURE_NARROW_SCALE, 1.0)
    return theta + scale * torch.randn(theta.shape, generator=generator)


_GLM_BINS = 100  # time bins of the bernoulli_glm stimulus (sbibm: duration 100, dt 1)


GLM_FILTER_LENGTH = 9  # filter length; theta = (offset, 9 filter weights)


def bernoulli_glm_precision() -> Tensor:
    """Precision matrix ``P`` of bernoulli_glm's prior ``N(0, P^-1)``.

    ``P[0, 0] = 0.5`` (the offset), ``P[1:, 1:] = F^T F`` with ``F = D D + diag(sqrt(k / 9))``,
    ``k = 0..8``, and ``D`` the 9x9 first-difference matrix (ones on the diagonal, -1 below it):
    a smoothness prior penalising second differences of the filter.

    Returns:
        ``P`` of shape ``(10, 10)``, float32, symmetric positive definite.

    References:
        sbibm (Lueckmann et al. 2021, arXiv:2101.04653, appendix T).
    """
    m = GLM_FILTER_LENGTH
    d = torch.eye(m) - torch.diag(torch.ones(m - 1), -1)
    f = d @ d + torch.diag(torch.sqrt(torch.arange(m, dtype=torch.float32) / m))
    precision = torch.zeros(m + 1, m + 1)
    precision[0, 0] = 0.5
    precision[1:, 1:] = f.T @ f
    return precision


@functools.lru_cache(maxsize=4)
def _read_design_matrix(path: Path) -> Tensor:
    if not path.is_file():
        raise FileNotFoundError(
            f"bernoulli_glm design matrix {path} not found; the repository ships it in "
            "datasets/sbibm/bernoulli_glm (pass root=... to point elsewhere)"
        )
    matrix = torch.load(path, weights_only=True)
    if not isinstance(matrix, Tensor) or tuple(matrix.shape) != (_GLM_BINS, GLM_FILTER_LENGTH + 1):
        shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise ValueError(f"{path}: expected a tensor of shape ({_GLM_BINS}, {GLM_FILTER_LENGTH + 1}), got {shape}")
    return matrix.to(torch.float32)


def bernoulli_glm_design_matrix(*, root: str | Path | None = None) -> Tensor:
    """bernoulli_glm's design matrix ``X``, read from ``<root>/bernoulli_glm/design_matrix.pt``.

    Row ``t`` is ``(1, I_t, I_{t-1}, ..., I_{t-8})`` (zero before ``t = 0``), ``I`` the frozen
    white-noise stimulus ``stimulus_I.pt`` (100 time bins), so that ``X theta`` is the offset
    plus the stimulus filtered by ``theta[1:]``.

    Arguments:
        root: folder holding ``bernoulli_glm/``; default :func:`default_sbibm_root`.

    Returns:
        ``X`` of shape ``(100, 10)``, float32 (a fresh copy).

    Raises:
        FileNotFoundError: the file is missing (names the path).
        ValueError: the file does not hold a ``(100, 10)`` tensor.

    References:
        sbibm (Lueckmann et al. 2021, arXiv:2101.04653, appendix T).
    """
    base = Path(root) if root is not None else default_sbibm_root()
    return _read_design_matrix((base / "bernoulli_glm" / "design_matrix.pt").resolve()).clone()


def _glm_design(design_matrix: Tensor | None) -> Tensor:
    if design_matrix is None:
        return _read_design_matrix((default_sbibm_root() / "bernoulli_glm" / "design_matrix.pt").resolve())
    design_matrix = torch.as_tensor(design_matrix, dtype=torch.float32)
    if tuple(design_matrix.shape) != (_GLM_BINS, GLM_FILTER_LENGTH + 1):
        raise ValueError(f"bernoulli_glm: design_matrix must have shape (100, 10), got {tuple(design_matrix.shape)}")
    return design_matrix


def bernoulli_glm_summary(y: Tensor, *, design_matrix: Tensor | None = None) -> Tensor:
    """bernoulli_glm's 10 sufficient statistics of the 100 raw Bernoulli trials: ``x = X^T y``.

    ``x_0`` is the number of spikes and ``x_{1+j}`` the spike-triggered sum of the stimulus at
    lag ``j = 0..8``, ``sum_t y_t I_{t-j}``; this equals sbibm's
    ``[sum(y), conv1d(y, I, padding=8)[-9:]]`` (a cross-correlation), written as one product with
    the design matrix.

    Arguments:
        y: raw trials ``(100,)`` or ``(N, 100)``, each 0 or 1.
        design_matrix: ``X`` ``(100, 10)``; default :func:`bernoulli_glm_design_matrix`.

    Returns:
        ``x`` of shape ``(10,)`` or ``(N, 10)``, float32.

    Raises:
        ValueError: ``y`` of the wrong shape or with values other than 0 and 1.

    References:
        sbibm (Lueckmann et al. 2021, arXiv:2101.04653, appendix T).
    """
    y = torch.as_tensor(y, dtype=torch.float32)
    if y.ndim not in (1, 2) or y.shape[-1] != _GLM_BINS:
        raise ValueError(f"bernoulli_glm: y must have shape (100,) or (N, 100), got {tuple(y.shape)}")
    if not ((y == 0) | (y == 1)).all():
        bad = y[(y != 0) & (y != 1)][0].item()
        raise ValueError(f"bernoulli_glm: y must hold 0 or 1 (spike or not), got {bad}")
    return y @ _glm_design(design_matrix)


def simulate_bernoulli_glm(theta: Tensor, *, generator: torch.Generator | None = None,
                           design_matrix: Tensor | None = None) -> Tensor:
    """bernoulli_glm simulator: 100 Bernoulli trials of a GLM with logistic link, reduced to
    their sufficient statistics.

    ``y_t ~ Bernoulli(sigmoid((X theta)_t))``, ``t = 1..100``, then
    ``x = X^T y`` (:func:`bernoulli_glm_summary`).

    Arguments:
        theta: parameters ``(N, 10)``: the offset, then the 9 filter weights.
        generator: random generator (default: torch's global one).
        design_matrix: ``X`` ``(100, 10)``; default :func:`bernoulli_glm_design_matrix`.

    Returns:
        ``x`` of shape ``(N, 10)``, float32; ``x[:, 0]`` is the spike count (0 to 100).

    Raises:
        ValueError: ``theta`` not of shape ``(N, 10)``.
        FileNotFoundError: the default design matrix file is missing.

    References:
        Lueckmann et al. (2017), arXiv:1711.01861; sbibm (Lueckmann et al. 2021, arXiv:2101.04653,
        appendix T).
    """
    theta = _check_theta(theta, GLM_FILTER_LENGTH + 1, "bernoulli_glm")
    design = _glm_design(design_matrix)
    y = torch.bernoulli(torch.sigmoid(theta @ design.T), generator=generator)  # (N, 100)
    return y @ design


SIR_DAYS = tuple(range(0, 154, 17))
"""The days whose infected counts sir observes: every 17th of the 161 daily values, 0 to 153."""


_SIR_POPULATION = 1e6  # N
_SIR_INFECTED_0 = 1.0  # I(0); R(0) = 0


_SIR_COUNT = 1000  # Binomial total count of each observation


def _check_sir_theta(theta: Tensor) -> Tensor:
    theta = _check_theta(theta, 2, "sir")
    bad = ~torch.isfinite(theta).all(1) | (theta <= 0).any(1)
    if bad.any():
        raise ValueError(f"sir: theta = (beta, gamma) must be finite and > 0 (per day), got {theta[bad][0].tolist()}")
    return theta


def sir_infected_fraction(theta: Tensor, *, days: tuple[int, ...] = SIR_DAYS, rtol: float = 1e-10,
                          atol: float = 1e-12) -> Tensor:
    """The infected fraction ``I(t) / N`` of sir's deterministic SIR model at the given days.

    ``dS/dt = -beta S I / N``, ``dI/dt = beta S I / N - gamma I``, ``dR/dt = gamma I`` with
    ``N = 10^6``, ``I(0) = 1``, ``R(0) = 0``. Solved for the whole batch at once with
    :func:`scipy.integrate.solve_ivp` (DOP853) in the variables ``s = S / N`` and ``log(I / N)``
    (``d log(I/N)/dt = beta s - gamma``), which keeps ``I`` positive and its relative error small
    when it is tiny; ``R = N - S - I`` is not needed. The step size is shared by the batch and the
    error norm is an RMS over it, hence the tight default tolerances.

    Arguments:
        theta: ``(beta, gamma)``, contact and recovery rates in 1/day, shape ``(N, 2)``.
        days: increasing days (>= 0) to report.
        rtol, atol: tolerances of the solver (``atol`` on ``s`` and ``log(I/N)``).

    Returns:
        ``I / N`` of shape ``(N, len(days))``, float64.

    Raises:
        ValueError: ``theta`` not of shape ``(N, 2)``, not finite or not positive; bad ``days``,
            ``rtol`` or ``atol``.
        RuntimeError: the solver failed (names its message and the range of ``theta``).

    References:
        Kermack & McKendrick (1927), Proc. R. Soc. A 115, 700; sbibm (arXiv:2101.04653, appendix T).
    """
    theta = _check_sir_theta(theta).double().numpy()
    rtol = check_float("rtol", rtol, minimum=0.0, exclusive_minimum=True, where="sir")
    atol = check_float("atol", atol, minimum=0.0, exclusive_minimum=True, where="sir")
    t_eval = np.asarray(days, dtype=np.float64)
    if t_eval.ndim != 1 or t_eval.size == 0 or t_eval[0] < 0 or np.any(np.diff(t_eval) <= 0):
        raise ValueError(f"sir: days must be a non-empty increasing sequence of days >= 0, got {days!r}")
    n = theta.shape[0]
    beta, gamma = theta[:, 0], theta[:, 1]
    s0 = (_SIR_POPULATION - _SIR_INFECTED_0) / _SIR_POPULATION
    y0 = np.concatenate([np.full(n, s0), np.full(n, math.log(_SIR_INFECTED_0 / _SIR_POPULATION))])

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        s, log_i = y[:n], y[n:]
        return np.concatenate([-beta * s * np.exp(log_i), beta * s - gamma])

    if n == 0 or t_eval[-1] == 0:
        return torch.full((n, t_eval.size), _SIR_INFECTED_0 / _SIR_POPULATION, dtype=torch.float64)
    sol = solve_ivp(rhs, (0.0, t_eval[-1]), y0, method="DOP853", t_eval=t_eval, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"sir: the ODE solver failed ({sol.message}) for beta in [{beta.min()}, {beta.max()}], "
                           f"gamma in [{gamma.min()}, {gamma.max()}]")
    return torch.from_numpy(np.exp(sol.y[n:]))  # (N, len(days))


def simulate_sir(theta: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """sir simulator: ``x_i ~ Binomial(1000, I(t_i) / N)`` at days ``t_i = 0, 17, ..., 153``.

    ``I / N`` from :func:`sir_infected_fraction`, clamped into ``[0, 1]`` as sbibm does.

    Arguments:
        theta: ``(beta, gamma)``, contact and recovery rates in 1/day, shape ``(N, 2)``.
        generator: random generator (default: torch's global one).

    Returns:
        ``x`` of shape ``(N, 10)``: counts 0 to 1000, float32.

    Raises:
        ValueError: ``theta`` not of shape ``(N, 2)``, not finite or not positive.
        RuntimeError: the ODE solver failed.

    References:
        sbibm (Lueckmann et al. 2021, arXiv:2101.04653, appendix T).
    """
    probs = sir_infected_fraction(theta).clamp(0.0, 1.0).float()
    return torch.binomial(torch.full_like(probs, float(_SIR_COUNT)), probs, generator=generator)


def default_sbibm_root() -> Path:
    """``<repository>/datasets/sbibm``, the copy of the sbibm reference files that ships with the
    repository (card in ``datasets/README.md``)."""
    return (Path(__file__).resolve().parents[2] / "datasets" / "sbibm").resolve()

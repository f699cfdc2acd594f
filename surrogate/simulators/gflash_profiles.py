"""Mean longitudinal profiles and containment of GFlash showers (deterministic references).

The simulator draws ``(ln T, ln alpha)`` of every shower from a correlated bivariate normal
(:func:`surrogate.simulators.gflash_params.fluctuated_longitudinal_parameters`); the functions
here integrate the Gamma profile over that distribution with Gauss–Hermite quadrature (and over
the exponential photon conversion depth with Gauss–Laguerre quadrature) to give the exact mean
profile, mean containment and its variance that the simulator must reproduce. The separately
fitted GFlash *average* profile is given for comparison, and the exact fraction of a radial
profile component inside a centred rectangle (cells, the +-240 mm grid).

References:
    G. Grindhammer and S. Peters, hep-ex/0001020, appendices A.1 and A.2.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial.legendre import leggauss
from scipy.special import gammainc, roots_genlaguerre, roots_hermite

from surrogate.simulators.gflash_params import (
    CALOGAN_CALORIMETER,
    PHOTON_CONVERSION_LENGTH_X0,
    SamplingCalorimeter,
    _check_particle,
    average_longitudinal_parameters,
    gamma_layer_fractions,
    individual_profile_parameters,
)

__all__ = [
    "expected_layer_fractions",
    "expected_containment",
    "average_layer_fractions",
    "radial_rectangle_fraction",
]


def _quadrature(energy_gev: float, particle: str, calo: SamplingCalorimeter, order: int):
    """Nodes ``(T, alpha, t_start)`` and weights of the expectation over shower fluctuations."""
    _check_particle(particle)
    x, w = roots_hermite(order)
    z, w = np.sqrt(2.0) * x, w / np.sqrt(np.pi)
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    weights = np.outer(w, w)
    t_max, alpha = individual_profile_parameters(float(energy_gev), z1, z2, calo)
    if particle == "gamma":
        xl, wl = roots_genlaguerre(order, 0.0)
        t0 = PHOTON_CONVERSION_LENGTH_X0 * xl
        t_max, alpha, t0 = (np.broadcast_to(a, (order,) * 3) for a in
                            (t_max[..., None], alpha[..., None], t0))
        weights = weights[..., None] * wl / wl.sum()
    else:
        t0 = np.zeros_like(t_max)
    return t_max.ravel(), alpha.ravel(), t0.ravel(), weights.ravel()


def expected_layer_fractions(
    energy_gev: float,
    *,
    particle: str = "e+",
    calo: SamplingCalorimeter = CALOGAN_CALORIMETER,
    order: int = 32,
) -> np.ndarray:
    """Mean fraction of the incident energy per sampling layer, over shower-to-shower fluctuations.

    ``<dE/E in layer k> = E_{ln T, ln alpha}[ integral_k f(t; T, alpha) dt ]`` with the correlated
    log-normal distribution of
    :func:`surrogate.simulators.gflash_params.fluctuated_longitudinal_parameters` (and, for
    photons, an exponential conversion depth of mean 9/7 X0_eff), computed by Gauss–Hermite
    (Gauss–Laguerre) quadrature of ``order`` nodes per dimension. This is the mean profile the simulator must
    reproduce.

    Arguments:
        energy_gev: incident energy in GeV.
        particle: ``"e+"``, ``"e-"`` or ``"gamma"``.
        calo: the sampling calorimeter.
        order: quadrature nodes per dimension.

    Returns:
        float64 array ``(n_layers,)``; ``1 - sum`` is the mean longitudinal leakage.

    Raises:
        ValueError: unknown particle.

    References:
        hep-ex/0001020, appendix A.2.
    """
    t_max, alpha, t0, w = _quadrature(energy_gev, particle, calo, order)
    return w @ gamma_layer_fractions(t_max, alpha, t0, calo)


def expected_containment(
    energy_gev: float,
    *,
    particle: str = "e+",
    calo: SamplingCalorimeter = CALOGAN_CALORIMETER,
    order: int = 32,
) -> tuple[float, float]:
    """Mean and variance of the longitudinally contained fraction of the incident energy.

    Same quadrature as :func:`expected_layer_fractions`. With the sampling fluctuations the
    expected energy resolution of the calorimeter (cells + overflow) at energy E is
    ``sigma^2 = c^2 E <f> + E^2 Var(f)`` (E in GeV).

    Arguments:
        energy_gev: incident energy in GeV.
        particle: ``"e+"``, ``"e-"`` or ``"gamma"``.
        calo: the sampling calorimeter.
        order: quadrature nodes per dimension.

    Returns:
        ``(mean, variance)`` of the contained fraction.

    Raises:
        ValueError: unknown particle.
    """
    t_max, alpha, t0, w = _quadrature(energy_gev, particle, calo, order)
    beta = (alpha - 1.0) / t_max
    depth = np.clip(calo.layer_boundaries_x0[-1] - t0, 0.0, None)
    contained = gammainc(alpha, beta * depth)
    mean = float(w @ contained)
    return mean, float(w @ (contained - mean) ** 2)


def average_layer_fractions(
    energy_gev: float, calo: SamplingCalorimeter = CALOGAN_CALORIMETER
) -> np.ndarray:
    """Fractions per sampling layer of the separately fitted GFlash *average* profile.

    Parameters from
    :func:`surrogate.simulators.gflash_params.average_longitudinal_parameters`.

    An independent fit in hep-ex/0001020; it agrees with :func:`expected_layer_fractions` for
    electrons to a few per cent of the peak layer (the two are separate fits to the same showers).

    Arguments:
        energy_gev: incident energy in GeV.
        calo: the sampling calorimeter.

    Returns:
        float64 array ``(n_layers,)``.
    """
    t_max, alpha = average_longitudinal_parameters(float(energy_gev), calo)
    return gamma_layer_fractions(t_max, alpha, 0.0, calo)


def radial_rectangle_fraction(radius, half_x, half_y, *, order: int = 64) -> np.ndarray:
    """Fraction of one radial component ``f(r) = 2 r R^2 / (r^2 + R^2)^2`` inside a centred rectangle.

    The component's transverse density is ``R^2 / (pi (x^2 + y^2 + R^2)^2)``; the integral over
    ``|y| < half_y`` is analytic, ``R^2/pi [b/(c^2 (b^2 + c^2)) + atan(b/c)/c^3]`` with
    ``c^2 = x^2 + R^2`` and ``b = half_y``, and the one over ``|x| < half_x`` uses Gauss–Legendre
    quadrature in ``theta = atan(x/R)`` (accurate for any ratio of R to the rectangle).

    Arguments:
        radius: R of the component, any length unit, shape ``(*)``, > 0.
        half_x: half-width of the rectangle in x, same unit.
        half_y: half-width of the rectangle in y, same unit.
        order: quadrature nodes.

    Returns:
        float64 array ``(*)`` in [0, 1].

    References:
        hep-ex/0001020, eq. for the radial profile (appendix A.1).

    Example:
        >>> round(float(radial_rectangle_fraction(1.0, 1e6, 1e6)), 6)
        1.0
    """
    r = np.asarray(radius, dtype=np.float64)[..., None]
    nodes, weights = leggauss(order)
    theta_max = np.arctan(half_x / r)
    theta = theta_max * nodes
    x = r * np.tan(theta)
    dx_dtheta = r / np.cos(theta) ** 2
    c2 = x**2 + r**2
    c = np.sqrt(c2)
    b = float(half_y)
    inner = b / (c2 * (b * b + c2)) + np.arctan(b / c) / (c2 * c)
    return (r[..., 0] ** 2 / np.pi) * (theta_max * weights * dx_dtheta * inner).sum(axis=-1)

r"""Morphologies beyond smooth profiles: star-forming knots and extra intrinsic shear, with GalSim.

The parametric COSMOS fits (:mod:`surrogate.simulators.cosmos`: 36 of the 100 example galaxies
as a de Vaucouleurs bulge plus an exponential disk, 64 as one Sérsic profile) are smooth; real
galaxies are not. :func:`add_knots` moves a share of a galaxy's disk light into star-forming
knots, as GalSim's :class:`galsim.RandomKnots` models them (after Sheldon & Huff 2017, whose
point sources it draws by photon shooting from a given profile): ``n`` knots placed at random
following the disk's own light distribution, each a small Gaussian of ``sigma`` arcsec (an
HII-region complex of about a kiloparsec at redshift 0.5-1 spans 0.1-0.15 arcsec FWHM; Elmegreen
et al. 2007). The knots trace the disk, so the *expected* light profile, its flux and its
half-light radius are those of the smooth galaxy; a single realisation scatters about them.

Which galaxies have a disk (:func:`split_disk`): the exponential component of a bulge + disk fit,
or a single Sérsic profile of index ``n <= DISK_MAX_SERSIC_N`` (2, the usual dividing line
between disk- and spheroid-dominated galaxies; Blanton et al. 2003). Spheroids get no knots.

:func:`shear_galaxy` applies an extra intrinsic shear of random direction, which preserves the
isophotes' area and so the circularised half-light radius.

References:
    Rowe et al. (2015), arXiv:1407.7676 (GalSim); ``galsim.RandomKnots``.
    Sheldon & Huff (2017), arXiv:1702.02601, section 6 (random knots of star formation in
    simulated galaxies).
    Elmegreen, Elmegreen, Ravindranath & Coe (2007), ApJ 658, 763, arXiv:astro-ph/0701121
    (sizes of star-forming clumps in high-redshift disks).
    Blanton et al. (2003), ApJ 594, 186, arXiv:astro-ph/0209479 (Sérsic n ~ 2 separates disks
    from spheroids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from surrogate.checks import check_float
from surrogate.simulators.cosmos import _galsim

__all__ = ["DISK_MAX_SERSIC_N", "VARIATION_OPTIONS", "add_knots", "check_variations", "shear_galaxy", "split_disk"]

DISK_MAX_SERSIC_N = 2.0
"""A single-Sérsic galaxy with an index at most this counts as a disk (may get knots)."""


def _profile_kind(obj) -> tuple[str, float]:
    """``("exponential" | "sersic" | "devaucouleurs" | "other", n)`` of a (transformed) profile."""
    galsim = _galsim()
    while isinstance(obj, galsim.Transformation):
        obj = obj.original
    if isinstance(obj, galsim.Exponential):
        return "exponential", 1.0
    if isinstance(obj, galsim.DeVaucouleurs):
        return "devaucouleurs", 4.0
    if isinstance(obj, galsim.Sersic):
        return "sersic", float(obj.n)
    return "other", math.nan


def split_disk(galaxy) -> tuple[list, object] | None:
    """The disk of a parametric COSMOS galaxy and the rest of it.

    Arguments:
        galaxy: a ``galsim.GSObject`` as :class:`~surrogate.simulators.cosmos.CosmosParametricCatalog`
            holds them (a bulge + disk ``galsim.Sum`` or one transformed Sérsic profile).

    Returns:
        ``(rest, disk)``: the list of the other components and the disk component (a
        ``galsim.GSObject``), or ``None`` for a galaxy without a disk (a Sérsic profile with
        ``n > DISK_MAX_SERSIC_N``, or a profile of another kind).
    """
    galsim = _galsim()
    if isinstance(galaxy, galsim.Sum):
        parts = list(galaxy.obj_list)
        disks = [k for k, part in enumerate(parts) if _profile_kind(part)[0] == "exponential"]
        if len(disks) != 1:
            return None
        disk = parts.pop(disks[0])
        return parts, disk
    kind, n = _profile_kind(galaxy)
    if kind == "exponential" or (kind == "sersic" and n <= DISK_MAX_SERSIC_N):
        return [], galaxy
    return None


def add_knots(galaxy, *, n_knots: int, flux_fraction: float, sigma: float, seed: int):
    """Moves ``flux_fraction`` of the disk's light into ``n_knots`` Gaussian knots that trace the disk.

    Arguments:
        galaxy: a parametric galaxy (see :func:`split_disk`); returned unchanged when it has no disk.
        n_knots: number of knots (>= 1).
        flux_fraction: share of the disk's flux moved into the knots, in [0, 1].
        sigma: Gaussian sigma of each knot, arcsec (> 0).
        seed: seed of GalSim's deviate that places the knots (same seed, same knots).

    Returns:
        ``(smooth, knots)``: ``smooth = rest + (1 - f) disk`` and the knots (``None`` when the
        galaxy has no disk or ``flux_fraction`` is 0: then ``smooth`` is ``galaxy``), two
        ``galsim.GSObject`` whose sum has the galaxy's flux. They are kept apart so that the
        smooth part can be drawn in real space (``method="no_pixel"``), which a sum with
        knots (drawn by FFT) would prevent for de Vaucouleurs bulges.

    Raises:
        ValueError: ``n_knots < 1``, ``flux_fraction`` outside [0, 1] or ``sigma <= 0``.
    """
    if int(n_knots) < 1:
        raise ValueError(f"n_knots must be >= 1, got {n_knots!r}")
    if not 0.0 <= flux_fraction <= 1.0:
        raise ValueError(f"flux_fraction must be in [0, 1], got {flux_fraction!r}")
    if not sigma > 0:
        raise ValueError(f"knot sigma must be > 0 arcsec, got {sigma!r}")
    split = split_disk(galaxy)
    if split is None or flux_fraction == 0.0:
        return galaxy, None
    galsim = _galsim()
    rest, disk = split
    knots = galsim.RandomKnots(int(n_knots), profile=disk.withScaledFlux(flux_fraction),
                               rng=galsim.BaseDeviate(int(seed)))
    smooth = galsim.Add([*rest, disk.withScaledFlux(1.0 - flux_fraction)])
    # each point as its own shifted Gaussian: drawn in real space, 4-8x faster than
    # Convolve(knots, Gaussian), whose Fourier image GalSim sums point by point on the k grid
    each = knots.flux / knots.npoints
    return smooth, galsim.Add([galsim.Gaussian(sigma=sigma, flux=each).shift(x, y) for x, y in knots.points])


def shear_galaxy(galaxy, *, g: float, angle: float):
    """``galaxy`` sheared by reduced shear ``|g| = g`` along position angle ``angle`` (radians).

    Raises:
        ValueError: ``g`` outside [0, 1).
    """
    if not 0.0 <= g < 1.0:
        raise ValueError(f"shear |g| must be in [0, 1), got {g!r}")
    if g == 0.0:
        return galaxy
    galsim = _galsim()
    return galaxy.shear(g=g, beta=angle * galsim.radians)


VARIATION_OPTIONS = ("magnitude_jitter", "shear_max", "knot_fraction", "knot_number_range", "knot_flux_range",
                     "knot_sigma")
"""Options of :func:`~surrogate.simulators.galaxies.simulate_galaxies` checked by :func:`check_variations`."""


def _pair(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}") from None
    if not low <= a <= b <= high:
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return a, b


def check_variations(*, magnitude_jitter: float | Sequence[float], shear_max: float, knot_fraction: float,
                     knot_number_range: Sequence[int], knot_flux_range: Sequence[float],
                     knot_sigma: float) -> dict[str, Any]:
    """The checked variation options, as the simulator's drawer takes them.

    Arguments:
        magnitude_jitter: a number ``a`` >= 0 (offsets ``U(-a, a)`` mag) or a pair ``(lo, hi)``
            within [-5, 5] mag (offsets ``U(lo, hi)``; positive is fainter).
        shear_max: largest extra shear ``|g|``, in [0, 1).
        knot_fraction: probability of knots for a galaxy with a disk, in [0, 1].
        knot_number_range: (min, max) integers >= 1.
        knot_flux_range: (min, max) share of the disk's flux, within [0, 1].
        knot_sigma: knot size, arcsec, > 0.

    Returns:
        The same names, ``magnitude_jitter`` as the pair ``(lo, hi)``, ranges as tuples.

    Raises:
        ValueError: a value out of range, named with the value.
    """
    if isinstance(magnitude_jitter, (int, float)):
        a = check_float("magnitude_jitter", magnitude_jitter, minimum=0, maximum=5, unit="mag")
        offsets = (-a, a)
    else:
        offsets = _pair("magnitude_jitter (mag)", magnitude_jitter, -5.0, 5.0)
    numbers = _pair("knot_number_range", knot_number_range, 1, math.inf)
    if any(v != int(v) for v in numbers):
        raise ValueError(f"knot_number_range must be a pair of integers >= 1, got {knot_number_range!r}")
    return {
        "magnitude_jitter": offsets,
        "shear_max": check_float("shear_max", shear_max, minimum=0, maximum=1, exclusive_maximum=True),
        "knot_fraction": check_float("knot_fraction", knot_fraction, minimum=0, maximum=1),
        "knot_number_range": (int(numbers[0]), int(numbers[1])),
        "knot_flux_range": _pair("knot_flux_range (share of the disk's flux)", knot_flux_range, 0.0, 1.0),
        "knot_sigma": check_float("knot_sigma", knot_sigma, minimum=0, exclusive_minimum=True, unit="arcsec"),
    }

r"""GalSim galaxy stamps drawn from the parametric fits of the COSMOS example catalogue.

Each stamp is made from one of the catalogue's galaxies (:mod:`surrogate.simulators.cosmos`:
Sérsic or bulge + disk fits to HST/ACS F814W images, Mandelbaum et al. 2012), varied so that tens
of thousands of distinct stamps can be drawn from 100 parents:

- a uniformly random rotation, a mirror flip with probability 1/2,
- a size jitter: dilation by ``exp(U(-a, a))`` with ``a = log(1 + size_jitter)`` (flux kept),
- a flux jitter: ``Δm ~ U(-magnitude_jitter, magnitude_jitter)`` mag (or ``U(lo, hi)`` for a pair
  ``magnitude_jitter = (lo, hi)``, to reach fainter galaxies than the catalogue's), flux times
  ``10**(-0.4 Δm)``,
- optionally (:mod:`surrogate.simulators.galaxy_variations`) an extra intrinsic shear
  ``|g| ~ U(0, shear_max)`` of random direction, and, with probability ``knot_fraction`` for a
  galaxy with a disk, star-forming knots: ``n ~ U{knot_number_range}`` Gaussian knots of
  ``knot_sigma`` arcsec holding a share ``~ U(knot_flux_range)`` of the disk's light, placed by
  ``galsim.RandomKnots`` along the disk's light.

The galaxies stay centred on the stamp (the geometric centre, a pixel corner for even stamps, as
GalSim's ``drawImage`` does by default).

Each galaxy is observed through its own PSF: with probability ``hst_psf_fraction`` one of the
catalogue's 100 real HST/ACS PSF images (chosen at random, independent of the galaxy), else a
ground-based PSF of kind ``"moffat"`` (``beta ~ U(moffat_beta_range)``), ``"kolmogorov"`` or
``"gaussian"``, of FWHM ``~ U(fwhm_range)`` arcsec and a small random shear
``|g| ~ U(0, psf_shear_max)``. What is stored per stamp (see :mod:`surrogate.data.galaxy`):

- ``profile``: the PSF-free noiseless light profile integrated over each pixel (the galaxy
  convolved with the pixel response, computed by sampling the profile on an ``oversampling``
  times finer grid and summing blocks; this avoids the enormous FFTs GalSim would need for the
  untruncated de Vaucouleurs bulges), counts per pixel;
- ``observed``: GalSim's own rendering of galaxy ⊗ PSF ⊗ pixel (``drawImage``, FFT), plus
  Gaussian pixel noise of variance ``noise_variance``, counts per pixel;
- ``psf``: the PSF sampled at the pixel centres (``method="no_pixel"``: the pixel response is
  already in ``profile``) on an odd ``psf_size`` stamp centred on its middle pixel, normalised
  to unit sum, so ``fft_convolve(profile, psf)`` (:mod:`surrogate.nn.psf`) approximates the
  noiseless ``observed`` image up to pixel-sampling and PSF-truncation errors;
- ``magnitude``: the catalogue's F814W ``MAG_AUTO`` of the parent galaxy plus ``Δm`` (AB mag);
- ``half_light_radius``: the circularised half-light radius of the PSF-free profile in arcsec
  (the catalogue's, see :mod:`surrogate.simulators.cosmos`, times the dilation; with knots, that
  of the expected profile, which the knots trace).

Noise: by default each stamp gets its own noise level from a signal-to-noise ratio drawn from
``U(snr_range)``, with GalSim's definition ``SNR = sqrt(sum I_i^2) / sigma`` over the noiseless
observed image ``I`` (the optimal, matched-filter SNR; GalSim's ``addNoiseSNR``). Give
``noise_sigma`` instead for a fixed sky noise in counts per pixel (bright galaxies then have a
very high SNR).

Fluxes are those of the catalogue (counts of a 1 s HST/ACS exposure).

GalSim spends most of its time in FFTs that it parallelises with OpenMP; on a machine with few
shared cores run with ``OMP_NUM_THREADS=1`` in the environment (about 12x faster per stamp on a
2-core machine, measured: 1.6 ms instead of 20 ms per 64x64 stamp). A 32x32 stamp at 0.15
arcsec/pixel costs about 2-5 ms with a ground-based PSF and about 10 ms with an HST PSF (whose
interpolated image reaches high spatial frequencies; they are cut at the pixel response's first
zero, see ``_Drawer``), single-threaded on an idle core.

References:
    Rowe et al. (2015), "GalSim: The modular galaxy image simulation toolkit", arXiv:1407.7676.
    Mandelbaum et al. (2012), "Precision simulation of ground-based lensing data using
    observations from space", arXiv:1107.4629 (the COSMOS catalogue and its parametric fits).
    Lanusse et al. (2021), arXiv:2008.03833 (the same catalogue as training data of a VAE).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from surrogate.checks import check_float, check_int
from surrogate.data.galaxy import GalaxyWriter
from surrogate.simulators.cosmos import CosmosParametricCatalog, _galsim, load_cosmos_catalog
from surrogate.simulators.galaxy_variations import VARIATION_OPTIONS, add_knots, check_variations, shear_galaxy

__all__ = [
    "GALAXY_PSF_KINDS",
    "galsim_omp_threads",
    "simulate_galaxies",
    "simulate_galaxies_from_recipe",
    "simulate_galaxies_to_file",
]

GALAXY_PSF_KINDS = ("moffat", "kolmogorov", "gaussian")
"""Ground-based PSF profiles the simulator can draw (plus the catalogue's HST PSFs)."""

_CHUNK = 256  # stamps per batch handed to the writer


@contextmanager
def galsim_omp_threads(n: int | None) -> Iterator[None]:
    """Context manager: GalSim's OpenMP threads set to ``n`` inside, restored on exit (``None``: unchanged)."""
    if n is None:
        yield
        return
    galsim = _galsim()
    before = galsim.get_omp_threads()
    galsim.set_omp_threads(int(n))
    try:
        yield
    finally:
        galsim.set_omp_threads(before)


def _check_range(name: str, value: Sequence[float], *, low: float = 0.0, strict: bool = True) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}") from None
    ok = (a > low if strict else a >= low) and a <= b and math.isfinite(b)
    if not ok:
        raise ValueError(f"{name} must satisfy {low} {'<' if strict else '<='} min <= max < inf, got {value!r}")
    return a, b


def _ground_psf(galsim, kind: str, fwhm: float, beta: float, g: float, angle: float):
    if kind == "moffat":
        psf = galsim.Moffat(beta=beta, fwhm=fwhm)
    elif kind == "kolmogorov":
        psf = galsim.Kolmogorov(fwhm=fwhm)
    else:
        psf = galsim.Gaussian(fwhm=fwhm)
    if g > 0:
        psf = psf.shear(g=g, beta=angle * galsim.radians)
    return psf


class _Drawer:
    """Draws the stamps; the parameters are validated once by :func:`simulate_galaxies`."""

    def __init__(self, catalog: CosmosParametricCatalog, *, stamp_size: int, pixel_scale: float, psf_size: int,
                 oversampling: int, hst_psf_fraction: float, psf_kinds: tuple[str, ...],
                 fwhm_range: tuple[float, float], moffat_beta_range: tuple[float, float], psf_shear_max: float,
                 size_jitter: float, magnitude_jitter: tuple[float, float], snr_range: tuple[float, float] | None,
                 noise_sigma: float | None, indices: np.ndarray, shear_max: float, knot_fraction: float,
                 knot_number_range: tuple[int, int], knot_flux_range: tuple[float, float], knot_sigma: float):
        self.galsim = _galsim()
        self.catalog = catalog
        self.stamp_size, self.pixel_scale, self.psf_size = stamp_size, pixel_scale, psf_size
        self.oversampling = oversampling
        self.hst_psf_fraction, self.psf_kinds = hst_psf_fraction, psf_kinds
        self.fwhm_range, self.beta_range, self.psf_shear_max = fwhm_range, moffat_beta_range, psf_shear_max
        self.log_size = math.log1p(size_jitter)
        self.magnitude_jitter = magnitude_jitter
        self.shear_max, self.knot_fraction, self.knot_sigma = shear_max, knot_fraction, knot_sigma
        self.knot_number_range, self.knot_flux_range = knot_number_range, knot_flux_range
        self.snr_range, self.noise_sigma = snr_range, noise_sigma
        self.indices = indices
        # GalSim would evaluate the HST PSF's Fourier transform up to pi / 0.03 arcsec^-1 (its
        # native sampling); beyond 2 pi / pixel_scale the pixel response's first zero makes
        # the rest negligible: measured at 0.15 arcsec/pixel, 8x faster and a change of the
        # noiseless stamps below 1e-3 of the noise variance at SNR 100 (90th percentile 1e-4).
        max_k = 2.0 * math.pi / pixel_scale
        self.hst_psfs = tuple(self.galsim.InterpolatedImage(image, flux=1.0, _force_maxk=max_k)
                              for image in catalog.hst_psf_images)

    def objects(self, rng: np.random.Generator) -> tuple[list, Any, dict[str, float]]:
        """Draws one stamp's random settings: ``(parts, psf, values)`` with GalSim objects (the
        galaxy as its smooth part and, with knots, the knots: their sum is the galaxy) and
        ``values`` = magnitude, half-light radius (arcsec) and SNR. All random numbers of a
        stamp but its noise are drawn here, in a fixed order."""
        galsim = self.galsim
        index = int(self.indices[rng.integers(len(self.indices))])
        angle = rng.uniform(0.0, 360.0)
        flip = rng.random() < 0.5
        dilation = math.exp(rng.uniform(-self.log_size, self.log_size))
        dmag = rng.uniform(*self.magnitude_jitter)
        use_hst = rng.random() < self.hst_psf_fraction
        hst_index = int(rng.integers(len(self.hst_psfs)))
        kind = self.psf_kinds[int(rng.integers(len(self.psf_kinds)))] if self.psf_kinds else "moffat"
        fwhm = rng.uniform(*self.fwhm_range)
        beta = rng.uniform(*self.beta_range)
        psf_g = rng.uniform(0.0, self.psf_shear_max)
        psf_angle = rng.uniform(0.0, math.pi)
        snr = rng.uniform(*self.snr_range) if self.snr_range is not None else math.nan

        parts = [self.catalog.galaxies[index]]  # [smooth, knots] with knots
        # the variations draw their numbers only when switched on: older recipes keep their stamps
        if self.knot_fraction > 0 and rng.random() < self.knot_fraction:
            n_knots = int(rng.integers(self.knot_number_range[0], self.knot_number_range[1] + 1))
            share = rng.uniform(*self.knot_flux_range)
            smooth, knots = add_knots(parts[0], n_knots=n_knots, flux_fraction=share, sigma=self.knot_sigma,
                                      seed=int(rng.integers(1, 2**31)))
            parts = [smooth] if knots is None else [smooth, knots]
        if self.shear_max > 0:
            shear, shear_angle = rng.uniform(0.0, self.shear_max), rng.uniform(0.0, math.pi)
            parts = [shear_galaxy(part, g=shear, angle=shear_angle) for part in parts]
        if flip:
            parts = [part.transform(-1.0, 0.0, 0.0, 1.0) for part in parts]
        parts = [part.rotate(angle * galsim.degrees).dilate(dilation).withScaledFlux(10.0 ** (-0.4 * dmag))
                 for part in parts]
        psf = self.hst_psfs[hst_index] if use_hst else _ground_psf(galsim, kind, fwhm, beta, psf_g, psf_angle)
        values = {"magnitude": self.catalog.magnitude[index] + dmag,
                  "half_light_radius": self.catalog.half_light_radius[index] * dilation, "snr": snr}
        return parts, psf, values

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Draws ``n`` stamps (the arrays of :func:`simulate_galaxies`)."""
        galsim = self.galsim
        N, P, s, k = self.stamp_size, self.psf_size, self.pixel_scale, self.oversampling
        out = {
            "observed": np.empty((n, N, N), np.float32),
            "psf": np.empty((n, P, P), np.float32),
            "noise_variance": np.empty(n, np.float32),
            "profile": np.empty((n, N, N), np.float32),
            "magnitude": np.empty(n, np.float32),
            "half_light_radius": np.empty(n, np.float32),
        }
        for j in range(n):
            parts, psf, values = self.objects(rng)
            fine = sum(part.drawImage(nx=N * k, ny=N * k, scale=s / k, method="no_pixel").array for part in parts)
            profile = fine.reshape(N, k, N, k).sum(axis=(1, 3))
            galaxy = parts[0] if len(parts) == 1 else galsim.Add(parts)
            clean = galsim.Convolve(galaxy, psf).drawImage(nx=N, ny=N, scale=s).array
            psf_image = psf.drawImage(nx=P, ny=P, scale=s, method="no_pixel").array
            psf_image = psf_image / psf_image.sum()
            sigma = self.noise_sigma if self.noise_sigma is not None else math.sqrt(float((clean**2).sum())) / values["snr"]
            noise = rng.standard_normal((N, N)) * sigma

            out["observed"][j] = clean + noise
            out["psf"][j] = np.maximum(psf_image, 0.0)
            out["noise_variance"][j] = sigma**2
            out["profile"][j] = np.maximum(profile, 0.0)
            out["magnitude"][j] = values["magnitude"]
            out["half_light_radius"][j] = values["half_light_radius"]
        return out


def _make_drawer(catalog: CosmosParametricCatalog | None, catalog_dir, **kw) -> _Drawer:
    stamp_size = check_int("stamp_size", kw["stamp_size"], minimum=8)
    psf_size = check_int("psf_size", kw["psf_size"], minimum=3)
    if psf_size % 2 == 0:
        raise ValueError(f"psf_size must be an odd integer >= 3 (pixels; the PSF is centred on the middle pixel), got {psf_size!r}")
    if psf_size > stamp_size:
        raise ValueError(f"psf_size ({psf_size}) must be <= stamp_size ({stamp_size})")
    pixel_scale = check_float("pixel_scale", kw["pixel_scale"], minimum=0, maximum=10, exclusive_minimum=True,
                              exclusive_maximum=True, unit="arcsec/pixel")
    oversampling = check_int("oversampling", kw["oversampling"], minimum=1)
    fraction = check_float("hst_psf_fraction", kw["hst_psf_fraction"], minimum=0, maximum=1)
    kinds = tuple(kw["psf_kinds"])
    unknown = [x for x in kinds if x not in GALAXY_PSF_KINDS]
    if unknown or (not kinds and fraction < 1.0):
        raise ValueError(f"psf_kinds must be a non-empty list of {GALAXY_PSF_KINDS}, got {list(kinds)!r}")
    fwhm = _check_range("fwhm_range (arcsec)", kw["fwhm_range"])
    beta = _check_range("moffat_beta_range", kw["moffat_beta_range"], low=1.1)
    psf_shear_max = check_float("psf_shear_max", kw["psf_shear_max"], minimum=0, maximum=1, exclusive_maximum=True)
    size_jitter = check_float("size_jitter", kw["size_jitter"], minimum=0, maximum=10, exclusive_maximum=True)
    variations = check_variations(**{k: kw[k] for k in VARIATION_OPTIONS})
    noise_sigma = check_float("noise_sigma", kw["noise_sigma"], minimum=0, exclusive_minimum=True,
                              unit="counts per pixel", optional=True)
    snr = _check_range("snr_range", kw["snr_range"]) if noise_sigma is None else None
    catalog = catalog if catalog is not None else load_cosmos_catalog(catalog_dir)
    indices = np.arange(len(catalog)) if kw["galaxy_indices"] is None else np.asarray(kw["galaxy_indices"], dtype=int)
    if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= len(catalog):
        raise ValueError(f"galaxy_indices must be a non-empty list of catalogue indices in [0, {len(catalog)}), got {kw['galaxy_indices']!r}")
    return _Drawer(
        catalog, stamp_size=stamp_size, pixel_scale=pixel_scale, psf_size=psf_size, oversampling=oversampling,
        hst_psf_fraction=fraction, psf_kinds=kinds, fwhm_range=fwhm, moffat_beta_range=beta,
        psf_shear_max=psf_shear_max, size_jitter=size_jitter, snr_range=snr,
        noise_sigma=noise_sigma, indices=indices, **variations,
    )


_DEFAULTS: dict[str, Any] = dict(
    stamp_size=32, pixel_scale=0.15, psf_size=25, oversampling=4, hst_psf_fraction=0.25,
    psf_kinds=("moffat", "kolmogorov"), fwhm_range=(0.5, 0.9), moffat_beta_range=(2.5, 4.5), psf_shear_max=0.05,
    size_jitter=0.1, magnitude_jitter=0.25, snr_range=(20.0, 100.0), noise_sigma=None, galaxy_indices=None,
    shear_max=0.0, knot_fraction=0.0, knot_number_range=(10, 60), knot_flux_range=(0.1, 0.5), knot_sigma=0.05,
)


def _chunks(n: int, seed: int):
    """Yields ``(generator, size)`` per chunk: chunk ``c`` has its own stream (seed, c), so the
    first ``m`` stamps of a run do not depend on ``n``."""
    for c, start in enumerate(range(0, n, _CHUNK)):
        yield np.random.default_rng([int(seed), c]), min(_CHUNK, n - start)


def simulate_galaxies(
    n: int,
    *,
    catalog: CosmosParametricCatalog | None = None,
    catalog_dir: str | os.PathLike | None = None,
    stamp_size: int = 32,
    pixel_scale: float = 0.15,
    psf_size: int = 25,
    oversampling: int = 4,
    hst_psf_fraction: float = 0.25,
    psf_kinds: Sequence[str] = ("moffat", "kolmogorov"),
    fwhm_range: Sequence[float] = (0.5, 0.9),
    moffat_beta_range: Sequence[float] = (2.5, 4.5),
    psf_shear_max: float = 0.05,
    size_jitter: float = 0.1,
    magnitude_jitter: float | Sequence[float] = 0.25,
    snr_range: Sequence[float] | None = (20.0, 100.0),
    noise_sigma: float | None = None,
    galaxy_indices: Sequence[int] | None = None,
    shear_max: float = 0.0,
    knot_fraction: float = 0.0,
    knot_number_range: Sequence[int] = (10, 60),
    knot_flux_range: Sequence[float] = (0.1, 0.5),
    knot_sigma: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    omp_threads: int | None = 1,
) -> dict[str, np.ndarray]:
    """Draws ``n`` galaxy stamps in memory (see the module documentation for what they are).

    Arguments:
        n: number of stamps (>= 1).
        catalog: a loaded catalogue (saves ~1.5 s per call); else loaded from ``catalog_dir``.
        catalog_dir: folder of the COSMOS example FITS files (default :data:`~surrogate.simulators.cosmos.DEFAULT_CATALOG_DIR`).
        stamp_size: stamps are ``stamp_size x stamp_size`` pixels.
        pixel_scale: arcsec per pixel.
        psf_size: odd side of the stored PSF stamp, pixels (<= ``stamp_size``).
        oversampling: sub-pixels per pixel side for the pixel-integrated PSF-free profile.
        hst_psf_fraction: probability of observing through a catalogue HST PSF.
        psf_kinds: ground-based PSF profiles to choose from (uniformly), from :data:`GALAXY_PSF_KINDS`.
        fwhm_range: (min, max) FWHM of ground-based PSFs, arcsec.
        moffat_beta_range: (min, max) Moffat ``beta``.
        psf_shear_max: largest reduced shear ``|g|`` of a ground-based PSF.
        size_jitter: dilations are ``exp(U(-a, a))``, ``a = log(1 + size_jitter)``.
        magnitude_jitter: magnitude offsets are ``U(-magnitude_jitter, magnitude_jitter)`` mag, or
            ``U(lo, hi)`` for a pair ``(lo, hi)`` (positive: fainter).
        snr_range: (min, max) of the per-stamp signal-to-noise ratio (used when ``noise_sigma``
            is ``None``).
        noise_sigma: fixed Gaussian pixel noise, counts per pixel; overrides ``snr_range``.
        galaxy_indices: catalogue galaxies to draw from (default all 100), e.g. to hold some
            parents out.
        shear_max: extra intrinsic shear ``|g| ~ U(0, shear_max)``, random direction (0: none).
        knot_fraction: probability that a galaxy with a disk gets star-forming knots (0: none).
        knot_number_range: (min, max) number of knots, integers, uniform.
        knot_flux_range: (min, max) share of the disk's flux in the knots, uniform.
        knot_sigma: Gaussian sigma of a knot, arcsec.
        seed: seed of numpy's generator; the same arguments and seed give the same stamps, and
            the first ``m`` stamps do not depend on ``n``.
        progress: show a tqdm progress bar.
        omp_threads: GalSim's OpenMP threads during the call (restored afterwards); 1 is
            fastest on a few shared cores, ``None`` leaves GalSim's setting alone.

    Returns:
        ``{"observed": (n, S, S), "psf": (n, P, P), "noise_variance": (n,), "profile": (n, S, S),
        "magnitude": (n,), "half_light_radius": (n,)}``, float32, units as in
        :mod:`surrogate.data.galaxy` (counts per pixel, counts², AB mag, arcsec).

    Raises:
        ValueError: a parameter out of range (named, with the value).
        FileNotFoundError: the catalogue files are missing.

    Example:
        >>> stamps = simulate_galaxies(2, stamp_size=16, psf_size=9, progress=False)
        >>> stamps["observed"].shape, stamps["psf"].shape
        ((2, 16, 16), (2, 9, 9))
    """
    check_int("n", n, minimum=1)
    drawer = _make_drawer(
        catalog, catalog_dir, stamp_size=stamp_size, pixel_scale=pixel_scale, psf_size=psf_size,
        oversampling=oversampling, hst_psf_fraction=hst_psf_fraction, psf_kinds=psf_kinds, fwhm_range=fwhm_range,
        moffat_beta_range=moffat_beta_range, psf_shear_max=psf_shear_max, size_jitter=size_jitter,
        magnitude_jitter=magnitude_jitter, snr_range=snr_range, noise_sigma=noise_sigma, galaxy_indices=galaxy_indices,
        shear_max=shear_max, knot_fraction=knot_fraction, knot_number_range=knot_number_range,
        knot_flux_range=knot_flux_range, knot_sigma=knot_sigma,
    )
    from tqdm.auto import tqdm

    parts = []
    with galsim_omp_threads(omp_threads), tqdm(total=int(n), disable=not progress, desc="galsim", unit="stamp", dynamic_ncols=True) as bar:
        for rng, size in _chunks(int(n), seed):
            parts.append(drawer.draw(rng, size))
            bar.update(size)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def simulate_galaxies_to_file(
    path: str | os.PathLike,
    n: int,
    *,
    catalog: CosmosParametricCatalog | None = None,
    catalog_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    compression: str | None = "gzip",
    omp_threads: int | None = 1,
    **options: Any,
) -> Path:
    """Draws ``n`` stamps straight into an HDF5 file (atomic, streamed in chunks of 256).

    Arguments:
        path: output file (:mod:`surrogate.data.galaxy` layout); appears only when complete.
        n: number of stamps.
        catalog, catalog_dir, seed, progress, omp_threads: as in :func:`simulate_galaxies`.
        compression: ``"gzip"``, ``"lzf"`` or ``None``.
        **options: the other keyword arguments of :func:`simulate_galaxies` (``stamp_size``,
            ``pixel_scale``, ``psf_size``, ``hst_psf_fraction``, ...); stored with the seed and the
            catalogue folder in the file attribute ``simulation`` (JSON).

    Returns:
        ``Path(path)``. The stamps are identical to ``simulate_galaxies(n, seed=seed, ...)``.

    Raises:
        ValueError, FileNotFoundError: as :func:`simulate_galaxies`; an unknown option.
    """
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown simulation option(s) {unknown}; allowed: {sorted(_DEFAULTS)}")
    check_int("n", n, minimum=1)
    settings = {**_DEFAULTS, **options}
    drawer = _make_drawer(catalog, catalog_dir, **settings)
    record = {k: (list(v) if isinstance(v, (tuple, np.ndarray)) else v) for k, v in settings.items()}
    record.update(seed=int(seed), n=int(n), catalog_dir=str(drawer.catalog.directory), simulator="galsim_cosmos")
    from tqdm.auto import tqdm

    with GalaxyWriter(path, int(n), stamp_size=drawer.stamp_size, psf_size=drawer.psf_size,
                      pixel_scale=drawer.pixel_scale, compression=compression, simulation=record) as writer, \
            galsim_omp_threads(omp_threads), tqdm(total=int(n), disable=not progress, desc="galsim", unit="stamp", dynamic_ncols=True) as bar:
        for rng, size in _chunks(int(n), seed):
            writer.write(drawer.draw(rng, size))
            bar.update(size)
    return Path(path)


RECIPE_KEYS = ("simulator", "n", "seed", "output", "catalog_dir", "compression", "omp_threads", *_DEFAULTS)
"""Keys allowed in the ``[simulate]`` table of a galaxy dataset recipe."""


def simulate_galaxies_from_recipe(
    table: Mapping[str, Any],
    *,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    base_dir: str | os.PathLike | None = None,
    catalog: CosmosParametricCatalog | None = None,
) -> Path:
    """Runs the ``[simulate]`` table of a galaxy dataset recipe (``simulator = "galsim_cosmos"``).

    The table's keys (all optional except ``simulator``; defaults in brackets; see
    ``datasets/galaxies_cosmos.toml``): ``simulator`` (``"galsim_cosmos"``), ``n`` [10000],
    ``seed`` [0], ``output`` [``"data/galaxies_cosmos.h5"``, relative to the current working
    directory], ``catalog_dir`` [the repository's ``datasets/cosmos_example``; relative to
    ``base_dir`` when given], ``compression`` [``"gzip"``], ``omp_threads`` [1], and every option of
    :func:`simulate_galaxies`: ``stamp_size`` [32], ``pixel_scale`` [0.15 arcsec],
    ``psf_size`` [25], ``oversampling`` [4], ``hst_psf_fraction`` [0.25], ``psf_kinds``
    [["moffat", "kolmogorov"]], ``fwhm_range`` [[0.5, 0.9] arcsec], ``moffat_beta_range``
    [[2.5, 4.5]], ``psf_shear_max`` [0.05], ``size_jitter`` [0.1], ``magnitude_jitter``
    [0.25 mag, or a pair], ``snr_range`` [[20, 100]], ``noise_sigma`` [none: use ``snr_range``],
    ``galaxy_indices`` [all], ``shear_max`` [0], ``knot_fraction`` [0], ``knot_number_range``
    [[10, 60]], ``knot_flux_range`` [[0.1, 0.5]], ``knot_sigma`` [0.05 arcsec].

    Arguments:
        table: the parsed ``[simulate]`` table.
        output: output file overriding the table's ``output``.
        progress: show a progress bar.
        base_dir: folder against which a relative ``catalog_dir`` is resolved (the recipe's
            folder); ``None`` uses the current working directory.
        catalog: an already loaded catalogue (then ``catalog_dir`` is ignored).

    Returns:
        The path of the written HDF5 file.

    Raises:
        ValueError: unknown keys, a wrong ``simulator``, bad values (named).
    """
    unknown = sorted(set(table) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"[simulate]: unknown key(s) {unknown}; allowed: {sorted(RECIPE_KEYS)}")
    if table.get("simulator", "galsim_cosmos") != "galsim_cosmos":
        raise ValueError(f"[simulate].simulator must be 'galsim_cosmos' here, got {table.get('simulator')!r}")
    options = {k: v for k, v in table.items() if k in _DEFAULTS}
    path = Path(output if output is not None else table.get("output", "data/galaxies_cosmos.h5"))
    catalog_dir = table.get("catalog_dir")
    if catalog_dir is not None and base_dir is not None and not Path(catalog_dir).is_absolute():
        catalog_dir = Path(base_dir) / catalog_dir
    path.parent.mkdir(parents=True, exist_ok=True)
    n = table.get("n", 10000)
    seed = table.get("seed", 0)
    for name, value in (("n", n), ("seed", seed)):
        check_int(f"[simulate].{name}", value)
    return simulate_galaxies_to_file(
        path, n, catalog=catalog, catalog_dir=catalog_dir, seed=seed, progress=progress,
        compression=table.get("compression", "gzip"), omp_threads=table.get("omp_threads", 1), **options,
    )

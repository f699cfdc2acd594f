r"""GalSim's COSMOS example catalogue, ready to draw: parametric galaxies, HST PSFs, magnitudes, sizes.

GalSim ships 100 galaxies of the COSMOS catalogue (Mandelbaum et al. 2012) as five FITS files
(a source checkout has them in ``datasets/cosmos_example``). :func:`load_cosmos_catalog` turns
them into a :class:`CosmosParametricCatalog`: per galaxy its parametric fit (Sérsic or
bulge + disk fits to HST/ACS F814W images) as a GalSim object, the HST/ACS PSF image at its
position, its F814W ``MAG_AUTO`` and the circularised half-light radius of its PSF-free profile
(each Sérsic component circularised, ``sqrt(a b)``, then the radius enclosing half the light of
their sum, solved from the Sérsic enclosed-flux function). :mod:`surrogate.simulators.galaxies`
draws stamps from it.

The Sérsic indices are the catalogue's own values (GalSim builds one lookup table per index,
about 100 ms each; reusing the catalogue's 81 distinct values keeps that a one-off cost per
process). Fluxes are in the normalisation of GalSim's ``COSMOSCatalog`` parametric galaxies
(counts of a 1 s HST/ACS exposure; a 22.5 mag galaxy has about 25 counts).

GalSim is an optional dependency (``pip install 'physics-surrogate[galaxy]'``), imported when a
catalogue is loaded.

References:
    Rowe et al. (2015), "GalSim: The modular galaxy image simulation toolkit", arXiv:1407.7676.
    Mandelbaum et al. (2012), "Precision simulation of ground-based lensing data using
    observations from space", arXiv:1107.4629 (the COSMOS catalogue and its parametric fits).
    Graham & Driver (2005), "A concise reference to (projected) Sérsic R^1/n quantities",
    PASA 22, 118, arXiv:astro-ph/0503176 (enclosed light of a Sérsic profile).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_CATALOG_DIR",
    "CosmosParametricCatalog",
    "load_cosmos_catalog",
]

DEFAULT_CATALOG_DIR = Path(__file__).resolve().parents[2] / "datasets" / "cosmos_example"
"""``datasets/cosmos_example`` of a source checkout (the five FITS files of GalSim's example)."""

CATALOG_FILE = "real_galaxy_catalog_23.5_example.fits"


def _galsim():
    try:
        import galsim
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the galaxy simulator needs GalSim: pip install 'physics-surrogate[galaxy]' (or pip install galsim)"
        ) from error
    return galsim


@dataclass(frozen=True)
class CosmosParametricCatalog:
    """The parametric COSMOS galaxies and HST PSFs, ready to draw.

    Build it with :func:`load_cosmos_catalog`.

    Attributes:
        directory: folder of the FITS files.
        galaxies: one ``galsim.GSObject`` per catalogue galaxy (its parametric fit), fluxes in
            counts of a 1 s HST exposure, sizes in arcsec.
        hst_psf_images: one ``galsim.Image`` per galaxy: the HST/ACS PSF at its position (37-39
            pixels of 0.03 arcsec).
        magnitude: ``(G,)`` F814W ``MAG_AUTO`` of each galaxy, AB mag.
        half_light_radius: ``(G,)`` circularised half-light radius of each PSF-free profile,
            arcsec (see ``_half_light_radius``).
        flux: ``(G,)`` total flux of each profile, counts.
    """

    directory: Path
    galaxies: tuple
    hst_psf_images: tuple
    magnitude: np.ndarray
    half_light_radius: np.ndarray
    flux: np.ndarray

    def __len__(self) -> int:
        return len(self.galaxies)


def _sersic_components(galaxy) -> list[tuple[float, float, float]] | None:
    """``[(flux, n, circularised half-light radius in arcsec), ...]`` of a sum of transformed
    Sérsic-family profiles (Sersic, DeVaucouleurs, Exponential, Gaussian = Sérsic n = 1/2);
    ``None`` for anything else (e.g. truncated profiles)."""
    galsim = _galsim()
    if isinstance(galaxy, galsim.Sum):
        parts = [_sersic_components(obj) for obj in galaxy.obj_list]
        return None if any(p is None for p in parts) else [c for p in parts for c in p]
    if isinstance(galaxy, galsim.Transformation):
        inner = _sersic_components(galaxy.original)
        if inner is None:
            return None
        det = abs(float(np.linalg.det(galaxy.jac))) if galaxy.jac is not None else 1.0
        return [(f * galaxy.flux_ratio * det, n, r * math.sqrt(det)) for f, n, r in inner]
    if isinstance(galaxy, galsim.Sersic):
        return None if galaxy.trunc > 0 else [(galaxy.flux, galaxy.n, galaxy.half_light_radius)]
    if isinstance(galaxy, galsim.Exponential):
        return [(galaxy.flux, 1.0, galaxy.half_light_radius)]
    if isinstance(galaxy, galsim.Gaussian):
        return [(galaxy.flux, 0.5, galaxy.half_light_radius)]
    return None


def _half_light_radius(galaxy) -> float:
    r"""Circularised half-light radius of a galaxy, arcsec.

    Each Sérsic component (flux :math:`F_k`, index :math:`n_k`, half-light radius :math:`h_k`,
    sheared, rotated or dilated by a Jacobian :math:`J_k`) is replaced by its circularised
    version, of radius :math:`h_k \sqrt{|\det J_k|}` (a shear keeps the area of the isophotes),
    and the radius :math:`R` with :math:`\sum_k F_k\, P(2 n_k, b_{n_k} (R / h_k)^{1/n_k})
    = rac{1}{2} \sum_k F_k` is solved for, where :math:`P` is the regularised lower incomplete
    gamma function and :math:`P(2n, b_n) = 1/2` (Graham & Driver 2005, eqs. 2-4). For one
    component this is its own half-light radius; the circularised radius is what catalogues
    usually quote (``sqrt(a b)``).

    Raises:
        ValueError: a profile that is not a sum of untruncated Sérsic-family components.
    """
    import scipy.optimize
    import scipy.special

    parts = _sersic_components(galaxy)
    if not parts:
        raise ValueError(f"cannot compute the half-light radius of {galaxy!r}: not a sum of Sérsic profiles")
    flux = np.array([p[0] for p in parts])
    index = np.array([p[1] for p in parts])
    radius = np.array([p[2] for p in parts])
    b = scipy.special.gammaincinv(2 * index, 0.5)

    def excess(r: float) -> float:
        return float((flux * scipy.special.gammainc(2 * index, b * (r / radius) ** (1 / index))).sum() - 0.5 * flux.sum())

    return float(scipy.optimize.brentq(excess, radius.min() * 1e-3, radius.max() * 1e3, xtol=1e-10, rtol=1e-10))


def load_cosmos_catalog(directory: str | os.PathLike | None = None) -> CosmosParametricCatalog:
    """Loads GalSim's 100-galaxy COSMOS example catalogue with its parametric fits and PSFs.

    Arguments:
        directory: folder holding ``real_galaxy_catalog_23.5_example.fits`` and its companion
            files (``_fits``, ``_selection``, ``real_galaxy_PSF_images.fits``); default
            :data:`DEFAULT_CATALOG_DIR`.

    Returns:
        A :class:`CosmosParametricCatalog`.

    Raises:
        FileNotFoundError: the folder or the catalogue file is missing.
        ImportError: GalSim is not installed.
    """
    galsim = _galsim()
    folder = Path(directory) if directory is not None else DEFAULT_CATALOG_DIR
    if not (folder / CATALOG_FILE).is_file():
        raise FileNotFoundError(
            f"COSMOS example catalogue not found: expected {folder / CATALOG_FILE} (with its _fits, _selection "
            "and real_galaxy_PSF_images.fits files; a source checkout has them in datasets/cosmos_example)"
        )
    catalog = galsim.COSMOSCatalog(CATALOG_FILE, dir=str(folder), use_real=False, exclusion_level="none")
    real = galsim.RealGalaxyCatalog(CATALOG_FILE, dir=str(folder))
    params = catalog.param_cat
    galaxies = tuple(catalog.makeGalaxy(i, gal_type="parametric") for i in range(catalog.nobjects))
    psfs = tuple(real.getPSFImage(i) for i in range(catalog.nobjects))
    hlr = np.array([_half_light_radius(g) for g in galaxies])
    return CosmosParametricCatalog(
        directory=folder,
        galaxies=galaxies,
        hst_psf_images=psfs,
        magnitude=np.asarray(params["mag_auto"], dtype=float),
        half_light_radius=hlr,
        flux=np.array([g.flux for g in galaxies]),
    )

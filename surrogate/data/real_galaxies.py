r"""Real galaxy stamps at their own pixel scale, with their PSF and noise, from FITS files.

A :class:`RealStamp` is one observed galaxy as an instrument delivers it: the image (any size,
any pixel scale), the PSF image at the same or another pixel scale (any size, any sum), and the
noise as a GalSim noise object (``galsim.BaseCorrelatedNoise``: white or correlated). Two readers
make them:

- :func:`read_real_galaxy_catalog`: a GalSim ``RealGalaxyCatalog`` (the layout of the COSMOS
  and AEGIS HST samples: a FITS table with columns ``GAL_FILENAME``, ``GAL_HDU``,
  ``PSF_FILENAME``, ``PSF_HDU``, ``PIXEL_SCALE``, ``NOISE_VARIANCE``, ``NOISE_FILENAME``, and
  ``MAG`` / ``BAND`` when present), read with ``galsim.RealGalaxyCatalog``.
- :func:`read_fits_stamps`: plain FITS images, one stamp per image HDU (or a 3-D cube), with a
  PSF file, a pixel scale, a noise variance and optionally a noise correlation function image.

:func:`read_real_stamps` takes either (what ``surrogate fit`` reads).

**Noise correlation images.** A correlation function image holds the covariance of pixel
pairs against their offset, zero lag at the middle pixel, as GalSim's
``BaseCorrelatedNoise.from_file`` expects (odd size, 180-degree symmetric, maximum at the
centre); it is scaled to the given variance. GalSim's ``RealGalaxyCatalog.getNoise`` (2.8)
builds the noise from the catalogue's file without these checks, and the AEGIS F606W file
``acs_V_unrot_sci_cf.fits`` is 50 x 50 with zero lag at pixel (25, 25) (0-based): interpolated
about the image's true centre, half a pixel away, its noise comes out with 28 % more variance
than the catalogue's and a neighbour correlation of 0.61 instead of the file's 0.48 (measured
on 1024 x 1024 realisations; the blank borders of the five AEGIS stamps show 0.43-0.54).
:func:`correlated_noise` therefore drops the first row and column of an even-sized image whose
remaining ``(n-1) x (n-1)`` part is symmetric about its centre (the lags whose partners lie
outside the file), then builds the noise as ``from_file`` does (bilinear interpolation of the
correlation function).

Units: images in counts per pixel (any flux unit, as long as the model's prior is given
magnitudes in the same system; see :mod:`surrogate.pipelines.fit_stamps`), pixel scales in
arcsec/pixel, variances in counts².

References:
    Rowe et al. (2015), "GalSim: The modular galaxy image simulation toolkit", arXiv:1407.7676
    (RealGalaxyCatalog, CorrelatedNoise).
    Mandelbaum et al. (2012), arXiv:1107.4629 (the HST real-galaxy catalogues and their
    correlated noise).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surrogate.checks import check_float

__all__ = ["RealStamp", "correlated_noise", "is_real_galaxy_catalog", "read_fits_stamps", "read_real_galaxy_catalog",
           "read_real_stamps"]

CATALOG_COLUMNS = ("GAL_FILENAME", "GAL_HDU", "PSF_FILENAME", "PSF_HDU", "PIXEL_SCALE", "NOISE_VARIANCE")
"""Columns that make a FITS table a GalSim RealGalaxyCatalog."""


def _galsim():
    try:
        import galsim
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("real galaxy stamps need GalSim: pip install 'physics-surrogate[galaxy]'") from error
    return galsim


@dataclass(frozen=True)
class RealStamp:
    """One observed galaxy at its own pixel scale.

    Attributes:
        image: ``(H, W)`` float64 stamp, counts per pixel (axis -2 = y, as ``galsim.Image.array``).
        psf: ``(h, w)`` float64 PSF image (any sum; normalised when fitted), sampled at
            ``psf_pixel_scale``, centred on the image's true centre (GalSim's convention).
        pixel_scale: arcsec/pixel of ``image``.
        psf_pixel_scale: arcsec/pixel of ``psf``.
        noise: a ``galsim.BaseCorrelatedNoise`` describing the noise of ``image`` (white noise is
            ``galsim.UncorrelatedNoise``), in counts² at ``pixel_scale``.
        name: how messages and outputs name the stamp (e.g. ``"AEGIS_F606w_catalog.fits[1]"``).
        magnitude: the catalogue's magnitude, AB mag, or ``None``.
        band: the catalogue's band (e.g. ``"F606W"``), or ``None``.
    """

    image: np.ndarray
    psf: np.ndarray
    pixel_scale: float
    psf_pixel_scale: float
    noise: Any
    name: str
    magnitude: float | None = None
    band: str | None = None

    @property
    def noise_variance(self) -> float:
        """Pixel variance of the noise at :attr:`pixel_scale`, counts²."""
        return float(self.noise.getVariance())


def correlated_noise(correlation: np.ndarray, variance: float, pixel_scale: float, *, where: str = "noise"):
    """A ``galsim.BaseCorrelatedNoise`` from a correlation function image, scaled to ``variance``.

    Arguments:
        correlation: ``(n, n)`` covariance against pixel offset, zero lag at the middle pixel
            (odd ``n``; an even ``n`` is accepted when dropping its first row and column leaves
            an image symmetric about its centre, see the module documentation).
        variance: pixel variance of the noise, counts² (> 0).
        pixel_scale: arcsec/pixel of the correlation image (the stamp's).
        where: how the error names the image (a file name).

    Returns:
        The noise, as ``galsim.BaseCorrelatedNoise.from_file`` builds it (bilinear interpolation).

    Raises:
        ValueError: not square, not symmetric, or its maximum not at the centre; a bad variance
            or pixel scale.
    """
    galsim = _galsim()
    variance = check_float("noise variance", variance, minimum=0.0, exclusive_minimum=True, unit="counts²", where=where)
    pixel_scale = check_float("pixel_scale", pixel_scale, minimum=0.0, exclusive_minimum=True, unit="arcsec/pixel",
                              where=where)
    cf = np.asarray(correlation, dtype=np.float64)
    if cf.ndim != 2 or cf.shape[0] != cf.shape[1] or cf.shape[0] < 1:
        raise ValueError(f"{where}: a noise correlation image must be square, got shape {cf.shape}")
    if cf.shape[0] % 2 == 0:
        cf = cf[1:, 1:]
    n = cf.shape[0]
    if n < 1 or np.max(np.abs(cf - cf[::-1, ::-1])) > 1e-10 * np.max(np.abs(cf)):
        raise ValueError(f"{where}: the noise correlation image is not symmetric about its middle pixel "
                         f"(zero lag at the centre of an odd-sized image, as galsim.BaseCorrelatedNoise.from_file)")
    if not cf[n // 2, n // 2] > 0 or np.max(np.abs(cf)) > cf[n // 2, n // 2] * (1 + 1e-12):
        raise ValueError(f"{where}: the noise correlation image must have its maximum, > 0, at the zero lag (centre)")
    image = galsim.Image(np.ascontiguousarray(cf), scale=pixel_scale)
    profile = galsim.InterpolatedImage(image, normalization="sb", calculate_stepk=False, calculate_maxk=False,
                                       x_interpolant="linear")
    return galsim.BaseCorrelatedNoise(None, profile, galsim.PixelScale(pixel_scale)).withVariance(variance)


def is_real_galaxy_catalog(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a FITS file whose first extension is a RealGalaxyCatalog table."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdus:
            return len(hdus) > 1 and all(c in hdus[1].columns.names for c in CATALOG_COLUMNS)
    except (OSError, AttributeError, TypeError, ValueError):
        return False


def read_real_galaxy_catalog(path: str | os.PathLike, *, indices: Sequence[int] | None = None) -> list[RealStamp]:
    """Reads stamps of a GalSim ``RealGalaxyCatalog`` (its files in the catalogue's folder).

    Arguments:
        path: the catalogue's FITS table (e.g. ``datasets/aegis_f606w/AEGIS_F606w_catalog.fits``).
        indices: rows to read (default all).

    Returns:
        One :class:`RealStamp` per row: ``getGalImage(i)``, ``getPSFImage(i)`` (at the
        catalogue's ``PIXEL_SCALE``), the noise from ``NOISE_FILENAME`` scaled to
        ``NOISE_VARIANCE`` (:func:`correlated_noise`; white when the catalogue has no noise
        file), ``MAG`` and ``BAND`` when the table has them.

    Raises:
        FileNotFoundError: the catalogue or one of its files is missing.
        ValueError: not a RealGalaxyCatalog; an index out of range (named).
    """
    from astropy.io import fits

    galsim = _galsim()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such RealGalaxyCatalog file")
    if not is_real_galaxy_catalog(path):
        raise ValueError(f"{path}: not a GalSim RealGalaxyCatalog (a FITS table with columns {list(CATALOG_COLUMNS)})")
    catalog = galsim.RealGalaxyCatalog(path.name, dir=str(path.parent))
    n = catalog.nobjects
    rows = list(range(n)) if indices is None else [int(i) for i in indices]
    bad = [i for i in rows if not 0 <= i < n]
    if bad or not rows:
        raise ValueError(f"{path}: indices must be rows in [0, {n}), got {list(indices or [])}")
    with fits.open(path) as hdus:
        table = hdus[1].data
        names = table.columns.names
        mags = np.asarray(table["MAG"], dtype=float) if "MAG" in names else None
        bands = [str(b).strip() for b in table["BAND"]] if "BAND" in names else None
    stamps = []
    for i in rows:
        where = f"{path.name}[{i}]"
        image, psf = catalog.getGalImage(i), catalog.getPSFImage(i)
        cf_image, scale, variance = catalog.getNoiseProperties(i)
        if cf_image is None:
            noise = galsim.UncorrelatedNoise(variance, scale=scale)
        else:
            noise = correlated_noise(cf_image.array, variance, scale, where=f"{where} noise {catalog.noise_file_name[i]}")
        magnitude = float(mags[i]) if mags is not None and math.isfinite(mags[i]) else None
        stamps.append(RealStamp(image=image.array.astype(np.float64), psf=psf.array.astype(np.float64),
                                pixel_scale=float(scale), psf_pixel_scale=float(scale), noise=noise, name=where,
                                magnitude=magnitude, band=bands[i] if bands else None))
    return stamps


def _images(path: Path, what: str) -> list[np.ndarray]:
    """The 2-D images of a FITS file: each HDU with 2-D data, or the planes of a 3-D cube."""
    from astropy.io import fits

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")
    out: list[np.ndarray] = []
    with fits.open(path) as hdus:
        for k, hdu in enumerate(hdus):
            data = getattr(hdu, "data", None)
            if data is None or not hasattr(data, "ndim") or getattr(data, "dtype", None) is None or data.dtype.names:
                continue
            if data.ndim == 2:
                out.append(np.asarray(data, dtype=np.float64))
            elif data.ndim == 3:
                out.extend(np.asarray(plane, dtype=np.float64) for plane in data)
            else:
                raise ValueError(f"{path}: HDU {k} has {data.ndim}-D data; {what} images must be 2-D (or a 3-D cube)")
    if not out:
        raise ValueError(f"{path}: no 2-D image in any HDU ({what})")
    for k, image in enumerate(out):
        if not np.isfinite(image).all():
            raise ValueError(f"{path}: {what} image {k} has non-finite pixels")
    return out


def read_fits_stamps(path: str | os.PathLike, *, psf: str | os.PathLike, pixel_scale: float,
                     noise_variance: float | Sequence[float], noise_correlation: str | os.PathLike | None = None,
                     psf_pixel_scale: float | None = None) -> list[RealStamp]:
    """Reads stamps from plain FITS images.

    Arguments:
        path: FITS file with one stamp per image HDU (empty HDUs are skipped) or a 3-D cube.
        psf: FITS file with one PSF image (used for every stamp) or one per stamp, centred on
            the image's true centre.
        pixel_scale: arcsec/pixel of the stamps.
        noise_variance: pixel variance of the stamps' noise, counts²: one value or one per stamp.
        noise_correlation: FITS image of the noise correlation function (see
            :func:`correlated_noise`), at ``pixel_scale``, scaled to each stamp's variance;
            ``None``: white noise.
        psf_pixel_scale: arcsec/pixel of the PSF images (default ``pixel_scale``).

    Returns:
        One :class:`RealStamp` per stamp, named ``"FILE[k]"``.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: no images, a count of PSFs or variances that matches neither 1 nor the
            stamps, bad scales or variances (named).
    """
    galsim = _galsim()
    path, psf_path = Path(path), Path(psf)
    pixel_scale = check_float("pixel_scale", pixel_scale, minimum=0.0, exclusive_minimum=True, unit="arcsec/pixel",
                              where=path)
    psf_scale = pixel_scale if psf_pixel_scale is None else check_float(
        "psf_pixel_scale", psf_pixel_scale, minimum=0.0, exclusive_minimum=True, unit="arcsec/pixel", where=psf_path)
    images, psfs = _images(path, "stamp"), _images(psf_path, "PSF")
    n = len(images)
    if len(psfs) not in (1, n):
        raise ValueError(f"{psf_path}: {len(psfs)} PSF images for {n} stamps in {path} (expected 1 or {n})")
    variances = np.atleast_1d(np.asarray(noise_variance, dtype=float))
    if variances.ndim != 1 or len(variances) not in (1, n):
        raise ValueError(f"{path}: noise_variance must be one value or {n} values (one per stamp), got {len(variances)}")
    variances = np.broadcast_to(variances, (n,))
    cf = None if noise_correlation is None else _images(Path(noise_correlation), "noise correlation")[0]
    stamps = []
    for k, image in enumerate(images):
        where = f"{path.name}[{k}]"
        if cf is None:
            variance = check_float("noise_variance", float(variances[k]), minimum=0.0, exclusive_minimum=True,
                                   unit="counts²", where=where)
            noise = galsim.UncorrelatedNoise(variance, scale=pixel_scale)
        else:
            noise = correlated_noise(cf, float(variances[k]), pixel_scale, where=f"{where} noise {noise_correlation}")
        stamps.append(RealStamp(image=image, psf=psfs[k if len(psfs) > 1 else 0], pixel_scale=pixel_scale,
                                psf_pixel_scale=psf_scale, noise=noise, name=where))
    return stamps


def read_real_stamps(path: str | os.PathLike, *, indices: Sequence[int] | None = None,
                     psf: str | os.PathLike | None = None, pixel_scale: float | None = None,
                     psf_pixel_scale: float | None = None, noise_variance: float | Sequence[float] | None = None,
                     noise_correlation: str | os.PathLike | None = None) -> list[RealStamp]:
    """Stamps from a RealGalaxyCatalog (:func:`read_real_galaxy_catalog`) or plain FITS images
    (:func:`read_fits_stamps`), whichever ``path`` is.

    Arguments:
        path: the catalogue's FITS table, or a FITS file of stamps.
        indices: which stamps (catalogue rows, or stamps of the file in order; default all).
        psf, pixel_scale, psf_pixel_scale, noise_variance, noise_correlation: the options of
            :func:`read_fits_stamps`; required (the first, second and fourth) for plain FITS
            stamps, not allowed with a catalogue (it holds them).

    Returns:
        The :class:`RealStamp` objects.

    Raises:
        ValueError: options missing for plain stamps or given for a catalogue (named); an index
            out of range.
        FileNotFoundError: a file is missing.
    """
    path = Path(path)
    options = {"psf": psf, "pixel_scale": pixel_scale, "psf_pixel_scale": psf_pixel_scale,
               "noise_variance": noise_variance, "noise_correlation": noise_correlation}
    if is_real_galaxy_catalog(path):
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise ValueError(f"{path} is a RealGalaxyCatalog, which holds the PSFs, pixel scales and noise; "
                             f"leave out {', '.join(given)}")
        return read_real_galaxy_catalog(path, indices=indices)
    missing = [k for k in ("psf", "pixel_scale", "noise_variance") if options[k] is None]
    if missing:
        raise ValueError(f"{path}: plain FITS stamps need {', '.join(missing)} (or give a RealGalaxyCatalog table)")
    stamps = read_fits_stamps(path, psf=psf, pixel_scale=pixel_scale, noise_variance=noise_variance,
                              noise_correlation=noise_correlation, psf_pixel_scale=psf_pixel_scale)
    if indices is None:
        return stamps
    bad = [i for i in indices if not 0 <= int(i) < len(stamps)]
    if bad or not list(indices):
        raise ValueError(f"{path}: indices must be stamps in [0, {len(stamps)}), got {list(indices)}")
    return [stamps[int(i)] for i in indices]

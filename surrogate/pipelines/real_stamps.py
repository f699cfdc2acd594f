r"""Real stamps brought to a model's pixel grid with GalSim: image, PSF, noise power, prior context.

A trained :class:`~surrogate.models.galaxy_vae.GalaxyVAE` works on ``S x S`` stamps of one pixel
scale (its training set's), with the galaxy at the stamp's centre. A real observation
(:class:`~surrogate.data.real_galaxies.RealStamp`) has its own size, pixel scale, PSF and
(often correlated) noise. :func:`prepare_stamp` makes what
:func:`~surrogate.pipelines.forward.fit_map` needs:

- **Image** (:func:`resample_image`): ``galsim.InterpolatedImage`` of the stamp (quintic
  interpolant; pixel values are fluxes, ``normalization="flux"``), shifted so that its light
  centroid (HSM adaptive moments, :func:`galsim.hsm.FindAdaptiveMom`) lands on the model stamp's
  centre, drawn with ``drawImage(nx=S, ny=S, scale=model_scale)`` (method ``"auto"``: the
  surface brightness integrated over each model pixel). Flux is conserved: the model stamp
  holds the flux of the part of the sky it covers (tested to 1e-4). A stamp larger than the
  model's field is cut around the centroid; a smaller one is padded with a realisation of its
  own noise (GalSim's ``noise_pad``, seeded), so the noise stays stationary across the stamp;
  :attr:`PreparedStamp.footprint` marks the model pixels that hold observed sky.
- **PSF** (:func:`resample_psf`): ``InterpolatedImage`` of the PSF image (an instrument's PSF
  image, HST's included, already contains its own pixel response), band-limited to the model
  grid (its GalSim Fourier transform at the grid's frequencies, back-transformed: the samples of
  the PSF when it is well sampled, without their aliasing when it is narrower than two model
  pixels), on an odd stamp centred on its middle pixel, normalised to unit sum; a PSF whose sum
  differs from 1 by more than 1 % gets a warning naming the sum (the real AEGIS PSFs sum to
  0.92: fitted fluxes would otherwise be 8 % too high). With these conventions the model image
  ``PSF_model * G(z)``, a pixel-integrated profile convolved with the effective PSF, is the
  same function of the galaxy as the resampled observation, galaxy ⊗ effective PSF ⊗ model
  pixel, at any ratio of the scales, up to the galaxy's own structure finer than the model's
  pixels (1-7 % RMS for an HST PSF at 0.15"/pixel, tested).
- **Noise** (:func:`noise_power_spectrum`): the stamp's GalSim noise (e.g. the correlated noise
  of an HST catalogue, ``galsim.BaseCorrelatedNoise``) is drawn on a large field at the stamp's
  scale (``image.addNoise``, seeded), resampled exactly like the stamp, and its covariance
  function :math:`\xi(\Delta)` estimated as the mean product of the pixel pairs at each lag
  (``field**2`` model pixels). The
  power spectrum on the ``S x S`` stamp is the expected periodogram (Sykulski et al. 2019)

  .. math:: P_k = \sum_{|\Delta_x|, |\Delta_y| \le L} \xi(\Delta)\, (1 - |\Delta_x|/S)(1 - |\Delta_y|/S)\,
            e^{-2\pi i\, k \cdot \Delta / S},

  with the covariance :math:`\xi` truncated at the lag :math:`L` (model pixels) beyond which
  the resampled noise cannot be correlated (the stamp-scale correlation's reach plus the
  interpolant's and the model pixel's widths), which keeps the estimate's scatter out;
  counts², ``torch.fft.fft2`` order. It enters the likelihood as the Fourier-space weight
  :math:`1/P_k` (:class:`~surrogate.models.forward.StationaryNormal`). On GalSim realisations
  of the AEGIS noise resampled from 0.03 to 0.15 arcsec/pixel the resulting
  :math:`\chi^2` per pixel is 1.00-1.01 (tested within 0.04), while a white-noise model of the
  catalogue's variance, resampled the same way, gives 3.5 (the resampling sums correlated
  pixels: their covariances add to the variance).
- **Galaxy pixels** (:attr:`PreparedStamp.segmentation`): the resampled stamp's pixels above 2
  sigma of the 3x3-smoothed noise, connected to the central peak
  (:func:`surrogate.metrics.morphology.segmentation`, given the smoothed noise's variance
  computed from :math:`P_k`, so that correlated noise gets the right threshold); always from the
  stamp's real noise, whichever likelihood is fitted.
- **Prior context** (:func:`estimate_context`): magnitude and half-light radius when not
  given. The flux :math:`F` is the sum of the whole stamp (the catalogue's ``stamp_flux``; a
  catalogue cut-out is made to hold its galaxy, cleaned of neighbours; its noise, the square root
  of the summed covariances, is 0.3-1.1 counts, at most 0.1 mag, for the AEGIS stamps), giving
  :math:`m = ZP - 2.5 \log_{10} F` with ``ZP`` the training set's zero point
  (:func:`surrogate.pipelines.galaxy_vae_training.flux_zero_point`, stored in ``model.pt``):
  the magnitude in the system the prior was trained in, provided the stamp's counts are in the
  training set's flux unit (counts per second of HST/ACS for the COSMOS training set; the AEGIS
  F606W stamps are too). A catalogue magnitude in another band or system (AEGIS ``MAG`` is
  F606W, 0.4-0.5 mag fainter than this for the five galaxies) is not that; pass it only if it is.
  The observed half-light radius :math:`r_{obs}` is the radius of the circle about the centroid
  holding :math:`F/2` (curve of growth at the stamp's own, finer, scale); the PSF-free radius is
  :math:`\sqrt{r_{obs}^2 - r_{PSF}^2}` with the PSF's own half-light radius (exact for
  Gaussians; floored at half a pixel).

References:
    Rowe et al. (2015), arXiv:1407.7676 (GalSim: InterpolatedImage, drawImage, CorrelatedNoise,
    noise padding).
    Hirata & Seljak (2003), arXiv:astro-ph/0301054 (HSM adaptive moments: the centroid).
    Sykulski et al. (2019), arXiv:1605.06718 (the expected periodogram: debiased Whittle).
    Lanusse et al. (2021), arXiv:2008.03833 (the noise power spectrum in the likelihood of
    HST stamps).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from surrogate.checks import check_float, check_int
from surrogate.data.real_galaxies import RealStamp

__all__ = [
    "PSF_SUM_TOLERANCE",
    "PreparedStamp",
    "estimate_context",
    "light_centroid",
    "noise_power_spectrum",
    "prepare_stamp",
    "resample_image",
    "resample_psf",
]

PSF_SUM_TOLERANCE = 0.01
"""A PSF image whose sum differs from 1 by more than this gets a warning (it is normalised)."""

X_INTERPOLANT = "quintic"
"""GalSim interpolant of the resampled stamps (GalSim's default for InterpolatedImage)."""

def _galsim():
    from surrogate.data.real_galaxies import _galsim as load

    return load()


def _scale(name: str, value: float) -> float:
    return check_float(name, value, minimum=0.0, exclusive_minimum=True, unit="arcsec/pixel")


def resample_image(image: np.ndarray, *, pixel_scale: float, new_pixel_scale: float, shape: tuple[int, int],
                   centre: tuple[float, float] = (0.0, 0.0), noise: Any = None, seed: int = 0) -> np.ndarray:
    """The stamp drawn on another pixel grid with GalSim, flux conserved.

    Arguments:
        image: ``(H, W)`` stamp, counts per pixel.
        pixel_scale: its arcsec/pixel.
        new_pixel_scale: arcsec/pixel of the result.
        shape: ``(rows, columns)`` of the result, pixels.
        centre: ``(x, y)`` arcsec from the stamp's true centre: the point that lands on the
            result's true centre (e.g. the light centroid).
        noise: ``galsim.BaseCorrelatedNoise`` of the stamp: the sky beyond the stamp is filled
            with a realisation of it (``noise_pad``); ``None`` pads with zeros.
        seed: seed of that realisation.

    Returns:
        ``(rows, columns)`` float64, counts per pixel: the ``InterpolatedImage`` (quintic)
        integrated over the new pixels (``drawImage`` method ``"auto"``); its sum is the flux of
        the sky it covers.
    """
    galsim = _galsim()
    pixel_scale, new_pixel_scale = _scale("pixel_scale", pixel_scale), _scale("new_pixel_scale", new_pixel_scale)
    rows, cols = (check_int("shape", int(v), minimum=1) for v in shape)
    dx, dy = (float(v) for v in centre)
    kwargs: dict[str, Any] = {}
    if noise is not None:
        h, w = image.shape
        # the padded square must reach every corner of the new grid, with room for the interpolant
        reach = max(abs(dx) + cols * new_pixel_scale / 2, abs(dy) + rows * new_pixel_scale / 2)
        size = 2 * (reach + 4 * max(pixel_scale, new_pixel_scale))
        if size > min(h, w) * pixel_scale:
            kwargs = dict(noise_pad=noise, noise_pad_size=size, rng=galsim.BaseDeviate(int(seed) + 1))
    # calculate_stepk=False: GalSim's estimate of the extent from the enclosed flux is meaningless
    # for noise (and noisy stamps) and made too small an FFT box: noise from the far side wrapped
    # into the first row of the result (twice the variance there, measured)
    profile = galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(image, dtype=np.float64), scale=pixel_scale),
                                       x_interpolant=X_INTERPOLANT, calculate_stepk=False, **kwargs)
    drawn = profile.shift(-dx, -dy).drawImage(nx=cols, ny=rows, scale=new_pixel_scale, method="auto")
    return drawn.array.astype(np.float64)


def resample_psf(psf: np.ndarray, *, pixel_scale: float, new_pixel_scale: float, size: int | None = None,
                 where: str = "psf") -> tuple[np.ndarray, float]:
    r"""A PSF image as a convolution kernel at another pixel scale, odd-sized, unit sum.

    The kernel is the PSF band-limited to the new grid: GalSim's Fourier transform of the
    ``InterpolatedImage`` of the PSF (``drawKImage``) at the frequencies of the new grid,
    :math:`|k_x|, |k_y| \le \pi / \text{new\_pixel\_scale}`, transformed back (on a grid of at
    least 63 pixels, then cut to ``size`` and normalised). For a PSF that is well sampled on the new
    grid this equals its samples (``drawImage(method="no_pixel")``, to 4e-7 of the peak for a 0.7"
    Gaussian at 0.15"); for one narrower than two new pixels it avoids the aliasing of sampling: a
    0.03"-pixel HST PSF at 0.15"/pixel convolved with pixel-integrated Sérsic profiles reproduces
    the resampled observation to 1-7 % RMS instead of 5-16 % with samples (measured for n = 0.5-4,
    half-light radii 0.1-0.35"; ``tests/pipelines/test_real_stamps.py``).

    Arguments:
        psf: ``(h, w)`` PSF image centred on its true centre (GalSim's convention), any sum,
            including the pixel response of its own grid (as an instrument's PSF image does).
        pixel_scale: its arcsec/pixel.
        new_pixel_scale: arcsec/pixel of the result.
        size: odd side of the result, pixels (default: the smallest odd size that holds the
            image's extent, at least 3).
        where: how the warning names the PSF.

    Returns:
        ``(kernel, sum)``: the ``(size, size)`` kernel, unit sum, centred on its middle pixel
        (it may have small negative values: the ringing of the band limit), and the sum of the
        input image.

    Warns:
        UserWarning: the input sums to something other than 1 within
        :data:`PSF_SUM_TOLERANCE` (named; it is normalised all the same).

    Raises:
        ValueError: a non-positive sum, an even or non-positive ``size``.
    """
    galsim = _galsim()
    pixel_scale, new_pixel_scale = _scale("pixel_scale", pixel_scale), _scale("new_pixel_scale", new_pixel_scale)
    psf = np.asarray(psf, dtype=np.float64)
    total = float(psf.sum())
    if not (np.isfinite(psf).all() and total > 0):
        raise ValueError(f"{where}: the PSF image must be finite with a positive sum, got sum {total:g}")
    if abs(total - 1.0) > PSF_SUM_TOLERANCE:
        warnings.warn(f"{where}: the PSF image sums to {total:.4f}, not 1 within {100 * PSF_SUM_TOLERANCE:g} %; "
                      f"normalised to unit sum (otherwise fitted fluxes are off by a factor {1 / total:.3f})",
                      UserWarning, stacklevel=2)
    if size is None:
        half = max(psf.shape) * pixel_scale / 2
        size = max(3, 2 * math.ceil(half / new_pixel_scale) + 1)
    size = check_int("psf size", size, minimum=1, where=where)
    if size % 2 == 0:
        raise ValueError(f"{where}: the resampled PSF size must be odd (centred on its middle pixel), got {size}")
    profile = galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(psf / total), scale=pixel_scale),
                                       x_interpolant=X_INTERPOLANT, calculate_stepk=False)
    n = max(63, 2 * size + 1)  # odd: frequency 0 and lag 0 at index n // 2
    spectrum = profile.drawKImage(nx=n, ny=n, scale=2 * math.pi / (n * new_pixel_scale)).array
    kernel = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum)).real)
    c, h = n // 2, size // 2
    kernel = kernel[c - h:c + h + 1, c - h:c + h + 1]
    return kernel / kernel.sum(), total


def light_centroid(image: np.ndarray, *, pixel_scale: float) -> tuple[float, float]:
    """``(x, y)`` of the light centroid in arcsec from the stamp's true centre.

    HSM adaptive moments (:func:`galsim.hsm.FindAdaptiveMom`, robust to noise); where they fail,
    the flux-weighted centroid of the positive pixels.
    """
    galsim = _galsim()
    h, w = image.shape
    result = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(image, dtype=np.float64),
                                                     scale=pixel_scale), strict=False)
    if result.moments_status == 0 and result.moments_sigma > 0:
        x, y = result.moments_centroid.x - 1.0, result.moments_centroid.y - 1.0  # GalSim pixels start at 1
    else:
        weights = np.clip(image, 0.0, None)
        if not weights.sum() > 0:
            return 0.0, 0.0
        yy, xx = np.indices(image.shape)
        x, y = float((weights * xx).sum() / weights.sum()), float((weights * yy).sum() / weights.sum())
    return (x - (w - 1) / 2) * pixel_scale, (y - (h - 1) / 2) * pixel_scale


def _covariance(noise: Any, pixel_scale: float, radius: int) -> np.ndarray:
    """The noise covariance at pixel lags ``-radius..radius`` (``(2r+1, 2r+1)``, zero lag centred)."""
    galsim = _galsim()
    n = 2 * radius + 1
    return noise.drawImage(galsim.Image(n, n, scale=pixel_scale)).array.astype(np.float64)


def _reach(noise: Any, pixel_scale: float, limit: int) -> float:
    """Lag (arcsec) beyond which the noise covariance is below 1e-4 of the variance (<= limit pixels)."""
    cov = np.abs(_covariance(noise, pixel_scale, limit))
    c = limit
    yy, xx = np.indices(cov.shape)
    r = np.hypot(yy - c, xx - c)
    strong = r[cov > 1e-4 * cov[c, c]]
    return float(strong.max() if strong.size else 0.0) * pixel_scale


def _lag_covariance(field: np.ndarray, radius: int) -> np.ndarray:
    """Covariance of a zero-mean noise field at lags ``-radius..radius``: the mean of
    ``n_j n_{j+Delta}`` over all pixel pairs at each lag (zero-padded FFTs; unbiased).

    (``galsim.CorrelatedNoise(image)`` is not used here: on resampled AEGIS noise its variance came
    out 3 % above the image's own, which biases chi^2 by as much.)"""
    n_y, n_x = field.shape
    shape = (2 * n_y, 2 * n_x)
    products = np.fft.irfft2(np.abs(np.fft.rfft2(field, s=shape)) ** 2, s=shape)
    lags = np.arange(-radius, radius + 1)
    pairs = (n_y - np.abs(lags))[:, None] * (n_x - np.abs(lags))[None, :]
    return products[np.ix_(lags % shape[0], lags % shape[1])] / pairs


def noise_power_spectrum(noise: Any, *, pixel_scale: float, new_pixel_scale: float, stamp_size: int,
                         centre: tuple[float, float] = (0.0, 0.0), seed: int = 0, field: int = 192) -> np.ndarray:
    """Power spectrum of the stamp's noise after :func:`resample_image`, on an ``S x S`` stamp.

    Arguments:
        noise: ``galsim.BaseCorrelatedNoise`` (or ``UncorrelatedNoise``) of the stamp, counts²
            at ``pixel_scale``.
        pixel_scale: arcsec/pixel of the stamp.
        new_pixel_scale: arcsec/pixel of the model.
        stamp_size: side ``S`` of the model stamp, pixels.
        centre: the shift of :func:`resample_image` (arcsec), for the same alignment of the grids.
        seed: seed of the noise realisation.
        field: side of the simulated noise field, model pixels (the covariance estimate's
            relative scatter is about ``1 / field``).

    Returns:
        ``(S, S)`` float64 :math:`P_k`, counts², ``torch.fft.fft2`` order, ``P_{-k} = P_k`` (formula
        in the module documentation; values are floored at 1e-3 of their mean, which only
        matters for an estimate that is not positive definite).
    """
    galsim = _galsim()
    pixel_scale, new_pixel_scale = _scale("pixel_scale", pixel_scale), _scale("new_pixel_scale", new_pixel_scale)
    S = check_int("stamp_size", stamp_size, minimum=2)
    field = max(check_int("field", field, minimum=8), S)
    native = math.ceil(field * new_pixel_scale / pixel_scale) + 16
    sky = galsim.Image(native, native, scale=pixel_scale, dtype=np.float64)
    sky.addNoise(noise.copy(rng=galsim.BaseDeviate(int(seed) + 2)))
    resampled = resample_image(sky.array, pixel_scale=pixel_scale, new_pixel_scale=new_pixel_scale,
                               shape=(field, field), centre=centre)
    # lags that can be correlated: the stamp-scale reach + quintic (3 pixels) + the model pixel
    limit = max(2, math.ceil(min(field, S) * new_pixel_scale / pixel_scale))
    reach = _reach(noise, pixel_scale, limit) + 6 * pixel_scale + new_pixel_scale
    L = min(S - 1, math.ceil(reach / new_pixel_scale) + 1)
    xi = _lag_covariance(resampled, L)
    lags = np.arange(-L, L + 1)
    window = 1.0 - np.abs(lags) / S
    xi = xi * window[:, None] * window[None, :]
    xi = 0.5 * (xi + xi[::-1, ::-1])
    folded = np.zeros((S, S))
    np.add.at(folded, ((lags % S)[:, None], (lags % S)[None, :]), xi)
    power = np.fft.fft2(folded).real
    return np.maximum(power, 1e-3 * power.mean())


def _segmentation_variance(power: np.ndarray) -> float:
    """``9 Var(3x3 box mean)`` of noise of power spectrum ``power`` (``(S, S)``, fft order)."""
    S = power.shape[0]
    box = np.zeros((S, S))
    idx = np.array([0, 1, S - 1])
    box[np.ix_(idx, idx)] = 1.0 / 9.0
    return float(9.0 * (power * np.abs(np.fft.fft2(box)) ** 2).mean())


def _half_flux_radius(image: np.ndarray, centre: tuple[float, float], pixel_scale: float, total: float) -> float:
    """Radius (arcsec) about ``centre`` (arcsec from the true centre) of the circle holding
    ``total / 2``: the cumulative flux of the pixels sorted by distance, interpolated linearly."""
    h, w = image.shape
    yy, xx = np.indices(image.shape)
    r = np.hypot((xx - (w - 1) / 2) * pixel_scale - centre[0], (yy - (h - 1) / 2) * pixel_scale - centre[1]).ravel()
    order = np.argsort(r, kind="stable")
    cumulative = np.cumsum(image.ravel()[order])
    j = int(np.argmax(cumulative >= 0.5 * total))
    if j == 0:
        return float(r[order][0])
    c0, c1, r0, r1 = cumulative[j - 1], cumulative[j], r[order][j - 1], r[order][j]
    return float(r0 + (0.5 * total - c0) / (c1 - c0) * (r1 - r0)) if c1 > c0 else float(r1)


def estimate_context(stamp: RealStamp, *, zero_point: float | None, centroid: tuple[float, float] | None = None
                     ) -> dict[str, float]:
    """Magnitude and PSF-free half-light radius of a stamp, for the prior's context.

    Arguments:
        stamp: the observed galaxy at its own scale.
        zero_point: AB magnitude of 1 count in the model's flux unit (``None``: no magnitude).
        centroid: ``(x, y)`` arcsec from the stamp's true centre (default :func:`light_centroid`).

    Returns:
        ``{"magnitude" (AB mag; NaN without zero point or positive flux), "half_light_radius"
        (arcsec, PSF-free), "flux" (counts), "flux_noise" (its standard deviation, counts),
        "half_light_radius_observed", "half_light_radius_psf" (arcsec)}``; method in the module
        documentation.
    """
    from surrogate.metrics.morphology import half_light_radius

    s = stamp.pixel_scale
    image = stamp.image
    centre = centroid if centroid is not None else light_centroid(image, pixel_scale=s)
    flux = float(image.sum())
    # standard deviation of the sum of N noise pixels: sqrt(sum of their covariances) ~ sqrt(N sum_lag xi)
    lags = min(max(image.shape) - 1, 64)
    flux_noise = math.sqrt(max(image.size * float(_covariance(stamp.noise, s, lags).sum()), 0.0))
    r_obs = _half_flux_radius(image, centre, s, flux) if flux > 0 else math.nan
    r_psf = float(half_light_radius(stamp.psf / stamp.psf.sum(), pixel_scale=stamp.psf_pixel_scale)[0])
    if not math.isfinite(r_obs):
        r_obs = s
    r = math.sqrt(max(r_obs**2 - r_psf**2, (0.5 * s) ** 2))
    magnitude = zero_point - 2.5 * math.log10(flux) if zero_point is not None and flux > 0 else math.nan
    return {"magnitude": magnitude, "half_light_radius": r, "flux": flux, "flux_noise": flux_noise,
            "half_light_radius_observed": r_obs, "half_light_radius_psf": r_psf}


@dataclass
class PreparedStamp:
    """A real stamp on the model's grid (:func:`prepare_stamp`).

    Attributes:
        name: the stamp's name.
        observed: ``(S, S)`` counts per pixel at the model's scale, centroid at the centre.
        psf: ``(P, P)`` unit-sum PSF at the model's scale (odd ``P``).
        noise_power: ``(S, S)`` power spectrum of the noise, counts² (fft order).
        footprint: ``(S, S)`` bool, model pixels whose centres lie on the observed stamp.
        segmentation: ``(S, S)`` bool, the galaxy's pixels (2 sigma of the smoothed noise).
        magnitude: the prior's magnitude, AB mag; ``magnitude_source``: ``"given"`` or ``"stamp"``.
        half_light_radius: the prior's radius, arcsec; ``half_light_radius_source`` likewise.
        psf_sum: the sum of the input PSF image.
        centroid: ``(x, y)`` arcsec of the light centroid from the input stamp's true centre.
        context: what :func:`estimate_context` measured.
        catalog_magnitude: the catalogue's magnitude (may be another band), or NaN.
    """

    name: str
    observed: np.ndarray
    psf: np.ndarray
    noise_power: np.ndarray
    footprint: np.ndarray
    segmentation: np.ndarray
    magnitude: float
    magnitude_source: str
    half_light_radius: float
    half_light_radius_source: str
    psf_sum: float
    centroid: tuple[float, float]
    context: dict[str, float]
    catalog_magnitude: float


def _footprint(stamp: RealStamp, S: int, scale: float, centre: tuple[float, float]) -> np.ndarray:
    h, w = stamp.image.shape
    offsets = (np.arange(S) - (S - 1) / 2) * scale
    x = offsets[None, :] + centre[0]
    y = offsets[:, None] + centre[1]
    return (np.abs(x) <= w * stamp.pixel_scale / 2) & (np.abs(y) <= h * stamp.pixel_scale / 2)


def prepare_stamp(stamp: RealStamp, *, pixel_scale: float, stamp_size: int, zero_point: float | None = None,
                  magnitude: float | None = None, half_light_radius: float | None = None, psf_size: int | None = None,
                  white_noise: bool = False, seed: int = 0, noise_field: int = 192) -> PreparedStamp:
    """A real stamp resampled to the model's grid, with its PSF, noise power and prior context.

    Arguments:
        stamp: the observed galaxy at its own pixel scale.
        pixel_scale: the model's arcsec/pixel.
        stamp_size: the model's stamp side ``S``, pixels.
        zero_point: AB magnitude of 1 count in the model's flux unit, to estimate the magnitude
            (required when ``magnitude`` is not given).
        magnitude: the prior's magnitude, AB mag, in the model's system (default: estimated).
        half_light_radius: the prior's radius, arcsec (default: estimated).
        psf_size: odd side of the resampled PSF (default from the PSF's extent, at most ``S``).
        white_noise: ignore the noise's correlations: white noise of the stamp's pixel variance
            at its own scale, resampled like the stamp (the baseline the correlated-noise
            likelihood is compared with).
        seed: seed of the noise padding and of the noise-power realisation.
        noise_field: side of the noise field of :func:`noise_power_spectrum`, model pixels.

    Returns:
        A :class:`PreparedStamp`.

    Warns:
        UserWarning: a PSF whose sum is not 1 within 1 % (:func:`resample_psf`).

    Raises:
        ValueError: no magnitude and no zero point, or no positive flux to estimate it from.
    """
    galsim = _galsim()
    S = check_int("stamp_size", stamp_size, minimum=2)
    scale = _scale("pixel_scale", pixel_scale)
    # the galaxy's own (PSF-free) centroid goes to the centre, where the model's profiles are: the
    # stamp's light centroid less the PSF's offset from its image centre (0.3 pixels for AEGIS)
    centre = light_centroid(stamp.image, pixel_scale=stamp.pixel_scale)
    context = estimate_context(stamp, zero_point=zero_point, centroid=centre)
    psf_x, psf_y = light_centroid(stamp.psf, pixel_scale=stamp.psf_pixel_scale)
    centre = (centre[0] - psf_x, centre[1] - psf_y)
    if magnitude is None:
        if not math.isfinite(context["magnitude"]):
            why = "no zero point was given" if zero_point is None else f"its flux is {context['flux']:.3g} counts"
            raise ValueError(f"{stamp.name}: cannot estimate the magnitude ({why}); give the magnitude")
        magnitude, m_source = context["magnitude"], "stamp"
    else:
        m_source = "given"
    if half_light_radius is None:
        half_light_radius, r_source = context["half_light_radius"], "stamp"
    else:
        half_light_radius, r_source = float(half_light_radius), "given"
    if psf_size is None:  # the PSF's extent, and at least half the stamp for the band limit's ringing
        half = max(stamp.psf.shape) * stamp.psf_pixel_scale / 2
        psf_size = max(3, 2 * math.ceil(half / scale) + 1, 2 * (S // 4) + 1)
        psf_size = min(psf_size, S if S % 2 else S - 1)
    psf, psf_sum = resample_psf(stamp.psf, pixel_scale=stamp.psf_pixel_scale, new_pixel_scale=scale, size=psf_size,
                                where=f"{stamp.name} PSF")
    # the sky beyond the stamp and the galaxy's pixels follow the stamp's real noise; white_noise
    # changes only the likelihood's noise model
    observed = resample_image(stamp.image, pixel_scale=stamp.pixel_scale, new_pixel_scale=scale, shape=(S, S),
                              centre=centre, noise=stamp.noise, seed=seed)
    power = noise_power_spectrum(stamp.noise, pixel_scale=stamp.pixel_scale, new_pixel_scale=scale, stamp_size=S,
                                 centre=centre, seed=seed, field=noise_field)
    from surrogate.metrics.morphology import segmentation

    mask = segmentation(observed, _segmentation_variance(power))[0]
    if white_noise:
        white = galsim.UncorrelatedNoise(stamp.noise_variance, scale=stamp.pixel_scale)
        power = noise_power_spectrum(white, pixel_scale=stamp.pixel_scale, new_pixel_scale=scale, stamp_size=S,
                                     centre=centre, seed=seed, field=noise_field)
    return PreparedStamp(
        name=stamp.name, observed=observed, psf=psf, noise_power=power, footprint=_footprint(stamp, S, scale, centre),
        segmentation=mask, magnitude=float(magnitude), magnitude_source=m_source,
        half_light_radius=float(half_light_radius), half_light_radius_source=r_source, psf_sum=psf_sum,
        centroid=centre, context=context,
        catalog_magnitude=float(stamp.magnitude) if stamp.magnitude is not None else math.nan)

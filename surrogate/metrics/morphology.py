r"""Morphology statistics of galaxy stamps and their two-sample comparison.

Per stamp (arrays ``(N, S, S)`` in counts per pixel, axis -2 = y, axis -1 = x):

- **HSM adaptive moments** (Hirata & Seljak 2003; Mandelbaum et al. 2005) via
  :func:`galsim.hsm.FindAdaptiveMom`: the size ``sigma`` (arcsec; the ``sigma`` of the
  elliptical Gaussian weight that matches the light, ``det(M)^{1/4}``) and the ellipticity
  ``g1``, ``g2`` (reduced-shear convention). A stamp where HSM fails gets NaN.
- **g**: the ellipticity's modulus ``|g| = sqrt(g1^2 + g2^2)`` (HSM, as above).
- **flux**: the sum of the stamp, counts.
- **half-light radius** (arcsec): radius of the circle about the light's centroid that holds
  half of the flux of the segmentation region (see below), interpolated between pixel radii.
- **concentration** :math:`C = 5 \log_{10}(r_{80} / r_{20})` (Bershady, Jangren & Conselice
  2000; Conselice 2003, eq. 4), with :math:`r_{20}` and :math:`r_{80}` the radii of the circles
  about the centroid holding 20 % and 80 % of the region's flux, from the same curve of growth
  as the half-light radius (statmorph, Rodriguez-Gomez et al. 2019, takes the total flux within
  1.5 Petrosian radii instead). An exponential disk has :math:`C = 2.80`, a de Vaucouleurs
  profile 5.27 (infinite apertures); a radius smaller than the nearest pixel's distance is
  that distance, so unresolved stamps saturate.
- **Gini** coefficient of the pixel fluxes (Lotz, Primack & Madau 2004, eq. 6; Abraham et al.
  2003): :math:`G = \frac{1}{\bar{|X|} n (n-1)} \sum_i (2i - n - 1) |X_i|` over the ``n``
  pixels of the region sorted by increasing ``|X_i|``; 0 for a uniform image, 1 when one pixel
  holds all the light.
- **M20** (Lotz et al. 2004, eqs. 7-8, as statmorph computes it, Rodriguez-Gomez et al. 2019):
  :math:`M_{20} = \log_{10}(\sum_i M_i / M_{tot})`,
  :math:`M_i = f_i [(x_i - x_c)^2 + (y_i - y_c)^2]`, with the centre :math:`(x_c, y_c)` that
  minimises :math:`M_{tot}` (the flux-weighted centroid) and the sum over the brightest pixels:
  sorted by decreasing flux, they are added until their cumulative flux reaches 20 % of the
  total, the pixel that reaches it included. Exactly: pixel ``i`` is one of them when the
  pixels brighter than it hold at most 20 % of the total flux (statmorph's rule: the pixels at
  or above the first flux, in increasing order, at which the cumulative fraction reaches 80 %;
  pixels of equal flux are all in or all out). So the brightest pixel always counts, and a
  stamp where one pixel holds 20 % of the light has a value. Pixel values are used as they are,
  negative (noise) pixels included, in the centroid and in both sums (no clipping at zero).

**Segmentation** (which pixels are the galaxy): for Gini, M20 and the half-light radius, when a
noise variance is given, the pixels of the stamp smoothed by a 3x3 box whose value exceeds
``threshold`` times the smoothed noise level (:math:`\sigma/3`), restricted to the 8-connected
region containing the brightest smoothed pixel of the central half of the stamp (the stamps are
centred on their galaxy; a brighter neighbour near the edge is left out). This replaces the Petrosian-radius
segmentation of Lotz et al., which is ill-defined for small, faint stamps; the same rule is
applied to reference and generated stamps, which is what a two-sample comparison needs.
Without a noise variance every pixel counts.

Any statistic that cannot be computed for a stamp is NaN; :func:`ks_distances` leaves NaN
values out and :func:`nan_counts` counts them, so that a report can say how many were left out.

Comparisons: :func:`ks_distances` gives the two-sample Kolmogorov-Smirnov statistic
(:func:`scipy.stats.ks_2samp`) of each statistic; :func:`plot_morphology_histograms` and
:func:`plot_stamp_grid` (:mod:`surrogate.metrics.morphology_plots`) make the PNGs.

References:
    Lotz, Primack & Madau (2004), AJ 128, 163, arXiv:astro-ph/0311352 (Gini, M20).
    Rodriguez-Gomez et al. (2019), MNRAS 483, 4140, arXiv:1807.09850 (statmorph: the reference
    implementation of Gini and M20 the tests compare with).
    Abraham, van den Bergh & Nair (2003), ApJ 588, 218 (Gini coefficient of galaxy images).
    Bershady, Jangren & Conselice (2000), AJ 119, 2645, arXiv:astro-ph/0002262; Conselice
    (2003), ApJS 147, 1, arXiv:astro-ph/0303065 (the concentration index).
    Hirata & Seljak (2003), MNRAS 343, 459, arXiv:astro-ph/0301054; Mandelbaum et al. (2005),
    MNRAS 361, 1287, arXiv:astro-ph/0412338 (HSM adaptive moments).
    Lanusse et al. (2021), arXiv:2008.03833, section 5 (these statistics for VAE galaxies).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.ndimage
import scipy.stats

__all__ = [
    "MORPHOLOGY_UNITS",
    "concentration",
    "gini",
    "growth_radii",
    "half_light_radius",
    "hsm_moments",
    "ks_distances",
    "m20",
    "morphology_statistics",
    "nan_counts",
    "segmentation",
]

MORPHOLOGY_UNITS = {"sigma": "arcsec", "g1": "", "g2": "", "g": "", "flux": "counts", "half_light_radius": "arcsec",
                    "concentration": "", "gini": "", "m20": ""}
"""The statistics of :func:`morphology_statistics` and their units."""


def _as_stamps(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W), got {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError(f"{name} contains non-finite values")
    return images


def _masks(images: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones(images.shape, dtype=bool)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), images.shape)
    return mask


def gini(images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Gini coefficient of each stamp's pixel fluxes (Lotz et al. 2004, eq. 6).

    Arguments:
        images: ``(N, H, W)`` or ``(H, W)`` stamps, any flux unit.
        mask: boolean ``(N, H, W)`` or ``(H, W)``: the pixels to use (default all).

    Returns:
        ``(N,)`` values in [0, 1]; NaN where fewer than 2 pixels or no flux.

    Raises:
        ValueError: wrong shapes or non-finite values.

    Example:
        >>> float(gini(np.ones((8, 8)))[0])
        0.0
    """
    images = _as_stamps(images)
    masks = _masks(images, mask)
    out = np.full(len(images), np.nan)
    for k, (image, m) in enumerate(zip(images, masks)):
        values = np.sort(np.abs(image[m]))
        n = values.size
        total = values.sum()
        if n < 2 or total <= 0:
            continue
        i = np.arange(1, n + 1)
        out[k] = float(((2 * i - n - 1) * values).sum() / (total / n * n * (n - 1)))
    return out


def _centroid(image: np.ndarray, m: np.ndarray) -> tuple[float, float] | None:
    """Flux-weighted centroid ``(y, x)`` in pixels of the pixels in ``m`` (values as they are,
    negative ones included); ``None`` when their total flux is not positive."""
    weights = np.where(m, image, 0.0)
    total = weights.sum()
    if not total > 0:
        return None
    y, x = np.indices(image.shape)
    return float((weights * y).sum() / total), float((weights * x).sum() / total)


def m20(images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """M20, the normalised second moment of the brightest 20 % of the light (Lotz et al. 2004).

    The centre is the flux-weighted centroid of the pixels in ``mask``, which minimises the
    total second moment ``M_tot``. The brightest pixels are those whose brighter pixels hold
    at most 20 % of the total flux: taken in order of decreasing flux until the cumulative flux
    reaches 20 %, that pixel included (pixels of equal flux go in together), as statmorph does
    (Rodriguez-Gomez et al. 2019). Pixel values are used unclipped: negative noise pixels enter
    the centroid, the total flux and ``M_tot``.

    Arguments:
        images: ``(N, H, W)`` or ``(H, W)`` stamps, any flux unit per pixel.
        mask: boolean ``(N, H, W)`` or ``(H, W)``: the pixels to use (default all).

    Returns:
        ``(N,)`` values (dimensionless, typically -3 to -0.5); NaN where the masked flux is not
        positive, where ``M_tot`` is not positive, or where the brightest pixels' second moment
        is 0 (a single brightest pixel exactly on the centroid), the cases statmorph flags as
        invalid.

    Raises:
        ValueError: wrong shapes or non-finite values.

    References:
        Lotz, Primack & Madau (2004), AJ 128, 163, eqs. 7-8; Rodriguez-Gomez et al. (2019),
        arXiv:1807.09850, section 4.2 (statmorph's M20).

    Example:
        >>> image = np.zeros((5, 5))
        >>> image[2, 1], image[2, 3] = 1.0, 4.0   # 4 of 5 counts in one pixel
        >>> round(float(m20(image)[0]), 6)        # centroid x = 2.6: 4 * 0.4^2 / (4 * 0.4^2 + 1.6^2)
        -0.69897
    """
    images = _as_stamps(images)
    masks = _masks(images, mask)
    out = np.full(len(images), np.nan)
    y, x = np.indices(images.shape[1:])
    for k, (image, m) in enumerate(zip(images, masks)):
        centre = _centroid(image, m)
        if centre is None:
            continue
        yc, xc = centre
        f = np.where(m, image, 0.0)
        moments = f * ((y - yc) ** 2 + (x - xc) ** 2)
        m_tot = moments.sum()
        values = np.sort(image[m])
        reached = np.cumsum(values) / values.sum() >= 0.8  # the brighter pixels hold <= 20 %
        # The last fraction is 1 up to rounding, so some pixel reaches 0.8, and its flux is > 0
        # (the cumulative sum only grows at positive pixels).
        threshold = values[int(np.argmax(reached))] if reached.any() else values[-1]
        brightest = moments[m & (image >= threshold)].sum()
        if m_tot > 0 and brightest > 0:
            out[k] = math.log10(brightest / m_tot)
    return out


def growth_radii(images: np.ndarray, fractions: Sequence[float], *, pixel_scale: float = 1.0,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """Radii of the circles about the flux centroid holding the given fractions of the (masked) flux.

    The cumulative flux of the pixels sorted by their centres' distance from the centroid is
    interpolated linearly to each fraction of the total (the curve of growth).

    Arguments:
        images: ``(N, H, W)`` or ``(H, W)`` stamps.
        fractions: ``(F,)`` fractions in (0, 1].
        pixel_scale: arcsec per pixel (the result is in arcsec; 1 gives pixels).
        mask: boolean pixels to use (default all).

    Returns:
        ``(N, F)`` radii; NaN without positive flux. Pixel values are used as they are (negative
        noise pixels included), in the centroid as in the cumulative flux.
    """
    images = _as_stamps(images)
    masks = _masks(images, mask)
    fractions = np.asarray(fractions, dtype=float)
    out = np.full((len(images), len(fractions)), np.nan)
    y, x = np.indices(images.shape[1:])
    for k, (image, m) in enumerate(zip(images, masks)):
        centre = _centroid(image, m)
        if centre is None:
            continue
        yc, xc = centre
        f = np.where(m, image, 0.0).ravel()
        r = np.hypot(y.ravel() - yc, x.ravel() - xc)
        order = np.argsort(r, kind="stable")
        r, cumulative = r[order], np.cumsum(f[order])
        for column, fraction in enumerate(fractions):
            j = int(np.argmax(cumulative >= fraction * f.sum()))
            if j == 0:
                out[k, column] = r[0] * pixel_scale
                continue
            c0, c1 = cumulative[j - 1], cumulative[j]
            t = (fraction * f.sum() - c0) / (c1 - c0) if c1 > c0 else 1.0
            out[k, column] = (r[j - 1] + t * (r[j] - r[j - 1])) * pixel_scale
    return out


def half_light_radius(images: np.ndarray, *, pixel_scale: float = 1.0, mask: np.ndarray | None = None) -> np.ndarray:
    """Radius of the circle about the flux centroid holding half of the (masked) flux
    (:func:`growth_radii` at 0.5): ``(N,)``, arcsec for a ``pixel_scale`` in arcsec/pixel."""
    return growth_radii(images, (0.5,), pixel_scale=pixel_scale, mask=mask)[:, 0]


def concentration(images: np.ndarray, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Concentration index ``C = 5 log10(r80 / r20)`` of each stamp (module documentation): ``(N,)``."""
    radii = growth_radii(images, (0.2, 0.8), mask=mask)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 5.0 * np.log10(radii[:, 1] / radii[:, 0])


def hsm_moments(images: np.ndarray, *, pixel_scale: float = 1.0) -> dict[str, np.ndarray]:
    """HSM adaptive moments of each stamp via :func:`galsim.hsm.FindAdaptiveMom`.

    Arguments:
        images: ``(N, H, W)`` or ``(H, W)`` stamps.
        pixel_scale: arcsec per pixel.

    Returns:
        ``{"sigma": (N,) arcsec, "g1": (N,), "g2": (N,), "ok": (N,) bool}``; NaN where HSM
        failed (``ok`` False).

    Raises:
        ImportError: GalSim is missing.

    Example:
        >>> import galsim
        >>> image = galsim.Gaussian(sigma=0.3).drawImage(nx=64, ny=64, scale=0.05).array
        >>> round(float(hsm_moments(image, pixel_scale=0.05)["sigma"][0]), 2)
        0.3
    """
    try:
        import galsim
    except ImportError as error:  # pragma: no cover
        raise ImportError("HSM moments need GalSim: pip install galsim") from error
    images = _as_stamps(images)
    out = {key: np.full(len(images), np.nan) for key in ("sigma", "g1", "g2")}
    ok = np.zeros(len(images), dtype=bool)
    for k, image in enumerate(images):
        result = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(image), scale=pixel_scale), strict=False)
        if result.moments_status != 0 or not result.moments_sigma > 0:
            continue
        out["sigma"][k] = result.moments_sigma * pixel_scale
        out["g1"][k] = result.observed_shape.g1
        out["g2"][k] = result.observed_shape.g2
        ok[k] = True
    out["ok"] = ok
    return out


def segmentation(images: np.ndarray, noise_variance: np.ndarray | float, *, threshold: float = 2.0) -> np.ndarray:
    """Galaxy pixels of noisy stamps (see the module documentation).

    Arguments:
        images: ``(N, H, W)`` stamps, counts per pixel.
        noise_variance: ``(N,)`` or one pixel-noise variance, counts².
        threshold: in units of the smoothed noise's standard deviation ``sigma / 3``.

    Returns:
        Boolean ``(N, H, W)``; never empty (at least the brightest smoothed pixel of the
        central half of the stamp).
    """
    images = _as_stamps(images)
    variance = np.broadcast_to(np.asarray(noise_variance, dtype=np.float64).reshape(-1), (len(images),))
    if not (np.isfinite(variance).all() and (variance > 0).all()):
        raise ValueError("noise_variance must be finite and > 0")
    masks = np.zeros(images.shape, dtype=bool)
    for k, image in enumerate(images):
        smooth = scipy.ndimage.uniform_filter(image, size=3, mode="constant")
        above = smooth > threshold * math.sqrt(variance[k]) / 3.0
        h, w = smooth.shape
        y0, x0 = h // 4, w // 4
        centre = smooth[y0:h - y0, x0:w - x0]
        py, px = np.unravel_index(int(np.argmax(centre)), centre.shape)
        peak = (py + y0, px + x0)
        above[peak] = True
        labels, _ = scipy.ndimage.label(above, structure=np.ones((3, 3)))
        masks[k] = labels == labels[peak]
    return masks


def morphology_statistics(images: np.ndarray, *, pixel_scale: float, noise_variance: np.ndarray | float | None = None,
                          threshold: float = 2.0) -> dict[str, np.ndarray]:
    """All statistics of :data:`MORPHOLOGY_UNITS` for each stamp.

    Arguments:
        images: ``(N, H, W)`` stamps, counts per pixel.
        pixel_scale: arcsec per pixel.
        noise_variance: ``(N,)`` or one value, counts²: turns on the segmentation for Gini, M20
            and the half-light radius (:func:`segmentation`); ``None`` uses all pixels.
        threshold: segmentation threshold.

    Returns:
        ``{"sigma", "g1", "g2", "g", "flux", "half_light_radius", "concentration", "gini", "m20":
        (N,) arrays, "hsm_ok": (N,) bool}``.
    """
    images = _as_stamps(images)
    mask = None if noise_variance is None else segmentation(images, noise_variance, threshold=threshold)
    hsm = hsm_moments(images, pixel_scale=pixel_scale)
    return {
        "sigma": hsm["sigma"],
        "g1": hsm["g1"],
        "g2": hsm["g2"],
        "g": np.hypot(hsm["g1"], hsm["g2"]),
        "flux": images.sum(axis=(1, 2)),
        "half_light_radius": half_light_radius(images, pixel_scale=pixel_scale, mask=mask),
        "concentration": concentration(images, mask=mask),
        "gini": gini(images, mask),
        "m20": m20(images, mask),
        "hsm_ok": hsm["ok"],
    }


def nan_counts(statistics: Mapping[str, np.ndarray], keys: Sequence[str] | None = None) -> dict[str, int]:
    """Number of NaN values of each statistic: the values :func:`ks_distances` leaves out.

    Non-finite values are counted (a statistic that cannot be computed is NaN; an infinity
    would be left out of the comparisons as well, so it is counted with them).

    Arguments:
        statistics: per-stamp statistics, e.g. from :func:`morphology_statistics`.
        keys: which statistics (default those of :data:`MORPHOLOGY_UNITS` present).

    Returns:
        ``{key: count}`` with an entry, possibly 0, for every key.

    Raises:
        KeyError: a requested key is missing.

    Example:
        >>> nan_counts({"gini": np.array([0.4, np.nan]), "m20": np.array([-1.8, -2.0])})
        {'gini': 1, 'm20': 0}
    """
    keys = [k for k in MORPHOLOGY_UNITS if k in statistics] if keys is None else list(keys)
    return {key: int(np.count_nonzero(~np.isfinite(np.asarray(statistics[key], dtype=float)))) for key in keys}


def ks_distances(reference: Mapping[str, np.ndarray], generated: Mapping[str, np.ndarray],
                 keys: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Two-sample Kolmogorov-Smirnov statistic of each statistic (non-finite values dropped).

    Arguments:
        reference, generated: statistics of the two samples (e.g. from :func:`morphology_statistics`).
        keys: which statistics (default those of :data:`MORPHOLOGY_UNITS` present in both).

    Returns:
        ``{key: {"ks": D, "p_value": p, "n_reference": n, "n_generated": m}}``; ``D`` is NaN
        when either sample is empty.
    """
    keys = [k for k in MORPHOLOGY_UNITS if k in reference and k in generated] if keys is None else list(keys)
    out = {}
    for key in keys:
        a = np.asarray(reference[key], dtype=float)
        b = np.asarray(generated[key], dtype=float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if len(a) == 0 or len(b) == 0:
            out[key] = {"ks": math.nan, "p_value": math.nan, "n_reference": len(a), "n_generated": len(b)}
            continue
        result = scipy.stats.ks_2samp(a, b)
        out[key] = {"ks": float(result.statistic), "p_value": float(result.pvalue),
                    "n_reference": len(a), "n_generated": len(b)}
    return out

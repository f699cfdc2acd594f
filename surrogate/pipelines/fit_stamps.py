r"""Fit real galaxy stamps with a trained galaxy model in one call (``surrogate fit``).

:func:`fit_stamps` takes :class:`~surrogate.data.real_galaxies.RealStamp` objects (any size,
pixel scale, PSF and noise), brings each to the model's grid
(:func:`surrogate.pipelines.real_stamps.prepare_stamp`: GalSim resampling with the flux
conserved, the PSF normalised, the noise power spectrum, the prior's magnitude and size
estimated when not given) and finds the MAP latents of all of them at once with
:func:`surrogate.pipelines.forward.fit_map` under the correlated-noise (Whittle) likelihood, or
white noise with ``white_noise=True``. :func:`fit_run` does the same from a run folder
(the model, its pixel scale and its magnitude zero point are read from ``model.pt``) and
writes the results with :func:`write_stamp_fits`.

Goodness of fit: the whitened residual :math:`w` (residual in units of the noise,
:meth:`~surrogate.models.forward.StationaryNormal.whiten`) gives

- ``chi2_per_pixel_galaxy``: :math:`\frac{1}{|G|}\sum_{j \in G} w_j^2` over the galaxy's
  segmentation :math:`G` (:attr:`~surrogate.pipelines.real_stamps.PreparedStamp.segmentation`);
- ``chi2_per_pixel_stamp``: the same over the model pixels that hold observed sky
  (:attr:`~surrogate.pipelines.real_stamps.PreparedStamp.footprint`);
- ``chi2_per_pixel``: :math:`\chi^2 / S^2` over the whole stamp, noise padding included (the
  quantity the fit minimises, with the prior).

All are about 1 for a model that describes the galaxy down to the noise.

Output of :func:`write_stamp_fits` (all files written atomically):

- ``fit.h5``: per galaxy (``N`` of them, ``S x S`` model stamps): ``observed``, ``model_image``
  (PSF * profile), ``profile`` (the MAP PSF-free profile), ``residual_sigma`` (whitened
  residual), ``segmentation`` and ``footprint`` (bool), ``noise_power`` (counts²), ``psf``
  ``(N, P, P)``, ``latent`` ``(N, D)``, and ``(N,)`` ``chi2_per_pixel_galaxy``,
  ``chi2_per_pixel_stamp``, ``chi2_per_pixel``, ``magnitude``, ``half_light_radius``,
  ``catalog_magnitude``, ``psf_sum``, ``profile_flux``, ``log_posterior``, ``offset`` ``(N, 2)``
  (fitted centre ``(dx, dy)`` from the light centroid, arcsec), ``name``,
  ``magnitude_source``; each dataset has a ``unit`` attribute, the file ``pixel_scale_arcsec``,
  ``noise_model`` and ``chi2_definition``.
- ``fit_NN.png``: observed | model | residual (sigma) | PSF-free profile, per galaxy.
- ``summary.json``: per galaxy values and the medians.

References:
    Lanusse et al. (2021), arXiv:2008.03833, section 6 (MAP deconvolution of observed stamps
    with the VAE as prior).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surrogate.checks import ExtrapolationWarning, check_int
from surrogate.data.real_galaxies import RealStamp
from surrogate.models.galaxy_vae import GalaxyVAE
from surrogate.pipelines.forward import MAPFit, fit_map
from surrogate.pipelines.real_stamps import PreparedStamp, prepare_stamp

__all__ = ["StampFits", "fit_run", "fit_stamps", "write_stamp_fits"]


@dataclass
class StampFits:
    """What :func:`fit_stamps` found for ``N`` stamps.

    Attributes:
        stamps: the stamps on the model's grid (:class:`~surrogate.pipelines.real_stamps.PreparedStamp`).
        fit: the :class:`~surrogate.pipelines.forward.MAPFit` of all of them.
        chi2_per_pixel_galaxy: ``(N,)`` mean squared whitened residual over the galaxy's pixels.
        chi2_per_pixel_stamp: ``(N,)`` the same over the observed model pixels.
        pixel_scale: the model's arcsec/pixel.
        noise_model: ``"correlated"`` or ``"white"``.
    """

    stamps: list[PreparedStamp]
    fit: MAPFit
    chi2_per_pixel_galaxy: np.ndarray
    chi2_per_pixel_stamp: np.ndarray
    pixel_scale: float
    noise_model: str

    def summary(self) -> dict[str, Any]:
        """Per-galaxy values and medians (plain data for JSON)."""
        chi2 = self.fit.chi2_per_pixel.cpu().numpy()
        flux = self.fit.profile.sum(dim=(1, 2, 3)).cpu().numpy()
        offset = self.fit.offset.cpu().numpy()
        rows = [{"name": p.name, "chi2_per_pixel_galaxy": float(self.chi2_per_pixel_galaxy[k]),
                 "chi2_per_pixel_stamp": float(self.chi2_per_pixel_stamp[k]), "chi2_per_pixel": float(chi2[k]),
                 "galaxy_pixels": int(p.segmentation.sum()), "magnitude": p.magnitude,
                 "magnitude_source": p.magnitude_source, "half_light_radius_arcsec": p.half_light_radius,
                 "half_light_radius_source": p.half_light_radius_source, "catalog_magnitude": p.catalog_magnitude,
                 "psf_sum": p.psf_sum, "profile_flux": float(flux[k]), "observed_flux": float(p.observed.sum()),
                 "centroid_arcsec": list(p.centroid),
                 "offset_arcsec": [float(v) * self.pixel_scale for v in offset[k]]} for k, p in enumerate(self.stamps)]
        return {"noise_model": self.noise_model, "pixel_scale_arcsec": self.pixel_scale,
                "median_chi2_per_pixel_galaxy": float(np.median(self.chi2_per_pixel_galaxy)),
                "median_chi2_per_pixel_stamp": float(np.median(self.chi2_per_pixel_stamp)),
                "median_chi2_per_pixel": float(np.median(chi2)), "galaxies": rows}


def _per_stamp(value: float | Sequence[float | None] | None, n: int, name: str) -> list[float | None]:
    if value is None or isinstance(value, (int, float)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} must be one value or {n} values (one per stamp), got {len(values)}")
    return values


def fit_stamps(vae: GalaxyVAE, stamps: Sequence[RealStamp], *, pixel_scale: float, zero_point: float | None = None,
               magnitude: float | Sequence[float | None] | None = None,
               half_light_radius: float | Sequence[float | None] | None = None, white_noise: bool = False,
               steps: int = 300, learning_rate: float = 0.05, seed: int = 0, noise_field: int = 192,
               fit_offset: bool = True) -> StampFits:
    """MAP fits of real stamps: resampled to the model's grid, own PSF, correlated noise.

    Arguments:
        vae: the trained model with its flow prior (weights unchanged).
        stamps: the observed galaxies at their own pixel scales.
        pixel_scale: the model's arcsec/pixel (``model.pt`` config ``pixel_scale``).
        zero_point: AB magnitude of 1 count in the model's flux unit (``model.pt`` config
            ``zero_point``), to estimate magnitudes that are not given.
        magnitude: the prior's magnitudes, AB mag in the model's system: one value, one per
            stamp (``None`` entries estimated), or ``None`` (all estimated).
        half_light_radius: the prior's PSF-free half-light radii, arcsec, likewise.
        white_noise: white noise of each stamp's pixel variance instead of its correlations.
        steps, learning_rate: Adam iterations and rate of :func:`~surrogate.pipelines.forward.fit_map`.
        seed: seed of the noise padding and noise-power realisations.
        noise_field: side of the noise field of the power-spectrum estimate, model pixels.
        fit_offset: fit each galaxy's sub-pixel centre with its latents (within
            :data:`~surrogate.pipelines.forward.MAX_OFFSET` pixels of the light centroid on
            which the stamp was centred); ``False`` keeps the centroid.

    Returns:
        A :class:`StampFits`.

    Warns:
        ExtrapolationWarning: a stamp's magnitude or radius outside the training range (named).
        UserWarning: a PSF whose sum is not 1 within 1 % (named).

    Raises:
        ValueError: no stamps; magnitudes that can be neither read nor estimated.
    """
    stamps = list(stamps)
    if not stamps:
        raise ValueError("fit_stamps: no stamps to fit")
    check_int("steps", steps, minimum=0)
    n = len(stamps)
    mags, radii = _per_stamp(magnitude, n, "magnitude"), _per_stamp(half_light_radius, n, "half_light_radius")
    S = vae.stamp_size
    # one PSF size for the batch: the largest any stamp needs (odd, at most S)
    prepared = [prepare_stamp(s, pixel_scale=pixel_scale, stamp_size=S, zero_point=zero_point, magnitude=m,
                              half_light_radius=r, white_noise=white_noise, seed=seed + k, noise_field=noise_field)
                for k, (s, m, r) in enumerate(zip(stamps, mags, radii))]
    size = max(p.psf.shape[0] for p in prepared)
    if any(p.psf.shape[0] != size for p in prepared):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the PSF sums were reported above
            prepared = [prepare_stamp(s, pixel_scale=pixel_scale, stamp_size=S, zero_point=zero_point,
                                      magnitude=p.magnitude, half_light_radius=p.half_light_radius, psf_size=size,
                                      white_noise=white_noise, seed=seed + k, noise_field=noise_field)
                        for k, (s, p) in enumerate(zip(stamps, prepared))]
    m = torch.tensor([p.magnitude for p in prepared])
    r = torch.tensor([p.half_light_radius for p in prepared])
    for p in prepared:
        vae.warn_extrapolation(p.magnitude, p.half_light_radius, where=p.name)
    observed = torch.from_numpy(np.stack([p.observed for p in prepared])).float()[:, None]
    psf = torch.from_numpy(np.stack([p.psf for p in prepared])).float()[:, None]
    power = torch.from_numpy(np.stack([p.noise_power for p in prepared])).float()[:, None]
    with warnings.catch_warnings():
        # named per stamp just above; fit_map would repeat them for the whole batch
        warnings.simplefilter("ignore", ExtrapolationWarning)
        fit = fit_map(vae, observed, psf, magnitude=m, half_light_radius=r, noise_power=power, steps=steps,
                      learning_rate=learning_rate, fit_offset=fit_offset)
    w2 = fit.residual_sigma[:, 0].square().cpu().numpy()
    seg = np.stack([p.segmentation for p in prepared])
    foot = np.stack([p.footprint for p in prepared])
    chi2_galaxy = (w2 * seg).sum(axis=(1, 2)) / np.maximum(seg.sum(axis=(1, 2)), 1)
    chi2_stamp = (w2 * foot).sum(axis=(1, 2)) / np.maximum(foot.sum(axis=(1, 2)), 1)
    return StampFits(stamps=prepared, fit=fit, chi2_per_pixel_galaxy=chi2_galaxy, chi2_per_pixel_stamp=chi2_stamp,
                     pixel_scale=float(pixel_scale), noise_model="white" if white_noise else "correlated")


CHI2_DEFINITION = ("chi2 = (1/N) sum_k |FFT(observed - model)_k|^2 / P_k (Whittle; P_k the noise power spectrum, "
                   "counts^2); per pixel: mean squared whitened residual over the galaxy's segmentation "
                   "(chi2_per_pixel_galaxy), the observed model pixels (chi2_per_pixel_stamp), the whole stamp "
                   "(chi2_per_pixel)")


def _plot(path: Path, p: PreparedStamp, model: np.ndarray, residual: np.ndarray, profile: np.ndarray,
          chi2_galaxy: float, chi2_stamp: float, scale: float) -> None:
    from matplotlib.figure import Figure

    from surrogate.metrics.plots import save_figure

    figure = Figure(figsize=(11.5, 3.3), layout="constrained")
    S = p.observed.shape[0]
    extent = (-S * scale / 2, S * scale / 2, -S * scale / 2, S * scale / 2)
    vmax = max(float(p.observed.max()), float(model.max()))
    vmin = min(0.0, float(np.percentile(p.observed, 1)))
    panels = [("observed", p.observed, dict(cmap="magma", vmin=vmin, vmax=vmax)),
              ("model: PSF * profile", model, dict(cmap="magma", vmin=vmin, vmax=vmax)),
              (f"residual / sigma (galaxy {chi2_galaxy:.2f}, stamp {chi2_stamp:.2f})", residual,
               dict(cmap="RdBu_r", vmin=-4, vmax=4)),
              ("MAP profile (PSF-free)", profile, dict(cmap="magma", vmin=vmin, vmax=float(profile.max())))]
    for i, (title, image, style) in enumerate(panels):
        axis = figure.add_subplot(1, 4, i + 1)
        shown = axis.imshow(image, origin="lower", extent=extent, interpolation="nearest", **style)
        if i == 2:
            axis.contour(p.segmentation.astype(float), levels=[0.5], colors="k", linewidths=0.6, extent=extent)
        axis.set_title(title, fontsize=8)
        axis.set_xlabel("arcsec", fontsize=7)
        axis.tick_params(labelsize=6)
        figure.colorbar(shown, ax=axis, shrink=0.8).ax.tick_params(labelsize=6)
    figure.suptitle(f"{p.name}: m = {p.magnitude:.2f} ({p.magnitude_source}), r_1/2 = {p.half_light_radius:.3f} arcsec "
                    f"({p.half_light_radius_source}), PSF sum {p.psf_sum:.3f}", fontsize=9)
    save_figure(figure, path)


def write_stamp_fits(result: StampFits, out_dir: str | os.PathLike, *, attributes: dict[str, Any] | None = None
                     ) -> Path:
    """Writes ``fit.h5``, ``fit_NN.png`` per galaxy and ``summary.json`` into ``out_dir`` (atomically).

    Arguments:
        result: the fits.
        out_dir: output folder (created).
        attributes: extra file attributes of ``fit.h5`` (plain strings and numbers).

    Returns:
        The path of ``fit.h5``.
    """
    import h5py

    from surrogate.data.hdf5 import atomic_output
    from surrogate.metrics.report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fit = result.fit
    model = fit.model_image[:, 0].cpu().numpy()
    residual = fit.residual_sigma[:, 0].cpu().numpy()
    profile = fit.profile[:, 0].cpu().numpy()
    p = result.stamps
    arrays = {
        "observed": (np.stack([s.observed for s in p]), "counts"),
        "model_image": (model, "counts"),
        "profile": (profile, "counts"),
        "residual_sigma": (residual, "sigma"),
        "segmentation": (np.stack([s.segmentation for s in p]), "bool"),
        "footprint": (np.stack([s.footprint for s in p]), "bool"),
        "noise_power": (np.stack([s.noise_power for s in p]), "counts^2"),
        "psf": (np.stack([s.psf for s in p]), "1"),
        "latent": (fit.latent.cpu().numpy(), "1"),
        "chi2_per_pixel_galaxy": (result.chi2_per_pixel_galaxy, "1"),
        "chi2_per_pixel_stamp": (result.chi2_per_pixel_stamp, "1"),
        "chi2_per_pixel": (fit.chi2_per_pixel.cpu().numpy(), "1"),
        "log_posterior": (fit.log_posterior.cpu().numpy(), "nats"),
        "magnitude": (np.array([s.magnitude for s in p]), "mag"),
        "half_light_radius": (np.array([s.half_light_radius for s in p]), "arcsec"),
        "catalog_magnitude": (np.array([s.catalog_magnitude for s in p]), "mag"),
        "psf_sum": (np.array([s.psf_sum for s in p]), "1"),
        "profile_flux": (profile.sum(axis=(1, 2)), "counts"),
        "centroid": (np.array([s.centroid for s in p]), "arcsec"),
        "offset": (fit.offset.cpu().numpy() * result.pixel_scale, "arcsec"),
    }
    path = out / "fit.h5"
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for key, (value, unit) in arrays.items():
            f.create_dataset(key, data=value).attrs["unit"] = unit
        f.create_dataset("name", data=np.array([s.name for s in p], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("magnitude_source", data=np.array([s.magnitude_source for s in p], dtype=object),
                         dtype=h5py.string_dtype())
        f.attrs.update({"pixel_scale_arcsec": result.pixel_scale, "noise_model": result.noise_model,
                        "chi2_definition": CHI2_DEFINITION, **(attributes or {})})
    for k, s in enumerate(p):
        _plot(out / f"fit_{k:02d}.png", s, model[k], residual[k], profile[k], float(result.chi2_per_pixel_galaxy[k]),
              float(result.chi2_per_pixel_stamp[k]), result.pixel_scale)
    write_report(out / "summary.json", {**result.summary(), "chi2_definition": CHI2_DEFINITION,
                                        "files": ["fit.h5", *(f"fit_{k:02d}.png" for k in range(len(p)))],
                                        **(attributes or {})})
    return path


def fit_run(run_dir: str | os.PathLike, stamps: Sequence[RealStamp], out_dir: str | os.PathLike, *,
            magnitude: float | Sequence[float | None] | None = None,
            half_light_radius: float | Sequence[float | None] | None = None, white_noise: bool = False,
            steps: int = 300, learning_rate: float = 0.05, seed: int = 0, device: str = "cpu",
            fit_offset: bool = True) -> StampFits:
    """:func:`fit_stamps` with the model of a ``galaxy_vae`` run; writes :func:`write_stamp_fits`.

    Arguments:
        run_dir: the run folder (its ``model.pt``) or a checkpoint file.
        stamps: the observed galaxies (e.g. :func:`~surrogate.data.real_galaxies.read_real_galaxy_catalog`).
        out_dir: output folder.
        magnitude, half_light_radius, white_noise, steps, learning_rate, seed, fit_offset: as in
            :func:`fit_stamps`.
        device: where the model runs.

    Returns:
        The :class:`StampFits` (also written to ``out_dir``).

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: a checkpoint without a pixel scale; without a zero point when a magnitude
            must be estimated (named, with the remedy).
    """
    from surrogate.pipelines.galaxy_vae import load_galaxy_vae
    from surrogate.train.checkpoint import checkpoint_config, find_checkpoint

    path = Path(run_dir)
    path = path / "model.pt" if path.is_dir() else path
    if not path.is_file():
        path = find_checkpoint(run_dir)
    config = checkpoint_config(path)
    scale = config.get("pixel_scale")
    if not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"{path}: no pixel_scale (arcsec/pixel) in the checkpoint's config; not a galaxy_vae model")
    zero_point = config.get("zero_point")
    needs = [m is None for m in _per_stamp(magnitude, len(stamps), "magnitude")]
    if zero_point is None and any(needs):
        raise ValueError(f"{path}: the checkpoint records no magnitude zero point (trained before it was stored); "
                         "give the magnitudes (--magnitude) or retrain")
    vae = load_galaxy_vae(path, device=device)
    result = fit_stamps(vae, stamps, pixel_scale=float(scale), zero_point=zero_point, magnitude=magnitude,
                        half_light_radius=half_light_radius, white_noise=white_noise, steps=steps,
                        learning_rate=learning_rate, seed=seed, fit_offset=fit_offset)
    write_stamp_fits(result, out_dir, attributes={"model": str(path), "steps": int(steps), "fit_offset": int(fit_offset),
                                                  "learning_rate": float(learning_rate), "seed": int(seed),
                                                  "zero_point": math.nan if zero_point is None else float(zero_point)})
    return result

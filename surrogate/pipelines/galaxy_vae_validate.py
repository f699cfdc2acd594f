"""The sampling and validation stages of the ``galaxy_vae`` family (with trained models).

- :func:`sample`: one VAE galaxy per held-out GalSim stamp, with the same magnitude and
  half-light radius, convolved with the same PSF and given noise of the same variance.
- :func:`validate`: morphology statistics of the two sets (:mod:`surrogate.metrics.morphology`:
  HSM size, shape and |g|, flux, half-light radius, concentration, Gini, M20) compared with KS
  distances, for the observed stamps and for the PSF-free profiles (generated vs GalSim's
  noiseless truth), the PSF-free means of size and shape beside Lanusse et al.'s figures, and
  the pictures of both. Statistics that are NaN for a stamp (HSM failure, no positive flux in
  the segmentation region, ...) are left out of the KS distances, counted in the report and
  announced with a warning.
- :func:`fit_unseen_psf`: the forward-model check: MAP fits
  (:func:`surrogate.pipelines.forward.fit_map`) of galaxies observed through PSFs of a family
  the model never saw in training; chi-squared per pixel and the flux error of the deconvolved
  profiles.
- :func:`reconstruction_chi2`: chi-squared per pixel of the encoder-mean reconstructions.

Stamps are dictionaries of numpy arrays as :func:`surrogate.data.galaxy.read_galaxies` returns
them: ``"observed"`` and ``"profile"`` ``(N, S, S)`` counts per pixel, ``"psf"`` ``(N, P, P)``,
``"noise_variance"`` ``(N,)`` counts², ``"magnitude"`` ``(N,)`` AB mag,
``"half_light_radius"`` ``(N,)`` arcsec.

References:
    Lanusse et al. (2021), arXiv:2008.03833, sections 5 (validation) and 6 (forward model).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surrogate.models.galaxy_vae import GalaxyVAE

__all__ = ["PSF_FREE_ANCHORS", "fit_unseen_psf", "reconstruction_chi2", "sample", "summary", "validate"]

Stamps = Mapping[str, np.ndarray]


def summary(values: np.ndarray) -> dict[str, float]:
    """Mean, median, 10 % and 90 % quantiles and size of ``values``."""
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "median": float(np.median(values)), "p10": float(np.quantile(values, 0.1)),
            "p90": float(np.quantile(values, 0.9)), "n": int(values.size)}


def sample(model: GalaxyVAE, conditions: Stamps, *, seed: int, batch_size: int = 256) -> dict[str, np.ndarray]:
    """One generated galaxy per row of ``conditions``, observed like that row.

    Arguments:
        model: the trained VAE with its flow prior.
        conditions: ``"magnitude"``, ``"half_light_radius"``, ``"psf"`` and
            ``"noise_variance"`` of ``N`` stamps (e.g. the held-out set).
        seed: seed of the latent draws and the pixel noise (torch's global generator is left
            as it was).
        batch_size: galaxies per call of :meth:`GalaxyVAE.sample`.

    Returns:
        ``{"profile": (N, S, S), "observed": (N, S, S)}``: PSF-free profiles and noisy
        observations, counts per pixel.
    """
    n = len(conditions["magnitude"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        profiles = []
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            magnitude = torch.from_numpy(conditions["magnitude"][lo:hi])
            radius = torch.from_numpy(conditions["half_light_radius"][lo:hi])
            profiles.append(model.sample(hi - lo, magnitude=magnitude, half_light_radius=radius).cpu())
        profile = torch.cat(profiles)
        with torch.no_grad():
            clean = model.convolve(profile, torch.from_numpy(conditions["psf"][:, None]))
        noise = torch.randn(clean.shape) * torch.from_numpy(conditions["noise_variance"]).sqrt().view(-1, 1, 1, 1)
    return {"profile": profile[:, 0].numpy(), "observed": (clean + noise)[:, 0].numpy()}


def validate(reference: Stamps, generated: Stamps, out_dir: str | os.PathLike, *, pixel_scale: float,
             grid: int = 8) -> dict[str, Any]:
    """Morphology of generated vs reference galaxies: KS distances and pictures.

    Arguments:
        reference: GalSim stamps (``"observed"``, ``"profile"``, ``"noise_variance"``).
        generated: :func:`sample`'s output for the same conditions.
        out_dir: folder of ``morphology.png``, ``morphology_psf_free.png``, ``stamps.png`` and
            ``stamps_psf_free.png`` (GalSim on top, VAE below, same conditions per column).
        pixel_scale: arcsec per pixel.
        grid: stamps per row of the stamp pictures.

    Returns:
        ``{"ks": {statistic: KS distance of the observed stamps}, "ks_details": (with p-values
        and sample sizes), "ks_psf_free": {statistic: KS distance of the profiles},
        "hsm_failures": {"heldout": n, "generated": n}, "nan_statistics": {"observed" or
        "profile": {"heldout" or "generated": {statistic: number of NaN values}}},
        "psf_free_means": {"heldout" | "generated": {statistic: mean of the PSF-free profiles},
        "anchors": the published figures of :data:`PSF_FREE_ANCHORS`}}``; the NaN values are
        left out of the KS distances and means, and a :class:`UserWarning` names their number
        when there are any.
    """
    from surrogate.metrics.morphology import ks_distances, morphology_statistics, nan_counts
    from surrogate.metrics.morphology_plots import plot_morphology_histograms, plot_stamp_grid

    out = Path(out_dir)
    variance = reference["noise_variance"]
    stats_ref = morphology_statistics(reference["observed"], pixel_scale=pixel_scale, noise_variance=variance)
    stats_gen = morphology_statistics(generated["observed"], pixel_scale=pixel_scale, noise_variance=variance)
    ks = ks_distances(stats_ref, stats_gen)
    free_ref = morphology_statistics(reference["profile"], pixel_scale=pixel_scale)
    free_gen = morphology_statistics(generated["profile"], pixel_scale=pixel_scale)
    ks_free = ks_distances(free_ref, free_gen)
    nan = {"observed": {"heldout": nan_counts(stats_ref), "generated": nan_counts(stats_gen)},
           "profile": {"heldout": nan_counts(free_ref), "generated": nan_counts(free_gen)}}
    _warn_nan(nan, n=len(reference["observed"]))
    plot_morphology_histograms(out / "morphology.png", stats_ref, stats_gen, ks=ks)
    plot_morphology_histograms(out / "morphology_psf_free.png", free_ref, free_gen, ks=ks_free)
    titles = ("GalSim", "VAE")
    plot_stamp_grid(out / "stamps.png", reference["observed"], generated["observed"], n=grid, titles=titles)
    plot_stamp_grid(out / "stamps_psf_free.png", reference["profile"], generated["profile"], n=grid, titles=titles)
    return {
        "ks": {k: v["ks"] for k, v in ks.items()},
        "ks_details": ks,
        "ks_psf_free": {k: v["ks"] for k, v in ks_free.items()},
        "hsm_failures": {"heldout": int((~stats_ref["hsm_ok"]).sum()), "generated": int((~stats_gen["hsm_ok"]).sum())},
        "nan_statistics": nan,
        "psf_free_means": {"heldout": _means(free_ref), "generated": _means(free_gen), "anchors": PSF_FREE_ANCHORS},
    }


PSF_FREE_ANCHORS = {
    "source": "Lanusse et al. 2021, arXiv:2008.03833: VAE with flow prior against COSMOS galaxies at HST resolution",
    "mean_g": {"cosmos": 0.2481, "vae": 0.2578},
}
"""Published figures beside which the report puts the PSF-free means."""


def _means(statistics: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Means (NaN left out) of the PSF-free size and shape statistics: ``g`` (HSM ``|g|``),
    ``sigma`` and ``half_light_radius`` (arcsec), ``concentration``, ``gini``, ``m20``."""
    return {key: float(np.nanmean(statistics[key])) for key in ("g", "sigma", "half_light_radius", "concentration",
                                                                 "gini", "m20")}


def _warn_nan(nan: Mapping[str, Mapping[str, Mapping[str, int]]], n: int) -> None:
    """One warning naming the NaN morphology values (``{images: {sample: {statistic: count}}}``)."""
    total = sum(count for samples in nan.values() for counts in samples.values() for count in counts.values())
    if total == 0:
        return
    parts = [f"{images} {sample}: " + ", ".join(f"{key} {count}" for key, count in counts.items() if count)
             for images, samples in nan.items() for sample, counts in samples.items() if any(counts.values())]
    warnings.warn(f"galaxy_vae validate: {total} NaN morphology statistic value(s) in {n} stamps per sample, "
                  f"left out of the KS distances ({'; '.join(parts)}); see report.json 'nan_statistics'",
                  stacklevel=3)


def _map_fit(model: GalaxyVAE, stamps: Stamps, steps: int, learning_rate: float):
    from surrogate.pipelines.forward import fit_map

    return fit_map(model, torch.from_numpy(stamps["observed"][:, None]), torch.from_numpy(stamps["psf"][:, None]),
                   torch.from_numpy(stamps["noise_variance"]), magnitude=torch.from_numpy(stamps["magnitude"]),
                   half_light_radius=torch.from_numpy(stamps["half_light_radius"]), steps=steps,
                   learning_rate=learning_rate)


def fit_unseen_psf(model: GalaxyVAE, unseen: Stamps, *, heldout: Stamps | None = None,
                   out_dir: str | os.PathLike | None = None, steps: int = 300,
                   learning_rate: float = 0.05) -> dict[str, Any]:
    """The forward-model check: MAP fits of stamps observed through PSFs never seen in training.

    Arguments:
        model: the trained VAE with its flow prior.
        unseen: GalSim stamps (with ``"profile"``, the noiseless truth) observed through PSFs of
            another family or size than the training set's.
        heldout: optionally also fit these stamps (training PSF families) for comparison.
        out_dir: if given, write ``deconvolution.png`` there (columns: fitted stamps; rows:
            observed, model image, residual in sigma, deconvolved profile, GalSim truth).
        steps: Adam iterations of each MAP fit.
        learning_rate: Adam learning rate of the latents.

    Returns:
        ``{"unseen_psf": {chi^2 per pixel summary, "flux_relative_error": summary,
        "chi2_per_pixel": list}, "heldout": summary or None, "dof_note": str}``; a perfect
        model gives chi^2 per pixel of about ``1 - latent_dim / S**2``.
    """
    with torch.random.fork_rng(devices=[]):
        fit = _map_fit(model, unseen, steps, learning_rate)
        held = _map_fit(model, heldout, steps, learning_rate) if heldout is not None else None
    chi2 = fit.chi2_per_pixel.cpu().numpy()
    profile = fit.profile.cpu().numpy()[:, 0]
    model_image = fit.model_image.cpu().numpy()[:, 0]
    truth = unseen["profile"]
    flux_error = (profile.sum(axis=(1, 2)) - truth.sum(axis=(1, 2))) / truth.sum(axis=(1, 2))
    if out_dir is not None:
        residual = (unseen["observed"] - model_image) / np.sqrt(unseen["noise_variance"])[:, None, None]
        _plot_deconvolution(Path(out_dir) / "deconvolution.png", [
            ("observed (unseen PSF)", unseen["observed"]), ("model PSF * G(z)", model_image),
            ("residual / sigma", residual), ("deconvolved G(z)", profile), ("GalSim truth", truth)], chi2)
    return {
        "unseen_psf": {**summary(chi2), "flux_relative_error": summary(flux_error), "chi2_per_pixel": chi2.tolist()},
        "heldout": summary(held.chi2_per_pixel.cpu().numpy()) if held is not None else None,
        "dof_note": "chi2 per pixel of a perfect model is about 1 - latent_dim / stamp_size**2",
    }


@torch.no_grad()
def reconstruction_chi2(model: GalaxyVAE, stamps: Stamps, *, batch_size: int = 512) -> np.ndarray:
    """Chi-squared per pixel of ``PSF * G(mean of q(z|x))`` against each observed stamp (no fit).

    Returns:
        ``(N,)`` values; about 1 for a model that reconstructs the stamps down to the noise.
    """
    device = next(model.parameters()).device
    out = []
    for lo in range(0, len(stamps["observed"]), batch_size):
        x = torch.from_numpy(stamps["observed"][lo:lo + batch_size, None]).to(device)
        psf = torch.from_numpy(stamps["psf"][lo:lo + batch_size, None]).to(device)
        recon = model.convolve(model.decode(model.encode(x).mean), psf)
        out.append(((x - recon) ** 2).mean(dim=(1, 2, 3)).cpu().numpy())
    return np.concatenate(out) / stamps["noise_variance"]


def _plot_deconvolution(path: Path, rows: list[tuple[str, np.ndarray]], chi2: np.ndarray, n: int = 6) -> None:
    """Columns = fitted stamps; rows = (label, (N, S, S) images); a row labelled 'residual' is in sigma."""
    from matplotlib.figure import Figure

    from surrogate.metrics.plots import save_figure

    n = min(n, len(chi2))
    figure = Figure(figsize=(1.5 * n, 1.5 * len(rows)), layout="constrained")
    for i in range(n):
        for r, (label, images) in enumerate(rows):
            axis = figure.add_subplot(len(rows), n, r * n + i + 1)
            if label.startswith("residual"):
                axis.imshow(images[i], origin="lower", cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest")
            else:
                axis.imshow(images[i], origin="lower", cmap="magma", interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_ylabel(label, fontsize=7)
            if r == 0:
                axis.set_title(f"chi2/pix {chi2[i]:.2f}", fontsize=7)
    save_figure(figure, path)

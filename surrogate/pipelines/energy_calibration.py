r"""Baselines and metrics of :func:`surrogate.pipelines.energy_inference.compare_energy_calibration`.

Three estimates of the incident energy of held-out showers, each a point estimate and a 16-84 %
interval in GeV:

- **Standard calibration** (:func:`fit_standard_calibration`): :math:`E_\mathrm{reco} =
  E_\mathrm{tot} / k`, :math:`k = \langle E_\mathrm{tot} / E_\mathrm{inc} \rangle` fitted on a
  calibration sample with known energies (the flow's training showers by default); its interval
  is Gaussian, :math:`E_\mathrm{reco}\,(1 \pm \sigma_b)`, with :math:`\sigma_b` the standard
  deviation of :math:`E_\mathrm{reco}/E_\mathrm{true}` in energy bin :math:`b` of the same
  calibration sample, the bin chosen by :math:`E_\mathrm{reco}` (clipped to the first/last bin).
- **Flow posterior** (:func:`~surrogate.pipelines.energy_inference.energy_posterior`): median
  and 16/84 % quantiles.
- **NPE** (:func:`npe_energy_estimates`): :func:`~surrogate.pipelines.npe_training.train_npe`
  with :math:`\theta = E_\mathrm{inc}` and :math:`x` the cells in GeV, z-scored with one mean and
  standard deviation for all cells (``z_score_x="structured"``: the embedding sees the cells'
  relative sizes, so a weighted sum like :math:`E_\mathrm{tot}` is one linear layer away; z-scoring
  each cell alone measured a 15 % bias at 1-10 GeV and twice the resolution), through an
  :class:`~surrogate.nn.embeddings.MLPEmbedding`, trained on the calibration sample; median and
  16/84 % quantiles of posterior samples.

:func:`calibration_metrics` gives, per bin of true energy, the bias :math:`\langle E_\mathrm{reco}
/ E_\mathrm{true} \rangle - 1`, the resolution :math:`\mathrm{std}(E_\mathrm{reco} /
E_\mathrm{true})` and the coverage of the 16-84 % interval (nominal 0.68).

References:
    Du et al. (2024), arXiv:2404.18992; Papamakarios & Murray (2016), arXiv:1605.06376.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "METHODS",
    "StandardCalibration",
    "bin_fractions",
    "bin_label",
    "calibration_metrics",
    "fit_standard_calibration",
    "npe_energy_estimates",
    "plot_energy_calibration",
    "run_data_files",
    "total_energy",
]

METHOD_LABELS = {"calibration": "E_tot / <E_tot/E_inc>", "flow": "flow posterior (median)", "npe": "NPE (median)"}
METHODS = {
    "calibration": {"estimate": "E_tot / k, k = <E_tot / E_inc> on the calibration sample",
                    "interval": "Gaussian: E_reco (1 -+ sigma_b), sigma_b the calibration sample's std(E_reco / "
                                "E_true) in the bin of E_reco"},
    "flow": {"estimate": "posterior median", "interval": "posterior 16 % and 84 % quantiles"},
    "npe": {"estimate": "posterior median", "interval": "16 % and 84 % quantiles of posterior samples"},
}
"""What each method's point estimate and interval are (written into the report)."""


def bin_label(low: float, high: float) -> str:
    """``"1-10 GeV"``: the label of a bin, as in the validation report."""
    return f"{low:g}-{high:g} GeV"


def _in_bin(energy: np.ndarray, low: float, high: float, top: float) -> np.ndarray:
    """``low <= E < high``; the bin ending at the largest edge ``top`` includes it."""
    return (energy >= low) & ((energy < high) | ((high == top) & (energy == high)))


def total_energy(cells: Mapping[str, np.ndarray], threshold_mev: float) -> np.ndarray:
    """Deposited energy ``(N,)`` in GeV: cells ``{layer: (N, *shape)}`` in MeV at or above
    ``threshold_mev``, summed over all layers."""
    return sum(np.where(c >= threshold_mev, c, 0.0).reshape(len(c), -1).sum(axis=1, dtype=np.float64)
               for c in cells.values()) / 1000.0


@dataclass(frozen=True)
class StandardCalibration:
    """``E_reco = E_tot / constant`` with a per-bin relative resolution.

    Attributes:
        constant: :math:`\\langle E_\\mathrm{tot} / E_\\mathrm{inc} \\rangle` on the calibration sample.
        bins_gev: ``K`` bins ``(low, high)`` in GeV.
        resolution: ``(K,)`` std of ``E_reco / E_true`` per bin on the calibration sample.
    """

    constant: float
    bins_gev: tuple[tuple[float, float], ...]
    resolution: np.ndarray

    def estimate(self, e_tot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(E_reco, low, high)`` ``(N,)`` GeV for deposits ``e_tot`` ``(N,)`` GeV: the
        Gaussian 68 % interval ``E_reco (1 -+ sigma_b)``, ``b`` the bin of ``E_reco`` (clipped)."""
        reco = np.asarray(e_tot, np.float64) / self.constant
        lows = np.array([b[0] for b in self.bins_gev])
        which = np.clip(np.searchsorted(lows, reco, side="right") - 1, 0, len(lows) - 1)
        sigma = self.resolution[which]
        return reco, reco * (1.0 - sigma), reco * (1.0 + sigma)


def fit_standard_calibration(e_tot: np.ndarray, e_true: np.ndarray, bins_gev: Sequence[Sequence[float]]
                             ) -> StandardCalibration:
    """Fits :class:`StandardCalibration` on a calibration sample.

    Arguments:
        e_tot: deposited energies ``(N,)`` in GeV.
        e_true: incident energies ``(N,)`` in GeV.
        bins_gev: bins ``(low, high)`` in GeV, increasing.

    Raises:
        ValueError: lengths differ, no deposit, or a bin without two calibration showers.
    """
    e_tot, e_true = np.asarray(e_tot, np.float64), np.asarray(e_true, np.float64)
    if e_tot.shape != e_true.shape or e_tot.ndim != 1 or not np.any(e_tot > 0):
        raise ValueError(f"need e_tot and e_true of one shape (N,) with deposits, got {e_tot.shape}, {e_true.shape}")
    constant = float(np.mean(e_tot / e_true))
    bins = tuple((float(lo), float(hi)) for lo, hi in bins_gev)
    top, ratio, sigma = max(hi for _, hi in bins), e_tot / constant / e_true, []
    for lo, hi in bins:
        mask = _in_bin(e_true, lo, hi, top)
        if mask.sum() < 2:
            raise ValueError(f"calibration sample has {int(mask.sum())} showers in {bin_label(lo, hi)}; need >= 2")
        sigma.append(float(np.std(ratio[mask], ddof=1)))
    return StandardCalibration(constant, bins, np.array(sigma))


def npe_energy_estimates(train_cells: Mapping[str, np.ndarray], train_energy: np.ndarray,
                         cells: Mapping[str, np.ndarray], *, energy_range_gev: tuple[float, float],
                         threshold_mev: float, num_samples: int = 500, embedding_features: int = 16,
                         seed: int = 0, progress: bool = True, **train_kwargs: Any
                         ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]:
    """NPE of the incident energy from the cells: trained on ``train_*``, applied to ``cells``.

    Arguments:
        train_cells, cells: ``{layer: (N, *shape)}`` in MeV (thresholded at ``threshold_mev``,
            flattened, in GeV).
        train_energy: ``(N,)`` incident energies in GeV.
        energy_range_gev: the uniform prior's ``(low, high)`` in GeV.
        threshold_mev: readout threshold in MeV.
        num_samples: posterior samples per shower.
        embedding_features: summary size of the MLP embedding (hidden widths 128, 64).
        seed: seeds the embedding's initialisation and training.
        progress: progress bar of training.
        train_kwargs: override :func:`~surrogate.pipelines.npe_training.train_npe` settings
            (defaults: ``kind="maf_rqs"``, 3 transforms of width 32, ``z_score_x="structured"``,
            ``batch_size=256``, ``max_epochs=150``, ``patience=20``, ``lr_schedule="cosine"``).

    Returns:
        ``((median, q16, q84) each (M,) GeV, info)``, ``info`` with epochs, seconds, validation loss.
    """
    from surrogate.nn.embeddings import MLPEmbedding
    from surrogate.pipelines.npe_training import train_npe

    def features(c: Mapping[str, np.ndarray]) -> torch.Tensor:
        flat = [np.where(v >= threshold_mev, v, 0.0).reshape(len(v), -1) for v in c.values()]
        return torch.as_tensor(np.concatenate(flat, axis=1) / 1000.0, dtype=torch.float32)

    x_train, x = features(train_cells), features(cells)
    low, high = (torch.tensor([float(v)]) for v in energy_range_gev)
    prior = torch.distributions.Independent(torch.distributions.Uniform(low, high), 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        embedding = MLPEmbedding(x_train.shape[1], embedding_features, hidden_features=(128, 64))
    settings = {"kind": "maf_rqs", "flow_kwargs": {"hidden_features": 32, "num_transforms": 3},
                "z_score_x": "structured", "batch_size": 256, "max_epochs": 150, "patience": 20,
                "lr_schedule": "cosine", **train_kwargs}
    theta = torch.as_tensor(np.asarray(train_energy, np.float32)[:, None])
    result = train_npe(theta, x_train, prior=prior, embedding_net=embedding, seed=seed, progress=progress, **settings)
    out = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        for start in range(0, len(x), 256):
            draws = result.posterior.sample((num_samples,), x=x[start:start + 256])[..., 0].double()  # (S, B)
            out.append(torch.quantile(draws, torch.tensor([0.5, 0.16, 0.84], dtype=torch.float64), dim=0))
    median, q16, q84 = torch.cat(out, dim=1).numpy()
    info = {"epochs": result.epochs, "train_seconds": result.train_seconds, "num_train": result.num_train,
            "best_validation_loss": result.best_validation_loss, "num_samples": num_samples,
            "settings": {k: v for k, v in settings.items()}, "embedding": f"MLPEmbedding({x_train.shape[1]}, "
            f"{embedding_features}, hidden_features=(128, 64))"}
    return (median, q16, q84), info


def calibration_metrics(estimate: np.ndarray, low: np.ndarray, high: np.ndarray, e_true: np.ndarray,
                        bins_gev: Sequence[Sequence[float]]) -> dict[str, dict[str, float | int]]:
    """Per bin of true energy: ``n``, ``bias`` (mean of E_reco/E_true - 1), ``resolution``
    (std of E_reco/E_true), ``coverage`` (fraction with ``low <= E_true <= high``), and the
    standard errors ``bias_error`` (resolution / sqrt(n)) and ``coverage_error`` (binomial).

    Arguments:
        estimate, low, high: point estimates and interval ends ``(N,)`` in GeV.
        e_true: ``(N,)`` incident energies in GeV.
        bins_gev: bins ``(low, high)`` in GeV.

    Returns:
        ``{bin label: {"n", "bias", "bias_error", "resolution", "coverage", "coverage_error"}}``
        (NaN where a bin has too few showers).
    """
    top, out = max(float(hi) for _, hi in bins_gev), {}
    ratio = np.asarray(estimate, np.float64) / e_true
    covered = (np.asarray(low) <= e_true) & (e_true <= np.asarray(high))
    for lo, hi in bins_gev:
        mask = _in_bin(e_true, float(lo), float(hi), top) & np.isfinite(ratio)
        n, nan = int(mask.sum()), float("nan")
        resolution = float(ratio[mask].std(ddof=1)) if n > 1 else nan
        coverage = float(covered[mask].mean()) if n else nan
        out[bin_label(lo, hi)] = {
            "n": n, "bias": float(ratio[mask].mean() - 1.0) if n else nan,
            "bias_error": resolution / math.sqrt(max(n, 1)), "resolution": resolution, "coverage": coverage,
            "coverage_error": math.sqrt(coverage * (1 - coverage) / n) if n else nan}
    return out


def bin_fractions(mask: np.ndarray, e_true: np.ndarray, bins_gev: Sequence[Sequence[float]]) -> dict[str, float]:
    """Fraction of ``mask`` ``(N,)`` (bool) that is true per bin of ``e_true`` ``(N,)`` GeV (NaN if empty)."""
    top = max(float(hi) for _, hi in bins_gev)
    selections = {bin_label(lo, hi): _in_bin(e_true, float(lo), float(hi), top) for lo, hi in bins_gev}
    return {label: float(mask[s].mean()) if s.any() else float("nan") for label, s in selections.items()}


def plot_energy_calibration(path: str | os.PathLike, bins_gev: Sequence[Sequence[float]],
                            metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> None:
    """Bias, resolution and 16-84 % coverage vs incident energy, one series per method.

    Arguments:
        path: PNG file.
        bins_gev: ``K`` bins ``(low, high)`` in GeV.
        metrics: ``{method: {bin label: {"bias", "resolution", "coverage"}}}`` (:func:`calibration_metrics`).
    """
    from matplotlib.figure import Figure

    from surrogate.metrics.plots import save_figure

    centre = np.array([(lo + hi) / 2 for lo, hi in bins_gev])
    half = np.array([(hi - lo) / 2 for lo, hi in bins_gev])
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    axes = figure.subplots(1, 3)
    for offset, (method, rows) in enumerate(metrics.items()):
        for ax, key in zip(axes, ("bias", "resolution", "coverage")):
            values = [rows[bin_label(lo, hi)][key] for lo, hi in bins_gev]
            errors = [rows[bin_label(lo, hi)].get(f"{key}_error", 0.0) for lo, hi in bins_gev]
            ax.errorbar(centre * (1 + 0.02 * (offset - 1)), values, xerr=half, yerr=errors, fmt="os^"[offset % 3],
                        label=METHOD_LABELS.get(method, method), markerfacecolor="none" if offset else None)
    axes[0].axhline(0.0, color="0.5", linewidth=0.8)
    axes[2].axhline(0.68, color="0.5", linewidth=0.8, linestyle="--", label="nominal 0.68")
    for ax, label in zip(axes, ("bias <E_reco/E_true> - 1", "resolution std(E_reco/E_true)", "16-84 % coverage")):
        ax.set_xlabel("incident energy [GeV]")
        ax.set_ylabel(label)
    axes[2].legend(fontsize=7)
    save_figure(figure, path)


def run_data_files(config: Mapping[str, Any]) -> tuple[Path, Path]:
    """``(train_file, reference_file)`` of a calo_flow run from its checkpoint's config: the
    ``[data]`` files, else the recipes' outputs under ``output_dir/data`` (as the pipeline writes them).

    Raises:
        FileNotFoundError: a file is missing (not simulated yet: run the pipeline or pass the path).
    """
    from surrogate.config import load_simulate_recipe

    data, out = config.get("data") or {}, []
    for kind in ("train", "reference"):
        path = data.get(f"{kind}_file")
        if path is None and data.get(f"{kind}_recipe") is not None:
            name = Path(load_simulate_recipe(data[f"{kind}_recipe"]).output).name
            path = Path(config["run"]["output_dir"]) / "data" / name
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(f"the run's {kind} showers ({path}) are not there; pass the file explicitly")
        out.append(Path(path))
    return out[0], out[1]

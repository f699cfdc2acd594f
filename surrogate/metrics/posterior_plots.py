"""PNG plots for posterior estimation: pair plots of samples and calibration (coverage) plots.

Figures are :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas, so nothing here
selects a backend or touches ``pyplot``'s global state; PNGs are written atomically by
:func:`surrogate.metrics.plots.save_figure`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy import stats

from surrogate.metrics.coverage import CoverageResult
from surrogate.metrics.plots import save_figure

__all__ = ["plot_coverage", "plot_pairs"]

_COLORS = ("0.3", "tab:red", "tab:blue", "tab:green", "tab:orange")


def _as_array(samples, name: str) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"samples {name!r} must have shape (N, D), got {array.shape}")
    return array


def plot_pairs(
    samples: Mapping[str, np.ndarray | torch.Tensor],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    true_parameters: np.ndarray | torch.Tensor | None = None,
    limits: Sequence[tuple[float, float]] | None = None,
    max_points: int = 3000,
    bins: int = 50,
    title: str | None = None,
    dpi: int = 80,
) -> None:
    """Pair plot (corner plot) of one or more sample sets, overlaid; written to ``path`` (PNG).

    Diagonal: 1-D histograms (densities) of each parameter; below the diagonal: scatter plots of
    each pair (``max_points`` points per set); the true parameters as black lines/crosses.

    Arguments:
        samples: ``{label: (N, D) samples}``, e.g. ``{"reference": ..., "NPE": ...}``; all with
            the same ``D``.
        path: output PNG file (its directory must exist).
        labels: names of the ``D`` parameters (default ``theta_1 ..``).
        true_parameters: ``(D,)`` values to mark.
        limits: ``D`` pairs ``(low, high)`` for the axes (default: range of all samples).
        max_points: scatter points drawn per set and panel.
        bins: histogram bins.
        title: figure title.
        dpi: resolution.

    Raises:
        ValueError: no sample set, inconsistent ``D``, wrong ``labels``/``limits`` length.
    """
    if not samples:
        raise ValueError("plot_pairs needs at least one sample set")
    arrays = {k: _as_array(v, k) for k, v in samples.items()}
    dims = {a.shape[1] for a in arrays.values()}
    if len(dims) != 1:
        raise ValueError(f"all sample sets must have the same dimension, got {sorted(dims)}")
    dim = dims.pop()
    labels = list(labels) if labels is not None else [f"theta_{i + 1}" for i in range(dim)]
    if len(labels) != dim:
        raise ValueError(f"expected {dim} labels, got {len(labels)}")
    if limits is None:
        stacked = np.concatenate(list(arrays.values()))
        low, high = np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0)
        pad = 0.05 * np.where(high > low, high - low, 1.0)
        limits = list(zip(low - pad, high + pad))
    if len(limits) != dim:
        raise ValueError(f"expected {dim} limits, got {len(limits)}")
    truth = None if true_parameters is None else np.asarray(torch.as_tensor(true_parameters).cpu(), dtype=np.float64).reshape(-1)

    size = min(2.2 * dim, 16.0)
    fig = Figure(figsize=(size, size))
    axes = fig.subplots(dim, dim, squeeze=False)
    rng = np.random.default_rng(0)
    for i in range(dim):
        for j in range(dim):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            for c, (name, a) in enumerate(arrays.items()):
                color = _COLORS[c % len(_COLORS)]
                if i == j:
                    ax.hist(a[:, i], bins=bins, range=limits[i], density=True, histtype="step", color=color, label=name)
                else:
                    idx = rng.choice(len(a), size=min(max_points, len(a)), replace=False)
                    ax.scatter(a[idx, j], a[idx, i], s=1, alpha=0.3, color=color, rasterized=True)
            if truth is not None:
                if i == j:
                    ax.axvline(truth[i], color="k", lw=1)
                else:
                    ax.plot(truth[j], truth[i], "k+", ms=8)
            ax.set_xlim(limits[j])
            if i != j:
                ax.set_ylim(limits[i])
            else:
                ax.set_yticks([])
            if i == dim - 1:
                ax.set_xlabel(labels[j])
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i])
            elif j > 0:
                ax.set_yticklabels([])
    axes[0, 0].legend(loc="upper left", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    save_figure(fig, path, dpi=dpi)


def plot_coverage(
    result: CoverageResult,
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 90,
) -> None:
    """Coverage plot: empirical HPD coverage against credibility level (with the 95 % band of a
    calibrated posterior for this number of observations), and the SBC rank ECDF difference per
    dimension (with its 95 % band); written to ``path`` (PNG).

    Arguments:
        result: from :func:`surrogate.metrics.coverage.expected_coverage`.
        path: output PNG file.
        labels: parameter names for the SBC legend.
        title: figure title.
        dpi: resolution.
    """
    n = result.num_observations
    levels = result.levels
    band = stats.binom.interval(0.95, n, levels)
    fig = Figure(figsize=(10, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.fill_between(levels, band[0] / n, band[1] / n, color="0.85", label="95 % band (calibrated)")
    ax1.plot([0, 1], [0, 1], "k--", lw=1)
    ax1.plot(levels, result.coverage, color="tab:red", lw=2, label="estimate")
    ax1.set_xlabel("credibility level")
    ax1.set_ylabel("expected coverage")
    ax1.set_xlim(0, 1)
    ax1.set_ylim(0, 1)
    ax1.legend(loc="upper left", frameon=False)
    ax1.set_title(f"HPD coverage ({n} observations)")
    ax1.text(0.98, 0.02, "above: conservative\nbelow: over-confident", ha="right", va="bottom",
             transform=ax1.transAxes, fontsize=8, color="0.4")

    grid = np.linspace(0, 1, 201)
    u = (result.sbc_ranks + 0.5) / (result.num_samples + 1)
    half = 1.96 * np.sqrt(grid * (1 - grid) / n)
    ax2.fill_between(grid, -half, half, color="0.85", label="95 % band (pointwise)")
    dim = u.shape[1]
    labels = list(labels) if labels is not None else [f"theta_{d + 1}" for d in range(dim)]
    for d in range(dim):
        ecdf = np.searchsorted(np.sort(u[:, d]), grid, side="right") / n
        ax2.plot(grid, ecdf - grid, lw=1, label=labels[d] if d < 10 else None)
    ax2.axhline(0, color="k", lw=1)
    ax2.set_xlabel("normalised SBC rank")
    ax2.set_ylabel("ECDF - uniform")
    ax2.set_title("simulation-based calibration")
    ax2.legend(loc="upper right", fontsize=7, frameon=False, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)

"""Pictures of galaxy morphology: histograms of the statistics of :mod:`surrogate.metrics.morphology`
(reference against generated, with their KS distances) and grids of stamps side by side.

Both functions write their PNG atomically (:func:`surrogate.metrics.plots.save_figure`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from surrogate.metrics.morphology import MORPHOLOGY_UNITS, _as_stamps

__all__ = ["plot_morphology_histograms", "plot_stamp_grid"]


def plot_morphology_histograms(path: str | os.PathLike, reference: Mapping[str, np.ndarray],
                               generated: Mapping[str, np.ndarray], *, ks: Mapping[str, Mapping[str, float]] | None = None,
                               keys: Sequence[str] | None = None, n_bins: int = 40) -> None:
    """One PNG with a histogram panel per statistic, reference vs generated (atomic write).

    Arguments:
        path: output PNG.
        reference, generated: statistics of the two samples.
        ks: optional output of :func:`~surrogate.metrics.morphology.ks_distances`, shown in the panel titles.
        keys: statistics to plot (default those of :data:`MORPHOLOGY_UNITS` in both).
        n_bins: bins spanning the 0.5 % to 99.5 % quantiles of both samples.
    """
    from matplotlib.figure import Figure

    from surrogate.metrics.plots import save_figure

    keys = [k for k in MORPHOLOGY_UNITS if k in reference and k in generated] if keys is None else list(keys)
    cols = 4
    rows = max(1, math.ceil(len(keys) / cols))
    figure = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    for i, key in enumerate(keys):
        axis = figure.add_subplot(rows, cols, i + 1)
        a = np.asarray(reference[key], dtype=float)
        b = np.asarray(generated[key], dtype=float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        both = np.concatenate([a, b])
        if both.size:
            lo, hi = np.quantile(both, [0.005, 0.995])
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, n_bins + 1)
            axis.hist(a, bins=edges, density=True, color="0.35", alpha=0.4, label="GalSim (held out)")
            axis.hist(b, bins=edges, density=True, histtype="step", color="tab:red", linewidth=1.5, label="VAE")
        unit = MORPHOLOGY_UNITS.get(key, "")
        axis.set_xlabel(f"{key} [{unit}]" if unit else key)
        if ks is not None and key in ks:
            axis.set_title(f"KS = {ks[key]['ks']:.3f}", fontsize=9)
        if i == 0:
            axis.legend(fontsize=7)
    save_figure(figure, path)


def plot_stamp_grid(path: str | os.PathLike, real: np.ndarray, generated: np.ndarray, *, n: int = 8,
                    titles: tuple[str, str] = ("GalSim", "VAE")) -> None:
    """A grid of stamps: ``n`` real ones (top rows) above ``n`` generated ones, shared colour scale per column.

    Arguments:
        path: output PNG.
        real, generated: ``(N, H, W)`` stamps (the first ``n`` of each are shown; pair them so
            column ``i`` shows the same conditions, e.g. same PSF, noise, magnitude, size).
        n: number of columns.
        titles: row labels.
    """
    from matplotlib.figure import Figure

    from surrogate.metrics.plots import save_figure

    real = _as_stamps(real, "real")[:n]
    generated = _as_stamps(generated, "generated")[:n]
    n = min(len(real), len(generated))
    figure = Figure(figsize=(1.3 * n, 2.9), layout="constrained")
    for i in range(n):
        vmin = min(real[i].min(), generated[i].min())
        vmax = max(real[i].max(), generated[i].max())
        for row, (stamp, label) in enumerate(((real[i], titles[0]), (generated[i], titles[1]))):
            axis = figure.add_subplot(2, n, row * n + i + 1)
            axis.imshow(stamp, origin="lower", cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_ylabel(label)
    save_figure(figure, path)

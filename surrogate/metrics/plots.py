"""PNG plots of reference vs generated calorimeter showers, and :func:`save_figure`, the one PNG writer.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by the Agg canvas directly,
so importing or using this module never selects a matplotlib backend or touches ``pyplot``'s
global state. Every PNG of the package (these plots, :mod:`surrogate.metrics.posterior_plots`,
:mod:`surrogate.metrics.morphology`) is written by :func:`save_figure`: atomically (temporary
file, then rename, through :func:`surrogate.data.hdf5.atomic_output`), and the figure is closed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from surrogate.data.hdf5 import atomic_output
from surrogate.geometry import CALOGAN
from surrogate.metrics.showers import histogram_edges

__all__ = ["plot_average_images", "plot_mean_response", "plot_observable", "save_figure"]

_REFERENCE_STYLE = {"color": "0.35", "alpha": 0.35, "label": "reference"}
_GENERATED_STYLE = {"color": "tab:red", "linewidth": 1.5, "label": "generated"}


def save_figure(figure: Figure, path: str | os.PathLike, *, dpi: int = 90) -> None:
    """Render ``figure`` with the Agg canvas, write it as PNG to ``path`` atomically, and close it.

    The PNG is written to a temporary file in the same folder and renamed to ``path`` only when
    complete (:func:`surrogate.data.hdf5.atomic_output`), so a crash never leaves a partial image.
    The figure is closed afterwards, also when writing fails: a figure made through ``pyplot`` is
    removed from ``pyplot``'s figure list (``pyplot.close``); a plain :class:`~matplotlib.figure.Figure`
    (what this package makes) is cleared, releasing its artists.

    Arguments:
        figure: A :class:`matplotlib.figure.Figure`, preferably not created through ``pyplot``.
        path: Destination file (``.png``); its directory must exist.
        dpi: Resolution in dots per inch.

    Raises:
        FileNotFoundError: If the directory of ``path`` does not exist.
    """
    managed = getattr(figure.canvas, "manager", None) is not None  # made by pyplot
    try:
        FigureCanvasAgg(figure)
        with atomic_output(path) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi)
    finally:
        if managed:
            import matplotlib.pyplot as plt  # only reached when the caller already uses pyplot

            plt.close(figure)
        else:
            figure.clear()


def plot_observable(
    path: str | os.PathLike,
    name: str,
    reference: Mapping[str, np.ndarray],
    generated: Mapping[str, np.ndarray],
    *,
    unit: str = "",
    n_bins: int = 40,
    separation_powers: Mapping[str, float] | None = None,
) -> None:
    """Histograms of one observable, reference vs generated, one panel per event selection.

    Arguments:
        path: Output PNG file.
        name: Observable name (axis label).
        reference: Panel title (e.g. ``"all"``, ``"1-10 GeV"``) to reference values (N_k,).
        generated: Same panel titles to generated values (M_k,).
        unit: Unit of the observable for the axis label ("" for dimensionless).
        n_bins: Equal-width bins per panel, spanning the 0.5 % to 99.5 % quantiles of both
            samples together (so a generated sample far from the reference stays visible); the
            fraction of each sample outside that range is given in the legend. Histograms are
            normalized to all events of the sample.
        separation_powers: Optional panel title to separation power, shown in the title.

    Raises:
        ValueError: If the panel titles of ``reference`` and ``generated`` differ or none is given.
    """
    if list(reference) != list(generated) or not reference:
        raise ValueError(
            f"reference and generated must have the same non-empty panels, got "
            f"{list(reference)} and {list(generated)}"
        )
    panels = list(reference)
    width = 3.4 * len(panels)
    figure = Figure(figsize=(width, 3.2))
    # fixed margins instead of a layout engine: a constrained layout doubles the drawing time
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.16, top=0.9, wspace=0.3)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    xlabel = f"{name} [{unit}]" if unit else name
    for ax, panel in zip(axes, panels):
        ref = np.asarray(reference[panel], dtype=np.float64)
        gen = np.asarray(generated[panel], dtype=np.float64)
        edges = _display_edges(ref, gen, n_bins)
        for values, style, fill in ((ref, _REFERENCE_STYLE, True), (gen, _GENERATED_STYLE, False)):
            if values.size == 0:
                continue
            outside = float(np.mean((values < edges[0]) | (values > edges[-1])))
            label = style["label"] + (f" ({outside:.1%} outside)" if outside > 0 else "")
            ax.stairs(_density(values, edges), edges, fill=fill, **{**style, "label": label})
        ax.ticklabel_format(axis="x", useOffset=False)
        title = panel
        if separation_powers is not None and panel in separation_powers:
            title += f"   S = {separation_powers[panel]:.3f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7, loc="upper right", frameon=False)
    axes[0].set_ylabel("density (1/N dN/dx)")
    save_figure(figure, path)


def _display_edges(reference: np.ndarray, generated: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width edges (n_bins + 1,) over the 0.5-99.5 % quantiles of both samples together."""
    both = np.concatenate([reference, generated])
    low = min(np.quantile(values, 0.005) for values in (reference, generated) if values.size)
    high = max(np.quantile(values, 0.995) for values in (reference, generated) if values.size)
    if not high > low:  # (nearly) constant samples: fall back to their full range
        return histogram_edges(both, n_bins)
    return np.linspace(low, high, int(n_bins) + 1)


def _density(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram (K,) normalized to the number of *all* values (so out-of-range ones lower it)."""
    counts, _ = np.histogram(values, bins=edges)
    return counts / (max(values.size, 1) * np.diff(edges))


def plot_average_images(
    path: str | os.PathLike,
    reference_means: Mapping[str, np.ndarray],
    generated_means: Mapping[str, np.ndarray],
) -> None:
    """Average shower image of each layer, reference (top row) vs generated (bottom row).

    Cells are drawn at their physical size (x, y in mm, shower axis at 0) on a logarithmic colour
    scale shared by the two rows of a layer.

    Arguments:
        path: Output PNG file.
        reference_means: Layer name to mean cell energies in MeV, ``"layer_0"`` (3, 96),
            ``"layer_1"`` (12, 12), ``"layer_2"`` (12, 6).
        generated_means: Same for the generated showers.
    """
    figure = Figure(figsize=(11, 6.5), layout="constrained")
    axes = figure.subplots(2, CALOGAN.n_layers, squeeze=False)
    for column, layer in enumerate(CALOGAN.layer_names):
        half_y, half_x = CALOGAN.layer(layer).half_size_mm
        extent = (-half_x, half_x, -half_y, half_y)
        images = [np.asarray(reference_means[layer], np.float64), np.asarray(generated_means[layer], np.float64)]
        vmax = max(float(image.max()) for image in images)
        positive = [float(image[image > 0].min()) for image in images if np.any(image > 0)]
        vmax = vmax if vmax > 0 else 1.0
        vmin = max(min(positive) if positive else vmax * 1e-6, vmax * 1e-6)
        for row, (image, who) in enumerate(zip(images, ("reference", "generated"))):
            ax = axes[row, column]
            shown = np.ma.masked_less_equal(image, 0.0)
            artist = ax.imshow(shown, origin="lower", extent=extent, aspect="equal",
                               norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis", interpolation="nearest")
            ax.set_title(f"{who} {layer}", fontsize=9)
            ax.set_xlabel("x [mm]")
            ax.set_ylabel("y [mm]")
        figure.colorbar(artist, ax=axes[:, column], label="mean cell energy [MeV]", shrink=0.8)
    save_figure(figure, path)


def plot_mean_response(
    path: str | os.PathLike,
    bins_gev: Sequence[tuple[float, float]],
    reference_mean: Sequence[float],
    reference_error: Sequence[float],
    generated_mean: Sequence[float],
    generated_error: Sequence[float],
) -> None:
    """Mean response ``<E_tot / E_inc>`` per incident-energy bin and the generated/reference ratio.

    Arguments:
        path: Output PNG file.
        bins_gev: Incident-energy bins ``(low, high)`` in GeV, K of them.
        reference_mean: Reference mean response per bin (K,).
        reference_error: Its standard error (K,).
        generated_mean: Generated mean response per bin (K,).
        generated_error: Its standard error (K,).
    """
    low = np.array([b[0] for b in bins_gev], dtype=np.float64)
    high = np.array([b[1] for b in bins_gev], dtype=np.float64)
    centre, half = (low + high) / 2, (high - low) / 2
    ref, ref_err = np.asarray(reference_mean, np.float64), np.asarray(reference_error, np.float64)
    gen, gen_err = np.asarray(generated_mean, np.float64), np.asarray(generated_error, np.float64)
    figure = Figure(figsize=(6, 5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    top.errorbar(centre, ref, xerr=half, yerr=ref_err, fmt="o", color="0.3", label="reference")
    top.errorbar(centre, gen, xerr=half, yerr=gen_err, fmt="s", color="tab:red", label="generated",
                 markerfacecolor="none")
    top.set_ylabel(r"mean $E_\mathrm{tot} / E_\mathrm{inc}$")
    top.legend(fontsize=8)
    ratio = np.divide(gen, ref, out=np.full_like(gen, np.nan), where=ref > 0)
    ratio_err = np.abs(ratio) * np.sqrt(
        np.divide(gen_err, gen, out=np.zeros_like(gen), where=gen > 0) ** 2
        + np.divide(ref_err, ref, out=np.zeros_like(ref), where=ref > 0) ** 2
    )
    bottom.axhspan(0.98, 1.02, color="0.85", label="±2 %")
    bottom.axhline(1.0, color="0.4", linewidth=0.8)
    bottom.errorbar(centre, ratio, xerr=half, yerr=ratio_err, fmt="s", color="tab:red")
    bottom.set_ylabel("generated / reference")
    bottom.set_xlabel("incident energy [GeV]")
    bottom.legend(fontsize=7, loc="best")
    save_figure(figure, path)

"""CaloGAN shower observables and the CaloChallenge separation power.

The observables follow the CaloGAN papers (Paganini, de Oliveira, Nachman, arXiv:1705.02355,
arXiv:1712.10321, section "Shower shape variables"); each is one number per shower. Layers are
numbered ``i = 0, 1, 2`` (``"layer_0"``, ``"layer_1"``, ``"layer_2"``), cell energies are in MeV
and the incident energy in GeV (the CaloGAN layout, see :mod:`surrogate.data.calo`).

=====================  =====  ==================================================================
name                   unit   definition
=====================  =====  ==================================================================
``E_i``                MeV    energy in the cells of layer ``i``
``E_tot``              MeV    ``E_0 + E_1 + E_2`` (cells only; ``overflow`` is *not* included)
``f_i``                1      ``E_i / E_tot``
``E_tot_over_E_inc``   1      ``E_tot / (1000 * E_inc)``, ``E_inc`` converted from GeV to MeV
``depth``              layer  shower depth ``d = sum_i i E_i / E_tot``
``depth_width``        layer  ``sigma_d = sqrt(sum_i i^2 E_i / E_tot - d^2)``
``width_x_i``          mm     energy-weighted RMS of the cell-centre x coordinate in layer ``i``
``width_y_i``          mm     same along y, for layers 1 and 2 only (see below)
``E_ratio_i``          1      ``(E_max1 - E_max2) / (E_max1 + E_max2)`` of the two hottest cells
``sparsity_i``         1      fraction of the cells of layer ``i`` that are hit (``E > 0``)
=====================  =====  ==================================================================

Conventions:

* Cell centres are those of :data:`surrogate.geometry.CALOGAN`: cell (row ``r``, column ``c``)
  of a layer with cell size ``(dy, dx)`` mm has its centre at ``x = (c + 0.5) dx - 240 mm``,
  ``y = (r + 0.5) dy - 240 mm`` (shower axis at 0; :meth:`surrogate.geometry.CaloGeometry.cell_centres_mm`).
  The lateral width is the square root of the energy-weighted variance of the cell-centre
  coordinate (two-pass formula, so a single hot cell gives exactly 0).
* ``width_y_0`` is not computed: layer 0 has three 160 mm rows, much wider than the Moliere
  radius, so nearly all the energy is in the central row and its y width carries no information.
* **Readout threshold.** With ``threshold_mev = t`` every cell with ``E < t`` is set to 0 before
  any observable is computed (:func:`zero_suppress`; ``E >= t`` is kept), as a zero-suppressed
  readout does and as CaloFlow (arXiv:2106.05285, threshold 0.01 MeV on the CaloGAN geometry) and
  the CaloChallenge evaluation (arXiv:2410.21611) do; so ``sparsity_i`` is the fraction of
  cells at or above the threshold, and the energies, widths and ratios ignore the cells below
  it. The default ``t = 0`` takes the cells as given (sparsity: non-empty cells). To compare
  two samples, give both the same threshold
  (:func:`surrogate.pipelines.fastsim.validate_calo` does, default 0.01 MeV).
* Empty showers or layers (zero energy) never produce NaN: every ratio whose denominator is
  zero is defined as 0 (``f_i``, ``depth``, ``depth_width``, widths and ``E_ratio_i``).
  A layer with a single non-empty cell has ``E_ratio = 1``.

The separation power is the triangular discrimination of CaloChallenge 2022
(Krause et al., arXiv:2410.21611, eq. for "separation power"):
``S = 1/2 sum_k (h_r,k - h_g,k)^2 / (h_r,k + h_g,k)`` with ``h`` histograms normalized to unit sum
over shared bins; ``S = 0`` for identical histograms and ``S = 1`` for disjoint ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from surrogate.checks import check_choice, check_float, check_int
from surrogate.geometry import CALOGAN, CALOGAN_LAYERS, CaloGeometry

__all__ = [
    "OBSERVABLE_UNITS",
    "check_showers",
    "histogram_edges",
    "separation_power",
    "shower_observables",
    "zero_suppress",
]

#: Names of the observables returned by :func:`shower_observables`, in order, with their units
#: ("" for dimensionless, "layer" for the layer index scale of the shower depth).
OBSERVABLE_UNITS: dict[str, str] = {
    **{f"E_{i}": "MeV" for i in range(3)},
    "E_tot": "MeV",
    **{f"f_{i}": "" for i in range(3)},
    "E_tot_over_E_inc": "",
    "depth": "layer",
    "depth_width": "layer",
    **{f"width_x_{i}": "mm" for i in range(3)},
    **{f"width_y_{i}": "mm" for i in (1, 2)},
    **{f"E_ratio_{i}": "" for i in range(3)},
    **{f"sparsity_{i}": "" for i in range(3)},
}

_Y_WIDTH_LAYERS = (1, 2)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` where ``denominator > 0``, else 0 (no warnings)."""
    out = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def check_showers(showers: Mapping[str, np.ndarray], geometry: CaloGeometry = CALOGAN) -> int:
    """Checks an in-memory shower dict: one ``(N, *layer.shape)`` array of cell energies (MeV)
    per layer of ``geometry`` and ``"energy"`` ``(N, 1)`` (GeV), real dtypes, finite values.

    Arguments:
        showers: the dict (other keys, e.g. ``"overflow"``, are ignored).
        geometry: the calorimeter geometry (default CaloGAN's).

    Returns:
        ``N``, the number of events.

    Raises:
        ValueError: not a mapping, a missing key, a wrong shape or event count, a non-real dtype,
            or non-finite values (each named with the key, the expected and the found value).
    """
    if not isinstance(showers, Mapping):
        raise ValueError(f"showers must be a dict of arrays, got {type(showers).__name__}")
    expected = {**{layer.name: layer.shape for layer in geometry.layers}, "energy": (1,)}
    n_events = None
    for key, shape in expected.items():
        if key not in showers:
            raise ValueError(f"showers is missing key {key!r}; expected keys {tuple(expected)}, got {tuple(showers)}")
        array = np.asarray(showers[key])
        if array.ndim != len(shape) + 1 or array.shape[1:] != tuple(shape):
            raise ValueError(f"showers[{key!r}] has shape {array.shape}; expected (N, {', '.join(map(str, shape))})")
        if n_events is None:
            n_events = array.shape[0]
        elif array.shape[0] != n_events:
            raise ValueError(f"showers[{key!r}] has {array.shape[0]} events; expected {n_events} like "
                             f"showers[{geometry.layers[0].name!r}]")
        if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"showers[{key!r}] has dtype {array.dtype}; expected a real dtype")
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(f"showers[{key!r}] contains {bad} non-finite values; expected finite energies")
    return int(n_events)


def zero_suppress(showers: Mapping[str, np.ndarray], threshold_mev: float) -> dict[str, np.ndarray]:
    """Applies a readout threshold: cells below ``threshold_mev`` become exactly 0.

    The comparison is done in each array's own precision (a float32 cell equal to
    ``float32(threshold_mev)`` is kept), so it agrees with the reference simulator's
    (:func:`surrogate.simulators.gflash.simulate_batch`) on the cells it wrote.

    Arguments:
        showers: CaloGAN layout; the layers ``"layer_0"``, ``"layer_1"``, ``"layer_2"`` (cell
            energies in MeV, any shape ``(N, ...)``) are thresholded; every other key (``"energy"``,
            ``"overflow"``, which is not a readout cell) is passed through unchanged.
        threshold_mev: The threshold in MeV (>= 0); 0 returns the cells as they are.

    Returns:
        A new dict with the same keys; thresholded layers are new arrays of the same dtype, the
        input is not modified.

    Raises:
        ValueError: If ``threshold_mev`` is negative or not finite.

    Example:
        >>> cells = {"layer_2": np.array([[0.004, 0.01, 2.0]], np.float32)}
        >>> zero_suppress(cells, 0.01)["layer_2"].tolist()
        [[0.0, 0.009999999776482582, 2.0]]
    """
    threshold_mev = check_float("threshold_mev", threshold_mev, minimum=0.0, unit="MeV")
    out = dict(showers)
    if threshold_mev > 0:
        for layer in CALOGAN_LAYERS:
            if layer in out:
                cells = np.asarray(out[layer])
                out[layer] = np.where(cells < threshold_mev, cells.dtype.type(0), cells)
    return out


def shower_observables(
    showers: Mapping[str, np.ndarray], *, threshold_mev: float = 0.0
) -> dict[str, np.ndarray]:
    """CaloGAN observables of a batch of showers.

    Arguments:
        showers: CaloGAN layout: ``"layer_0"`` (N, 3, 96), ``"layer_1"`` (N, 12, 12),
            ``"layer_2"`` (N, 12, 6) cell energies in MeV and ``"energy"`` (N, 1) incident energy
            in GeV (other keys, e.g. ``"overflow"``, are ignored).
        threshold_mev: Readout threshold in MeV (>= 0): cells below it count as empty for
            ``sparsity_i`` and are set to 0 before every other observable
            (:func:`zero_suppress`); default 0: the cells as given.

    Returns:
        Dict from the names in :data:`OBSERVABLE_UNITS` (same order) to float64 arrays (N,);
        definitions, units and the conventions for empty layers in the module docstring.

    Raises:
        ValueError: If a key is missing, a shape or the number of events disagrees, a value is
            not finite, or ``threshold_mev`` is negative.

    Example:
        >>> showers = {"layer_0": np.zeros((1, 3, 96)), "layer_1": np.zeros((1, 12, 12)),
        ...            "layer_2": np.zeros((1, 12, 6)), "energy": np.array([[10.0]])}
        >>> showers["layer_2"][0, 0, :4] = (0.005, 0.01, 0.5, 3.0)
        >>> float(shower_observables(showers)["sparsity_2"][0] * 72)
        4.0
        >>> float(shower_observables(showers, threshold_mev=0.01)["sparsity_2"][0] * 72)
        3.0

    References:
        Paganini, de Oliveira, Nachman, arXiv:1705.02355 and arXiv:1712.10321.
    """
    check_showers(showers)
    showers = zero_suppress(showers, threshold_mev)
    energy_mev = np.asarray(showers["energy"], dtype=np.float64)[:, 0] * 1000.0
    out: dict[str, np.ndarray] = {}

    layer_energy = []
    width_x, width_y, e_ratio, sparsity = {}, {}, {}, {}
    for i, layer in enumerate(CALOGAN_LAYERS):
        cells = np.asarray(showers[layer], dtype=np.float64)
        n_events = cells.shape[0]
        e_layer = cells.sum(axis=(1, 2))
        layer_energy.append(e_layer)
        y, x = CALOGAN.cell_centres_mm(layer)
        width_x[i] = _weighted_rms(cells.sum(axis=1), x, e_layer)
        if i in _Y_WIDTH_LAYERS:
            width_y[i] = _weighted_rms(cells.sum(axis=2), y, e_layer)
        flat = cells.reshape(n_events, -1)
        top2 = -np.partition(-flat, 1, axis=1)[:, :2]  # (N, 2): hottest, second hottest
        e_ratio[i] = _safe_divide(top2[:, 0] - top2[:, 1], top2[:, 0] + top2[:, 1])
        sparsity[i] = (flat > 0).mean(axis=1)

    e_tot = layer_energy[0] + layer_energy[1] + layer_energy[2]
    for i in range(3):
        out[f"E_{i}"] = layer_energy[i]
    out["E_tot"] = e_tot
    for i in range(3):
        out[f"f_{i}"] = _safe_divide(layer_energy[i], e_tot)
    out["E_tot_over_E_inc"] = _safe_divide(e_tot, energy_mev)
    depth = out["f_1"] + 2.0 * out["f_2"]
    second_moment = out["f_1"] + 4.0 * out["f_2"]
    out["depth"] = depth
    out["depth_width"] = np.sqrt(np.clip(second_moment - depth**2, 0.0, None))
    for i in range(3):
        out[f"width_x_{i}"] = width_x[i]
    for i in _Y_WIDTH_LAYERS:
        out[f"width_y_{i}"] = width_y[i]
    for i in range(3):
        out[f"E_ratio_{i}"] = e_ratio[i]
    for i in range(3):
        out[f"sparsity_{i}"] = sparsity[i]
    return out


def _weighted_rms(profile: np.ndarray, coordinate: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Energy-weighted RMS about the mean of ``coordinate`` (M,) for profiles (N, M); 0 if empty."""
    mean = _safe_divide(profile @ coordinate, total)
    variance = _safe_divide((profile * (coordinate[None, :] - mean[:, None]) ** 2).sum(axis=1), total)
    return np.sqrt(np.clip(variance, 0.0, None))


def _finite_1d(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (N,), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(array)))} non-finite values")
    return array


def histogram_edges(reference: np.ndarray, n_bins: int = 50) -> np.ndarray:
    """Equal-width bin edges spanning the reference sample's full range.

    Arguments:
        reference: Reference values (N,), finite.
        n_bins: Number of bins (>= 1).

    Returns:
        Edges (n_bins + 1,) from ``min(reference)`` to ``max(reference)``; a constant reference
        ``v`` gets the range ``v - 0.5 .. v + 0.5`` (as :func:`numpy.histogram` does).

    Raises:
        ValueError: If ``reference`` is empty, not 1-D or not finite, or ``n_bins < 1``.
    """
    reference = _finite_1d(reference, "reference")
    n_bins = check_int("n_bins", n_bins, minimum=1)
    low, high = float(reference.min()), float(reference.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, n_bins + 1)


def separation_power(
    reference: np.ndarray, generated: np.ndarray, bins: int | np.ndarray = 50, *, outside: str = "count"
) -> float:
    """CaloChallenge separation power of two one-dimensional samples.

    ``S = 1/2 sum_k (h_r,k - h_g,k)^2 / (h_r,k + h_g,k)`` (terms with ``h_r,k + h_g,k = 0`` are 0)
    where ``h_r`` and ``h_g`` are the histograms of ``reference`` and ``generated`` normalized to
    unit sum. With ``outside="count"`` (default) the bins are the given edges plus an underflow
    and an overflow bin, so that every event counts (with edges from the reference's full range
    only generated events can land there). With ``outside="drop"`` values outside the edges are
    left out and each histogram is normalized over the bins, as the challenge's evaluation does
    (``plt.hist(..., density=True)`` times the bin widths, ``evaluate_plotting_helper.py``,
    ``_separation_power``) with its fixed feature ranges.
    ``S`` lies in [0, 1]: 0 for identical histograms, 1 for samples without a common bin.

    Arguments:
        reference: Reference sample (N,), finite.
        generated: Generated sample (M,), finite.
        bins: Number of equal-width bins over the reference's range (see
            :func:`histogram_edges`), or increasing edges (K + 1,).
        outside: ``"count"`` or ``"drop"`` (see above).

    Returns:
        The separation power, a float in [0, 1]; with ``outside="drop"`` NaN when a sample has
        no value inside the edges (the histogram cannot be normalized).

    Example:
        >>> separation_power([0.0, 1.0, 2.0], [0.0, 1.0, 2.0])
        0.0
        >>> separation_power([0.0, 1.0, 2.0], [5.0, 6.0])
        1.0

    Raises:
        ValueError: If a sample is empty, not 1-D or not finite, or ``bins`` is not a positive
            integer or a strictly increasing 1-D array of at least 2 edges.

    References:
        Krause et al., "CaloChallenge 2022: A Community Challenge for Fast Calorimeter
        Simulation", arXiv:2410.21611 (separation power, section on evaluation metrics).
    """
    reference = _finite_1d(reference, "reference")
    generated = _finite_1d(generated, "generated")
    if np.ndim(bins) == 0:
        edges = histogram_edges(reference, int(bins))
    else:
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
            raise ValueError(
                f"bins must be an int or strictly increasing edges (K+1,) with K >= 1, got {edges!r}"
            )
    check_choice("outside", outside, ("count", "drop"))
    h_ref = _histogram_with_flow(reference, edges)
    h_gen = _histogram_with_flow(generated, edges)
    if outside == "drop":
        h_ref, h_gen = (_renormalized(h[1:-1]) for h in (h_ref, h_gen))
        if not (np.isfinite(h_ref).all() and np.isfinite(h_gen).all()):
            return float("nan")
    total = h_ref + h_gen
    terms = _safe_divide((h_ref - h_gen) ** 2, total)
    return float(np.clip(0.5 * terms.sum(), 0.0, 1.0))


def _renormalized(histogram: np.ndarray) -> np.ndarray:
    total = histogram.sum()
    return histogram / total if total > 0 else np.full_like(histogram, np.nan)


def _histogram_with_flow(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Unit-sum histogram (K + 2,) with underflow first and overflow last; last edge inclusive."""
    index = np.searchsorted(edges, values, side="right")  # 0: below, K+1: above
    index[values == edges[-1]] = len(edges) - 1  # right edge belongs to the last bin
    counts = np.bincount(index, minlength=len(edges) + 1).astype(np.float64)
    return counts / counts.sum()

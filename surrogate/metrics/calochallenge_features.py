"""Inputs of the CaloChallenge 2022 classifier metric (:mod:`surrogate.metrics.calochallenge`)
for the showers of a :class:`~surrogate.geometry.CaloGeometry` (default
:data:`~surrogate.geometry.CALOGAN`), following the challenge's public evaluation script
(``code/evaluate.py`` and ``code/HighLevelFeatures.py`` of ``CaloChallenge/homepage``, version of
commit e1109af; line numbers refer to the file at commit 9b41df7; Krause et al., arXiv:2410.21611).

**Readout threshold** (``evaluate.py`` l. 178, 470, 482-485): every cell with energy strictly
below ``threshold_mev`` is set to 0 before any feature is computed (with the default 0 this
zeroes negative cells only).

**Low-level features** (``prepare_low_data_for_classifier``, l. 166-186, ``normed=False``):
``log10(E_inc / MeV)`` followed by every cell energy divided by ``E_inc`` (both in MeV), layers
front to back, each row-major: ``1 + n_voxels`` columns (505 for CaloGAN).

**High-level features** (``prepare_high_data_for_classifier``, l. 188-225; definitions in
``HighLevelFeatures.py`` l. 53-111), in this order, ``i`` running over the layers:

=========================  ==============================================================
columns                    definition
=========================  ==============================================================
``log10_E_inc``            ``log10(E_inc / MeV)``
``log10_E_i``              ``log10(E_i / MeV + 1e-8)``, ``E_i`` the layer's energy
``EC_eta_i``               centre of energy in eta (here y) / 100 mm
``EC_phi_i``               centre of energy in phi (here x) / 100 mm
``width_eta_i``            energy-weighted standard deviation of y / 100 mm
``width_phi_i``            same for x / 100 mm
``log10_E_tot``            ``log10(E_tot / MeV + 1e-8)``, ``E_tot = sum_i E_i``
``sparsity_i``             ``1 - (fraction of the layer's cells with E > 0)`` (after the
                           threshold): 0 when every cell is hit, 1 for an empty layer
``EC_r_i``                 centre of energy in ``r = sqrt(x^2 + y^2)`` / 100 mm
``width_r_i``              energy-weighted standard deviation of ``r`` / 100 mm
=========================  ==============================================================

(26 columns for CaloGAN's three layers.) The challenge's voxel coordinates are the Cartesian
centre ``(r cos alpha, r sin alpha)`` of a polar voxel (``XMLHandler.py`` l. 105-108) and its
radial coordinate the midpoint of the voxel's radial bin (``HighLevelFeatures.py`` l. 47-51);
for a rectangular cell we use its centre ``(y, x)`` (eta ~ y, phi ~ x; see
:meth:`~surrogate.geometry.CaloLayer.cell_centres_mm`) and ``r = sqrt(x^2 + y^2)`` of that
centre. As in the script, centres are ``sum(c E) / (sum(E) + 1e-16)`` and widths
``sqrt(max(sum(c^2 E) / (sum(E) + 1e-16) - centre^2, 0))``, so an empty layer has centre 0
and width 0, and a single hit cell has its centre there and width 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from surrogate.checks import check_choice, check_float
from surrogate.geometry import CALOGAN, CaloGeometry
from surrogate.metrics.showers import check_showers

__all__ = ["KINDS", "calochallenge_feature_names", "calochallenge_features"]

#: Regularizers of the challenge's script: ``log10(E + 1e-8)`` of layer and total energies
#: (``evaluate.py`` l. 221-223) and ``sum(E) + 1e-16`` in centres and widths
#: (``HighLevelFeatures.py`` l. 54-72).
_LOG_EPSILON = 1e-8
_DIVISION_EPSILON = 1e-16
#: Lengths enter the high-level features in units of 100 mm (``evaluate.py`` l. 222-223).
_LENGTH_SCALE_MM = 100.0
KINDS = ("low", "high")
"""The two feature sets: ``"low"`` (cells) and ``"high"`` (high-level features)."""


def calochallenge_feature_names(kind: str = "low", *, geometry: CaloGeometry = CALOGAN) -> list[str]:
    """Names of the columns of :func:`calochallenge_features`, in order.

    Arguments:
        kind: ``"low"`` (``log10_E_inc`` then ``"<layer>[r,c]"`` per cell) or ``"high"``
            (the table in the module docstring).
        geometry: The calorimeter whose layers the showers have.

    Returns:
        F strings (505 low-level and 26 high-level names for CaloGAN).

    Raises:
        ValueError: If ``kind`` is neither ``"low"`` nor ``"high"``.

    Example:
        >>> calochallenge_feature_names("high")[:5]
        ['log10_E_inc', 'log10_E_0', 'log10_E_1', 'log10_E_2', 'EC_eta_0']
    """
    kind = check_choice("kind", kind, KINDS)
    if kind == "low":
        return ["log10_E_inc"] + [
            f"{layer.name}[{r},{c}]" for layer in geometry.layers
            for r in range(layer.shape[0]) for c in range(layer.shape[1])
        ]
    index = range(geometry.n_layers)
    names = ["log10_E_inc"] + [f"log10_E_{i}" for i in index]
    for quantity in ("EC_eta", "EC_phi", "width_eta", "width_phi"):
        names += [f"{quantity}_{i}" for i in index]
    names.append("log10_E_tot")
    for quantity in ("sparsity", "EC_r", "width_r"):
        names += [f"{quantity}_{i}" for i in index]
    return names


def calochallenge_features(
    showers: Mapping[str, np.ndarray],
    *,
    kind: str = "low",
    threshold_mev: float = 0.0,
    geometry: CaloGeometry = CALOGAN,
) -> np.ndarray:
    """The challenge's classifier inputs for showers in the CaloGAN layout.

    Arguments:
        showers: One cell array per layer of ``geometry`` (CaloGAN: ``"layer_0"`` (N, 3, 96),
            ``"layer_1"`` (N, 12, 12), ``"layer_2"`` (N, 12, 6)), energies in MeV, and
            ``"energy"`` (N, 1), the incident energy in GeV (> 0). Other keys are ignored.
        kind: ``"low"`` (cells / E_inc and log10 E_inc) or ``"high"`` (layer energies, centres
            of energy, widths, sparsity); exact definitions in the module docstring.
        threshold_mev: Readout threshold in MeV (>= 0): cells below it count as empty (set to 0)
            for every feature, as in ``evaluate.py`` l. 178 and 470-485.
        geometry: The calorimeter: layer names, cell grids and cell sizes (for the coordinates).

    Returns:
        float64 array (N, F): F = 1 + n_voxels (505 for CaloGAN) for ``"low"``,
        F = 2 + 8 n_layers (26 for CaloGAN) for ``"high"``; column names from
        :func:`calochallenge_feature_names`.

    Raises:
        ValueError: If ``kind`` or ``threshold_mev`` is invalid, a key is missing, an array has
            the wrong shape or dtype, the event counts disagree, a value is not finite, or an
            incident energy is not positive (the message names the key).

    References:
        Krause et al., arXiv:2410.21611 (classifier metric); ``CaloChallenge/homepage``
        ``code/evaluate.py`` (``prepare_low_data_for_classifier``,
        ``prepare_high_data_for_classifier``) and ``code/HighLevelFeatures.py``
        (``CalculateFeatures``).

    Example:
        >>> showers = {"layer_0": np.zeros((1, 3, 96)), "layer_1": np.zeros((1, 12, 12)),
        ...            "layer_2": np.zeros((1, 12, 6)), "energy": np.array([[10.0]])}
        >>> showers["layer_1"][0, 5, 6] = 500.0
        >>> features = calochallenge_features(showers, kind="high")
        >>> features.shape, float(features[0, 0]), float(features[0, 5]), float(features[0, 8])
        ((1, 26), 4.0, -0.2, 0.2)
    """
    kind = check_choice("kind", kind, KINDS)
    threshold_mev = check_float("threshold_mev", threshold_mev, minimum=0.0, unit="MeV")
    n_events = check_showers(showers, geometry)
    energy_mev = np.asarray(showers["energy"], dtype=np.float64).reshape(n_events) * 1000.0
    if np.any(energy_mev <= 0):
        raise ValueError(f"showers['energy'] has {int(np.sum(energy_mev <= 0))} values <= 0 GeV; the features "
                         "divide by and take log10 of the incident energy, which must be > 0")
    layers = []
    for layer in geometry.layers:
        cells = np.asarray(showers[layer.name], dtype=np.float64).reshape(n_events, -1)
        layers.append(np.where(cells < threshold_mev, 0.0, cells))
    log_energy = np.log10(energy_mev)[:, None]
    if kind == "low":
        return np.concatenate([log_energy, *(cells / energy_mev[:, None] for cells in layers)], axis=1)

    layer_energy, ec_eta, ec_phi, width_eta, width_phi, sparsity, ec_r, width_r = ([] for _ in range(8))
    for layer, cells in zip(geometry.layers, layers):
        y, x = layer.cell_centres_mm()
        eta = np.repeat(y, layer.shape[1])  # row-major: the y of every cell
        phi = np.tile(x, layer.shape[0])
        r = np.hypot(eta, phi)
        total = cells.sum(axis=1)
        layer_energy.append(total)
        for coordinate, centres, widths in ((eta, ec_eta, width_eta), (phi, ec_phi, width_phi), (r, ec_r, width_r)):
            centre, width = _centre_and_width(cells, coordinate, total)
            centres.append(centre)
            widths.append(width)
        sparsity.append(1.0 - (cells > 0.0).mean(axis=1))
    layer_energy = np.stack(layer_energy, axis=1)
    columns = [
        log_energy,
        np.log10(layer_energy + _LOG_EPSILON),
        *(np.stack(q, axis=1) / _LENGTH_SCALE_MM for q in (ec_eta, ec_phi, width_eta, width_phi)),
        np.log10(layer_energy.sum(axis=1, keepdims=True) + _LOG_EPSILON),
        np.stack(sparsity, axis=1),
        *(np.stack(q, axis=1) / _LENGTH_SCALE_MM for q in (ec_r, width_r)),
    ]
    return np.concatenate(columns, axis=1)


def _centre_and_width(cells: np.ndarray, coordinate: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energy-weighted mean and standard deviation of ``coordinate`` (C,) over cells (N, C).

    The script's one-pass formulas with ``+ 1e-16`` in the denominator (``HighLevelFeatures.py``
    l. 53-90): an empty layer gives 0 and 0.
    """
    denominator = total + _DIVISION_EPSILON
    centre = cells @ coordinate / denominator
    second = cells @ (coordinate * coordinate) / denominator
    return centre, np.sqrt(np.clip(second - centre**2, 0.0, None))

"""Inputs of the CaloChallenge 2022 classifier metric (:mod:`surrogate.metrics.calochallenge`)
for the showers of a :class:`~surrogate.geometry.CaloGeometry` (default
:data:`~surrogate.geometry.CALOGAN`; a challenge geometry from
:func:`surrogate.data.binning.read_binning_xml` gives the challenge's own features),
following the challenge's public evaluation script
(``code/evaluate.py`` and ``code/HighLevelFeatures.py`` of ``CaloChallenge/homepage``, version of
commit e1109af; line numbers refer to the file at commit 9b41df7; Krause et al., arXiv:2410.21611).

**Readout threshold** (``evaluate.py`` l. 178, 470, 482-485): every cell with energy strictly
below ``threshold_mev`` is set to 0 before any feature is computed (with the default 0 this
zeroes negative cells only).

**Low-level features** (``prepare_low_data_for_classifier``, l. 166-186, ``normed=False``):
``log10(E_inc / MeV)`` followed by every cell energy divided by ``E_inc`` (both in MeV), layers
front to back, each row-major: ``1 + n_voxels`` columns (505 for CaloGAN).

**Normalised low-level features** (``prepare_low_data_for_classifier`` with ``normed=True``, the
evaluation's ``cls-low-normed``): ``log10(E_inc / MeV)``, every cell energy divided by its layer's energy
(``+ 1e-16``), then ``log10(E_i / MeV + 1e-8)`` per layer: ``1 + n_voxels + n_layers`` columns.

**High-level features** (``prepare_high_data_for_classifier``, l. 188-225; definitions in
``HighLevelFeatures.py`` l. 53-111), in this order, ``i`` running over the layers:

=========================  ==============================================================
columns                    definition
=========================  ==============================================================
``log10_E_inc``            ``log10(E_inc / MeV)``
``log10_E_i``              ``log10(E_i / MeV + 1e-8)``, ``E_i`` the layer's energy
``EC_eta_i``               centre of energy in eta / 100 mm (two-dimensional layers only)
``EC_phi_i``               centre of energy in phi / 100 mm (two-dimensional layers only)
``width_eta_i``            energy-weighted standard deviation of eta / 100 mm (same layers)
``width_phi_i``            same for phi / 100 mm
``log10_E_tot``            ``log10(E_tot / MeV + 1e-8)``, ``E_tot = sum_i E_i``
``sparsity_i``             ``1 - (fraction of the layer's cells with E > 0)`` (after the
                           threshold): 0 when every cell is hit, 1 for an empty layer
``EC_r_i``                 centre of energy in ``r = sqrt(x^2 + y^2)`` / 100 mm
``width_r_i``              energy-weighted standard deviation of ``r`` / 100 mm
=========================  ==============================================================

``i`` is the layer's name without ``layer_`` (the challenge's layer id). The eta and phi
columns exist only for layers whose ``two_dimensional`` is true: every rectangular layer, and
the polar layers with more than one angular bin (the challenge's ``layersBinnedInAlpha``,
``evaluate.py`` l. 197-201). 26 columns for CaloGAN's three layers; 1 + 5 + 4 x 2 + 1 + 3 x 5 = 30
for DS1 photons (layers 0, 1, 2, 3, 12; eta/phi for 1 and 2), 2 + 8 x 45 = 362 for DS2. The
coordinates are each voxel's ``voxel_centres_mm()``: for a polar voxel the Cartesian centre
``(r_mid cos a_mid, r_mid sin a_mid)`` (``XMLHandler.py`` l. 105-108), whose distance from the
axis is the midpoint of the voxel's radial bin, the challenge's ``r`` (``HighLevelFeatures.py``
l. 47-51); for a rectangular cell its centre ``(y, x)`` (eta ~ y, phi ~ x; see
:meth:`~surrogate.geometry.CaloLayer.cell_centres_mm`) and ``r = sqrt(x^2 + y^2)``. As in the
script, centres are ``sum(c E) / (sum(E) + 1e-16)`` and widths
``sqrt(max(sum(c^2 E) / (sum(E) + 1e-16) - centre^2, 0))``, so an empty layer has centre 0
and width 0, and a single hit cell has its centre there and width 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from surrogate.checks import check_choice, check_float
from surrogate.geometry import CALOGAN, CaloGeometry
from surrogate.metrics.showers import check_showers

__all__ = ["KINDS", "calochallenge_feature_names", "calochallenge_features", "calochallenge_observables",
           "high_level_features"]

#: Regularizers of the challenge's script: ``log10(E + 1e-8)`` of layer and total energies
#: (``evaluate.py`` l. 221-223) and ``sum(E) + 1e-16`` in centres and widths
#: (``HighLevelFeatures.py`` l. 54-72).
_LOG_EPSILON = 1e-8
_DIVISION_EPSILON = 1e-16
#: Lengths enter the high-level features in units of 100 mm (``evaluate.py`` l. 222-223).
_LENGTH_SCALE_MM = 100.0
_HIGH_LEVEL_QUANTITIES = ("E", "EC_eta", "EC_phi", "width_eta", "width_phi", "sparsity", "EC_r", "width_r")
KINDS = ("low", "low_normed", "high")
"""The feature sets: ``"low"`` (cells / E_inc), ``"low_normed"`` (cells / their layer's energy and
the layer energies) and ``"high"`` (high-level features)."""


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
    if kind in ("low", "low_normed"):
        cells = [f"{layer.name}[{r},{c}]" for layer in geometry.layers
                 for r in range(layer.shape[0]) for c in range(layer.shape[1])]
        if kind == "low":
            return ["log10_E_inc", *cells]
        return ["log10_E_inc", *(f"{name}/E_layer" for name in cells),
                *(f"log10_E_{_layer_label(layer.name)}" for layer in geometry.layers)]
    index = [_layer_label(layer.name) for layer in geometry.layers]
    planar = [_layer_label(layer.name) for layer in geometry.layers if layer.two_dimensional]
    names = ["log10_E_inc"] + [f"log10_E_{i}" for i in index]
    for quantity in ("EC_eta", "EC_phi", "width_eta", "width_phi"):
        names += [f"{quantity}_{i}" for i in planar]
    names.append("log10_E_tot")
    for quantity in ("sparsity", "EC_r", "width_r"):
        names += [f"{quantity}_{i}" for i in index]
    return names


def _layer_label(name: str) -> str:
    """``"layer_12"`` -> ``"12"``; other names unchanged."""
    return name.removeprefix("layer_")


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
            ``"layer_1"`` (N, 12, 12), ``"layer_2"`` (N, 12, 6); a challenge geometry:
            ``geometry.unflatten(showers)`` of a challenge file), energies in MeV, and
            ``"energy"`` (N, 1), the incident energy in GeV (> 0). Other keys are ignored.
        kind: ``"low"`` (cells / E_inc and log10 E_inc), ``"low_normed"`` (cells / their layer's
            energy, log10 E_inc and the layer energies) or ``"high"`` (layer energies, centres of
            energy, widths, sparsity); exact definitions in the module docstring.
        threshold_mev: Readout threshold in MeV (>= 0): cells below it count as empty (set to 0)
            for every feature, as in ``evaluate.py`` l. 178 and 470-485.
        geometry: The calorimeter: layer names, cell grids and cell sizes (for the coordinates).

    Returns:
        float64 array (N, F): F = 1 + n_voxels (505 for CaloGAN, 369 for DS1 photons) for
        ``"low"``, 1 + n_voxels + n_layers (374 for DS1 photons) for ``"low_normed"``,
        F = 2 + 4 n_layers + 4 n_two_dimensional (26 for CaloGAN, 30 for DS1 photons)
        for ``"high"``; column names from :func:`calochallenge_feature_names`.

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
    if kind == "low":
        energy_mev = _incident_energy(showers, threshold_mev, geometry)
        columns = [np.log10(energy_mev)[:, None],
                   *(_cells(showers, layer, threshold_mev) / energy_mev[:, None] for layer in geometry.layers)]
        return np.concatenate(columns, axis=1)
    if kind == "low_normed":
        energy_mev = _incident_energy(showers, threshold_mev, geometry)
        cells = [_cells(showers, layer, threshold_mev) for layer in geometry.layers]
        layer_energy = [c.sum(axis=1, keepdims=True) for c in cells]
        columns = [np.log10(energy_mev)[:, None], *(c / (e + _DIVISION_EPSILON) for c, e in zip(cells, layer_energy)),
                   *(np.log10(e + _LOG_EPSILON) for e in layer_energy)]
        return np.concatenate(columns, axis=1)
    return high_level_features(calochallenge_observables(showers, threshold_mev=threshold_mev, geometry=geometry))


def high_level_features(observables: Mapping[str, np.ndarray]) -> np.ndarray:
    """The classifier's high-level inputs from the physical values of :func:`calochallenge_observables`
    (module docstring: log10 of the energies, lengths in 100 mm, sparsity as it is), so that
    callers holding those values do not compute them twice.

    Arguments:
        observables: :func:`calochallenge_observables`'s dictionary, its keys in its order, each
            ``(N,)``; any other key is ignored.

    Returns:
        float64 ``(N, F)``, the columns of ``calochallenge_features(..., kind="high")``.
    """
    names = [n for n in observables if n in ("E_inc", "E_tot") or n.rsplit("_", 1)[0] in _HIGH_LEVEL_QUANTITIES]
    columns = []
    for name in names:
        column = observables[name]
        quantity = name.rsplit("_", 1)[0] if name not in ("E_inc", "E_tot") else name
        if quantity == "E_inc":
            column = np.log10(column)
        elif quantity in ("E", "E_tot"):
            column = np.log10(column + _LOG_EPSILON)
        elif quantity != "sparsity":
            column = column / _LENGTH_SCALE_MM
        columns.append(column)
    return np.stack(columns, axis=1)


def calochallenge_observables(
    showers: Mapping[str, np.ndarray],
    *,
    threshold_mev: float = 0.0,
    geometry: CaloGeometry = CALOGAN,
) -> dict[str, np.ndarray]:
    """The challenge's high-level features in physical units, one array per feature.

    The quantities of :func:`calochallenge_features` (``kind="high"``) before the classifier's
    transforms (log10, / 100 mm), i.e. what the challenge's ``HighLevelFeatures`` computes and
    its evaluation histograms for the separation powers.

    Arguments:
        showers, threshold_mev, geometry: As :func:`calochallenge_features`.

    Returns:
        Dict, in the column order of :func:`calochallenge_feature_names` (``"high"``) with
        ``log10_`` dropped from the names, of float64 arrays (N,): ``"E_inc"`` and ``"E_i"``,
        ``"E_tot"`` in MeV, ``"EC_eta_i"``, ``"EC_phi_i"``, ``"width_eta_i"``, ``"width_phi_i"``,
        ``"EC_r_i"``, ``"width_r_i"`` in mm, ``"sparsity_i"`` dimensionless.

    Raises:
        ValueError: As :func:`calochallenge_features`.

    References:
        Krause et al., arXiv:2410.21611; ``CaloChallenge/homepage`` ``code/HighLevelFeatures.py``.
    """
    energy_mev = _incident_energy(showers, threshold_mev, geometry)
    layer_energy, ec_eta, ec_phi, width_eta, width_phi, sparsity, ec_r, width_r = ({} for _ in range(8))
    for layer in geometry.layers:  # one layer at a time in float64: memory of one layer's copy
        cells = _cells(showers, layer, threshold_mev)
        label = _layer_label(layer.name)
        eta, phi = layer.voxel_centres_mm()  # row-major, the order of ``cells``
        r = np.hypot(eta, phi)
        total = cells.sum(axis=1)
        layer_energy[f"E_{label}"] = total
        pairs = ((eta, ec_eta, width_eta, "eta"), (phi, ec_phi, width_phi, "phi")) if layer.two_dimensional else ()
        for coordinate, centres, widths, axis in (*pairs, (r, ec_r, width_r, "r")):
            centres[f"EC_{axis}_{label}"], widths[f"width_{axis}_{label}"] = _centre_and_width(cells, coordinate, total)
        sparsity[f"sparsity_{label}"] = 1.0 - (cells > 0.0).mean(axis=1)
    e_tot = np.stack(list(layer_energy.values()), axis=1).sum(axis=1)
    return {"E_inc": energy_mev, **layer_energy, **ec_eta, **ec_phi, **width_eta, **width_phi, "E_tot": e_tot,
            **sparsity, **ec_r, **width_r}


def _incident_energy(showers: Mapping[str, np.ndarray], threshold_mev: float, geometry: CaloGeometry) -> np.ndarray:
    """Checks the showers and the threshold; returns E_inc (N,) in MeV, float64."""
    check_float("threshold_mev", threshold_mev, minimum=0.0, unit="MeV")
    n_events = check_showers(showers, geometry)
    energy_mev = np.asarray(showers["energy"], dtype=np.float64).reshape(n_events) * 1000.0
    if np.any(energy_mev <= 0):
        raise ValueError(f"showers['energy'] has {int(np.sum(energy_mev <= 0))} values <= 0 GeV; the features "
                         "divide by and take log10 of the incident energy, which must be > 0")
    return energy_mev


def _cells(showers: Mapping[str, np.ndarray], layer, threshold_mev: float) -> np.ndarray:
    """One layer's cells (N, n_cells) in MeV, float64, those below the threshold set to 0."""
    cells = np.asarray(showers[layer.name], dtype=np.float64)
    cells = cells.reshape(cells.shape[0], -1)
    return np.where(cells < threshold_mev, 0.0, cells)


def _centre_and_width(cells: np.ndarray, coordinate: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energy-weighted mean and standard deviation of ``coordinate`` (C,) over cells (N, C).

    The script's one-pass formulas with ``+ 1e-16`` in the denominator (``HighLevelFeatures.py``
    l. 53-90): an empty layer gives 0 and 0.
    """
    denominator = total + _DIVISION_EPSILON
    centre = cells @ coordinate / denominator
    second = cells @ (coordinate * coordinate) / denominator
    return centre, np.sqrt(np.clip(second - centre**2, 0.0, None))

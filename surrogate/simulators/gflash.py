"""GFlash-style parametrized electromagnetic showers in the CaloGAN geometry.

A fast, vectorized numpy stand-in for Geant4 that produces showers in the CaloGAN HDF5 layout
(``layer_0`` (N, 3, 96), ``layer_1`` (N, 12, 12), ``layer_2`` (N, 12, 6) cell energies in MeV,
``energy`` (N, 1) incident energy in GeV, ``overflow`` (N, 3) MeV outside the +-240 mm grid).
:func:`simulate_batch` takes any :class:`~surrogate.geometry.CaloGeometry` whose layers match
the calorimeter's readout layers: rectangular grids as CaloGAN's, or the polar voxels of the
CaloChallenge geometries (spots binned by radius and angle; the challenge's datasets, files and
calorimeters are in :mod:`surrogate.simulators.gflash_calochallenge`). The CaloGAN functions
below are unchanged by this: same seed, same showers.

Physics, per shower (Grindhammer & Peters, hep-ex/0001020; formulas and numbers in
:mod:`surrogate.simulators.gflash_params`):

1. **Longitudinal profile.** ``(ln T, ln alpha)`` is drawn from the published correlated
   bivariate normal of the sampling-calorimeter parametrization (Z_eff, F_S, e_hat of the
   2 mm Pb + 4 mm LAr mixture). The Gamma profile is integrated exactly over each of the 80
   sampling layers (6 mm = 0.385 X0_eff each); energy beyond the back face (30.8 X0_eff) is lost.
   Photons (``"gamma"``) start their shower at a conversion depth drawn from an exponential of mean
   9/7 X0_eff and then develop like an electron of the full energy (GFlash has no photon
   parametrization); electrons and positrons start at the front face. No material in front.
2. **Spots.** The shower is cut into ``N = 10.3/c E^0.959`` energy spots (GFlash's sampling
   formula, c = sampling term), distributed over the sampling layers with their own Gamma profile
   (``T_spot``, ``alpha_spot``). Per sampling layer the core and tail spot counts are Poisson with
   means ``N f_spot p`` and ``N f_spot (1 - p)`` (at least one spot where the layer has energy);
   the layer's energy is shared equally among its spots, as in GFlash.
3. **Radial profile.** Each spot is placed at a radius drawn from its component
   ``f(r) = 2 r R^2 / (r^2 + R^2)^2`` (R = R_C or R_T, in R_M,eff = 36.8 mm, evaluated at the
   layer's relative depth tau) and a uniform azimuth; we draw it as a bivariate Student-t with
   2 degrees of freedom and scale ``R/sqrt(2)`` (same distribution, no trigonometry). Spots are
   histogrammed into the readout cells with :func:`numpy.bincount`; spots outside +-240 mm go
   into ``overflow[:, layer]``.
4. **Sampling fluctuations.** The deposited energy ``e`` of every cell (and overflow entry) is
   replaced by a Gamma variate of mean ``e`` and variance ``c^2 e`` (e in GeV). A sum of Gamma
   variates with a common scale is Gamma, so this is exactly GFlash's per-spot Gamma smearing,
   done once per cell; the total response then has ``sigma/E = c/sqrt(E)`` with
   ``c = 2.7% sqrt(4 mm / f_mip) = 10.8%`` for CaloGAN.
5. **Readout threshold (zero suppression).** Every cell whose final energy is below
   ``threshold_mev`` is set to exactly 0, and its energy is simply lost (it goes neither to
   another cell nor to ``overflow``), as in a zero-suppressed readout. ``overflow`` is not a
   readout cell and is never suppressed. The default :data:`READOUT_THRESHOLD_MEV` = 0.01 MeV is
   the voxel threshold of the CaloFlow code for the CaloGAN geometry (see there). The threshold
   is applied after every random draw, so the same seed gives bit-identical cells at or above
   it whatever the threshold. Without it (``threshold_mev=0``) the Gamma smearing of step 4
   leaves many cells with tiny deposits, far below anything a readout records: in 10 000
   positrons of 1-100 GeV, 22 % of the non-empty cells of layer 2 hold less than 0.01 MeV
   (18 % less than 1e-3 MeV), and the threshold takes the fraction of non-empty cells from
   7.13 / 36.42 / 7.42 % to 7.11 / 36.08 / 5.79 % in layers 0 / 1 / 2, losing 0.0016 MeV per
   shower on average (at most 0.025 MeV, 1e-5 of the incident energy).

**Calibration (EM scale).** Cell energies are the visible (LAr) energy divided by the mean
electron sampling fraction ``f_e = e_hat f_mip = 0.17``; so the mean of cells + overflow is the
longitudinally contained energy (99.8-99.9 % of the incident energy), in MeV, less the
negligible energy of the cells below the readout threshold (step 5).

**Spot count trade-off.** We keep the full GFlash spot count (about 4 000 per shower on average
for 1–100 GeV, 7 900 at 100 GeV) and pay 60–100 ns per spot in numpy: 2 400–4 000 showers per
CPU-second for 1–100 GeV positrons (20 000 showers in 5–10 s of CPU). The spots carry the
cell-to-cell (lateral) fluctuations that an analytic per-cell integral of the mean radial profile
would lack; that cheaper alternative would also need an ad-hoc model of those fluctuations. The
``spot_scale`` argument multiplies the count (fewer spots: faster, larger lateral
fluctuations).

References:
    G. Grindhammer and S. Peters, hep-ex/0001020.
    M. Paganini, L. de Oliveira, B. Nachman, arXiv:1705.02355, 1712.10321 (CaloGAN geometry).
"""

from __future__ import annotations

import numpy as np

from surrogate.checks import check_float
from surrogate.geometry import CALOGAN, CaloGeometry, CaloLayer, PolarLayer
from surrogate.simulators.gflash_params import (
    CALOGAN_CALORIMETER,
    PHOTON_CONVERSION_LENGTH_X0,
    SamplingCalorimeter,
    _check_particle,
    fluctuated_longitudinal_parameters,
    gamma_layer_fractions,
    individual_profile_parameters,
    mean_spot_count,
    radial_parameters,
    spot_profile_parameters,
)

__all__ = [
    "READOUT_THRESHOLD_MEV",
    "sample_longitudinal",
    "simulate_batch",
]

DEFAULT_BATCH_SIZE = 256

#: Default readout threshold in MeV for CaloGAN-layout cells: cells below it are 0 (zero
#: suppression). The value is CaloFlow's (Krause & Shih, arXiv:2106.05285) for the CaloGAN
#: geometry: its ``run.py`` option ``--threshold`` (default 0.01, "Threshold in MeV below which
#: voxel energies are set to 0") is applied to every generated shower before it is written
#: (``data.save_samples_to_file``: ``np.where(data < threshold, 0, data)``), and its plotting
#: scripts apply the same cut to the Geant4 reference. CaloGAN itself (arXiv:1705.02355,
#: 1712.10321) stores Geant4 deposits without a threshold and counts any cell above 0 as hit;
#: the CaloChallenge evaluation (arXiv:2410.21611) cuts both files at its datasets' own
#: thresholds (1 MeV for the ATLAS dataset 1, 15.15 keV for datasets 2 and 3), which are not the
#: CaloGAN geometry's. Used by the reference simulator (:func:`simulate_batch`), the dataset
#: recipes and the validation (:func:`surrogate.pipelines.fastsim.validate_calo`).
READOUT_THRESHOLD_MEV: float = 0.01


def sample_longitudinal(
    energy_gev: np.ndarray,
    rng: np.random.Generator,
    *,
    particle: str = "e+",
    calo: SamplingCalorimeter = CALOGAN_CALORIMETER,
) -> dict[str, np.ndarray]:
    """Draw individual longitudinal profiles and integrate them over the sampling layers.

    Arguments:
        energy_gev: incident energies in GeV, float ``(N,)``.
        rng: numpy generator.
        particle: ``"e+"``, ``"e-"`` (same as e+) or ``"gamma"``.
        calo: the sampling calorimeter.

    Returns:
        dict of float64 arrays: ``"t_max"`` (N,) depth of the maximum in X0_eff, ``"alpha"`` (N,)
        shape parameter, ``"t_start"`` (N,) shower start (0 for e+-, conversion depth for
        photons) in X0_eff, ``"layer_fractions"`` (N, n_layers) fraction of the incident energy
        deposited in each sampling layer, ``"spot_fractions"`` (N, n_layers) fraction of the shower's
        spots in each sampling layer (spots beyond the back face are not made), ``"tau"`` (N, n_layers) relative
        depth of each layer's centre for the radial profiles.

    Raises:
        ValueError: unknown particle or non-positive energies.

    References:
        hep-ex/0001020, appendix A.2 (correlated log-normal T and alpha; spot profile).
    """
    _check_particle(particle)
    energy_gev = np.asarray(energy_gev, dtype=np.float64)
    if energy_gev.ndim != 1 or not (np.all(np.isfinite(energy_gev)) and np.all(energy_gev > 0)):
        raise ValueError(
            f"energy_gev: expected finite positive values (GeV) of shape (N,), got shape "
            f"{energy_gev.shape} with minimum {np.min(energy_gev, initial=np.inf)}"
        )
    n = energy_gev.shape[0]
    z1, z2 = rng.standard_normal((2, n))
    t_max, alpha = individual_profile_parameters(energy_gev, z1, z2, calo)
    if particle == "gamma":
        t_start = PHOTON_CONVERSION_LENGTH_X0 * rng.standard_exponential(n)
    else:
        t_start = np.zeros(n)
    layer_fractions = gamma_layer_fractions(t_max, alpha, t_start, calo)
    t_spot, a_spot = spot_profile_parameters(t_max, alpha, calo)
    spot_fractions = gamma_layer_fractions(t_spot, a_spot, t_start, calo)
    # tau = t / <t>_i * <alpha>/(<alpha> - 1), <t>_i = alpha T / (alpha - 1)  (hep-ex/0001020)
    mean_alpha = np.exp(fluctuated_longitudinal_parameters(energy_gev, calo)["mean_log_alpha"])
    centres = 0.5 * (calo.layer_boundaries_x0[1:] + calo.layer_boundaries_x0[:-1])
    depth = np.clip(centres - t_start[:, None], 0.0, None)
    scale = (alpha - 1.0) / (alpha * t_max) * mean_alpha / (mean_alpha - 1.0)
    return {
        "t_max": t_max,
        "alpha": alpha,
        "t_start": t_start,
        "layer_fractions": layer_fractions,
        "spot_fractions": spot_fractions,
        "tau": depth * scale[:, None],
    }


def simulate_batch(
    energy_gev: np.ndarray,
    rng: np.random.Generator,
    *,
    particle: str = "e+",
    calo: SamplingCalorimeter = CALOGAN_CALORIMETER,
    spot_scale: float = 1.0,
    impact_jitter_mm: float = 0.0,
    threshold_mev: float = READOUT_THRESHOLD_MEV,
    geometry: CaloGeometry = CALOGAN,
) -> dict[str, np.ndarray]:
    """Simulate one batch of showers at the given incident energies (see the module docstring).

    Arguments:
        energy_gev: incident energies in GeV, float ``(B,)``.
        rng: numpy generator (the only source of randomness).
        particle: ``"e+"``, ``"e-"`` or ``"gamma"``.
        calo: the sampling calorimeter; its ``readout_ends`` must give one readout layer per
            layer of ``geometry`` (3 for CaloGAN).
        spot_scale: multiplies the GFlash spot count (> 0).
        impact_jitter_mm: half-width in mm of a uniform random shift of the shower axis in x and
            y (0: the axis is at the centre (0, 0) of the grid).
        threshold_mev: readout threshold in MeV (>= 0): cells whose float32 energy is below it
            are set to exactly 0 and their energy is lost (step 5 of the module docstring;
            default :data:`READOUT_THRESHOLD_MEV`, 0 keeps every deposit). The random draws do
            not depend on it.
        geometry: the readout cells of each layer: rectangular :class:`~surrogate.geometry.CaloLayer`
            grids (CaloGAN, default) or polar :class:`~surrogate.geometry.PolarLayer` bins (the
            CaloChallenge geometries, :func:`surrogate.data.binning.read_binning_xml`); spots are
            histogrammed into a polar layer by their radius and angle
            (:meth:`~surrogate.geometry.PolarLayer.voxel_index`).

    Returns:
        Dict of the geometry's layers, float32 ``(B, *layer.shape)`` cell energies in MeV at the
        EM scale, each 0 or at least ``threshold_mev`` (CaloGAN: ``"layer_0"`` (B, 3, 96),
        ``"layer_1"`` (B, 12, 12), ``"layer_2"`` (B, 12, 6)); ``"energy"`` (B, 1) GeV;
        ``"overflow"`` (B, n_layers) MeV per layer outside the cells (CaloGAN: +-240 mm; not
        thresholded).

    Raises:
        ValueError: bad particle, energies, spot_scale, jitter, threshold or readout geometry.
    """
    check_float("spot_scale", spot_scale, minimum=0, exclusive_minimum=True)
    check_float("impact_jitter_mm", impact_jitter_mm, minimum=0, unit="mm")
    threshold_mev = check_float("threshold_mev", threshold_mev, minimum=0, unit="MeV")
    if not isinstance(geometry, CaloGeometry):
        raise ValueError(f"geometry: expected a CaloGeometry, got {type(geometry).__name__}")
    layers = geometry.layers
    if len(calo.readout_ends) != len(layers):
        raise ValueError(
            f"calo.readout_ends: expected {len(layers)} readout layers (those of geometry {geometry.name!r}), "
            f"got {calo.readout_ends}"
        )
    long = sample_longitudinal(energy_gev, rng, particle=particle, calo=calo)
    energy_gev = np.asarray(energy_gev, dtype=np.float64)
    b = energy_gev.shape[0]
    layer_mev = long["layer_fractions"] * (1000.0 * energy_gev[:, None])            # (B, L)
    r_core, r_tail, p_core = radial_parameters(energy_gev[:, None], long["tau"], calo)  # (B, L)
    n_spots = spot_scale * mean_spot_count(energy_gev, calo)[:, None] * long["spot_fractions"]
    counts = rng.poisson(np.stack([n_spots * p_core, n_spots * (1.0 - p_core)], axis=1))  # (B, 2, L)
    empty = (counts.sum(axis=1) == 0) & (layer_mev > 0)
    use_core = rng.random(empty.shape) < p_core
    counts[:, 0][empty & use_core] = 1
    counts[:, 1][empty & ~use_core] = 1
    spot_mev = layer_mev / np.maximum(counts.sum(axis=1), 1)                     # (B, L)
    # scale of the bivariate Student-t per (shower, core/tail, sampling layer): R/sqrt(2) in mm
    radius_mm = calo.moliere_radius_mm / np.sqrt(2.0) * np.stack([r_core, r_tail], axis=1)
    radius_mm = radius_mm.astype(np.float32)
    offsets = (rng.uniform(-impact_jitter_mm, impact_jitter_mm, (2, b)).astype(np.float32)
               if impact_jitter_mm > 0 else None)

    out: dict[str, np.ndarray] = {}
    overflow = np.zeros((b, len(layers)))
    for index, layer in enumerate(layers):
        lo = 0 if index == 0 else calo.readout_ends[index - 1]
        hi = calo.readout_ends[index]
        deposit = _deposit_spots if isinstance(layer, CaloLayer) else _deposit_spots_polar
        out[layer.name], overflow[:, index] = deposit(
            layer, counts[:, :, lo:hi], radius_mm[:, :, lo:hi], spot_mev[:, None, lo:hi], offsets, rng
        )
    out["overflow"] = overflow

    # sampling fluctuations: Gamma(mean e, variance c^2 e) per cell, e in GeV (1000x for MeV)
    var_per_mev = 1000.0 * calo.resolution_term**2
    for key in (*geometry.layer_names, "overflow"):
        values = out[key]
        if var_per_mev > 0:
            positive = values > 0
            values[positive] = rng.gamma(values[positive] / var_per_mev, var_per_mev)
        out[key] = values.astype(np.float32)
    # zero suppression after all draws (cells only): the same seed gives the same cells above it
    for key in geometry.layer_names:
        out[key][out[key] < threshold_mev] = 0.0
    out["energy"] = energy_gev.astype(np.float32)[:, None]
    return out


def _deposit_spots(
    layer: CaloLayer,
    counts: np.ndarray,
    radius_mm: np.ndarray,
    spot_mev: np.ndarray,
    offsets: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Places one readout layer's spots and histograms them into its cells (step 3 of the module docstring).

    Arguments:
        layer: The readout layer (cell grid and cell size).
        counts: Spots per (shower, core/tail, sampling layer of this readout layer), int ``(B, 2, K)``.
        radius_mm: Scale ``R/sqrt(2)`` of each spot's bivariate Student-t, mm, float32 ``(B, 2, K)``.
        spot_mev: Energy of each spot, MeV, ``(B, 1, K)`` (the same for core and tail).
        offsets: Shift of each shower's axis ``(x, y)`` in mm, float32 ``(2, B)``, or ``None``.
        rng: numpy generator.

    Returns:
        ``(cells, overflow)``: float64 ``(B, ny, nx)`` deposits in MeV and ``(B,)`` MeV of the
        spots outside the grid.
    """
    b = counts.shape[0]
    ny, nx = layer.shape
    dy, dx = layer.cell_size_mm
    half_y, half_x = layer.half_size_mm
    flat_counts = counts.ravel()
    n_cells = ny * nx
    # per-spot scale R/sqrt(2) in mm, energy in MeV and first histogram bin of its shower
    scale = np.repeat(radius_mm.ravel(), flat_counts)
    weight = np.repeat(np.broadcast_to(spot_mev, counts.shape).ravel(), flat_counts)
    per_shower = counts.sum(axis=(1, 2))
    base = np.repeat(np.arange(b) * (n_cells + 1), per_shower)
    # bivariate Student-t (2 dof): (x, y) = scale * (z1, z2) / sqrt(Exp(1))
    s = rng.standard_exponential(scale.size, dtype=np.float32)
    np.maximum(s, np.float32(1e-30), out=s)
    np.sqrt(s, out=s)
    np.divide(scale, s, out=s)
    u = rng.standard_normal(scale.size, dtype=np.float32)  # x -> column coordinate
    v = rng.standard_normal(scale.size, dtype=np.float32)  # y -> row coordinate
    u *= s
    v *= s
    if offsets is not None:
        u += np.repeat(offsets[0], per_shower)
        v += np.repeat(offsets[1], per_shower)
    u += np.float32(half_x)
    u *= np.float32(1.0 / dx)
    v += np.float32(half_y)
    v *= np.float32(1.0 / dy)
    inside = (u >= 0) & (u < nx) & (v >= 0) & (v < ny)
    np.floor(u, out=u)
    np.floor(v, out=v)
    v *= np.float32(nx)
    v += u
    index = np.where(inside, v, np.float32(n_cells)).astype(np.intp)
    index += base
    deposit = np.bincount(index, weights=weight, minlength=b * (n_cells + 1)).reshape(b, n_cells + 1)
    return deposit[:, :n_cells].reshape(b, ny, nx), deposit[:, n_cells]


def _spot_offsets(counts: np.ndarray, radius_mm: np.ndarray, spot_mev: np.ndarray, offsets: np.ndarray | None,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Transverse positions of every spot: ``(x, y, weight, per_shower)``; the draws of :func:`_deposit_spots`."""
    flat_counts = counts.ravel()
    scale = np.repeat(radius_mm.ravel(), flat_counts)
    weight = np.repeat(np.broadcast_to(spot_mev, counts.shape).ravel(), flat_counts)
    per_shower = counts.sum(axis=(1, 2))
    s = rng.standard_exponential(scale.size, dtype=np.float32)
    np.maximum(s, np.float32(1e-30), out=s)
    np.sqrt(s, out=s)
    np.divide(scale, s, out=s)
    x = rng.standard_normal(scale.size, dtype=np.float32)
    y = rng.standard_normal(scale.size, dtype=np.float32)
    x *= s
    y *= s
    if offsets is not None:
        x += np.repeat(offsets[0], per_shower)
        y += np.repeat(offsets[1], per_shower)
    return x, y, weight, per_shower


def _deposit_spots_polar(
    layer: PolarLayer,
    counts: np.ndarray,
    radius_mm: np.ndarray,
    spot_mev: np.ndarray,
    offsets: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_deposit_spots` for a polar layer: spots binned by radius and angle.

    The spots are drawn as for a rectangular layer (same random draws); a spot at ``(x, y)`` mm
    falls into the voxel of ``(eta, phi) = (y, x)`` (:meth:`~surrogate.geometry.PolarLayer.voxel_index`),
    or into the overflow beyond the last radial edge.

    Returns:
        ``(cells, overflow)``: float64 ``(B, n_alpha, n_r)`` deposits in MeV and ``(B,)`` MeV of
        the spots beyond the last radial edge.
    """
    b = counts.shape[0]
    n_cells = layer.n_cells
    x, y, weight, per_shower = _spot_offsets(counts, radius_mm, spot_mev, offsets, rng)
    index = layer.voxel_index(y, x)
    index += np.repeat(np.arange(b) * (n_cells + 1), per_shower)
    deposit = np.bincount(index, weights=weight, minlength=b * (n_cells + 1)).reshape(b, n_cells + 1)
    return deposit[:, :n_cells].reshape(b, *layer.shape), deposit[:, n_cells]



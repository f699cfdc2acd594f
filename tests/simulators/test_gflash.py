"""Tests of the GFlash-style reference simulator against the GFlash formulas it implements.

Tolerances are statistical (stated per test) with fixed seeds; the fast tests take about 10 s
of CPU in total, the ``slow`` ones about 15 s more.
"""

from __future__ import annotations

import numpy as np
import pytest

from surrogate.data.calo import read_calogan
from surrogate.geometry import CALOGAN_LAYER_SHAPES, CALOGAN_LAYERS
from surrogate.simulators.gflash import READOUT_THRESHOLD_MEV, sample_longitudinal
from surrogate.simulators.gflash_params import (
    CALOGAN_CALORIMETER,
    LEAD,
    LIQUID_ARGON,
    SamplingCalorimeter,
    radial_parameters,
)
from surrogate.simulators.gflash_profiles import (
    average_layer_fractions,
    expected_containment,
    expected_layer_fractions,
    radial_rectangle_fraction,
)
from surrogate.simulators.gflash_runs import iter_calogan_batches, simulate_calogan_showers, simulate_to_file

CALO = CALOGAN_CALORIMETER


def _totals(showers: dict) -> np.ndarray:
    """Cells + overflow per shower in MeV, float64 (N,)."""
    cells = sum(showers[k].sum(axis=(1, 2), dtype=np.float64) for k in CALOGAN_LAYERS)
    return cells + showers["overflow"].sum(axis=1, dtype=np.float64)


def _layer_totals(showers: dict) -> np.ndarray:
    """Cells + overflow per readout layer in MeV, float64 (N, 3)."""
    cells = np.stack([showers[k].sum(axis=(1, 2), dtype=np.float64) for k in CALOGAN_LAYERS], axis=1)
    return cells + showers["overflow"]


# --- geometry and materials --------------------------------------------------------------------
def test_effective_quantities_of_the_pb_lar_mixture():
    # Radiation length: thickness over the sum of thicknesses in units of each X0 (exact).
    x0_len = 6.0 / (2.0 / LEAD.radiation_length_mm + 4.0 / LIQUID_ARGON.radiation_length_mm)
    assert CALO.radiation_length_mm == pytest.approx(x0_len, rel=1e-12)
    assert CALO.layer_boundaries_x0[-1] == pytest.approx(480.0 / x0_len, rel=1e-12)
    assert CALO.layer_boundaries_x0[-1] == pytest.approx(30.8, abs=0.1)
    # Mass weights: 2 mm x 11.35 g/cm^3 against 4 mm x 1.396 g/cm^3.
    w_pb = 2 * 11.35 / (2 * 11.35 + 4 * 1.396)
    assert CALO.z_eff == pytest.approx(82 * w_pb + 18 * (1 - w_pb), rel=1e-12)
    assert CALO.sampling_frequency == pytest.approx(x0_len / 6.0, rel=1e-12)
    assert CALO.e_over_mip == pytest.approx(1 / 1.448, rel=1e-12)
    # PDG critical energy of lead is 7.43 MeV; the GFlash formula gives 7.36 MeV.
    assert LEAD.critical_energy_mev == pytest.approx(7.43, rel=0.02)
    # f_mip = 4 mm LAr / (4 mm LAr + 2 mm Pb) in mip energy loss; c = 2.7% sqrt(4 / f_mip).
    assert CALO.mip_sampling_fraction == pytest.approx(0.250, abs=0.002)
    assert CALO.resolution_term == pytest.approx(0.108, abs=0.001)
    # Readout layers: 15, 58 and 7 sampling layers.
    assert np.bincount(CALO.readout_layer).tolist() == [15, 58, 7]


def test_bad_calorimeter_and_particle_raise():
    with pytest.raises(ValueError, match="readout_ends"):
        SamplingCalorimeter(readout_ends=(15, 10, 80))
    with pytest.raises(ValueError, match="thickness"):
        SamplingCalorimeter(passive_thickness_mm=0.0)
    with pytest.raises(ValueError, match="particle"):
        expected_layer_fractions(10.0, particle="proton")


def test_radial_parameters_are_valid_and_widen_with_depth():
    tau = np.linspace(0.0, 4.0, 41)
    r_core, r_tail, p = radial_parameters(50.0, tau)
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(r_core > 0) and np.all(r_tail > r_core)
    assert np.all(np.diff(r_core) > 0)  # the core widens linearly with depth
    assert r_tail[-1] > r_tail[len(tau) // 4]  # the tail widens after the shower maximum


# --- longitudinal profile -----------------------------------------------------------------------
@pytest.mark.parametrize("particle", ["e+", "gamma"])
@pytest.mark.parametrize("energy", [10.0, 100.0])
def test_mean_longitudinal_profile_matches_the_fluctuated_gflash_expectation(particle, energy, rng):
    """Mean over 20000 fluctuated profiles per sampling layer = quadrature of the GFlash model.

    Tolerance: 5 standard errors of the mean per layer, plus 1e-5 for the quadrature.
    """
    fractions = sample_longitudinal(np.full(20000, energy), rng, particle=particle)["layer_fractions"]
    expected = expected_layer_fractions(energy, particle=particle)
    stderr = fractions.std(axis=0) / np.sqrt(fractions.shape[0])
    np.testing.assert_array_less(np.abs(fractions.mean(axis=0) - expected), 5 * stderr + 1e-5)


@pytest.mark.parametrize("energy", [5.0, 20.0, 100.0])
def test_mean_longitudinal_profile_matches_the_gflash_average_profile_formula(energy, rng):
    """Simulated mean profile vs the separately fitted GFlash average profile (hep-ex/0001020).

    The two are independent fits to the same showers: we require every sampling layer to agree
    within 4% of the peak layer and the centre of gravity within 0.15 X0.
    """
    fractions = sample_longitudinal(np.full(20000, energy), rng)["layer_fractions"].mean(axis=0)
    average = average_layer_fractions(energy)
    assert np.abs(fractions - average).max() < 0.04 * average.max()
    centres = 0.5 * (CALO.layer_boundaries_x0[1:] + CALO.layer_boundaries_x0[:-1])
    cog = (fractions * centres).sum() / fractions.sum()
    assert cog == pytest.approx((average * centres).sum() / average.sum(), abs=0.15)


def test_photons_start_later_than_positrons():
    """Photon showers are shifted by the mean conversion depth 9/7 X0 (1.29 X0)."""
    centres = 0.5 * (CALO.layer_boundaries_x0[1:] + CALO.layer_boundaries_x0[:-1])
    cog = {p: (expected_layer_fractions(30.0, particle=p) * centres).sum()
           / expected_layer_fractions(30.0, particle=p).sum() for p in ("e+", "gamma")}
    assert cog["gamma"] - cog["e+"] == pytest.approx(9 / 7, abs=0.02)


# --- full simulation ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def showers_10gev() -> dict:
    """3000 positrons of 10 GeV (module-scoped, so a fixed seed instead of the ``seed`` fixture)."""
    return simulate_calogan_showers(3000, energy_range_gev=(10.0, 10.0), seed=5, progress=False)


def test_readout_layer_means_match_the_expected_profile(showers_10gev):
    """Mean (cells + overflow) per readout layer / E = sum of expected sampling-layer fractions.

    Tolerance: 5 standard errors of the mean per readout layer.
    """
    fractions = _layer_totals(showers_10gev) / 10_000.0
    expected = np.add.reduceat(expected_layer_fractions(10.0), [0, 15, 73])
    stderr = fractions.std(axis=0) / np.sqrt(fractions.shape[0])
    np.testing.assert_array_less(np.abs(fractions.mean(axis=0) - expected), 5 * stderr)


def test_energy_response_and_resolution_at_10_gev(showers_10gev):
    """Mean response = expected containment (within 4 standard errors, about 0.1%); relative
    resolution = sqrt(c^2 <f>/E + Var f)/<f> with c the sampling term (within 8%: the standard
    error of a standard deviation from 3000 showers is 1.3%)."""
    response = _totals(showers_10gev) / 10_000.0
    mean, var = expected_containment(10.0)
    assert response.mean() == pytest.approx(mean, abs=4 * response.std() / np.sqrt(response.size))
    expected_sigma = np.sqrt(CALO.resolution_term**2 * mean / 10.0 + var) / mean
    assert response.std() / response.mean() == pytest.approx(expected_sigma, rel=0.08)
    assert expected_sigma == pytest.approx(0.108 / np.sqrt(10.0), rel=0.01)


def test_radial_rectangle_fraction_limits():
    """Exact answers: a square much larger (smaller) than R holds everything (nothing), and the
    infinite strip |x| < a holds a / sqrt(a^2 + R^2) of f(r) = 2rR^2/(r^2+R^2)^2."""
    assert radial_rectangle_fraction(1.0, 1e4, 1e4) == pytest.approx(1.0, abs=1e-6)
    assert radial_rectangle_fraction(1e4, 1.0, 1.0) == pytest.approx(0.0, abs=1e-7)
    for r in (0.5, 3.0, 40.0):
        strip = radial_rectangle_fraction(r, 10.0, 1e7)
        assert strip == pytest.approx(10.0 / np.sqrt(100.0 + r**2), rel=1e-6)


def test_lateral_profile_matches_the_gflash_radial_profiles(showers_10gev, rng):
    """Energy fractions inside cells and outside the grid agree with the analytic two-component
    radial profiles, averaged over the fluctuated longitudinal profiles of 1000 independent 10 GeV
    showers: central 2x2 cells of layer 1 (|x|, |y| < 40 mm, 90%) and the middle row, central 16
    strips of layer 0 (|x| < 40 mm, |y| < 80 mm, 99%) within 1% (seen: 0.1%); overflow of
    layer 1 (0.43%) within 10% (seen: 2%; it comes from a few tail spots per shower)."""
    long = sample_longitudinal(np.full(1000, 10.0), rng)
    r_core, r_tail, p = radial_parameters(10.0, long["tau"])
    energy = long["layer_fractions"]
    rm = CALO.moliere_radius_mm

    def expected(half_x, half_y, layers):
        inside = (p[:, layers] * radial_rectangle_fraction(rm * r_core[:, layers], half_x, half_y, order=32)
                  + (1 - p[:, layers]) * radial_rectangle_fraction(rm * r_tail[:, layers], half_x, half_y, order=32))
        return (energy[:, layers] * inside).sum() / energy[:, layers].sum()

    totals = _layer_totals(showers_10gev).sum(axis=0)
    layer_1 = showers_10gev["layer_1"].sum(axis=0, dtype=np.float64)
    layer_0 = showers_10gev["layer_0"].sum(axis=0, dtype=np.float64)
    assert layer_1[5:7, 5:7].sum() / totals[1] == pytest.approx(expected(40.0, 40.0, slice(15, 73)), rel=0.01)
    assert layer_0[1, 40:56].sum() / totals[0] == pytest.approx(expected(40.0, 80.0, slice(0, 15)), rel=0.01)
    overflow = showers_10gev["overflow"].sum(axis=0, dtype=np.float64)
    assert overflow[1] / totals[1] == pytest.approx(1 - expected(240.0, 240.0, slice(15, 73)), rel=0.10)


def test_layout_dtypes_and_physical_ranges(seed):
    showers = simulate_calogan_showers(50, energy_range_gev=(2.0, 80.0), seed=seed, progress=False,
                                       batch_size=16)
    assert set(showers) == {*CALOGAN_LAYERS, "energy", "overflow"}
    for name in CALOGAN_LAYERS:
        assert showers[name].shape == (50, *CALOGAN_LAYER_SHAPES[name])
    assert showers["energy"].shape == (50, 1)
    assert showers["overflow"].shape == (50, 3)
    for key, value in showers.items():
        assert value.dtype == np.float32, key
        assert np.all(np.isfinite(value)) and np.all(value >= 0), key
    assert np.all((showers["energy"] >= 2.0) & (showers["energy"] <= 80.0))
    # Every shower deposits energy, and the grid holds most of it (axis at the centre).
    totals = _totals(showers)
    assert np.all(totals > 0)
    assert np.all(showers["overflow"].sum(axis=1) < 0.1 * totals)


def test_shower_is_centred_and_symmetric(showers_10gev):
    """The axis at (0, 0) sits on the corner of the 4 central cells of layer 1; their mean
    energies agree within 2% (statistical spread about 0.5%) and hold most (91%) of the layer."""
    layer = showers_10gev["layer_1"].mean(axis=0, dtype=np.float64)
    centre = layer[5:7, 5:7]
    assert centre.ravel() == pytest.approx(np.full(4, centre.mean()), rel=0.02)
    assert centre.sum() > 0.85 * layer.sum()


def test_seed_reproducibility(seed):
    a = simulate_calogan_showers(20, seed=seed, progress=False, batch_size=8)
    b = simulate_calogan_showers(20, seed=seed, progress=False, batch_size=8)
    c = simulate_calogan_showers(20, seed=seed + 1, progress=False, batch_size=8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["layer_1"], c["layer_1"])


def test_batches_sum_to_n_events():
    sizes = [b["energy"].shape[0] for b in iter_calogan_batches(10, seed=0, progress=False, batch_size=4)]
    assert sizes == [4, 4, 2]


def test_overflow_collects_the_energy_outside_the_grid(seed):
    """Centred 20 GeV showers lose 0.3% outside +-240 mm (tails of the radial profile), most in
    the deepest layer where the tails are widest; with the axis moved up to 230 mm off centre
    the overflow grows several-fold, mostly for showers near the edge, and the total (cells +
    overflow) is unchanged."""
    kwargs = dict(energy_range_gev=(20.0, 20.0), progress=False, seed=seed)
    centred = simulate_calogan_showers(200, **kwargs)
    displaced = simulate_calogan_showers(200, impact_jitter_mm=230.0, **kwargs)
    frac_centred = centred["overflow"].sum() / _totals(centred).sum()
    frac_displaced = displaced["overflow"].sum() / _totals(displaced).sum()
    assert 0.0 < frac_centred < 0.01
    assert frac_displaced > 3 * frac_centred
    assert _totals(displaced).mean() == pytest.approx(_totals(centred).mean(), rel=0.01)
    per_layer = centred["overflow"].sum(axis=0) / _layer_totals(centred).sum(axis=0)
    assert per_layer[2] > per_layer[1] > per_layer[0] > 0
    # Showers whose layer-1 centroid lies beyond 200 mm lose > 3% into the overflow.
    layer = displaced["layer_1"].astype(np.float64)
    centres = (np.arange(12) + 0.5) * 40.0 - 240.0
    cx = (layer.sum(axis=1) * centres).sum(axis=1) / layer.sum(axis=(1, 2))
    cy = (layer.sum(axis=2) * centres).sum(axis=1) / layer.sum(axis=(1, 2))
    edge = np.maximum(np.abs(cx), np.abs(cy)) > 200.0
    assert edge.sum() >= 10
    assert (displaced["overflow"].sum(axis=1) / _totals(displaced))[edge].mean() > 0.03


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(particle="proton"), "particle"),
        (dict(energy_range_gev=(0.0, 10.0)), "energy_range_gev"),
        (dict(energy_range_gev=(10.0, 1.0)), "energy_range_gev"),
        (dict(batch_size=0), "batch_size"),
        (dict(spot_scale=-1.0), "spot_scale"),
        (dict(threshold_mev=-0.01), "threshold_mev"),
        (dict(threshold_mev=float("nan")), "threshold_mev"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_calogan_showers(4, progress=False, **kwargs)
    with pytest.raises(ValueError, match="n_events"):
        simulate_calogan_showers(0, progress=False)


def test_simulate_to_file_round_trip(tmp_path, seed):
    """Streamed batches read back (validated) equal the in-memory simulation with the same seed."""
    path = tmp_path / "showers.h5"
    kwargs = dict(particle="gamma", energy_range_gev=(1.0, 50.0), seed=seed, progress=False, batch_size=8)
    assert simulate_to_file(path, 20, **kwargs) == path
    expected = simulate_calogan_showers(20, **kwargs)
    stored = read_calogan(path)
    assert set(stored) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(stored[key], value)


def test_readout_threshold_zeroes_the_cells_below_it_and_keeps_the_rest_bit_identical(seed):
    """Same seed with and without the readout threshold: cells >= threshold are equal, cells below
    it are exactly 0 (their energy is lost, not moved), overflow and energies do not change."""
    kwargs = dict(energy_range_gev=(1.0, 100.0), seed=seed, progress=False, batch_size=64)
    raw = simulate_calogan_showers(200, threshold_mev=0.0, **kwargs)
    readout = simulate_calogan_showers(200, **kwargs)  # default threshold
    assert READOUT_THRESHOLD_MEV == 0.01
    threshold = np.float32(READOUT_THRESHOLD_MEV)
    for key in CALOGAN_LAYERS:
        kept = raw[key] >= threshold
        np.testing.assert_array_equal(readout[key][kept], raw[key][kept])
        assert np.all(readout[key][~kept] == 0), key
        assert np.all((readout[key] == 0) | (readout[key] >= threshold)), key
        # not vacuous: the Gamma smearing leaves deposits below the threshold in every layer
        assert np.count_nonzero((raw[key] > 0) & ~kept) > 0, key
    for key in ("energy", "overflow"):
        np.testing.assert_array_equal(readout[key], raw[key])
    lost = _totals(raw) - _totals(readout)
    assert np.all(lost >= 0) and lost.max() < 1.0  # MeV: tiny next to 1-100 GeV


def test_simulate_to_file_records_the_readout_threshold(tmp_path, seed):
    import h5py

    for threshold, name in ((None, "default.h5"), (0.0, "raw.h5"), (0.5, "half.h5")):
        kwargs = {} if threshold is None else {"threshold_mev": threshold}
        path = simulate_to_file(tmp_path / name, 5, seed=seed, progress=False, **kwargs)
        with h5py.File(path, "r") as f:
            assert f.attrs["layout"] == "calogan"
            assert f.attrs["readout_threshold_mev"] == (READOUT_THRESHOLD_MEV if threshold is None else threshold)
    cells = read_calogan(tmp_path / "half.h5")["layer_1"]
    assert np.all((cells == 0) | (cells >= 0.5))


def test_recipes_and_validation_use_the_same_default_threshold():
    from pathlib import Path

    from surrogate.config import SimulateConfig, load_simulate_recipe
    from surrogate.pipelines.showers import ValidateConfig

    assert SimulateConfig().threshold_mev == ValidateConfig().threshold_mev == READOUT_THRESHOLD_MEV
    for recipe in sorted((Path(__file__).parents[2] / "datasets").glob("calogan_gflash_*.toml")):
        assert load_simulate_recipe(recipe).threshold_mev == READOUT_THRESHOLD_MEV, recipe.name


@pytest.mark.slow
@pytest.mark.parametrize("particle", ["e+", "gamma"])
@pytest.mark.parametrize("energy", [2.0, 50.0])
def test_response_and_resolution_across_energies(particle, energy, seed):
    """As the 10 GeV test, for photons and at low/high energy (20000 showers at 2 GeV, 4000 at
    50 GeV): response within 4 standard errors, resolution within 5%."""
    n = 20000 if energy < 10 else 4000
    showers = simulate_calogan_showers(n, particle=particle, energy_range_gev=(energy, energy),
                                       seed=seed, progress=False)
    response = _totals(showers) / (1000.0 * energy)
    mean, var = expected_containment(energy, particle=particle)
    assert response.mean() == pytest.approx(mean, abs=4 * response.std() / np.sqrt(n))
    expected_sigma = np.sqrt(CALO.resolution_term**2 * mean / energy + var) / mean
    assert response.std() / response.mean() == pytest.approx(expected_sigma, rel=0.05)

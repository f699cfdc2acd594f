"""The GFlash-style simulator in the CaloChallenge geometries: calorimeters, incident energies,
exact energy bookkeeping of the polar binning, radial profiles against the analytic GFlash
profiles, and the files it writes. Fixed seeds; tolerances stated per test."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from surrogate.data.binning import read_binning_xml
from surrogate.data.calo import read_calochallenge, validate_calochallenge
from surrogate.geometry import CALOGAN, CaloGeometry, PolarLayer
from surrogate.simulators.gflash import sample_longitudinal, simulate_batch
from surrogate.simulators.gflash_calochallenge import (
    CALORIMETERS,
    THRESHOLDS_MEV,
    iter_calochallenge_batches,
    sample_incident_energies,
    simulate_calochallenge_to_file,
)
from surrogate.simulators.gflash_params import SamplingCalorimeter, radial_parameters

BINNING = Path(__file__).resolve().parents[2] / "datasets" / "calochallenge"


@pytest.fixture(scope="module")
def ds1() -> CaloGeometry:
    return read_binning_xml(BINNING / "binning_dataset_1_photons.xml")


@pytest.fixture(scope="module")
def ds2() -> CaloGeometry:
    return read_binning_xml(BINNING / "binning_dataset_2.xml")


def test_challenge_calorimeters():
    """Par04: 90 x (1.4 mm W + 0.3 mm Si) = 153 mm read out in 45 pairs (challenge homepage);
    the ATLAS-like barrel: 4.2 / 16.0 / 2.1 X0 strips / middle / back (JINST 3 S08003: about
    4.3, 16, 2 at eta = 0). Thresholds as the evaluation's min_energy."""
    par04 = CALORIMETERS["par04"]
    assert par04.n_layers == 90 and par04.n_layers * par04.layer_thickness_mm == pytest.approx(153.0)
    assert len(par04.readout_ends) == 45 and par04.readout_ends[:2] == (2, 4)
    assert par04.radiation_length_mm == pytest.approx(4.22, abs=0.01)
    atlas = CALORIMETERS["atlas_barrel"]
    x0 = atlas.layer_boundaries_x0
    thickness = np.diff(x0[[0, *atlas.readout_ends]])
    np.testing.assert_allclose(thickness, [0.61, 4.24, 16.04, 2.12, 13.62], atol=0.01)
    assert THRESHOLDS_MEV["1-photons"] == 1.0 and THRESHOLDS_MEV["2"] == pytest.approx(0.01515, abs=1e-5)


def test_incident_energy_distributions(rng):
    ladder = sample_incident_energies(3000, "powers-of-two", (0.256, 4194.304), rng)
    values, counts = np.unique(ladder, return_counts=True)
    assert values.tolist() == [2.0**k for k in range(8, 23)]  # exact MeV values, 256 MeV ... 4.19 TeV
    assert counts.min() > 3000 / 15 * 0.75  # equally likely: 200 each, binomial sd 14
    log = sample_incident_energies(20000, "log-uniform", (1.0, 1000.0), rng)
    assert 1000.0 <= log.min() and log.max() <= 1e6
    # log10(E / MeV) is uniform on [3, 6]: each decade holds a third (sd 0.0033)
    decades = np.histogram(np.log10(log), bins=[3, 4, 5, 6])[0] / log.size
    np.testing.assert_allclose(decades, 1 / 3, atol=0.015)
    flat = sample_incident_energies(5, "uniform", (2.0, 2.0), rng)
    assert flat.tolist() == [2000.0] * 5
    with pytest.raises(ValueError, match="holds no power of two"):
        sample_incident_energies(5, "powers-of-two", (0.3, 0.5), rng)
    with pytest.raises(ValueError, match="distribution must be one of"):
        sample_incident_energies(5, "gaussian", (1.0, 2.0), rng)


def test_polar_binning_keeps_every_spot(seed):
    """Same seed, same calorimeter, no sampling fluctuations and no threshold: per readout layer,
    cells + overflow of a polar geometry equal those of CaloGAN's rectangular cells (the same
    spots, only binned differently), up to float rounding."""
    calo = SamplingCalorimeter(sampling_term=0.0)
    polar = CaloGeometry("polar", [PolarLayer(f"layer_{i}", (0.0, 10.0, 50.0, 150.0), 8) for i in range(3)])
    energy = np.array([2.0, 20.0, 70.0])
    kwargs = dict(calo=calo, threshold_mev=0.0, impact_jitter_mm=5.0)
    grid = simulate_batch(energy, np.random.default_rng(seed), **kwargs)
    rings = simulate_batch(energy, np.random.default_rng(seed), geometry=polar, **kwargs)
    for index, name in enumerate(CALOGAN.layer_names):
        totals = [s[name].sum(axis=(1, 2), dtype=np.float64) + s["overflow"][:, index] for s in (grid, rings)]
        np.testing.assert_allclose(totals[1], totals[0], rtol=1e-5)
    assert rings["overflow"].sum() > 0 and rings["layer_1"].shape == (3, 8, 3)


def test_radial_profile_in_polar_bins_matches_gflash(ds2, rng):
    """1000 electrons of 50 GeV in DS2: the energy fraction of readout layers 5-19 inside r < 4.65 mm
    (first bin) and r < 13.95 mm (three bins) equals the analytic two-component profile
    (fraction inside rho: rho^2 / (rho^2 + R^2) per component) averaged over the fluctuated
    longitudinal profiles, within 1 % (seen: 0.09 %); beyond 41.85 mm (0.7 %) within 10 % (seen: 0.06 %)."""
    calo = CALORIMETERS["par04"]
    showers = simulate_batch(np.full(1000, 50.0), rng, particle="e-", calo=calo, geometry=ds2, threshold_mev=0.0)
    long = sample_longitudinal(np.full(1000, 50.0), np.random.default_rng(1), particle="e-", calo=calo)
    r_core, r_tail, p = radial_parameters(50.0, long["tau"], calo)
    sampling = slice(calo.readout_ends[4], calo.readout_ends[19])
    rm, energy = calo.moliere_radius_mm, long["layer_fractions"][:, sampling]

    def expected(rho):
        inside = (p[:, sampling] * rho**2 / (rho**2 + (rm * r_core[:, sampling]) ** 2)
                  + (1 - p[:, sampling]) * rho**2 / (rho**2 + (rm * r_tail[:, sampling]) ** 2))
        return (energy * inside).sum() / energy.sum()

    names = [f"layer_{i}" for i in range(5, 20)]
    radial = sum(showers[name].sum(axis=(0, 1), dtype=np.float64) for name in names)  # (9,) per radial bin
    total = radial.sum() + showers["overflow"][:, 5:20].sum(dtype=np.float64)
    assert radial[0] / total == pytest.approx(expected(4.65), rel=0.01)
    assert radial[:3].sum() / total == pytest.approx(expected(13.95), rel=0.01)
    assert 1 - radial.sum() / total == pytest.approx(1 - expected(41.85), rel=0.10)


def test_file_is_the_challenge_layout_and_reproducible(tmp_path, ds1, seed):
    """Dataset names, shapes, dtypes, units and the threshold: what the evaluation reads; the
    same arguments give the same showers."""
    kwargs = dict(geometry=ds1, calorimeter="atlas_barrel", particle="gamma", energy_distribution="powers-of-two",
                  energy_range_gev=(0.256, 4194.304), seed=seed, threshold_mev=1.0, progress=False)
    path = simulate_calochallenge_to_file(tmp_path / "ds1.h5", 60, **kwargs)
    assert validate_calochallenge(path) == 60
    with h5py.File(path, "r") as file:
        assert sorted(file) == ["incident_energies", "showers"]
        assert file["incident_energies"].shape == (60, 1) and file["showers"].shape == (60, 368)
        assert file["showers"].dtype == np.float32 and file["incident_energies"].dtype == np.float32
        assert file.attrs["layout"] == "calochallenge" and file.attrs["readout_threshold_mev"] == 1.0
        assert file.attrs["geometry"] == "binning_dataset_1_photons" and file.attrs["calorimeter"] == "atlas_barrel"
    data = read_calochallenge(path)
    showers, energy = data["showers"], data["incident_energies"][:, 0]
    assert set(np.log2(energy).round(6)) <= set(range(8, 23))
    assert np.all((showers == 0) | (showers >= 1.0))
    response = showers.sum(axis=1) / energy
    assert 0.9 < np.median(response) < 1.02  # EM scale: contained energy minus what the 1 MeV threshold drops
    again = np.concatenate([b["showers"] for b in iter_calochallenge_batches(60, **kwargs)])
    np.testing.assert_array_equal(again, showers)
    small = list(iter_calochallenge_batches(60, max_spots_per_batch=10**5, batch_size=7, **kwargs))
    assert max(len(b["showers"]) for b in small) <= 7 and sum(len(b["showers"]) for b in small) == 60


def test_mismatched_calorimeter_and_geometry_are_refused(ds1):
    pions = read_binning_xml(BINNING / "binning_dataset_1_pions.xml")
    with pytest.raises(ValueError, match=r"calorimeter has 5 readout layers but geometry 'binning_dataset_1_pions' "
                                         r"has 7 \(layer_0, layer_1, layer_2, layer_3, layer_12, layer_13, layer_14\)"):
        next(iter_calochallenge_batches(5, geometry=pions, calorimeter="atlas_barrel", progress=False))
    with pytest.raises(ValueError, match="calorimeter must be one of"):
        next(iter_calochallenge_batches(5, geometry=ds1, calorimeter="atlas", progress=False))
    with pytest.raises(ValueError, match="expected 5 readout layers .* got \\(15, 73, 80\\)"):
        simulate_batch(np.array([1.0]), np.random.default_rng(0), geometry=ds1)

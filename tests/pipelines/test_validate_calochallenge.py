"""Validation of CaloChallenge-layout files as the challenge's evaluation does it: features of the
right layers, separation powers over the evaluation's ranges (0 for identical samples, large for a
miscalibrated one), classifier entries, plots, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from surrogate.data.binning import read_binning_xml
from surrogate.data.calo import read_calochallenge, write_calochallenge
from surrogate.pipelines.fastsim_calochallenge import (
    challenge_dataset,
    challenge_histogram_edges,
    validate_calochallenge_files,
)
from surrogate.simulators.gflash_calochallenge import simulate_calochallenge_to_file

BINNING = Path(__file__).resolve().parents[2] / "datasets" / "calochallenge"


@pytest.fixture(scope="module")
def ds1_files(tmp_path_factory):
    geometry = read_binning_xml(BINNING / "binning_dataset_1_photons.xml")
    folder = tmp_path_factory.mktemp("ds1")
    kwargs = dict(geometry=geometry, calorimeter="atlas_barrel", energy_distribution="powers-of-two",
                  energy_range_gev=(0.256, 65.536), threshold_mev=1.0, progress=False)  # up to 2^16 MeV: fast
    reference = simulate_calochallenge_to_file(folder / "reference.h5", 200, seed=1, **kwargs)
    generated = simulate_calochallenge_to_file(folder / "generated.h5", 200, seed=2, **kwargs)
    data = read_calochallenge(generated)
    hot = write_calochallenge(folder / "hot.h5", data["incident_energies"], 1.2 * data["showers"])  # 20 % too high
    return geometry, reference, generated, hot


def test_report_of_two_samples_of_the_same_simulator(tmp_path, ds1_files):
    geometry, reference, generated, _ = ds1_files
    report = validate_calochallenge_files(reference, generated, tmp_path, geometry=geometry, plots=False,
                                          progress=False, physics_distances=False)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["dataset"] == "1-photons" and report["settings"]["readout_threshold_mev"] == 1.0
    powers = report["separation_power"]
    assert {"E_0", "E_12", "EC_eta_1", "EC_phi_2", "width_r_12", "sparsity_3", "voxel", "E_tot/E_inc",
            "E_tot/E_inc at 256 MeV", "E_tot/E_inc at 65536 MeV"} <= set(powers)
    assert "EC_eta_0" not in powers and "EC_eta_12" not in powers  # layers without angular bins
    assert all(v is None or 0.0 <= v <= 1.0 for v in powers.values())
    assert report["mean_separation_power"] < 0.15  # 200 vs 200 showers of one simulator: noise only
    for name, n_features in (("low_level", 369), ("low_level_normed", 374), ("high_level", 30)):
        entry = report["classifier"][name]
        assert entry["status"] == "ok" and entry["n_features"] == n_features and 0.0 <= entry["auc"] <= 1.0
    assert report["plots"] == []


@pytest.mark.slow  # 14 PNGs: about 10 s
def test_plots_are_written(tmp_path, ds1_files):
    geometry, reference, generated, _ = ds1_files
    report = validate_calochallenge_files(reference, generated, tmp_path, geometry=geometry, progress=False,
                                          physics_distances=False)
    assert "average_layer_12.png" in report["plots"] and "hist_EC_eta.png" in report["plots"]
    assert len(report["plots"]) == 5 + 9 and all((tmp_path / name).is_file() for name in report["plots"])


def test_identical_files_separate_by_nothing_and_a_miscalibration_shows(tmp_path, ds1_files):
    geometry, reference, generated, hot = ds1_files
    same = validate_calochallenge_files(reference, reference, tmp_path / "same", geometry=geometry, plots=False,
                                        progress=False, physics_distances=False)
    assert all(v in (0.0, None) for v in same["separation_power"].values()) and same["mean_separation_power"] == 0.0
    fair = validate_calochallenge_files(reference, generated, tmp_path / "fair", geometry=geometry, plots=False,
                                        progress=False, physics_distances=False)
    bad = validate_calochallenge_files(reference, hot, tmp_path / "hot", geometry=geometry, plots=False, progress=False,
                                       physics_distances=False)
    # E_tot/E_inc near 1.2 instead of 1.0: outside the evaluation's 0.9-1.1 window at 4 GeV and up
    assert bad["separation_power"]["E_tot/E_inc at 32768 MeV"] is None
    assert bad["separation_power"]["E_tot/E_inc"] > 0.5 and fair["separation_power"]["E_tot/E_inc"] < 0.2
    assert bad["mean_response"]["generated"] == pytest.approx(1.2 * fair["mean_response"]["generated"], rel=0.02)


def test_errors_name_the_file_and_the_voxel_count(tmp_path, ds1_files):
    geometry, reference, _, _ = ds1_files
    pions = read_binning_xml(BINNING / "binning_dataset_1_pions.xml")
    with pytest.raises(ValueError, match=r"reference.h5: 'showers' has 368 voxels per event; expected 533"):
        validate_calochallenge_files(reference, reference, tmp_path, geometry=pions, plots=False)
    from surrogate.geometry import CALOGAN

    with pytest.raises(ValueError, match="none of the challenge's datasets; give threshold_mev"):
        validate_calochallenge_files(reference, reference, tmp_path, geometry=CALOGAN, plots=False)


def test_histogram_ranges_follow_the_evaluation():
    ds2 = read_binning_xml(BINNING / "binning_dataset_2.xml")
    assert challenge_dataset(ds2) == "2"
    values = np.array([1.0, 2.0])
    assert challenge_histogram_edges("EC_eta_3", values, dataset="2", threshold_mev=0.01)[[0, -1]].tolist() == [-30, 30]
    assert challenge_histogram_edges("EC_eta_12", values, dataset="1-pions", threshold_mev=1.0)[-1] == 500.0
    assert challenge_histogram_edges("width_r_14", values, dataset="1-pions", threshold_mev=1.0)[-1] == 1500.0
    assert challenge_histogram_edges("width_r_2", values, dataset="1-photons", threshold_mev=1.0)[-1] == 500.0
    energy = challenge_histogram_edges("E_3", np.array([0.0, 50.0, 800.0]), dataset="2", threshold_mev=0.5)
    assert energy.size == 40 and energy[0] == pytest.approx(0.5) and energy[-1] == pytest.approx(800.0)
    assert challenge_histogram_edges("sparsity_0", values, dataset="2", threshold_mev=0.01).size == 21
    assert challenge_histogram_edges("E_tot/E_inc", values, dataset=None, threshold_mev=0.0).size == 101


@pytest.mark.slow  # one FPD/KPD evaluation at the challenge's draw sizes: about 40 s
def test_physics_distances_of_a_file_with_itself_vanish(tmp_path, ds1_files):
    """FPD and KPD (x 10^3) of the high-level features of a file against itself: both within 3
    errors of 0 (the draws of 10,000 events with replacement from 200 repeat events, which
    biases two different 200-event samples: 211 and 9.1 for two GFlash samples, measured, so the
    discrimination itself is tested on large samples in tests/metrics/test_physics_distances.py)."""
    geometry, reference, _, _ = ds1_files
    report = validate_calochallenge_files(reference, reference, tmp_path, geometry=geometry, plots=False,
                                          progress=False, classifier_max_events=10)
    distances = report["physics_distances"]
    assert distances["n_features"] == 30 and report == json.loads((tmp_path / "report.json").read_text())
    for key in ("fpd", "kpd"):
        assert abs(distances[f"{key}_x1e3"]) <= 3 * distances[f"{key}_error_x1e3"] + 1e-6, distances

"""validate_calo end to end on two small hand-made CaloGAN files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surrogate.data.calo import CaloGANWriter, write_calogan
from surrogate.geometry import CALOGAN_LAYER_SHAPES, CALOGAN_LAYERS
from surrogate.metrics.showers import OBSERVABLE_UNITS, separation_power, shower_observables, zero_suppress
from surrogate.pipelines.fastsim import validate_calo
from surrogate.simulators.gflash import READOUT_THRESHOLD_MEV

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def blob_showers(rng: np.random.Generator, n: int, *, response: float) -> dict[str, np.ndarray]:
    """Showers with ``response * E_inc`` in the cells (exactly, up to float32 rounding), E_inc in 1-100 GeV."""
    energy = rng.uniform(1.0, 100.0, (n, 1)).astype(np.float32)
    fractions = rng.dirichlet([2.0, 6.0, 2.0], size=n)
    showers = {"energy": energy, "overflow": np.zeros((n, 3), np.float32)}
    for i, layer in enumerate(CALOGAN_LAYERS):
        ny, nx = CALOGAN_LAYER_SHAPES[layer]
        r = rng.uniform(1.0, 2.0, (n, 1, 1))
        yy = np.arange(ny)[None, :, None] - (ny - 1) / 2
        xx = np.arange(nx)[None, None, :] - (nx - 1) / 2
        profile = np.exp(-0.5 * (yy**2 + xx**2) / r**2) * rng.gamma(10.0, 0.1, (n, ny, nx))
        profile /= profile.sum(axis=(1, 2), keepdims=True)
        showers[layer] = (profile * (1000.0 * response * energy[:, 0] * fractions[:, i])[:, None, None]).astype(np.float32)
    return showers


@pytest.fixture
def files(tmp_path, rng):
    reference = tmp_path / "reference.h5"
    generated = tmp_path / "generated.h5"
    write_calogan(reference, blob_showers(rng, 400, response=0.2))
    write_calogan(generated, blob_showers(rng, 400, response=0.22))  # 10 % too much energy
    return reference, generated


def test_validate_calo_end_to_end(files, tmp_path):
    reference, generated = files
    out = tmp_path / "report"
    bins_gev = ((1, 10), (10, 55), (55, 100))
    # no readout threshold: the known answers below are sums over every stored cell (the blobs'
    # Gaussian tails hold about 3e-5 of the energy in cells below the default 0.01 MeV)
    report = validate_calo(
        reference, generated, out, energy_bins_gev=bins_gev, seed=0, progress=False, classifier_max_events=300,
        threshold_mev=0.0,
    )

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert report["reference"]["n_events"] == 400 and report["generated"]["n_events"] == 400
    assert report["settings"]["readout_threshold_mev"] == report["summary"]["readout_threshold_mev"] == 0.0
    assert report["reference"]["readout_threshold_mev"] is None  # write_calogan records none

    bins = report["energy_bins"]
    assert list(bins) == ["all", "1-10 GeV", "10-55 GeV", "55-100 GeV"]
    # about 400 * 9 / 99 = 36 events in 1-10 GeV: too few, reported as skipped with the counts
    low = bins["1-10 GeV"]
    assert low["status"] == "skipped" and "fewer than 50" in low["reason"]
    assert low["n_reference"] < 50 and "separation_power" not in low
    for label in ("all", "10-55 GeV", "55-100 GeV"):
        entry = bins[label]
        assert entry["status"] == "ok", label
        # known answer: response 0.2 vs 0.22 in every bin (float32 cells: 1e-5 relative)
        response = entry["mean_response"]
        assert response["reference"] == pytest.approx(0.2, rel=1e-5)
        assert response["generated"] == pytest.approx(0.22, rel=1e-5)
        assert response["ratio"] == pytest.approx(1.1, rel=1e-5)
        powers = entry["separation_power"]
        assert set(powers) == set(OBSERVABLE_UNITS)
        assert all(0.0 <= s <= 1.0 for s in powers.values())
        # the response is a delta function at 0.2 vs 0.22: disjoint histograms
        assert powers["E_tot_over_E_inc"] == pytest.approx(1.0)
        # the shapes are the same distribution: separation power at the level of the noise
        floor = entry["separation_power_floor"]
        assert floor == pytest.approx(10 * (1 / entry["n_reference"] + 1 / entry["n_generated"]))
        for name in ("f_1", "width_x_1", "E_ratio_2", "sparsity_0"):
            assert powers[name] < 3 * floor, (label, name)
    assert sum(bins[label]["n_reference"] for label in bins if label != "all") == 400

    summary = report["summary"]
    assert summary["max_abs_response_deviation"] == pytest.approx(0.1, rel=1e-4)
    assert summary["worst_observable"] == "E_tot_over_E_inc"
    assert report["settings"]["classifier_protocol"] == summary["classifier_protocol"] == "fast"
    for kind in ("high_level", "cells"):
        assert report["classifier"][kind]["status"] == "ok" and report["classifier"][kind]["protocol"] == "fast"
        assert report["classifier"][kind]["n_per_class"] == 300  # capped by classifier_max_events
    # the response alone separates the samples perfectly; the cells divided by E_inc nearly so
    assert summary["auc_high_level"] > 0.95
    assert summary["auc_cells"] > 0.9

    plots = report["plots"]
    names = [*plots["observables"].values(), plots["average_images"], plots["mean_response"]]
    assert len(plots["observables"]) == len(OBSERVABLE_UNITS)
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "report.json"])


def test_validate_calo_same_distribution_and_too_few_events(tmp_path, rng):
    reference = tmp_path / "reference.h5"
    generated = tmp_path / "generated.h5"
    write_calogan(reference, blob_showers(rng, 300, response=0.2))
    write_calogan(generated, blob_showers(rng, 30, response=0.2))
    report = validate_calo(
        reference, generated, tmp_path / "out", energy_bins_gev=[(1, 50), (50, 100)], progress=False,
        plots=False,
    )
    # 30 generated events: every selection and both classifier tests are skipped, with reasons
    assert all(entry["status"] == "skipped" for entry in report["energy_bins"].values())
    assert report["classifier"]["cells"]["status"] == "skipped"
    assert report["summary"]["auc_high_level"] is None
    assert report["plots"] == {"observables": {}, "average_images": None, "mean_response": None}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json"]

    report = validate_calo(
        reference, reference, tmp_path / "same", energy_bins_gev=[(1, 50), (50, 100)],
        min_events_per_bin=20, progress=False, plots=False,
    )
    assert report["summary"]["mean_separation_power"] == 0.0
    assert report["summary"]["max_abs_response_deviation"] == 0.0
    assert abs(report["summary"]["auc_high_level"] - 0.5) < 0.1  # 90 held-out events per class


def test_readout_threshold_applies_to_both_files(tmp_path, rng):
    """A sample that differs from the reference only by deposits below the threshold (as a flow
    spreads them over cells that should be empty) is identical to it at the default readout."""
    reference_showers = zero_suppress(blob_showers(rng, 200, response=0.2), READOUT_THRESHOLD_MEV)
    noisy = dict(reference_showers)
    for layer in CALOGAN_LAYERS:
        cells = reference_showers[layer]
        assert 0 < np.mean(cells == 0) < 1
        noisy[layer] = np.where(cells == 0, rng.uniform(1e-4, 0.009, cells.shape).astype(np.float32), cells)
    reference, generated = tmp_path / "reference.h5", tmp_path / "generated.h5"
    with CaloGANWriter(reference, 200, attrs={"readout_threshold_mev": READOUT_THRESHOLD_MEV}) as writer:
        writer.write(reference_showers)
    write_calogan(generated, noisy)
    options = dict(energy_bins_gev=[(1, 100)], progress=False, plots=False, classifier_max_events=200)

    report = validate_calo(reference, generated, tmp_path / "default", **options)
    assert report["settings"]["readout_threshold_mev"] == READOUT_THRESHOLD_MEV == 0.01
    assert report["summary"]["readout_threshold_mev"] == READOUT_THRESHOLD_MEV
    assert "sparsity_threshold_mev" not in report["settings"]
    assert report["reference"]["readout_threshold_mev"] == 0.01  # the file's attribute
    assert report["generated"]["readout_threshold_mev"] is None
    for label in ("all", "1-100 GeV"):
        assert all(s == 0.0 for s in report["energy_bins"][label]["separation_power"].values()), label
        assert report["energy_bins"][label]["mean_response"]["ratio"] == 1.0

    # without a threshold every cell of the noisy sample is hit: its sparsity is 1 in every event
    with pytest.warns(UserWarning, match="readout threshold 0.01 MeV, above the 0.0 MeV"):
        raw = validate_calo(reference, generated, tmp_path / "raw", threshold_mev=0.0, **options)
    assert raw["settings"]["readout_threshold_mev"] == 0.0
    reference_sparsity = shower_observables(reference_showers)
    for i in range(3):
        expected = separation_power(reference_sparsity[f"sparsity_{i}"], np.ones(200), 40)
        assert raw["energy_bins"]["all"]["separation_power"][f"sparsity_{i}"] == pytest.approx(expected, abs=1e-12)
        assert expected > 0.3  # vs 0 at the default threshold
    with pytest.raises(ValueError, match="threshold_mev"):
        validate_calo(reference, generated, tmp_path / "bad", threshold_mev=-0.01, **options)


def test_validate_calo_rejects_bad_bins_and_files(files, tmp_path):
    reference, generated = files
    with pytest.raises(ValueError, match="low < high"):
        validate_calo(reference, generated, tmp_path / "x", energy_bins_gev=[(10, 1)], progress=False)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="bad.h5"):
        validate_calo(reference, bad, tmp_path / "x", progress=False)


@pytest.mark.slow
def test_validate_calo_with_the_calochallenge_protocol(files, tmp_path, rng):
    """The challenge's own DNN and protocol (about 2 minutes) on 400 vs 400 events whose response
    differs by a factor 2: the high-level features (log10 E_tot among them) separate them (on so
    few events the unstandardised protocol misses a 10 % difference); the report says which
    protocol produced each AUC and carries the challenge's JSD."""
    reference, _ = files
    generated = tmp_path / "double.h5"
    write_calogan(generated, blob_showers(rng, 400, response=0.4))
    report = validate_calo(reference, generated, tmp_path / "report", seed=0, progress=False, plots=False,
                           classifier_protocol="calochallenge")
    assert report["summary"]["classifier_protocol"] == "calochallenge"
    for kind in ("high_level", "cells"):
        entry = report["classifier"][kind]
        assert entry["protocol"] == "calochallenge" and entry["n_features"] == (26 if kind == "high_level" else 505)
        assert 0.0 <= entry["auc"] <= 1.0 and entry["jsd"] <= 1.0
    assert report["summary"]["auc_high_level"] > 0.9
    with pytest.raises(ValueError, match="classifier_protocol"):
        validate_calo(reference, generated, tmp_path / "x", classifier_protocol="bdt")

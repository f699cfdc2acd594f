"""validate_calo end to end on two small hand-made CaloGAN files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surrogate.data.calo import write_calogan
from surrogate.geometry import CALOGAN_LAYER_SHAPES, CALOGAN_LAYERS
from surrogate.metrics.showers import OBSERVABLE_UNITS
from surrogate.pipelines.fastsim import validate_calo

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
    report = validate_calo(
        reference, generated, out, energy_bins_gev=bins_gev, seed=0, progress=False, classifier_max_events=300
    )

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert report["reference"]["n_events"] == 400 and report["generated"]["n_events"] == 400

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
    for kind in ("high_level", "cells"):
        assert report["classifier"][kind]["status"] == "ok"
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


def test_validate_calo_rejects_bad_bins_and_files(files, tmp_path):
    reference, generated = files
    with pytest.raises(ValueError, match="low < high"):
        validate_calo(reference, generated, tmp_path / "x", energy_bins_gev=[(10, 1)], progress=False)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="bad.h5"):
        validate_calo(reference, bad, tmp_path / "x", progress=False)

"""CaloChallenge 2022 classifier metric: features on hand-made showers, AUC of easy cases, errors.

The fast tests train a narrow network (64 units) for a few epochs on small samples, with batches
of 50 and a learning rate of 2e-3 so that a few hundred events give enough optimizer steps (the
challenge's batches of 1000 assume 10^5 events); the protocol (split, best-epoch selection,
isotonic calibration, AUC / JSD) is the same. The challenge's own network (3 x 2048) is trained
in a ``slow`` test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from surrogate.geometry import CALOGAN
from surrogate.metrics.calochallenge import CaloChallengeDNN, calochallenge_classifier
from surrogate.metrics.calochallenge_features import calochallenge_feature_names, calochallenge_features

N_CELLS = {"layer_0": 288, "layer_1": 144, "layer_2": 72}
FAST = {"hidden_features": 64, "batch_size": 50, "learning_rate": 2e-3}


def empty_showers(n: int, energy_gev: float = 10.0) -> dict[str, np.ndarray]:
    showers = {layer.name: np.zeros((n, *layer.shape)) for layer in CALOGAN.layers}
    showers["energy"] = np.full((n, 1), energy_gev)
    return showers


def blob_showers(
    rng: np.random.Generator, n: int, *, response: float = 0.2, radius_cells: tuple[float, float] = (1.0, 2.0)
) -> dict[str, np.ndarray]:
    """Gaussian blobs (radius uniform in ``radius_cells``) with Gamma noise; ``response * E_inc``
    (E_inc uniform in 10-100 GeV) in the cells."""
    energy = rng.uniform(10.0, 100.0, (n, 1))
    fractions = rng.dirichlet([2.0, 6.0, 2.0], size=n)
    showers = {"energy": energy}
    for i, layer in enumerate(CALOGAN.layers):
        ny, nx = layer.shape
        radius = rng.uniform(*radius_cells, (n, 1, 1))
        yy = np.arange(ny)[None, :, None] - (ny - 1) / 2
        xx = np.arange(nx)[None, None, :] - (nx - 1) / 2
        profile = np.exp(-0.5 * (yy**2 + xx**2) / radius**2) * rng.gamma(10.0, 0.1, (n, ny, nx))
        profile /= profile.sum(axis=(1, 2), keepdims=True)
        showers[layer.name] = profile * (1000.0 * response * energy[:, 0] * fractions[:, i])[:, None, None]
    return showers


def high(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, calochallenge_feature_names("high").index(name)]


# ---------------------------------------------------------------- features


def test_low_level_features_are_log_energy_and_cells_over_incident_energy():
    showers = empty_showers(2, energy_gev=10.0)
    showers["layer_1"][0, 3, 7] = 500.0
    showers["layer_2"][1, 0, 0] = 0.5  # below a 1 MeV threshold
    showers["layer_0"][1, 2, 95] = -0.25  # negative noise: zeroed by any threshold >= 0
    features = calochallenge_features(showers, kind="low")
    assert features.shape == (2, 505) and features.dtype == np.float64
    assert len(calochallenge_feature_names("low")) == 505
    np.testing.assert_array_equal(features[:, 0], 4.0)  # log10(10 GeV / MeV)
    column = 1 + N_CELLS["layer_0"] + 3 * 12 + 7
    assert calochallenge_feature_names("low")[column] == "layer_1[3,7]"
    assert features[0, column] == pytest.approx(500.0 / 10000.0)
    assert np.count_nonzero(features[0, 1:]) == 1
    assert features[1, 1 + 288 + 144] == pytest.approx(0.5 / 10000.0)
    assert features[1, 288] == 0.0  # the negative cell
    thresholded = calochallenge_features(showers, kind="low", threshold_mev=1.0)
    assert np.count_nonzero(thresholded[1, 1:]) == 0 and thresholded[0, column] == features[0, column]


def test_normalised_low_level_features_divide_by_the_layer_energy():
    """cls-low-normed: cells / their layer's energy (a layer's fractions sum to 1, an empty layer's
    are 0), then log10 of each layer energy + 1e-8 (evaluate.py, normed=True)."""
    showers = empty_showers(2, energy_gev=10.0)
    showers["layer_1"][0, 3, 7] = 300.0
    showers["layer_1"][0, 0, 0] = 100.0
    showers["layer_2"][1, 0, 0] = 0.5  # below a 1 MeV threshold
    features = calochallenge_features(showers, kind="low_normed", threshold_mev=1.0)
    names = calochallenge_feature_names("low_normed")
    assert features.shape == (2, 1 + 504 + 3) and len(names) == 508
    assert names[0] == "log10_E_inc" and names[-3:] == ["log10_E_0", "log10_E_1", "log10_E_2"]
    column = 1 + N_CELLS["layer_0"] + 3 * 12 + 7
    assert names[column] == "layer_1[3,7]/E_layer" and features[0, column] == pytest.approx(0.75)
    layer_1 = slice(1 + N_CELLS["layer_0"], 1 + N_CELLS["layer_0"] + N_CELLS["layer_1"])
    assert features[0, layer_1].sum() == pytest.approx(1.0) and not features[1, 1:505].any()
    np.testing.assert_allclose(features[0, -3:], np.log10([1e-8, 400.0 + 1e-8, 1e-8]))
    np.testing.assert_array_equal(features[:, 0], 4.0)


def test_high_level_features_of_one_hit_cell_per_layer():
    showers = empty_showers(1, energy_gev=20.0)
    hits = {"layer_0": (1, 10, 100.0), "layer_1": (3, 7, 1000.0), "layer_2": (11, 0, 10.0)}
    for name, (r, c, energy) in hits.items():
        showers[name][0, r, c] = energy
    features = calochallenge_features(showers, kind="high")
    assert features.shape == (1, 26) and len(calochallenge_feature_names("high")) == 26
    assert high(features, "log10_E_inc")[0] == pytest.approx(math.log10(20000.0))
    assert high(features, "log10_E_tot")[0] == pytest.approx(math.log10(1110.0))
    for i, (name, (r, c, energy)) in enumerate(hits.items()):
        layer = CALOGAN.layer(name)
        dy, dx = layer.cell_size_mm
        y, x = (r + 0.5) * dy - 240.0, (c + 0.5) * dx - 240.0
        assert high(features, f"log10_E_{i}")[0] == pytest.approx(math.log10(energy))
        assert high(features, f"EC_eta_{i}")[0] == pytest.approx(y / 100.0)
        assert high(features, f"EC_phi_{i}")[0] == pytest.approx(x / 100.0)
        assert high(features, f"EC_r_{i}")[0] == pytest.approx(math.hypot(x, y) / 100.0)
        for width in ("width_eta", "width_phi", "width_r"):
            assert high(features, f"{width}_{i}")[0] == pytest.approx(0.0, abs=1e-9)
        # the challenge's sparsity is the fraction of EMPTY cells: 1 - 1/n for one hit cell
        assert high(features, f"sparsity_{i}")[0] == pytest.approx(1.0 - 1.0 / N_CELLS[name])


def test_high_level_widths_and_empty_layers():
    showers = empty_showers(1)
    showers["layer_1"][0, 5, 6:8] = 250.0  # two equal neighbours in x: 40 mm apart
    features = calochallenge_features(showers, kind="high")
    assert high(features, "EC_phi_1")[0] == pytest.approx(0.4)  # x = 20 and 60 mm
    assert high(features, "width_phi_1")[0] == pytest.approx(0.2)  # half the distance
    assert high(features, "width_eta_1")[0] == pytest.approx(0.0, abs=1e-9)
    assert high(features, "sparsity_1")[0] == pytest.approx(1.0 - 2.0 / 144.0)
    for i in (0, 2):  # empty layers: log10(1e-8), centres and widths 0, sparsity 1
        assert high(features, f"log10_E_{i}")[0] == pytest.approx(-8.0)
        assert high(features, f"EC_eta_{i}")[0] == 0.0 and high(features, f"width_r_{i}")[0] == 0.0
        assert high(features, f"sparsity_{i}")[0] == 1.0
    showers["layer_1"][0, 0, 0] = 0.5
    below = calochallenge_features(showers, kind="high", threshold_mev=1.0)
    np.testing.assert_array_equal(below, features)  # the 0.5 MeV cell is under the threshold


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.pop("layer_2"), "missing key 'layer_2'"),
        (lambda s: s.update(layer_1=np.zeros((3, 12, 11))),
         r"showers\['layer_1'\] has shape \(3, 12, 11\); expected \(N, 12, 12\)"),
        (lambda s: s.update(energy=np.ones(3)), r"showers\['energy'\] has shape \(3,\); expected \(N, 1\)"),
        (lambda s: s.update(layer_2=np.zeros((2, 12, 6))), r"showers\['layer_2'\] has 2 events; expected 3"),
        (lambda s: s["layer_2"].__setitem__((1, 0, 0), np.nan), r"showers\['layer_2'\] contains 1 non-finite"),
        (lambda s: s["energy"].__setitem__((0, 0), 0.0), r"showers\['energy'\] has 1 values <= 0 GeV"),
    ],
)
def test_feature_errors_name_what_is_wrong(change, match):
    showers = empty_showers(3)
    change(showers)
    with pytest.raises(ValueError, match=match):
        calochallenge_features(showers, kind="high")


def test_feature_option_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        calochallenge_features(empty_showers(2), kind="cells")
    with pytest.raises(ValueError, match="threshold_mev must be a finite number >= 0 MeV"):
        calochallenge_features(empty_showers(2), threshold_mev=-1.0)
    with pytest.raises(ValueError, match="showers must be a dict"):
        calochallenge_features(np.zeros((2, 504)))


def test_high_level_features_in_a_challenge_geometry():
    """DS1 photons (layers 0, 1, 2, 3, 12; 10 angular bins in 1 and 2): 30 columns, eta and phi
    only for layers 1 and 2, voxel coordinates as the challenge's XMLHandler places them (a hit in
    angular bin j, radial bin i of layer 1 sits at r_mid (cos a_mid, sin a_mid))."""
    from pathlib import Path

    from surrogate.data.binning import read_binning_xml

    geometry = read_binning_xml(Path(__file__).resolve().parents[2] / "datasets/calochallenge/binning_dataset_1_photons.xml")
    names = calochallenge_feature_names("high", geometry=geometry)
    assert len(names) == 30 and names[1:6] == ["log10_E_0", "log10_E_1", "log10_E_2", "log10_E_3", "log10_E_12"]
    assert [n for n in names if n.startswith("EC_eta")] == ["EC_eta_1", "EC_eta_2"]
    assert names[-5:] == ["width_r_0", "width_r_1", "width_r_2", "width_r_3", "width_r_12"]
    voxels = np.zeros((1, 368))
    j, i = 2, 3  # layer 1 has 16 radial bins: edges 6 and 8 mm for i = 3
    voxels[0, 8 + j * 16 + i] = 300.0
    voxels[0, 363] = 0.5  # layer 12, first ring: below the 1 MeV threshold
    features = calochallenge_features({**geometry.unflatten(voxels), "energy": np.array([[4.096]])}, kind="high",
                                      geometry=geometry, threshold_mev=1.0)
    row = dict(zip(names, features[0]))
    a_mid = -np.pi + (j + 0.5) * 2 * np.pi / 10
    assert row["log10_E_inc"] == pytest.approx(np.log10(4096.0))
    assert row["EC_eta_1"] == pytest.approx(7.0 * np.cos(a_mid) / 100) and row["EC_phi_1"] == pytest.approx(
        7.0 * np.sin(a_mid) / 100)
    assert row["EC_r_1"] == pytest.approx(0.07) and row["width_r_1"] == 0.0 and row["EC_r_12"] == 0.0
    assert row["sparsity_1"] == pytest.approx(1 - 1 / 160) and row["sparsity_12"] == 1.0
    assert row["log10_E_12"] == pytest.approx(-8.0)
    assert calochallenge_features({**geometry.unflatten(voxels), "energy": np.array([[4.096]])},
                                  geometry=geometry).shape == (1, 369)


# ---------------------------------------------------------------- classifier


def test_network_has_the_challenge_architecture():
    net = CaloChallengeDNN(505)
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(505, 2048), (2048, 2048), (2048, 2048), (2048, 1)]
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in net.modules()) == 3
    assert all(m.p == 0.0 for m in net.modules() if isinstance(m, torch.nn.Dropout))


def test_identical_distributions_give_auc_one_half(rng):
    a, b = rng.normal(size=(1000, 5)), rng.normal(size=(1000, 5))
    result = calochallenge_classifier(a, b, epochs=3, **FAST)
    # 200 validation events per class: the AUC's null standard deviation is 0.029; 0.1 is 3.5 sigma
    assert abs(result["auc"] - 0.5) < 0.1 and abs(result["auc_uncalibrated"] - 0.5) < 0.1
    # JSD estimates a divergence from below: about 0 or negative for identical samples (isotonic
    # calibration on only 400 test events overfits, which pushes it down to about -0.1)
    assert -0.2 < result["jsd"] < 0.05
    sizes = (result["n_per_class"], result["n_train"], result["n_test"], result["n_validation"])
    assert sizes == (1000, 1200, 400, 400)
    assert 1 <= result["best_epoch"] <= result["epochs_run"] == 3 == len(result["test_accuracy"])
    assert result["protocol"] == "calochallenge" and result["n_features"] == 5


def test_clearly_different_showers_are_told_apart(rng):
    reference = blob_showers(rng, 600)
    hot = blob_showers(rng, 600, response=0.3)  # every cell 1.5 times too hot
    wide = blob_showers(rng, 600, radius_cells=(2.0, 3.0))  # blobs 1.6 times wider
    for generated, kinds in ((hot, ("low",)), (wide, ("low", "high"))):
        for kind in kinds:
            result = calochallenge_classifier(
                calochallenge_features(reference, kind=kind), calochallenge_features(generated, kind=kind),
                epochs=5, **FAST,
            )
            assert result["auc"] > 0.95, (kind, result)
            assert result["jsd"] > 0.5, (kind, result)


def test_separable_samples_stop_early_with_auc_one(rng):
    a = rng.normal(size=(200, 2))
    result = calochallenge_classifier(a, a + 20.0, epochs=50, **FAST)
    assert result["epochs_run"] < 50 and result["test_accuracy"][-1] == 1.0
    assert result["best_epoch"] == result["epochs_run"]
    assert result["auc"] == 1.0 and result["accuracy"] == 1.0
    # calibrated probabilities lie in [1e-6, 1 - 1e-6], so JSD <= 1 + log2(1 - 1e-6)
    assert 0.99 < result["jsd"] <= 1.0 + math.log2(1.0 - 1e-6) + 1e-12


def test_seed_makes_the_result_repeatable_and_leaves_global_rng_alone(rng):
    a, b = rng.normal(size=(300, 4)), rng.normal(0.3, 1.0, size=(400, 4))
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = calochallenge_classifier(a, b, seed=3, epochs=2, **FAST)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert first == calochallenge_classifier(a, b, seed=3, epochs=2, **FAST)
    assert first != calochallenge_classifier(a, b, seed=4, epochs=2, **FAST)
    assert first["n_per_class"] == 300  # the larger sample is subsampled
    capped = calochallenge_classifier(a, b, seed=3, epochs=1, max_events=100, **FAST)
    assert (capped["n_train"], capped["n_test"], capped["n_validation"]) == (120, 40, 40)


@pytest.mark.parametrize(
    ("reference", "generated", "options", "match"),
    [
        (np.zeros(20), np.zeros((20, 1)), {}, r"reference_features must have shape \(N, F\), got \(20,\)"),
        (np.zeros((20, 3)), np.zeros((20, 2)), {}, "reference_features has 3 features but generated_features has 2"),
        (np.zeros((5, 2)), np.zeros((20, 2)), {}, "reference_features has 5 events; expected at least 10"),
        (np.zeros((20, 2)), np.full((20, 2), np.inf), {}, "generated_features contains 40 non-finite values"),
        (np.zeros((20, 2)), np.zeros((20, 2)), {"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        (np.zeros((20, 2)), np.zeros((20, 2)), {"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
        (np.zeros((20, 2)), np.zeros((20, 2)), {"dropout": 1.0}, r"dropout must be a finite number in \[0, 1\)"),
        (np.zeros((20, 2)), np.zeros((20, 2)), {"dtype": torch.int64}, "dtype must be a floating-point"),
    ],
)
def test_classifier_errors_name_what_is_wrong(reference, generated, options, match):
    with pytest.raises(ValueError, match=match):
        calochallenge_classifier(reference, generated, **{**FAST, **options})


@pytest.mark.slow
def test_challenge_size_network(rng):
    """The challenge's network and optimizer (3 x 2048 units, float64, Adam 2e-4) on high-level features.

    About 45 s of CPU. Shape differences are found within a few epochs; energy-scale errors in the
    low-level features need far more optimizer steps (see the classifier's docstring).
    """
    reference, same = blob_showers(rng, 1000), blob_showers(rng, 1000)
    wide = blob_showers(rng, 1000, radius_cells=(2.0, 3.0))
    reference_x = calochallenge_features(reference, kind="high")
    null = calochallenge_classifier(reference_x, calochallenge_features(same, kind="high"), epochs=5, batch_size=100)
    assert abs(null["auc"] - 0.5) < 0.1  # 200 validation events per class: null sd 0.029
    different = calochallenge_classifier(reference_x, calochallenge_features(wide, kind="high"), epochs=5,
                                         batch_size=100)
    assert different["auc"] > 0.95

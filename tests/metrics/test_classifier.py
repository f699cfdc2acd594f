"""Classifier two-sample test: AUC about 0.5 for one distribution, near 1 for clearly different ones."""

from __future__ import annotations

import numpy as np
import pytest

from surrogate.geometry import CALOGAN_LAYER_SHAPES, CALOGAN_LAYERS
from surrogate.metrics.classifier import calo_cell_features, calo_high_level_features, classifier_auc
from surrogate.metrics.showers import OBSERVABLE_UNITS, shower_observables


def blob_showers(rng: np.random.Generator, n: int, *, response: float = 0.2) -> dict[str, np.ndarray]:
    """Gaussian-blob showers: E_inc uniform in 1-100 GeV, ``response * E_inc`` deposited in the cells."""
    energy = rng.uniform(1.0, 100.0, (n, 1)).astype(np.float32)
    fractions = rng.dirichlet([2.0, 6.0, 2.0], size=n)
    showers = {"energy": energy, "overflow": np.zeros((n, 3), np.float32)}
    for i, layer in enumerate(CALOGAN_LAYERS):
        ny, nx = CALOGAN_LAYER_SHAPES[layer]
        r = rng.uniform(1.0, 2.0, (n, 1, 1))  # blob radius in cells
        yy = np.arange(ny)[None, :, None] - (ny - 1) / 2
        xx = np.arange(nx)[None, None, :] - (nx - 1) / 2
        profile = np.exp(-0.5 * (yy**2 + xx**2) / r**2) * rng.gamma(10.0, 0.1, (n, ny, nx))
        profile /= profile.sum(axis=(1, 2), keepdims=True)
        showers[layer] = (profile * (1000.0 * response * energy[:, 0] * fractions[:, i])[:, None, None]).astype(np.float32)
    return showers


def test_same_distribution_gives_auc_one_half(rng):
    a, b = rng.normal(size=(2000, 5)), rng.normal(size=(2000, 5))
    result = classifier_auc(a, b, seed=0)
    # null standard deviation of the AUC with 600 held-out events per class is about 0.012
    assert abs(result["auc"] - 0.5) < 0.05
    assert result["n_per_class"] == 2000 and result["n_test"] == 1200 and result["n_train"] == 2800
    assert result["n_features"] == 5 and result["n_epochs"] >= 1


def test_clearly_different_distributions_give_auc_near_one(rng):
    a = rng.normal(size=(2000, 5))
    b = rng.normal(size=(2000, 5))
    b[:, 2] += 3.0  # Bayes-optimal AUC = Phi(3 / sqrt 2) = 0.983
    assert classifier_auc(a, b, seed=0)["auc"] > 0.95


def test_seed_makes_the_test_repeatable_and_max_events_caps(rng):
    a, b = rng.normal(size=(500, 3)), rng.normal(0.5, 1.0, size=(800, 3))
    first = classifier_auc(a, b, seed=3, max_events=300)
    assert first == classifier_auc(a, b, seed=3, max_events=300)
    assert first["n_per_class"] == 300 and first["n_train"] + first["n_test"] == 600


def test_calo_features_shapes_and_preprocessing(rng):
    showers = blob_showers(rng, 7)
    cells = calo_cell_features(showers)
    assert cells.shape == (7, 3 * 96 + 12 * 12 + 12 * 6 + 1)
    np.testing.assert_allclose(cells[:, -1], np.log10(showers["energy"][:, 0]), rtol=1e-6)
    # cells divided by E_inc in MeV: they sum to the response 0.2
    np.testing.assert_allclose(cells[:, :-1].sum(axis=1), 0.2, rtol=1e-5)
    features, names = calo_high_level_features(showers)
    assert features.shape == (7, 1 + len(OBSERVABLE_UNITS)) and len(names) == features.shape[1]
    obs = shower_observables(showers)
    np.testing.assert_allclose(features[:, names.index("log10_1p_E_tot")], np.log10(1 + obs["E_tot"]))
    np.testing.assert_allclose(features[:, names.index("depth")], obs["depth"])


def test_calo_classifiers_on_showers(rng):
    reference, same = blob_showers(rng, 800), blob_showers(rng, 800)
    different = blob_showers(rng, 800, response=0.26)  # 30 % more deposited energy
    hl = {key: calo_high_level_features(s)[0] for key, s in (("r", reference), ("s", same), ("d", different))}
    assert abs(classifier_auc(hl["r"], hl["s"], seed=0)["auc"] - 0.5) < 0.07  # 240 test events/class
    assert classifier_auc(hl["r"], hl["d"], seed=0)["auc"] > 0.95
    cells_r, cells_d = calo_cell_features(reference), calo_cell_features(different)
    assert classifier_auc(cells_r, cells_d, seed=0)["auc"] > 0.95


@pytest.mark.parametrize(
    ("reference", "generated", "match"),
    [
        (np.zeros((20, 3)), np.zeros((20, 4)), "3 features.*4"),
        (np.zeros((20,)), np.zeros((20, 1)), r"reference_features.*\(N, F\)"),
        (np.zeros((5, 2)), np.zeros((20, 2)), "reference_features has 5 events"),
        (np.zeros((20, 2)), np.full((20, 2), np.nan), "generated_features.*non-finite"),
    ],
)
def test_bad_input(reference, generated, match):
    with pytest.raises(ValueError, match=match):
        classifier_auc(reference, generated)


def test_cell_features_need_positive_energy():
    showers = {layer: np.zeros((2, *CALOGAN_LAYER_SHAPES[layer]), np.float32) for layer in CALOGAN_LAYERS}
    showers["energy"] = np.array([[1.0], [0.0]], np.float32)
    with pytest.raises(ValueError, match="energy"):
        calo_cell_features(showers)

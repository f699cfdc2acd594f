"""CaloGAN observables on hand-made showers with known answers, and the separation power."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from surrogate.geometry import CALOGAN, CALOGAN_LAYER_SHAPES, CALOGAN_LAYERS
from surrogate.metrics.showers import (
    OBSERVABLE_UNITS,
    histogram_edges,
    separation_power,
    shower_observables,
    zero_suppress,
)


def empty_showers(n: int = 1, energy_gev: float = 10.0) -> dict[str, np.ndarray]:
    showers = {layer: np.zeros((n, *CALOGAN_LAYER_SHAPES[layer]), np.float32) for layer in CALOGAN_LAYERS}
    showers["energy"] = np.full((n, 1), energy_gev, np.float32)
    showers["overflow"] = np.zeros((n, 3), np.float32)
    return showers


def random_showers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Sparse random showers (about 30 % of the cells hit, exponential energies in MeV)."""
    showers = empty_showers(n)
    for layer in CALOGAN_LAYERS:
        shape = showers[layer].shape
        showers[layer] = (rng.exponential(50.0, shape) * (rng.random(shape) < 0.3)).astype(np.float32)
    showers["energy"] = rng.uniform(1.0, 100.0, (n, 1)).astype(np.float32)
    return showers


def test_all_energy_in_one_cell_of_layer_1():
    showers = empty_showers(energy_gev=0.5)
    showers["layer_1"][0, 4, 9] = 100.0  # MeV
    obs = shower_observables(showers)
    assert list(obs) == list(OBSERVABLE_UNITS)
    assert all(v.shape == (1,) and v.dtype == np.float64 for v in obs.values())
    expected = {
        "E_0": 0.0, "E_1": 100.0, "E_2": 0.0, "E_tot": 100.0,
        "f_0": 0.0, "f_1": 1.0, "f_2": 0.0,
        "E_tot_over_E_inc": 100.0 / 500.0,  # 0.5 GeV = 500 MeV
        "depth": 1.0, "depth_width": 0.0,
        "width_x_1": 0.0, "width_y_1": 0.0,
        "E_ratio_1": 1.0, "sparsity_1": 1.0 / 144.0,
        # empty layers are defined as 0
        "width_x_0": 0.0, "width_x_2": 0.0, "width_y_2": 0.0,
        "E_ratio_0": 0.0, "E_ratio_2": 0.0, "sparsity_0": 0.0, "sparsity_2": 0.0,
    }
    for name, value in expected.items():
        assert obs[name][0] == pytest.approx(value, abs=1e-12), name


def test_equal_energy_in_layers_0_and_2_gives_depth_1_width_1():
    showers = empty_showers()
    showers["layer_0"][0, 1, 48] = 250.0
    showers["layer_2"][0, 6, 3] = 250.0
    obs = shower_observables(showers)
    assert obs["depth"][0] == pytest.approx(1.0, abs=1e-12)
    assert obs["depth_width"][0] == pytest.approx(1.0, abs=1e-12)
    assert obs["f_0"][0] == pytest.approx(0.5) and obs["f_2"][0] == pytest.approx(0.5)


def test_two_cells_give_the_analytic_lateral_width():
    showers = empty_showers()
    # layer 1: 1 MeV at column 3 (x = -100 mm) and 3 MeV at column 8 (x = +100 mm), same row
    showers["layer_1"][0, 5, 3] = 1.0
    showers["layer_1"][0, 5, 8] = 3.0
    # layer 0: equal energy in columns 47 and 48 (x = -2.5 and +2.5 mm)
    showers["layer_0"][0, 1, 47] = 7.0
    showers["layer_0"][0, 1, 48] = 7.0
    # layer 2: equal energy in rows 5 and 6 (y = -20 and +20 mm) of one column
    showers["layer_2"][0, 5, 2] = 2.0
    showers["layer_2"][0, 6, 2] = 2.0
    obs = shower_observables(showers)
    # two point masses a, b at distance L: sigma = sqrt(a b) / (a + b) * L
    assert obs["width_x_1"][0] == pytest.approx(math.sqrt(3.0) / 4.0 * 200.0, rel=1e-12)
    assert obs["width_y_1"][0] == pytest.approx(0.0, abs=1e-9)
    assert obs["E_ratio_1"][0] == pytest.approx((3.0 - 1.0) / (3.0 + 1.0))
    assert obs["sparsity_1"][0] == pytest.approx(2.0 / 144.0)
    assert obs["width_x_0"][0] == pytest.approx(2.5, rel=1e-12)
    assert obs["E_ratio_0"][0] == pytest.approx(0.0, abs=1e-12)  # two equally hot cells
    assert obs["width_y_2"][0] == pytest.approx(20.0, rel=1e-12)
    assert obs["width_x_2"][0] == pytest.approx(0.0, abs=1e-9)


def test_empty_shower_is_all_zeros_without_warnings():
    showers = empty_showers(n=3)
    showers["layer_1"][1, 0, 0] = 5.0  # one non-empty event among empty ones
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obs = shower_observables(showers)
    for name, values in obs.items():
        assert np.all(np.isfinite(values)), name
        assert values[0] == 0.0 and values[2] == 0.0, name


def test_observables_match_a_per_event_reference_computation(rng):
    showers = random_showers(rng, 20)
    showers["layer_2"][3] = 0.0  # an empty layer inside a batch
    obs = shower_observables(showers)
    for k in range(20):
        e = [float(showers[layer][k].astype(np.float64).sum()) for layer in CALOGAN_LAYERS]
        total = sum(e)
        assert obs["E_tot"][k] == pytest.approx(total, rel=1e-9)
        assert obs["E_tot_over_E_inc"][k] == pytest.approx(total / (1000.0 * float(showers["energy"][k, 0])), rel=1e-9)
        d = (e[1] + 2 * e[2]) / total
        assert obs["depth"][k] == pytest.approx(d, rel=1e-9)
        assert obs["depth_width"][k] == pytest.approx(math.sqrt(max((e[1] + 4 * e[2]) / total - d * d, 0.0)), abs=1e-9)
        for i, layer in enumerate(CALOGAN_LAYERS):
            cells = showers[layer][k].astype(np.float64)
            y, x = CALOGAN.cell_centres_mm(layer)
            yy, xx = np.meshgrid(y, x, indexing="ij")
            if cells.sum() > 0:
                width = math.sqrt(np.cov(xx.ravel(), aweights=cells.ravel(), ddof=0))
                top = np.sort(cells.ravel())[::-1]
                ratio = (top[0] - top[1]) / (top[0] + top[1])
            else:
                width, ratio = 0.0, 0.0
            assert obs[f"width_x_{i}"][k] == pytest.approx(width, rel=1e-9, abs=1e-9)
            assert obs[f"E_ratio_{i}"][k] == pytest.approx(ratio, rel=1e-9, abs=1e-12)
            assert obs[f"sparsity_{i}"][k] == pytest.approx(np.count_nonzero(cells) / cells.size)
    np.testing.assert_allclose(obs["f_0"] + obs["f_1"] + obs["f_2"], 1.0, rtol=1e-12)


def test_sparsity_threshold():
    showers = empty_showers()
    showers["layer_2"][0, 0, :3] = (0.5, 1.0, 2.0)
    assert shower_observables(showers)["sparsity_2"][0] == pytest.approx(3 / 72)
    # the readout threshold keeps E >= threshold (CaloFlow, CaloChallenge: E < threshold -> 0)
    obs = shower_observables(showers, threshold_mev=1.0)
    assert obs["sparsity_2"][0] == 2 / 72
    # the cell below the threshold is empty for every observable, not only for the sparsity
    assert obs["E_2"][0] == 3.0 and obs["E_ratio_2"][0] == pytest.approx(1 / 3, abs=1e-15)


def test_readout_threshold_on_a_hand_made_shower():
    """Tiny deposits below 0.01 MeV (as Gamma smearing leaves them) are empty at the default readout."""
    showers = empty_showers(n=2)
    showers["layer_0"][0, 1, 40:46] = (0.004, 0.0099, 0.01, 0.02, 7.0, 1e-6)   # float32 cells, MeV
    showers["layer_1"][0, 5, 5:9] = (1e-3, 2e-3, 300.0, 0.5)
    showers["layer_2"][0, 3, :] = (0.009, 0.011, 0.0, 0.0, 0.0, 0.0)
    showers["overflow"][0] = (0.001, 0.001, 0.001)                          # not a cell: ignored
    raw = shower_observables(showers)
    obs = shower_observables(showers, threshold_mev=0.01)
    assert (raw["sparsity_0"][0], raw["sparsity_1"][0], raw["sparsity_2"][0]) == (6 / 288, 4 / 144, 2 / 72)
    # float32(0.01) equals the threshold in float32 and is kept: 0.01, 0.02 and 7.0 remain
    assert (obs["sparsity_0"][0], obs["sparsity_1"][0], obs["sparsity_2"][0]) == (3 / 288, 2 / 144, 1 / 72)
    assert obs["E_1"][0] == pytest.approx(300.5, rel=1e-7)
    assert obs["E_2"][0] == pytest.approx(0.011, rel=1e-6) and obs["width_x_2"][0] == 0.0
    # the empty second shower is unaffected, and a threshold of 0 changes nothing
    assert all(obs[name][1] == raw[name][1] == 0.0 for name in obs if name.startswith("sparsity"))
    for name, values in shower_observables(showers, threshold_mev=0.0).items():
        np.testing.assert_array_equal(values, raw[name])
    with pytest.raises(ValueError, match="threshold_mev"):
        shower_observables(showers, threshold_mev=-1.0)


def test_zero_suppress_keeps_dtype_and_input():
    showers = empty_showers()
    showers["layer_1"][0, 0, :3] = (0.005, 0.01, 3.0)
    out = zero_suppress(showers, 0.01)
    assert out["layer_1"].dtype == np.float32 and out["layer_1"][0, 0, :3].tolist() == [0.0, np.float32(0.01), 3.0]
    assert showers["layer_1"][0, 0, 0] == np.float32(0.005)  # input untouched
    assert out["energy"] is showers["energy"] and out["overflow"] is showers["overflow"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.pop("layer_1"), "layer_1"),
        (lambda s: s.pop("energy"), "energy"),
        (lambda s: s.update(layer_2=np.zeros((2, 6, 12), np.float32)), r"layer_2.*\(N, 12, 6\)"),
        (lambda s: s.update(energy=np.ones((3, 1), np.float32)), "energy.*3 events"),
        (lambda s: s["layer_0"].__setitem__((0, 0, 0), np.nan), "layer_0.*non-finite"),
    ],
)
def test_bad_input_names_the_key(change, match):
    showers = empty_showers(n=2)
    change(showers)
    with pytest.raises(ValueError, match=match):
        shower_observables(showers)


def test_separation_power_known_values(rng):
    x = rng.normal(size=5000)
    assert separation_power(x, x) == 0.0
    assert separation_power(x, x + 100.0) == 1.0  # disjoint, default bins (overflow bin)
    edges = np.array([0.0, 1.0, 2.0])
    assert separation_power([0.5, 0.5], [1.5, 1.5], edges) == 1.0
    # h_r = (1, 0), h_g = (1/2, 1/2): S = 1/2 (0.25 / 1.5 + 0.25 / 0.5) = 1/3
    assert separation_power([0.5, 0.5], [0.5, 1.5], edges) == pytest.approx(1.0 / 3.0, rel=1e-12)
    # with explicit bins S is symmetric; values beyond the edges count in under/overflow bins
    assert separation_power([0.5, 1.5], [0.5, 9.0], edges) == pytest.approx(
        separation_power([0.5, 9.0], [0.5, 1.5], edges), rel=1e-12
    )
    assert separation_power([0.5, 1.5], [0.5, 9.0], edges) == pytest.approx(0.5, rel=1e-12)


def test_separation_power_dropping_values_outside_the_edges_as_the_challenge_does():
    """outside="drop": the evaluation's density histograms times bin widths (values outside the
    range are not counted, each histogram sums to 1 over the bins)."""
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    # in range: h_r = (1/3, 1/3, 1/3), h_g = (2/3, 0, 1/3): S = 1/2 (1/9 / 1 + 1/9 / (1/3)) = 2/9
    reference, generated = [0.5, 1.5, 2.5, 10.0], [0.5, 0.6, 2.5, -3.0]
    assert separation_power(reference, generated, edges, outside="drop") == pytest.approx(2 / 9, rel=1e-12)
    assert separation_power(reference, generated, edges) == pytest.approx(5 / 12, rel=1e-12)  # counted outside
    assert np.isnan(separation_power(reference, [10.0, 11.0], edges, outside="drop"))  # nothing in range
    with pytest.raises(ValueError, match="outside must be one of"):
        separation_power(reference, generated, edges, outside="ignore")


def test_separation_power_of_two_samples_of_one_distribution_is_small(rng):
    # expected value ~ bins / (2 N) = 50 / 40000 for two independent samples of N events
    s = separation_power(rng.normal(size=20000), rng.normal(size=20000), 50)
    assert 0.0 < s < 0.005
    shifted = separation_power(rng.normal(size=20000), rng.normal(1.0, 1.0, size=20000), 50)
    assert 0.1 < shifted < 0.5  # a one-sigma shift is clearly visible, far from disjoint


def test_separation_power_and_edges_bad_input():
    with pytest.raises(ValueError, match="reference"):
        separation_power([], [1.0])
    with pytest.raises(ValueError, match="generated.*non-finite"):
        separation_power([1.0], [np.inf])
    with pytest.raises(ValueError, match="increasing"):
        separation_power([1.0], [1.0], np.array([1.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="n_bins"):
        histogram_edges(np.ones(3), 0)
    np.testing.assert_allclose(histogram_edges(np.full(4, 2.0), 2), [1.5, 2.0, 2.5])
    np.testing.assert_allclose(histogram_edges(np.array([0.0, 4.0, 1.0]), 4), [0, 1, 2, 3, 4])

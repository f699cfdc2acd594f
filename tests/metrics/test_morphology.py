"""Morphology statistics against hand-computed answers and GalSim profiles with known sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from surrogate.metrics.morphology import (  # noqa: E402
    gini,
    half_light_radius,
    hsm_moments,
    ks_distances,
    m20,
    morphology_statistics,
    plot_morphology_histograms,
    plot_stamp_grid,
    segmentation,
)


def test_gini_known_values():
    assert gini(np.full((10, 10), 3.0))[0] == pytest.approx(0.0, abs=1e-12)  # uniform: perfect equality
    single = np.zeros((10, 10))
    single[4, 6] = 5.0
    assert gini(single)[0] == pytest.approx(1.0, abs=1e-12)  # one pixel holds all the light
    # Sorted values 1, 2, 3, 4: sum (2i - n - 1) X_i = 10, mean 2.5, n (n - 1) = 12 -> G = 1/3.
    assert gini(np.array([[4.0, 1.0], [3.0, 2.0]]))[0] == pytest.approx(1 / 3, abs=1e-12)
    # Sorted 0, 0, 1, 1: sum (2i - n - 1) X_i = 1 + 3 = 4, mean 0.5 -> G = 4 / 6; a mask
    # restricts the pixels: without the zeros the light is uniform.
    image = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert gini(image)[0] == pytest.approx(2 / 3)
    assert gini(image, mask=image > 0)[0] == pytest.approx(0.0)


def test_m20_hand_computed():
    # Four pixels of flux 0.15 at distance 1 and four of 0.10 at distance 3 from the centre (5, 5):
    # the brightest pixel alone stays under 20 % (0.15), two would not (0.30), so
    # M20 = log10(0.15 * 1 / (4 * 0.15 * 1 + 4 * 0.10 * 9)) = log10(0.15 / 4.2).
    image = np.zeros((11, 11))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        image[5 + dy, 5 + dx] = 0.15
        image[5 + 3 * dy, 5 + 3 * dx] = 0.10
    assert m20(image)[0] == pytest.approx(math.log10(0.15 / 4.2), abs=1e-12)


def test_bulges_have_lower_m20_and_higher_gini_than_disks():
    # Lotz et al. 2004, fig. 5: de Vaucouleurs profiles (n = 4) are more concentrated than
    # exponential disks (n = 1) of the same half-light radius.
    bulge = galsim.DeVaucouleurs(half_light_radius=0.4).drawImage(nx=96, ny=96, scale=0.05).array
    disk = galsim.Exponential(half_light_radius=0.4).drawImage(nx=96, ny=96, scale=0.05).array
    assert m20(bulge)[0] < m20(disk)[0] - 0.2
    # Gini within 2 half-light radii (0.60 and 0.46 there, close to Lotz et al.'s model values).
    y, x = np.indices(bulge.shape)
    within = np.hypot(y - 47.5, x - 47.5) * 0.05 < 0.8
    assert gini(bulge, within)[0] > gini(disk, within)[0] + 0.1
    # M20 of any Gaussian (size-independent): the brightest 20 % lie within u = r^2 / 2 sigma^2
    # = -ln(0.8) and hold 1 - (1 + u) e^-u of the second moment.
    u = -math.log(0.8)
    gaussian = galsim.Gaussian(sigma=0.5).drawImage(nx=96, ny=96, scale=0.05).array
    assert m20(gaussian)[0] == pytest.approx(math.log10(1 - (1 + u) * math.exp(-u)), abs=0.03)


def test_hsm_sigma_and_shear_of_a_gaussian():
    sigma, scale = 0.3, 0.05  # arcsec: 6 pixels, well sampled
    image = galsim.Gaussian(sigma=sigma).drawImage(nx=64, ny=64, scale=scale).array
    result = hsm_moments(image, pixel_scale=scale)
    # The pixel response adds scale^2 / 12 to the variance: 0.1 % here.
    assert result["sigma"][0] == pytest.approx(math.sqrt(sigma**2 + scale**2 / 12), rel=2e-3)
    assert abs(result["g1"][0]) < 1e-4 and abs(result["g2"][0]) < 1e-4
    sheared = galsim.Gaussian(sigma=sigma).shear(g1=0.2, g2=-0.1).drawImage(nx=64, ny=64, scale=scale).array
    result = hsm_moments(sheared, pixel_scale=scale)
    assert result["g1"][0] == pytest.approx(0.2, abs=5e-3)
    assert result["g2"][0] == pytest.approx(-0.1, abs=5e-3)
    failed = hsm_moments(np.zeros((16, 16)), pixel_scale=scale)
    assert not failed["ok"][0] and math.isnan(failed["sigma"][0])


def test_half_light_radius_of_a_gaussian():
    sigma, scale = 0.3, 0.05
    image = galsim.Gaussian(sigma=sigma).drawImage(nx=64, ny=64, scale=scale).array
    expected = sigma * math.sqrt(2 * math.log(2))  # radius holding half the light of a 2-D Gaussian
    assert half_light_radius(image, pixel_scale=scale)[0] == pytest.approx(expected, rel=0.03)


def test_segmentation_keeps_only_the_central_source(rng):
    image = galsim.Gaussian(sigma=0.3).drawImage(nx=40, ny=40, scale=0.1).array * 100
    image[2:5, 2:5] += 30.0  # a separate blob in a corner
    noisy = image + rng.normal(0.0, 0.1, image.shape)
    mask = segmentation(noisy, 0.01)[0]
    assert mask[20, 20] and not mask[3, 3]
    assert 10 < mask.sum() < 400


def test_morphology_statistics_keys_and_shapes(rng):
    images = np.stack([galsim.Exponential(half_light_radius=r).drawImage(nx=32, ny=32, scale=0.1).array * 50
                       for r in (0.3, 0.5, 0.7)])
    noisy = images + rng.normal(0, 0.05, images.shape)
    stats = morphology_statistics(noisy, pixel_scale=0.1, noise_variance=np.full(3, 0.0025))
    assert set(stats) == {"sigma", "g1", "g2", "flux", "half_light_radius", "gini", "m20", "hsm_ok"}
    assert all(v.shape == (3,) for v in stats.values())
    assert np.all(np.diff(stats["sigma"]) > 0) and np.all(np.diff(stats["half_light_radius"]) > 0)
    with pytest.raises(ValueError, match="non-finite"):
        morphology_statistics(np.full((1, 8, 8), np.nan), pixel_scale=0.1)
    with pytest.raises(ValueError, match=r"shape \(N, H, W\)"):
        gini(np.zeros(5))


def test_ks_distances(rng):
    a = {"gini": rng.normal(size=500), "m20": np.r_[rng.normal(size=499), np.nan]}
    same = ks_distances(a, {k: v.copy() for k, v in a.items()})
    assert same["gini"]["ks"] == 0.0 and same["m20"]["n_reference"] == 499
    apart = ks_distances(a, {"gini": a["gini"] + 100.0, "m20": a["m20"]})
    assert apart["gini"]["ks"] == 1.0
    assert math.isnan(ks_distances({"gini": np.array([np.nan])}, {"gini": np.ones(3)})["gini"]["ks"])


def test_plots_are_written(tmp_path, rng):
    stats = {"gini": rng.random(50), "m20": -rng.random(50) - 1}
    plot_morphology_histograms(tmp_path / "h.png", stats, stats, ks=ks_distances(stats, stats))
    plot_stamp_grid(tmp_path / "g.png", rng.random((4, 16, 16)), rng.random((4, 16, 16)), n=4)
    for name in ("h.png", "g.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"

"""Morphologies beyond smooth profiles: knots that trace the disk, extra shear, fainter magnitudes."""

from __future__ import annotations

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from surrogate.metrics.morphology import gini  # noqa: E402
from surrogate.simulators.cosmos import load_cosmos_catalog  # noqa: E402
from surrogate.simulators.galaxies import simulate_galaxies  # noqa: E402
from surrogate.simulators.galaxy_variations import add_knots, check_variations, shear_galaxy, split_disk  # noqa: E402

SMALL = dict(stamp_size=32, pixel_scale=0.15, psf_size=25, progress=False)


@pytest.fixture(scope="module")
def catalog():
    return load_cosmos_catalog()


def test_split_disk_finds_the_exponential_of_bulge_plus_disk_and_disky_sersics(catalog):
    bulge = galsim.DeVaucouleurs(half_light_radius=0.2, flux=2.0).shear(q=0.8, beta=0.1 * galsim.radians)
    disk = galsim.Exponential(half_light_radius=0.6, flux=5.0).shear(q=0.4, beta=1.0 * galsim.radians)
    rest, found = split_disk(bulge + disk)
    assert found is disk and rest == [bulge]
    assert split_disk(galsim.Sersic(n=1.5, half_light_radius=0.3))[1] is not None
    assert split_disk(galsim.Sersic(n=4.0, half_light_radius=0.3).shear(g1=0.2, g2=0.0)) is None
    # the catalogue: its 36 bulge + disk galaxies all have a disk
    bulge_disk = np.asarray(galsim.COSMOSCatalog("real_galaxy_catalog_23.5_example.fits", dir=str(catalog.directory),
                                                 use_real=False, exclusion_level="none").param_cat["use_bulgefit"])
    assert bulge_disk.sum() == 36
    assert all(split_disk(catalog.galaxies[i]) is not None for i in np.flatnonzero(bulge_disk))


def test_knots_keep_the_flux_and_trace_the_disk_on_average():
    bulge = galsim.DeVaucouleurs(half_light_radius=0.15, flux=3.0)
    disk = galsim.Exponential(half_light_radius=0.5, flux=7.0).shear(q=0.5, beta=0.3 * galsim.radians)
    galaxy = bulge + disk
    kwargs = dict(n_knots=30, flux_fraction=0.4, sigma=0.05)
    smooth, knots = add_knots(galaxy, seed=1, **kwargs)
    assert smooth.flux + knots.flux == pytest.approx(galaxy.flux, rel=1e-12)
    assert knots.flux == pytest.approx(0.4 * disk.flux, rel=1e-12)
    draw = dict(nx=64, ny=64, scale=0.05, method="no_pixel")
    # same seed, same knots; another seed, other knots
    first = knots.drawImage(**draw).array
    np.testing.assert_array_equal(add_knots(galaxy, seed=1, **kwargs)[1].drawImage(**draw).array, first)
    assert not np.allclose(add_knots(galaxy, seed=2, **kwargs)[1].drawImage(**draw).array, first)
    # averaged over 300 realisations, the knots' light is the disk's light (blurred by the knot
    # Gaussian): flux within 1 %, HSM size within 5 % and shape within 0.02, L1 distance 0.11
    # (measured; knots tracing the bulge instead would be at 0.91)
    mean = np.mean([add_knots(galaxy, seed=s, **kwargs)[1].drawImage(**draw).array for s in range(300)], axis=0)
    expected = galsim.Convolve(disk.withScaledFlux(0.4), galsim.Gaussian(sigma=0.05)).drawImage(**draw)
    assert mean.sum() == pytest.approx(expected.array.sum(), rel=0.01)
    assert np.abs(mean - expected.array).sum() / expected.array.sum() < 0.2
    got, want = (galsim.hsm.FindAdaptiveMom(image) for image in (galsim.Image(mean, scale=0.05), expected))
    assert got.moments_sigma == pytest.approx(want.moments_sigma, rel=0.05)
    assert abs(got.observed_shape.g1 - want.observed_shape.g1) < 0.02
    assert abs(got.observed_shape.g2 - want.observed_shape.g2) < 0.02


def test_no_disk_no_knots_and_shear_keeps_the_flux():
    spheroid = galsim.Sersic(n=4.0, half_light_radius=0.3, flux=2.0)
    smooth, knots = add_knots(spheroid, n_knots=20, flux_fraction=0.3, sigma=0.05, seed=0)
    assert smooth is spheroid and knots is None
    sheared = shear_galaxy(spheroid, g=0.3, angle=0.2)
    assert sheared.flux == pytest.approx(2.0)
    moments = galsim.hsm.FindAdaptiveMom(sheared.drawImage(nx=128, ny=128, scale=0.02, method="no_pixel"))
    assert moments.observed_shape.g == pytest.approx(0.3, abs=0.03)


def test_stamps_with_knots_are_clumpier_with_the_same_flux(catalog):
    # stamp 0 of each seed: the same parent, orientation, size and flux with and without knots
    disky = [i for i, g in enumerate(catalog.galaxies) if split_disk(g) is not None]
    smooth, knotty = [], []
    for seed in range(12):
        for fraction, out in ((0.0, smooth), (1.0, knotty)):
            out.append(simulate_galaxies(1, catalog=catalog, seed=seed, galaxy_indices=disky, knot_fraction=fraction,
                                         knot_flux_range=(0.5, 0.5), **SMALL))
    flux = [np.array([s["profile"].sum() for s in sample]) for sample in (smooth, knotty)]
    np.testing.assert_allclose(flux[1], flux[0], rtol=0.03)  # only what falls off the stamp differs
    for key in ("magnitude", "half_light_radius"):
        assert [s[key][0] for s in smooth] == [s[key][0] for s in knotty]
    gini_of = [gini(np.concatenate([s["profile"] for s in sample])) for sample in (smooth, knotty)]
    assert np.mean(gini_of[1]) > np.mean(gini_of[0]) + 0.01


def test_magnitude_jitter_pair_reaches_fainter_galaxies(catalog):
    stamps = simulate_galaxies(60, catalog=catalog, seed=3, magnitude_jitter=(1.0, 2.5), shear_max=0.2, **SMALL)
    assert stamps["magnitude"].min() >= catalog.magnitude.min() + 1.0 - 1e-4
    assert stamps["magnitude"].max() <= catalog.magnitude.max() + 2.5 + 1e-4
    assert stamps["magnitude"].max() > 23.5


@pytest.mark.parametrize("change, message", [
    (dict(knot_flux_range=(0.2, 1.5)), "knot_flux_range"),
    (dict(knot_number_range=(5.5, 10)), "knot_number_range"),
    (dict(knot_number_range=(0, 10)), "knot_number_range"),
    (dict(shear_max=1.0), "shear_max"),
    (dict(magnitude_jitter=(2.0, 1.0)), "magnitude_jitter"),
    (dict(magnitude_jitter=-0.1), "magnitude_jitter"),
    (dict(knot_sigma=0.0), "knot_sigma"),
])
def test_bad_variation_options_are_named(change, message):
    options = dict(magnitude_jitter=0.25, shear_max=0.0, knot_fraction=0.5, knot_number_range=(10, 60),
                   knot_flux_range=(0.1, 0.5), knot_sigma=0.05)
    with pytest.raises(ValueError, match=message):
        check_variations(**{**options, **change})

"""GalSim COSMOS stamps: layout, reproducibility, physics of the stored quantities, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

galsim = pytest.importorskip("galsim")

from surrogate.data.galaxy import galaxy_file_info, read_galaxies  # noqa: E402
from surrogate.simulators import galaxies  # noqa: E402
from surrogate.nn.psf import fft_convolve  # noqa: E402
from surrogate.simulators.cosmos import DEFAULT_CATALOG_DIR, _half_light_radius, load_cosmos_catalog  # noqa: E402
from surrogate.simulators.galaxies import (  # noqa: E402
    galsim_omp_threads,
    simulate_galaxies,
    simulate_galaxies_from_recipe,
    simulate_galaxies_to_file,
)

SMALL = dict(stamp_size=32, pixel_scale=0.15, psf_size=25, progress=False)


@pytest.fixture(scope="module")
def catalog():
    return load_cosmos_catalog()


def test_catalog(catalog):
    assert len(catalog) == 100 and len(catalog.hst_psf_images) == 100
    assert 16.5 < catalog.magnitude.min() and catalog.magnitude.max() < 23.0
    assert np.all(catalog.half_light_radius > 0.03) and np.all(catalog.half_light_radius < 5.0)
    assert all(f > 0 for f in catalog.flux)


def test_half_light_radius_of_known_profiles():
    # One component: its own half-light radius, whatever the shear (which keeps the area); a
    # dilation scales it; a flux change does not matter.
    for profile in (galsim.Exponential(half_light_radius=0.5), galsim.DeVaucouleurs(half_light_radius=0.3),
                    galsim.Sersic(n=2.7, half_light_radius=0.2), galsim.Gaussian(half_light_radius=1.2)):
        r = profile.half_light_radius
        assert _half_light_radius(profile) == pytest.approx(r, rel=1e-8)
        changed = profile.shear(g1=0.3, g2=-0.2).rotate(0.7 * galsim.radians).dilate(1.3).withScaledFlux(5.0)
        assert _half_light_radius(changed) == pytest.approx(1.3 * r, rel=1e-8)
    # Two circular components: the radius of the circle holding half the light, measured on a
    # finely sampled image (smooth profiles, so point sampling at r/40 is accurate to ~0.5 %).
    galaxy = galsim.Exponential(half_light_radius=0.2, flux=1.0) + galsim.Gaussian(half_light_radius=0.8, flux=3.0)
    image = galaxy.drawImage(nx=800, ny=800, scale=0.01, method="no_pixel").array
    coords = (np.arange(800) - 399.5) * 0.01
    radius = np.hypot(coords[:, None], coords[None, :]).ravel()
    order = np.argsort(radius)
    measured = radius[order][np.searchsorted(np.cumsum(image.ravel()[order]), 0.5 * galaxy.flux)]
    assert _half_light_radius(galaxy) == pytest.approx(measured, rel=0.005)
    with pytest.raises(ValueError, match="not a sum of Sérsic profiles"):
        _half_light_radius(galsim.Moffat(beta=3, fwhm=1.0))


def test_stamps_layout_and_reproducibility(catalog, monkeypatch):
    stamps = simulate_galaxies(6, catalog=catalog, seed=4, **SMALL)
    assert stamps["observed"].shape == (6, 32, 32) and stamps["profile"].shape == (6, 32, 32)
    assert stamps["psf"].shape == (6, 25, 25)
    for key in ("noise_variance", "magnitude", "half_light_radius"):
        assert stamps[key].shape == (6,)
    assert all(v.dtype == np.float32 for v in stamps.values())
    assert np.all(stamps["profile"] >= 0) and np.all(stamps["noise_variance"] > 0)
    np.testing.assert_allclose(stamps["psf"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
    again = simulate_galaxies(6, catalog=catalog, seed=4, **SMALL)
    for key in stamps:
        np.testing.assert_array_equal(again[key], stamps[key])
    # The first stamps do not depend on n (each chunk, 256 stamps, 3 here, has its own stream).
    monkeypatch.setattr(galaxies, "_CHUNK", 3)
    longer = simulate_galaxies(5, catalog=catalog, seed=4, **SMALL)
    shorter = simulate_galaxies(4, catalog=catalog, seed=4, **SMALL)
    np.testing.assert_array_equal(longer["observed"][:4], shorter["observed"])
    other = simulate_galaxies(6, catalog=catalog, seed=5, **SMALL)
    assert not np.allclose(other["observed"], stamps["observed"])


def test_conditioning_values_without_jitter(catalog):
    stamps = simulate_galaxies(8, catalog=catalog, seed=1, size_jitter=0.0, magnitude_jitter=0.0, **SMALL)
    for m, r in zip(stamps["magnitude"], stamps["half_light_radius"]):
        k = int(np.argmin(np.abs(catalog.magnitude - m)))
        assert m == pytest.approx(catalog.magnitude[k], abs=1e-5)
        assert r == pytest.approx(catalog.half_light_radius[k], rel=1e-6)
    jittered = simulate_galaxies(60, catalog=catalog, seed=1, size_jitter=0.1, magnitude_jitter=0.25, **SMALL,
                                 hst_psf_fraction=0.0, snr_range=(50.0, 50.0))
    assert jittered["magnitude"].min() > catalog.magnitude.min() - 0.25 - 1e-4
    ratio = jittered["half_light_radius"] / catalog.half_light_radius[:, None]
    assert np.all(np.min(np.abs(np.log(ratio)), axis=0) <= math.log(1.1) + 1e-5)


def test_profile_convolved_with_psf_reproduces_galsim(catalog):
    """The stored profile * PSF equals GalSim's own rendering of galaxy x PSF x pixel up to the
    pixel-sampling error (and the residual is the stored noise variance)."""
    stamps = simulate_galaxies(40, catalog=catalog, seed=2, snr_range=(50.0, 50.0), hst_psf_fraction=0.3, **SMALL)
    model = fft_convolve(torch.from_numpy(stamps["profile"][:, None]).double(),
                         torch.from_numpy(stamps["psf"][:, None]).double())[:, 0].numpy()
    residual = stamps["observed"] - model
    # The residual is the pixel noise (variance as stored) plus a sampling error that is small
    # against it at SNR 50 (measured: median 1 %, at most ~15 % of the noise variance).
    ratio = (residual**2).mean(axis=(1, 2)) / stamps["noise_variance"]
    assert 0.9 < ratio.mean() < 1.1
    assert ratio.max() < 1.4
    # SNR = sqrt(sum I^2) / sigma with I the noiseless image.
    snr = np.sqrt((model**2).sum(axis=(1, 2)) / stamps["noise_variance"])
    # (The model image differs from GalSim's by the sampling error: up to ~8 % in SNR for the
    # compact galaxies seen through HST PSFs.)
    assert np.median(snr) == pytest.approx(50.0, rel=0.02)
    np.testing.assert_allclose(snr, 50.0, rtol=0.1)
    # The PSF only redistributes light: total fluxes agree where the galaxy fits on the stamp.
    flux_ratio = model.sum(axis=(1, 2)) / stamps["profile"].sum(axis=(1, 2))
    assert np.median(flux_ratio) == pytest.approx(1.0, abs=0.02)


def test_fixed_noise_sigma(catalog):
    stamps = simulate_galaxies(3, catalog=catalog, seed=0, noise_sigma=0.2, **SMALL)
    np.testing.assert_allclose(stamps["noise_variance"], 0.04, rtol=1e-6)


def test_file_recipe_and_attributes(tmp_path, catalog):
    path = simulate_galaxies_to_file(tmp_path / "g.h5", 5, catalog=catalog, seed=3, progress=False, stamp_size=32,
                                     psf_size=25, pixel_scale=0.15)
    info = galaxy_file_info(path)
    assert (info.n, info.stamp_size, info.psf_size, info.pixel_scale) == (5, 32, 25, 0.15)
    assert info.simulation["seed"] == 3 and info.simulation["simulator"] == "galsim_cosmos"
    in_memory = simulate_galaxies(5, catalog=catalog, seed=3, **SMALL)
    np.testing.assert_array_equal(read_galaxies(path)["observed"], in_memory["observed"])

    out = simulate_galaxies_from_recipe({"simulator": "galsim_cosmos", "n": 3, "seed": 3, "stamp_size": 32,
                                         "psf_size": 25, "pixel_scale": 0.15},
                                        output=tmp_path / "sub" / "r.h5", progress=False, catalog=catalog)
    np.testing.assert_array_equal(read_galaxies(out)["observed"], in_memory["observed"][:3])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stamps'\]"):
        simulate_galaxies_from_recipe({"simulator": "galsim_cosmos", "stamps": 3}, output=tmp_path / "x.h5")
    with pytest.raises(ValueError, match="must be 'galsim_cosmos'"):
        simulate_galaxies_from_recipe({"simulator": "gflash"}, output=tmp_path / "x.h5")


@pytest.mark.parametrize("kwargs, match", [
    (dict(psf_size=24), "psf_size must be an odd integer"),
    (dict(psf_size=33), r"psf_size \(33\) must be <= stamp_size"),
    (dict(pixel_scale=-0.1), r"pixel_scale must be a finite number in \(0, 10\) arcsec/pixel"),
    (dict(psf_kinds=["airy"]), "psf_kinds must be a non-empty list"),
    (dict(fwhm_range=(0.9, 0.5)), "fwhm_range"),
    (dict(snr_range=(0.0, 10.0)), "snr_range"),
    (dict(hst_psf_fraction=1.5), "hst_psf_fraction"),
    (dict(noise_sigma=-1.0), "noise_sigma must be a finite number > 0 counts per pixel or None"),
    (dict(galaxy_indices=[0, 100]), "galaxy_indices"),
])
def test_bad_parameters(catalog, kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_galaxies(2, catalog=catalog, **{**SMALL, **kwargs})


def test_bad_n_and_missing_catalogue(tmp_path, catalog):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        simulate_galaxies(0, catalog=catalog)
    with pytest.raises(FileNotFoundError, match="COSMOS example catalogue not found"):
        load_cosmos_catalog(tmp_path)
    assert (DEFAULT_CATALOG_DIR / "real_galaxy_PSF_images.fits").is_file()


def test_omp_threads_are_restored():
    before = galsim.get_omp_threads()
    with galsim_omp_threads(1):
        assert galsim.get_omp_threads() == 1
    assert galsim.get_omp_threads() == before

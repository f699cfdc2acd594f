"""Real stamps on a model's grid: GalSim resampling (flux, round trip, forward-model consistency),
PSF normalisation, the AEGIS correlated noise and its power spectrum in the likelihood."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from surrogate.data.real_galaxies import correlated_noise, read_real_galaxy_catalog, read_real_stamps  # noqa: E402
from surrogate.nn.psf import fft_convolve  # noqa: E402
from surrogate.pipelines.real_stamps import (  # noqa: E402
    estimate_context,
    noise_power_spectrum,
    resample_image,
    resample_psf,
)

AEGIS = Path(__file__).resolve().parents[2] / "datasets" / "aegis_f606w" / "AEGIS_F606w_catalog.fits"


pytestmark = pytest.mark.usefixtures("one_galsim_thread")


@pytest.fixture(scope="module")
def aegis():
    return read_real_galaxy_catalog(AEGIS)


def test_resampling_conserves_flux_and_matches_galsim():
    """An HST-like 0.03"/pixel rendering resampled to 0.15"/pixel on the same 4.8" field keeps
    its flux to 1e-4, which is GalSim's own flux on that field (to 5e-4, measured 2e-4: the
    0.15" pixel response moves a little light across the field's edge; 0.17 % of this profile
    lies beyond it), and equals GalSim's rendering at 0.15"/pixel to 0.5 % of the peak (the
    0.03" pixel response, which the resampled image keeps, is the difference; measured 0.36 %)."""
    galaxy = galsim.Sersic(n=1.5, half_light_radius=0.3, flux=10.0).shear(g1=0.2, g2=-0.1)
    native = galaxy.drawImage(nx=160, ny=160, scale=0.03).array
    resampled = resample_image(native, pixel_scale=0.03, new_pixel_scale=0.15, shape=(32, 32))
    direct = galaxy.drawImage(nx=32, ny=32, scale=0.15).array
    assert resampled.sum() == pytest.approx(native.sum(), rel=1e-4)
    assert resampled.sum() == pytest.approx(direct.sum(), rel=5e-4)  # GalSim's pixel moves light over the edge
    assert np.abs(resampled - direct).max() < 5e-3 * direct.max()
    # an off-centre galaxy is brought to the centre by the given shift (arcsec)
    shifted = galaxy.shift(0.21, -0.12).drawImage(nx=200, ny=200, scale=0.03).array
    centred = resample_image(shifted, pixel_scale=0.03, new_pixel_scale=0.15, shape=(32, 32), centre=(0.21, -0.12))
    assert np.abs(centred - direct).max() < 5e-3 * direct.max()


def test_pixel_scale_round_trip():
    """0.1 -> 0.05 -> 0.1 arcsec/pixel returns a smooth galaxy to 1 % of its peak, flux to 0.1 %
    (each step adds its new pixel's response, 0.05" and 0.1" wide, to a galaxy of sigma 0.6":
    0.3 % of the peak)."""
    galaxy = galsim.Gaussian(sigma=0.6, flux=100.0).shear(g1=0.3)
    image = galaxy.drawImage(nx=96, ny=96, scale=0.1).array
    fine = resample_image(image, pixel_scale=0.1, new_pixel_scale=0.05, shape=(192, 192))
    back = resample_image(fine, pixel_scale=0.05, new_pixel_scale=0.1, shape=(96, 96))
    assert back.sum() == pytest.approx(image.sum(), rel=1e-3)
    assert np.abs(back - image).max() < 0.01 * image.max()


@pytest.mark.parametrize("sersic_n, half_light_radius, rms", [(1.0, 0.35, 0.015), (0.5, 0.1, 0.05)])
def test_resampled_observation_equals_the_model_of_it(sersic_n, half_light_radius, rms):
    """The conventions fit together: the resampled HST observation (galaxy * PSF at 0.03") equals
    the model's pixel-integrated profile at 0.15" convolved with the resampled (band-limited) PSF,
    to ``rms`` of the signal (measured 0.008 and 0.037; sampling the PSF instead, 0.053 and
    0.158): the galaxy's structure finer than the 0.15" pixels is what is left."""
    import torch

    psf_image = read_real_galaxy_catalog(AEGIS, indices=[1])[0].psf
    psf = galsim.InterpolatedImage(galsim.Image(psf_image / psf_image.sum(), scale=0.03))
    galaxy = galsim.Sersic(n=sersic_n, half_light_radius=half_light_radius, flux=20.0).shear(g1=-0.2)
    observed = galsim.Convolve(galaxy, psf).drawImage(nx=200, ny=200, scale=0.03, method="no_pixel").array
    resampled = resample_image(observed, pixel_scale=0.03, new_pixel_scale=0.15, shape=(32, 32))
    profile = galaxy.drawImage(nx=32, ny=32, scale=0.15).array.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unit sum: no warning
        psf_model, total = resample_psf(psf_image / psf_image.sum(), pixel_scale=0.03, new_pixel_scale=0.15, size=15)
    assert total == pytest.approx(1.0) and psf_model.shape == (15, 15)
    assert psf_model.sum() == pytest.approx(1.0, abs=1e-12)
    model = fft_convolve(torch.from_numpy(profile)[None, None], torch.from_numpy(psf_model))[0, 0].numpy()
    assert np.sqrt(((model - resampled) ** 2).sum() / (resampled**2).sum()) < rms


def test_psf_normalisation_warning_names_the_sum(aegis):
    stamp = aegis[0]
    with pytest.warns(UserWarning, match=r"PSF.* sums to 0\.92\d\d, not 1 within 1 %"):
        psf, total = resample_psf(stamp.psf, pixel_scale=0.03, new_pixel_scale=0.15, where=stamp.name)
    assert total == pytest.approx(stamp.psf.sum())
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resample_psf(stamp.psf / stamp.psf.sum() * 1.005, pixel_scale=0.03, new_pixel_scale=0.15)  # within 1 %
    with pytest.raises(ValueError, match="odd"):
        resample_psf(stamp.psf / stamp.psf.sum(), pixel_scale=0.03, new_pixel_scale=0.15, size=4)


def test_catalogue_noise_has_the_file_correlations(aegis):
    """The AEGIS noise built from its 50x50 correlation file: variance and neighbour correlation
    of a 1024x1024 GalSim realisation as in the file (0.478), to 3 % and 0.02."""
    stamp = aegis[0]
    image = galsim.Image(1024, 1024, scale=0.03, dtype=np.float64)
    image.addNoise(stamp.noise.copy(rng=galsim.BaseDeviate(7)))
    n = image.array
    assert n.var() == pytest.approx(stamp.noise_variance, rel=0.03)
    rho = (n[:, 1:] * n[:, :-1]).mean() / n.var()
    assert rho == pytest.approx(0.478, abs=0.02)
    with pytest.raises(ValueError, match="not symmetric"):
        correlated_noise(np.arange(25.0).reshape(5, 5), 1.0, 0.03)


def test_power_spectrum_whitens_resampled_correlated_noise(aegis):
    """GalSim realisations of the AEGIS noise, resampled 0.03 -> 0.15"/pixel onto 32x32 stamps:
    the Whittle chi^2 per pixel with the estimated power spectrum is 1 (mean of 40 stamps, whose
    own scatter is 0.005; tolerance 0.04 for the estimate's ~1 % bias), the whitened noise is
    uncorrelated between neighbours (|rho| < 0.03, against 0.11 before), while a white-noise
    model of the catalogue's variance gives chi^2 per pixel > 2.5 (measured 3.5)."""
    stamp = aegis[0]
    S = 32
    power = noise_power_spectrum(stamp.noise, pixel_scale=0.03, new_pixel_scale=0.15, stamp_size=S, seed=0)
    white = noise_power_spectrum(galsim.UncorrelatedNoise(stamp.noise_variance, scale=0.03), pixel_scale=0.03,
                                 new_pixel_scale=0.15, stamp_size=S, seed=0)
    chi2, chi2_white, rho_raw, rho_white = [], [], [], []
    for k in range(40):
        sky = galsim.Image(200, 200, scale=0.03, dtype=np.float64)
        sky.addNoise(stamp.noise.copy(rng=galsim.BaseDeviate(1000 + k)))
        n = resample_image(sky.array, pixel_scale=0.03, new_pixel_scale=0.15, shape=(S, S))
        spectrum = np.fft.fft2(n)
        chi2.append((np.abs(spectrum) ** 2 / power).sum() / S**4)
        chi2_white.append((np.abs(spectrum) ** 2 / white).sum() / S**4)
        w = np.fft.ifft2(spectrum / np.sqrt(power)).real
        rho_raw.append((n[:, 1:] * n[:, :-1]).mean() / (n**2).mean())
        rho_white.append((w[:, 1:] * w[:, :-1]).mean() / (w**2).mean())
    assert np.mean(chi2) == pytest.approx(1.0, abs=0.04)
    assert np.mean(chi2_white) > 2.5
    assert abs(np.mean(rho_white)) < 0.03 and np.mean(rho_raw) > 0.08


def test_context_estimate_and_reader_options(aegis):
    """Magnitude from the stamp's flux and the zero point; the PSF-free radius, below the
    observed one, from a curve of growth that holds half that flux; the noise of the flux."""
    stamp = aegis[1]
    context = estimate_context(stamp, zero_point=26.0)
    assert context["flux"] == pytest.approx(stamp.image.sum())
    assert context["magnitude"] == pytest.approx(26.0 - 2.5 * np.log10(stamp.image.sum()))
    assert 0.1 < context["half_light_radius"] < context["half_light_radius_observed"] < 1.0
    assert 0.3 < context["flux_noise"] < 3.0  # sqrt(22152 pixels x 7e-6 counts^2 x 7 (summed correlation)) = 1.0
    with pytest.raises(ValueError, match="holds the PSFs.*leave out psf"):
        read_real_stamps(AEGIS, psf=AEGIS)
    with pytest.raises(ValueError, match=r"indices must be rows in \[0, 5\)"):
        read_real_stamps(AEGIS, indices=[7])

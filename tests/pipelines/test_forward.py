"""MAP inversion of the galaxy forward model: recovers what the model can represent."""

from __future__ import annotations

import pytest
import torch

from surrogate.models.forward import ForwardModel
from surrogate.models.galaxy_vae import GalaxyVAE
from surrogate.pipelines.forward import fit_map, shift_images

def test_map_fit_recovers_a_galaxy_the_model_can_represent(seed, small_vae_kwargs, gaussian_psf):
    """Data made by the forward model itself: the MAP fit must reach chi^2 per pixel ~ 1 under
    a PSF that plays no role in building the model (its decoder is untrained)."""
    vae = GalaxyVAE(**small_vae_kwargs).eval()
    z_true = torch.randn(8, 4)
    psf = gaussian_psf(9, 1.2)
    variance = torch.full((8,), 0.01)
    with torch.no_grad():
        observed = ForwardModel(vae).observe(z_true, psf, variance, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    result = fit_map(vae, observed, psf, variance, magnitude=21.0, half_light_radius=0.4, steps=400, learning_rate=0.05,
                     init="prior")
    assert result.latent.shape == (8, 4) and result.profile.shape == (8, 1, 16, 16)
    assert result.chi2_per_pixel.shape == (8,) and result.log_posterior.shape == (8,)
    # 256 pixels per stamp, 4 fitted latents: chi^2/pixel ~ (256 - 4)/256 with a standard
    # deviation of sqrt(2/256) = 0.09 per stamp, 0.03 for the mean of 8.
    assert float(result.chi2_per_pixel.mean()) == pytest.approx(1.0, abs=0.12)
    assert float(result.chi2_per_pixel.max()) < 1.4
    assert result.history[-1] < result.history[0]
    for key, value in vae.state_dict().items():  # the model itself is left untouched
        torch.testing.assert_close(value, before[key])
    assert all(p.requires_grad for p in vae.parameters())


def test_fit_map_bad_input(seed, small_vae_kwargs, gaussian_psf):
    vae = GalaxyVAE(**small_vae_kwargs)
    with pytest.raises(ValueError, match="init must be"):
        fit_map(vae, torch.zeros(16, 16), gaussian_psf(5, 1.0), 1.0, magnitude=21.0, half_light_radius=0.4, init="x")
    with pytest.raises(ValueError, match=r"observed must have shape"):
        fit_map(vae, torch.zeros(2, 3, 16, 16), gaussian_psf(5, 1.0), 1.0, magnitude=21.0, half_light_radius=0.4)


def test_fit_map_with_a_flat_power_spectrum_is_the_white_noise_fit(seed, small_vae_kwargs, gaussian_psf):
    """noise_power = sigma^2 everywhere is the same likelihood as noise_variance = sigma^2: the
    same optimum (chi^2 per pixel to 1e-4, float32 Adam paths) and residuals in sigma."""
    vae = GalaxyVAE(**small_vae_kwargs).eval()
    psf = gaussian_psf(7, 1.0)
    with torch.no_grad():
        observed = ForwardModel(vae).observe(torch.randn(3, 4), psf, 0.01, generator=torch.Generator().manual_seed(2))
    white = fit_map(vae, observed, psf, 0.01, magnitude=21.0, half_light_radius=0.4, steps=60)
    power = fit_map(vae, observed, psf, noise_power=torch.full((16, 16), 0.01), magnitude=21.0,
                    half_light_radius=0.4, steps=60)
    torch.testing.assert_close(power.chi2_per_pixel, white.chi2_per_pixel, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(power.residual_sigma, white.residual_sigma, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(white.residual_sigma.square().mean(dim=(1, 2, 3)), white.chi2_per_pixel)
    with pytest.raises(ValueError, match="exactly one of noise_variance"):
        fit_map(vae, observed, psf, magnitude=21.0, half_light_radius=0.4)


def test_shift_images_is_the_shift_theorem():
    """A whole-pixel shift moves the pixels exactly (circularly); two half-pixel shifts make a
    whole one; the flux is kept."""
    image = torch.rand(2, 1, 12, 10, dtype=torch.float64)
    moved = shift_images(image, torch.tensor([[2.0, -3.0], [0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(moved[0], torch.roll(image[0], shifts=(-3, 2), dims=(-2, -1)))
    torch.testing.assert_close(moved[1], torch.roll(image[1], shifts=(1, 0), dims=(-2, -1)))
    half = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    # smooth and negligible at the edges: band-limited, so that the shifts compose exactly
    gaussian = torch.exp(-((torch.arange(32.0)[:, None] - 16) ** 2 + (torch.arange(24.0) - 12) ** 2) / 8.0)
    smooth = gaussian.to(torch.float64).expand(2, 1, 32, 24)
    twice = shift_images(shift_images(smooth, half), half)
    torch.testing.assert_close(twice, shift_images(smooth, 2 * half), atol=1e-7, rtol=0)
    torch.testing.assert_close(twice.sum(dim=(1, 2, 3)), smooth.sum(dim=(1, 2, 3)))


def test_fit_offset_recovers_a_sub_pixel_centre(seed, small_vae_kwargs, gaussian_psf):
    """Stamps made by the forward model with the galaxy moved by known sub-pixel offsets (through
    the PSF, as the fit moves it: the untrained decoder's profiles reach the stamp's edges, where
    moving the image itself would wrap light around): the fit with fit_offset finds them within 0.15
    pixel (measured 0.11 at most: the decoder's latents mimic part of a shift) and reaches chi^2
    per pixel ~1, while the centred fit of the same stamps is worse."""
    vae = GalaxyVAE(**small_vae_kwargs).eval()
    psf = gaussian_psf(9, 1.2)
    truth = torch.tensor([[0.6, -0.4], [-0.7, 0.3], [0.2, 0.8], [-0.5, -0.6]])
    with torch.no_grad():
        z_true = torch.randn(4, 4)
        observed = ForwardModel(vae)(z_true, shift_images(psf.expand(4, 1, 9, 9), truth))
        observed = observed + 0.02 * torch.randn(observed.shape, generator=torch.Generator().manual_seed(3))
    kwargs = dict(magnitude=21.0, half_light_radius=0.4, steps=400, learning_rate=0.05, init="prior")
    fitted = fit_map(vae, observed, psf, 4e-4, fit_offset=True, **kwargs)
    centred = fit_map(vae, observed, psf, 4e-4, **kwargs)
    assert fitted.offset.shape == (4, 2) and torch.count_nonzero(centred.offset) == 0
    assert float((fitted.offset - truth).abs().max()) < 0.15
    assert float(fitted.chi2_per_pixel.mean()) == pytest.approx(1.0, abs=0.2)
    assert float(centred.chi2_per_pixel.mean()) > 1.3 * float(fitted.chi2_per_pixel.mean())  # measured 1.48

"""ForwardModel: galaxy -> PSF -> pixel noise, differentiable, with the right noise."""

from __future__ import annotations

import torch

from surrogate.models.forward import ForwardModel
from surrogate.models.galaxy_vae import GalaxyVAE
from surrogate.nn.psf import fft_convolve

def test_forward_model_is_differentiable_and_adds_the_right_noise(seed, small_vae_kwargs, gaussian_psf):
    vae = GalaxyVAE(**small_vae_kwargs)
    model = ForwardModel(vae)
    z = torch.randn(4, 4, requires_grad=True)
    psf = gaussian_psf(7, 1.5).expand(4, 1, 7, 7).clone().requires_grad_(True)
    clean = model(z, psf)
    torch.testing.assert_close(clean, fft_convolve(vae.decode(z), psf))
    clean.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0 and psf.grad is not None
    variance = torch.tensor([0.5, 1.0, 2.0, 4.0])
    noisy = model.observe(z.detach(), psf.detach(), variance, generator=torch.Generator().manual_seed(0))
    residual = (noisy - model(z.detach(), psf.detach())).squeeze(1)
    measured = residual.pow(2).mean(dim=(1, 2))  # 256 pixels each: 9 % standard error
    torch.testing.assert_close(measured / variance, torch.ones(4), rtol=0.3, atol=0.0)
    log_p = model.likelihood(z.detach(), psf.detach(), variance).log_prob(noisy)
    assert log_p.shape == (4,) and torch.isfinite(log_p).all()


def test_psf_shapes_are_equivalent(seed, small_vae_kwargs, gaussian_psf):
    """One PSF for all, (B, P, P) and (B, 1, P, P) give the same images and likelihoods."""
    model = ForwardModel(GalaxyVAE(**small_vae_kwargs))
    z = torch.randn(3, 4)
    psf = gaussian_psf(5, 1.0)
    expected = model(z, psf.expand(3, 1, 5, 5))
    torch.testing.assert_close(model(z, psf), expected)
    torch.testing.assert_close(model(z, psf.expand(3, 5, 5)), expected)
    x = expected + 0.1
    torch.testing.assert_close(model.likelihood(z, psf, 0.5).log_prob(x),
                               model.likelihood(z, psf.expand(3, 5, 5), torch.full((3,), 0.5)).log_prob(x))

"""ForwardModel: galaxy -> PSF -> pixel noise, differentiable, with the right noise."""

from __future__ import annotations

import pytest
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


def test_stationary_normal_white_equals_independent_normal(seed):
    """With a flat power spectrum P_k = sigma^2 the Whittle likelihood is the independent-pixel
    Gaussian exactly (Parseval), its whitened residual is the residual over sigma."""
    from torch.distributions import Independent, Normal

    from surrogate.models.forward import StationaryNormal

    loc = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    x = loc + 0.3 * torch.randn(3, 1, 12, 12, dtype=torch.float64)
    variance = torch.tensor([0.04, 0.09, 0.25], dtype=torch.float64)
    d = StationaryNormal(loc, variance.view(3, 1, 1).expand(3, 12, 12))
    reference = Independent(Normal(loc, variance.sqrt().view(3, 1, 1, 1).expand_as(loc)), 3)
    torch.testing.assert_close(d.log_prob(x), reference.log_prob(x), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(d.whiten(x), (x - loc) / variance.sqrt().view(3, 1, 1, 1))
    torch.testing.assert_close(d.variance, variance.view(3, 1, 1, 1).expand_as(loc))
    with pytest.raises(ValueError, match="power must be finite and > 0"):
        StationaryNormal(loc, torch.zeros(12, 12))
    with pytest.raises(ValueError, match=r"power must have shape"):
        StationaryNormal(loc, torch.ones(2, 12, 12))


def test_stationary_normal_samples_and_whitens_correlated_noise(seed):
    """Noise drawn with a correlated power spectrum (neighbour correlation 0.4 along x): chi^2 per pixel
    1 (mean of 400 stamps of 256 pixels: standard error 0.004; tolerance 0.02), whitened pixels of
    unit variance and neighbour correlation 0 (+- 0.02), the raw ones 0.4 (+- 0.02)."""
    from surrogate.models.forward import StationaryNormal

    S = 16
    k = 2 * torch.pi * torch.fft.fftfreq(S, dtype=torch.float64)
    # covariance 1 at lag 0, 0.4 at the two neighbours along x: P_k = 1 + 0.8 cos(k_x) >= 0.2
    power = (1.0 + 0.8 * torch.cos(k))[None, :].expand(S, S)
    d = StationaryNormal(torch.zeros(1, 1, S, S, dtype=torch.float64), power)
    x = d.sample((400,))[:, 0]  # (400, 1, S, S)
    assert float(d.chi2(x).mean()) / S**2 == pytest.approx(1.0, abs=0.02)
    w = d.whiten(x)
    assert float(w.var()) == pytest.approx(1.0, abs=0.02)
    neighbour = lambda a: float((a[..., 1:] * a[..., :-1]).mean() / a.square().mean())  # noqa: E731
    assert neighbour(w) == pytest.approx(0.0, abs=0.02)
    assert neighbour(x) == pytest.approx(0.4, abs=0.03)


def test_likelihood_takes_one_noise_model(seed, small_vae_kwargs, gaussian_psf):
    from surrogate.models.forward import StationaryNormal

    model = ForwardModel(GalaxyVAE(**small_vae_kwargs))
    z, psf = torch.randn(2, 4), gaussian_psf(5, 1.0)
    assert isinstance(model.likelihood(z, psf, noise_power=torch.ones(16, 16)), StationaryNormal)
    with pytest.raises(ValueError, match="exactly one of noise_variance and noise_power"):
        model.likelihood(z, psf, 1.0, noise_power=torch.ones(16, 16))
    with pytest.raises(ValueError, match="exactly one"):
        model.likelihood(z, psf)

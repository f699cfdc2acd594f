"""GalaxyVAE: shapes, distributions, the PSF in the likelihood, gradients, save/load round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent

from surrogate.losses import flow_prior_loss, galaxy_vae_loss
from surrogate.models.galaxy_vae import FlowPrior, GalaxyVAE, encode_dataset
from surrogate.nn.psf import fft_convolve

CONFIGS = [
    dict(stamp_size=16, latent_dim=4, channels=(4, 8), hidden_features=16, flow_hidden_features=8, flow_transforms=2),
    dict(stamp_size=32, latent_dim=8, channels=(4, 8, 8), hidden_features=16, flow_hidden_features=8, flow_transforms=2,
         input_scale=0.5, flux_scale=30.0, context_loc=(20.0, -0.5), context_scale=(1.0, 0.5)),
]


def make_batch(size: int, batch: int = 3, psf: int = 5) -> dict[str, torch.Tensor]:
    kernel = torch.rand(batch, 1, psf, psf)
    return {
        "observed": torch.randn(batch, 1, size, size) + 1.0,
        "psf": kernel / kernel.sum(dim=(-2, -1), keepdim=True),
        "noise_variance": torch.rand(batch, 1) + 0.5,
        "magnitude": torch.tensor([[20.0], [21.5], [22.0]])[:batch],
        "half_light_radius": torch.tensor([[0.3], [0.5], [0.8]])[:batch],
    }


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_shapes_and_distributions(seed, kwargs):
    vae = GalaxyVAE(**kwargs)
    S, D = kwargs["stamp_size"], kwargs["latent_dim"]
    batch = make_batch(S)
    q = vae.encode(batch["observed"])
    assert isinstance(q, Independent) and q.batch_shape == (3,) and q.event_shape == (D,)
    z = q.rsample()
    profile = vae.decode(z)
    assert profile.shape == (3, 1, S, S)
    assert bool((profile >= 0).all())
    p = vae.likelihood(z, batch["psf"], batch["noise_variance"])
    assert p.batch_shape == (3,) and p.event_shape == (1, S, S)
    assert vae.elbo(batch["observed"], batch["psf"], batch["noise_variance"]).shape == (3,)
    prior = vae.prior(batch["magnitude"], batch["half_light_radius"])
    assert isinstance(prior, FlowPrior) and prior.sample().shape == (3, D) and prior.sample((5,)).shape == (5, 3, D)
    assert prior.log_prob(z).shape == (3,)
    assert vae.sample(4, magnitude=21.0, half_light_radius=0.4).shape == (4, 1, S, S)
    assert vae.sample(3, magnitude=batch["magnitude"], half_light_radius=batch["half_light_radius"]).shape == (3, 1, S, S)


def test_decoder_flux_is_explicit(seed):
    vae = GalaxyVAE(**CONFIGS[0])
    z = torch.randn(5, 4)
    profile = vae.decode(z)
    flux = torch.exp(vae.flux_head(z).squeeze(1)) * vae.flux_scale
    torch.testing.assert_close(profile.sum(dim=(1, 2, 3)), flux, rtol=1e-5, atol=0.0)


def test_likelihood_convolves_each_example_with_its_own_psf(seed):
    vae = GalaxyVAE(**CONFIGS[0])
    batch = make_batch(16)
    z = torch.randn(3, 4)
    p = vae.likelihood(z, batch["psf"], batch["noise_variance"])
    expected_mean = fft_convolve(vae.decode(z), batch["psf"])
    torch.testing.assert_close(p.mean, expected_mean)
    # A different PSF for example 1 changes only example 1.
    psf2 = batch["psf"].clone()
    psf2[1] = torch.flip(psf2[1], dims=(-1,))
    p2 = vae.likelihood(z, psf2, batch["noise_variance"])
    torch.testing.assert_close(p2.mean[[0, 2]], p.mean[[0, 2]])
    assert not torch.allclose(p2.mean[1], p.mean[1])
    # Gaussian log density by hand: -0.5 sum((x - mu)^2 / var + log(2 pi var)).
    x = batch["observed"]
    var = batch["noise_variance"].view(-1, 1, 1, 1)
    by_hand = -0.5 * ((x - expected_mean) ** 2 / var + torch.log(2 * math.pi * var)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(p.log_prob(x), by_hand)


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_every_parameter_gets_a_gradient(seed, kwargs):
    vae = GalaxyVAE(**kwargs)
    batch = make_batch(kwargs["stamp_size"])
    galaxy_vae_loss(vae, batch).backward()
    for name, p in vae.named_parameters():
        if name.startswith("flow."):
            assert p.grad is None, name  # the flow is not part of the ELBO
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    vae.zero_grad(set_to_none=True)
    latents = {"latent": torch.randn(3, kwargs["latent_dim"]), "magnitude": batch["magnitude"],
               "half_light_radius": batch["half_light_radius"]}
    flow_prior_loss(vae, latents).backward()
    flow = dict(vae.flow.named_parameters())
    assert flow and all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.values())
    assert sum(1 for _ in vae.prior_parameters()) + sum(1 for _ in vae.vae_parameters()) == len(list(vae.parameters()))


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_save_load_round_trip(tmp_path, seed, kwargs):
    vae = GalaxyVAE(**kwargs)
    path = tmp_path / "vae.pt"
    torch.save(vae.state_dict(), path)
    torch.manual_seed(99)  # a different initialisation
    clone = GalaxyVAE(**kwargs)
    clone.load_state_dict(torch.load(path, weights_only=True))
    vae.eval(), clone.eval()
    batch = make_batch(kwargs["stamp_size"])
    z = torch.randn(3, kwargs["latent_dim"])
    torch.testing.assert_close(clone.decode(z), vae.decode(z))
    torch.testing.assert_close(clone.encode(batch["observed"]).mean, vae.encode(batch["observed"]).mean)
    torch.testing.assert_close(clone.prior(batch["magnitude"], batch["half_light_radius"]).log_prob(z),
                               vae.prior(batch["magnitude"], batch["half_light_radius"]).log_prob(z))
    torch.manual_seed(5)
    a = vae.sample(2, magnitude=21.0, half_light_radius=0.5)
    torch.manual_seed(5)
    torch.testing.assert_close(clone.sample(2, magnitude=21.0, half_light_radius=0.5), a)


def test_encode_dataset(seed):
    vae = GalaxyVAE(**CONFIGS[0])
    batches = [make_batch(16), make_batch(16, batch=2)]
    out = encode_dataset(vae, batches)
    assert out["latent"].shape == (5, 4) and out["magnitude"].shape == (5,) and out["half_light_radius"].shape == (5,)
    torch.testing.assert_close(out["latent"][:3], vae.encode(batches[0]["observed"]).mean)


def test_bad_input():
    with pytest.raises(ValueError, match="multiple of 2\\*\\*len\\(channels\\) = 8"):
        GalaxyVAE(stamp_size=20, channels=(4, 4, 4))
    with pytest.raises(ValueError, match="flux_scale must be > 0"):
        GalaxyVAE(stamp_size=16, channels=(4,), flux_scale=0.0)
    vae = GalaxyVAE(**CONFIGS[0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 16, 16\), got \(3, 16, 16\)"):
        vae.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4\)"):
        vae.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="half_light_radius must be > 0"):
        vae.sample(2, magnitude=21.0, half_light_radius=0.0)
    with pytest.raises(ValueError, match="noise_variance must have shape"):
        vae.likelihood(torch.zeros(3, 4), torch.ones(3, 1, 3, 3) / 9, torch.ones(2))
    with pytest.raises(ValueError, match="larger than the image"):
        vae.likelihood(torch.zeros(1, 4), torch.ones(1, 1, 17, 17), torch.ones(1))


def test_sample_draws_again_latents_that_overflow(seed, small_vae_kwargs, monkeypatch):
    """A base draw carried to a non-finite latent by the prior is drawn again (counted in a
    warning); a condition that never gives a finite latent is an error, never a NaN galaxy."""
    vae = GalaxyVAE(**small_vae_kwargs).eval()
    inverse = vae.flow._transform.inverse
    calls = []

    def overflowing_first_row(noise, context=None):
        z, logabsdet = inverse(noise, context=context)
        calls.append(len(noise))
        if len(calls) == 1:
            z = z.clone()
            z[0] = float("inf")
        return z, logabsdet

    monkeypatch.setattr(vae.flow._transform, "inverse", overflowing_first_row)
    with pytest.warns(UserWarning, match="1 of 3 latent draws were not finite"):
        profiles = vae.sample(3, magnitude=21.0, half_light_radius=0.4)
    assert calls == [3, 1] and torch.isfinite(profiles).all()

    def always_nan(noise, context=None):
        return torch.full_like(noise, float("nan")), torch.zeros(len(noise))

    monkeypatch.setattr(vae.flow._transform, "inverse", always_nan)
    with pytest.raises(RuntimeError, match="2 of 2 latents not finite after 10 draws"):
        vae.sample(2, magnitude=21.0, half_light_radius=0.4)

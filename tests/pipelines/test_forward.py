"""Forward model galaxy -> PSF -> noise, MAP inversion, and the galaxy pipeline end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from surrogate.models.galaxy_vae import GalaxyVAE
from surrogate.nn.psf import fft_convolve
from surrogate.pipelines.forward import ForwardModel, fit_map

SMALL = dict(stamp_size=16, latent_dim=4, channels=(4, 8), hidden_features=16, flow_hidden_features=8,
             flow_transforms=2, flux_scale=50.0)


def gaussian_psf(size: int, sigma: float) -> torch.Tensor:
    c = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma**2))
    return kernel / kernel.sum()


def test_forward_model_is_differentiable_and_adds_the_right_noise(seed):
    vae = GalaxyVAE(**SMALL)
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


def test_map_fit_recovers_a_galaxy_the_model_can_represent(seed):
    """Data made by the forward model itself: the MAP fit must reach chi^2 per pixel ~ 1 under
    a PSF that plays no role in building the model (its decoder is untrained)."""
    vae = GalaxyVAE(**SMALL).eval()
    z_true = torch.randn(8, 4)
    psf = gaussian_psf(9, 1.2)
    variance = torch.full((8,), 0.01)
    with torch.no_grad():
        observed = ForwardModel(vae).observe(z_true, psf, variance, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    result = fit_map(vae, observed, psf, variance, magnitude=21.0, half_light_radius=0.4, steps=400, lr=0.05,
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


def test_fit_map_bad_input(seed):
    vae = GalaxyVAE(**SMALL)
    with pytest.raises(ValueError, match="init must be"):
        fit_map(vae, torch.zeros(16, 16), gaussian_psf(5, 1.0), 1.0, magnitude=21.0, half_light_radius=0.4, init="x")
    with pytest.raises(ValueError, match=r"observed must have shape"):
        fit_map(vae, torch.zeros(2, 3, 16, 16), gaussian_psf(5, 1.0), 1.0, magnitude=21.0, half_light_radius=0.4)


def test_pipeline_config_errors(tmp_path):
    from surrogate.pipelines.galaxy import run_galaxy_pipeline

    with pytest.raises(ValueError, match=r"unknown section\(s\) \['trainer'\]"):
        run_galaxy_pipeline({"trainer": {}}, tmp_path)
    with pytest.raises(ValueError, match=r"\[train\] unknown key\(s\) \['steps'\]"):
        run_galaxy_pipeline({"train": {"steps": 3}}, tmp_path)
    with pytest.raises(ValueError, match=r"\[simulate\].n_train must be an integer >= 1"):
        run_galaxy_pipeline({"simulate": {"n_train": 0}}, tmp_path)


def test_pipeline_toml_files_parse():
    import tomllib

    from surrogate.pipelines.galaxy import _sections

    root = Path(__file__).resolve().parents[2] / "pipelines"
    for name in ("galaxy_vae.toml", "galaxy_vae_quality.toml"):
        with open(root / name, "rb") as f:
            cfg = _sections(tomllib.load(f))
        assert cfg["run"]["pipeline"] == "galaxy_vae"


@pytest.mark.slow
def test_pipeline_end_to_end_and_unseen_psf_chi2(tmp_path):
    """A small run of the whole pipeline (about 2-4 minutes on one CPU core): the report and its
    pictures exist, and the forward-model fit of held-out galaxies seen through Kolmogorov PSFs
    (the model trained on Moffat and HST PSFs only) gives chi^2 per pixel near 1."""
    pytest.importorskip("galsim")
    from surrogate.pipelines.galaxy import load_galaxy_vae, run_galaxy_pipeline

    config = {
        "simulate": {"n_train": 2000, "n_heldout": 300, "seed": 11},
        "unseen_psf": {"n": 16},
        "train": {"max_steps": 1200, "log_every": 100},
        "prior": {"max_steps": 600},
        "validate": {"map_steps": 200, "n_map_heldout": 16},
    }
    report_path = run_galaxy_pipeline(config, tmp_path, progress=False)
    report = json.loads(report_path.read_text())
    for name in report["files"]:
        assert (tmp_path / name).is_file(), name
    chi2 = report["forward_model"]["unseen_psf"]
    # Noise alone gives 1 - 16/1024 with a spread of 0.044 per stamp; a short training leaves
    # some structure in the residuals of the brightest galaxies.
    assert 0.85 < chi2["median"] < 1.3, chi2
    assert report["forward_model"]["unseen_psf"]["flux_relative_error"]["median"] == pytest.approx(0.0, abs=0.1)
    assert all(0.0 <= v <= 1.0 for v in report["ks"].values())
    model = load_galaxy_vae(tmp_path / "model.pt")
    assert model.sample(2, magnitude=21.0, half_light_radius=0.4).shape == (2, 1, 32, 32)
    assert math.isfinite(report["train"]["final_loss_nats_per_pixel"])

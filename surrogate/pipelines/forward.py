r"""Inversion of the galaxy forward model: MAP latents and deconvolved profiles of observed stamps.

The forward model itself (galaxy -> PSF -> pixel noise, a differentiable likelihood
:math:`p(x | z, \text{PSF}, \sigma^2)`) is the network
:class:`surrogate.models.forward.ForwardModel`; this module holds the inference procedure that
uses it (no trainable module lives here).

:func:`fit_map` inverts it for observed stamps: the maximum a posteriori latent under the
conditional flow prior,

.. math:: \hat z = \arg\max_z\; \log p(x | z, \text{PSF}, \text{noise}) + \log p(z | m, r_{1/2}),

started from the encoder's mean and refined with Adam, and returns the deconvolved (PSF-free)
profile :math:`G(\hat z)`, the residual in units of the noise and the reduced chi-squared per
pixel. The noise is either white, one variance :math:`\sigma^2` per stamp, with
:math:`\chi^2 / n_{pix} = \frac{1}{n_{pix}} \sum_i (x_i - [\text{PSF} * G(\hat z)]_i)^2 / \sigma^2`,
or stationary and correlated, given by its power spectrum :math:`P_k` (``noise_power``), with
the Whittle likelihood :math:`\chi^2 = \frac{1}{n_{pix}} \sum_k |\mathrm{DFT}(x - \text{PSF} *
G(\hat z))_k|^2 / P_k` (:class:`~surrogate.models.forward.StationaryNormal`, where the formula
and its sources are). Either is about 1 per pixel when the model describes the stamp down to
the noise (slightly less: ``D`` latents are fitted out of ``S*S`` pixels).

With ``fit_offset=True`` the galaxy's centre is fitted too, as every profile fitter does: a
sub-pixel offset :math:`(\delta_x, \delta_y)` per stamp, bounded to :data:`MAX_OFFSET` pixels by
:math:`\delta = \delta_{max} \tanh(u)`, moves the model image by the Fourier shift theorem
(:func:`shift_images`, applied to the PSF, which commutes with the convolution), so the
deconvolved profile stays centred on the model's grid and the offset is reported beside it.

Real stamps at any pixel scale, with their own PSF and correlated noise, are prepared for this
by :mod:`surrogate.pipelines.real_stamps` and fitted in one call by
:func:`surrogate.pipelines.fit_stamps.fit_stamps`.

References:
    Lanusse et al. (2021), arXiv:2008.03833, section 6 (the VAE as a prior in a forward model
    of observed galaxy images; MAP deconvolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from surrogate.models.forward import ForwardModel
from surrogate.models.galaxy_vae import FlowPrior, GalaxyVAE

__all__ = ["MAX_OFFSET", "MAPFit", "fit_map", "shift_images"]

MAX_OFFSET = 1.5
"""Largest fitted offset of a galaxy's centre along each axis, pixels (``fit_offset=True``)."""


def shift_images(images: Tensor, offset: Tensor) -> Tensor:
    """Moves images by sub-pixel offsets with the Fourier shift theorem (circularly).

    Arguments:
        images: ``(B, 1, H, W)`` real images.
        offset: ``(B, 2)`` shifts ``(dx, dy)`` in pixels along x (axis -1) and y (axis -2).

    Returns:
        ``(B, 1, H, W)``: ``images(x - dx, y - dy)``, band-limited interpolation; flux kept. The
        Nyquist frequency of an even axis gets the real part of its phase factor, so the result
        is real (the mean of the two equivalent signs of that frequency).

    Example:
        >>> image = torch.zeros(1, 1, 8, 8); image[0, 0, 3, 2] = 1.0
        >>> moved = shift_images(image, torch.tensor([[1.0, 2.0]]))
        >>> torch.nonzero(moved[0, 0] > 0.5).tolist()  # x moved by 1, y by 2
        [[5, 3]]
    """
    H, W = images.shape[-2:]
    ky = torch.fft.fftfreq(H, device=images.device, dtype=images.dtype)
    kx = torch.fft.fftfreq(W, device=images.device, dtype=images.dtype)
    phase = offset[:, 0, None, None] * kx[None, None, :] + offset[:, 1, None, None] * ky[None, :, None]
    ramp = torch.polar(torch.ones_like(phase), -2.0 * torch.pi * phase)[:, None]
    return torch.fft.ifft2(torch.fft.fft2(images) * ramp).real


def _images(x: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must have shape (H, W), (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    return x


@dataclass
class MAPFit:
    """Result of :func:`fit_map` for ``B`` stamps.

    Attributes:
        latent: ``(B, D)`` MAP latents.
        profile: ``(B, 1, S, S)`` deconvolved (PSF-free) profiles, counts per pixel.
        model_image: ``(B, 1, S, S)`` the profiles convolved with the PSFs (noiseless model of
            the observation).
        chi2_per_pixel: ``(B,)`` reduced chi-squared over the stamp, ``chi2 / (S*S)`` (white
            noise: ``sum((x - model)^2 / sigma^2) / (S*S)``).
        log_posterior: ``(B,)`` ``log p(x|z) + log p(z|m, r)`` at the optimum, nats.
        history: mean negative log posterior per pixel every 10 iterations.
        residual_sigma: ``(B, 1, S, S)`` residuals in units of the noise: ``(x - model) / sigma``
            for white noise, the whitened residual for a power spectrum
            (:meth:`~surrogate.models.forward.StationaryNormal.whiten`); the mean of its square
            is ``chi2_per_pixel``.
        offset: ``(B, 2)`` fitted offsets ``(dx, dy)`` of the galaxies' centres from the
            stamps' centres, pixels (zeros unless ``fit_offset``); ``model_image`` includes it,
            ``profile`` does not.
    """

    latent: Tensor
    profile: Tensor
    model_image: Tensor
    chi2_per_pixel: Tensor
    log_posterior: Tensor
    history: list[float]
    residual_sigma: Tensor
    offset: Tensor


def fit_map(vae: GalaxyVAE, observed: Tensor, psf: Tensor, noise_variance: Tensor | float | None = None, *,
            magnitude: Tensor | float, half_light_radius: Tensor | float, noise_power: Tensor | None = None,
            steps: int = 300, learning_rate: float = 0.05, init: str = "encoder", fit_offset: bool = False) -> MAPFit:
    """Maximum a posteriori latent of observed stamps under the flow prior; deconvolved profiles.

    Arguments:
        vae: trained VAE with a trained flow prior (its weights are not changed).
        observed: ``(B, 1, S, S)``, ``(B, S, S)`` or ``(S, S)`` stamps, counts per pixel, at
            the model's pixel scale.
        psf: their PSFs, ``(B, 1, P, P)``, ``(B, P, P)`` or ``(P, P)`` (one for all), unit sum,
            at the stamps' pixel scale; need not be a PSF the model was trained with.
        noise_variance: white noise: ``(B,)`` or one variance, counts².
        noise_power: correlated noise instead of ``noise_variance``: its power spectrum
            ``(S, S)``, ``(B, S, S)`` or ``(B, 1, S, S)``, counts², in ``torch.fft.fft2`` order
            (:class:`~surrogate.models.forward.StationaryNormal`; e.g. from
            :func:`surrogate.pipelines.real_stamps.noise_power_spectrum`).
        magnitude: ``(B,)`` or one value, AB mag (context of the prior).
        half_light_radius: ``(B,)`` or one value, arcsec (context of the prior).
        steps: Adam iterations.
        learning_rate: Adam learning rate (latents are of order 1).
        init: ``"encoder"`` (start from the mean of ``q(z|x)``) or ``"prior"`` (from zero).
        fit_offset: also fit each galaxy's sub-pixel centre (module documentation), within
            :data:`MAX_OFFSET` pixels, started at 0.

    Returns:
        A :class:`MAPFit`.

    Magnitudes or radii far outside the training set give an
    :class:`~surrogate.checks.ExtrapolationWarning`
    (:meth:`~surrogate.models.galaxy_vae.GalaxyVAE.warn_extrapolation`).

    Raises:
        ValueError: bad shapes or ``init``; neither or both of ``noise_variance`` and
            ``noise_power``.
    """
    if init not in ("encoder", "prior"):
        raise ValueError(f"init must be 'encoder' or 'prior', got {init!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    vae.warn_extrapolation(magnitude, half_light_radius)
    device = next(vae.parameters()).device
    x = _images(observed, "observed").to(device=device, dtype=torch.float32)
    B = x.shape[0]
    forward = ForwardModel(vae)
    if (noise_variance is None) == (noise_power is None):
        raise ValueError("fit_map: give exactly one of noise_variance (white noise) and noise_power (correlated)")
    if noise_power is not None:
        noise = {"noise_power": torch.as_tensor(noise_power).to(device=device, dtype=x.dtype)}
    else:
        noise = {"noise_variance": torch.as_tensor(noise_variance, dtype=x.dtype, device=device).reshape(-1).expand(B)}
    was_training = vae.training
    vae.eval()
    requires = [p.requires_grad for p in vae.parameters()]
    for p in vae.parameters():
        p.requires_grad_(False)
    try:
        prior = FlowPrior(vae.flow, vae.context(magnitude, half_light_radius, batch=B))
        with torch.no_grad():
            z0 = vae.encode(x).mean if init == "encoder" else torch.zeros(B, vae.latent_dim, device=device)
        z = z0.clone().requires_grad_(True)
        u = torch.zeros(B, 2, device=device, requires_grad=fit_offset)  # offset = MAX_OFFSET tanh(u)
        optimizer = torch.optim.Adam([z, u] if fit_offset else [z], lr=learning_rate)
        npix = x[0].numel()
        history: list[float] = []
        psf_images = _images(psf, "psf").to(device=device, dtype=x.dtype).expand(B, -1, -1, -1)

        def moved_psf() -> Tensor:
            return shift_images(psf_images, MAX_OFFSET * torch.tanh(u)) if fit_offset else psf

        def objective() -> Tensor:
            return forward.likelihood(z, moved_psf(), **noise).log_prob(x) + prior.log_prob(z)

        for i in range(steps):
            loss = -objective().sum() / (B * npix)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i % 10 == 0:
                history.append(float(loss.detach()))
        with torch.no_grad():
            profile = vae.decode(z)
            model_image = forward.convolve(profile, moved_psf())
            if noise_power is not None:
                likelihood = forward.likelihood(z, moved_psf(), **noise)
                residual_sigma = likelihood.whiten(x)
                chi2 = likelihood.chi2(x) / npix
            else:
                residual_sigma = (x - model_image) / noise["noise_variance"].sqrt().view(-1, 1, 1, 1)
                chi2 = residual_sigma.square().sum(dim=(1, 2, 3)) / npix
            log_posterior = objective()
    finally:
        for p, r in zip(vae.parameters(), requires):
            p.requires_grad_(r)
        vae.train(was_training)
    return MAPFit(latent=z.detach(), profile=profile, model_image=model_image, chi2_per_pixel=chi2,
                  log_posterior=log_posterior.detach(), history=history, residual_sigma=residual_sigma,
                  offset=(MAX_OFFSET * torch.tanh(u)).detach())

r"""Differentiable forward model of an observation: galaxy -> PSF -> pixel noise -> image.

:class:`ForwardModel` chains a trained :class:`~surrogate.models.galaxy_vae.GalaxyVAE` decoder
(latent :math:`z` -> PSF-free profile :math:`G(z)`), the convolution with an instrument's PSF
(:func:`surrogate.nn.psf.fft_convolve`) and Gaussian pixel noise. Every step is differentiable,
so it is a likelihood :math:`p(x | z, \text{PSF}, \sigma^2)` one can optimise or sample; the
maximum a posteriori inversion of observed stamps is
:func:`surrogate.pipelines.forward.fit_map`.

References:
    Lanusse et al. (2021), arXiv:2008.03833, section 6 (the VAE as a prior in a forward model
    of observed galaxy images).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Independent

from surrogate.models.galaxy_vae import GalaxyVAE

__all__ = ["ForwardModel"]


class ForwardModel(nn.Module):
    """Galaxy -> PSF -> pixel noise: ``observe(z, psf, noise_variance)`` makes an observed stamp.

    Arguments:
        vae: a trained :class:`~surrogate.models.galaxy_vae.GalaxyVAE` (its decoder is used).

    Shapes:
        ``z``: ``(B, D)``; ``psf``: ``(B, 1, P, P)``, ``(B, P, P)`` or ``(P, P)`` (one for all),
        unit sum, sampled at the stamp's pixel scale, odd ``P <= S``; ``noise_variance``:
        ``(B,)`` or one value, counts²; images: ``(B, 1, S, S)`` counts per pixel.

    Example:
        >>> vae = GalaxyVAE(stamp_size=16, latent_dim=4, channels=(4, 8), hidden_features=16)
        >>> model = ForwardModel(vae)
        >>> psf = torch.ones(5, 5) / 25
        >>> model.observe(torch.zeros(2, 4), psf, 0.01).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, vae: GalaxyVAE):
        super().__init__()
        self.vae = vae

    @staticmethod
    def _psf(psf: Tensor, like: Tensor) -> Tensor:
        psf = torch.as_tensor(psf).to(like)
        return psf[:, None] if psf.dim() == 3 else psf

    def convolve(self, profile: Tensor, psf: Tensor) -> Tensor:
        """``profile`` ``(B, 1, S, S)`` convolved with ``psf`` (any of the shapes of the class)."""
        return self.vae.convolve(profile, self._psf(psf, profile))

    def forward(self, z: Tensor, psf: Tensor) -> Tensor:
        """Noiseless observation ``PSF * G(z)``: ``(B, 1, S, S)`` counts per pixel."""
        return self.convolve(self.vae.decode(z), psf)

    def likelihood(self, z: Tensor, psf: Tensor, noise_variance: Tensor | float) -> Independent:
        """``p(x | z, PSF, sigma^2)``, a Gaussian over ``(1, S, S)`` images with batch ``(B,)``."""
        variance = torch.as_tensor(noise_variance, dtype=z.dtype, device=z.device)
        return self.vae.likelihood(z, self._psf(psf, z), variance)

    def observe(self, z: Tensor, psf: Tensor, noise_variance: Tensor | float, *,
                generator: torch.Generator | None = None) -> Tensor:
        """A noisy observation: ``PSF * G(z) + N(0, sigma^2)`` per pixel.

        Arguments:
            z: ``(B, D)`` latents.
            psf: PSFs (see the class).
            noise_variance: ``(B,)`` or one value, counts².
            generator: torch CPU generator for the noise (default the global one).

        Returns:
            ``(B, 1, S, S)`` counts per pixel; differentiable in ``z`` and ``psf`` (the noise is
            additive and independent of them).
        """
        mean = self(z, psf)
        variance = torch.as_tensor(noise_variance, dtype=mean.dtype, device=mean.device).reshape(-1)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
        return mean + noise * variance.sqrt().view(-1, 1, 1, 1)

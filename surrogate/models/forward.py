r"""Differentiable forward model of an observation: galaxy -> PSF -> pixel noise -> image.

:class:`ForwardModel` chains a trained :class:`~surrogate.models.galaxy_vae.GalaxyVAE` decoder
(latent :math:`z` -> PSF-free profile :math:`G(z)`), the convolution with an instrument's PSF
(:func:`surrogate.nn.psf.fft_convolve`) and Gaussian noise: independent pixels of one variance
:math:`\sigma^2`, or stationary correlated noise given by its power spectrum :math:`P_k`
(:class:`StationaryNormal`, the noise of resampled or drizzled space-telescope images). Every
step is differentiable, so it is a likelihood :math:`p(x | z, \text{PSF}, \text{noise})` one
can optimise or sample; the maximum a posteriori inversion of observed stamps is
:func:`surrogate.pipelines.forward.fit_map`.

**Correlated noise** (:class:`StationaryNormal`). For an ``S x S`` stamp (:math:`N = S^2`
pixels), residual :math:`r = x - \mu` and its unnormalised DFT
:math:`R_k = \sum_j r_j e^{-2\pi i\, k \cdot j / S}` (``torch.fft.fft2``), the noise is
described by its power spectrum :math:`P_k = E|\mathrm{DFT}(n)_k|^2 / N` (counts², the expected
periodogram of the noise :math:`n` on the stamp; white noise of variance :math:`\sigma^2` has
:math:`P_k = \sigma^2`), and

.. math::

    \chi^2 = \frac{1}{N} \sum_k \frac{|R_k|^2}{P_k}, \qquad
    \log p(x) = -\tfrac12 \chi^2 - \tfrac12 \sum_k \log(2\pi P_k),

the Whittle likelihood (Whittle 1953): exact for noise that is periodic on the stamp (a
circulant covariance), the standard approximation otherwise. With :math:`P_k` the *expected*
periodogram of the stamp (the covariance function times the triangle window
:math:`(1 - |\Delta_x|/S)(1 - |\Delta_y|/S)`, as
:func:`surrogate.pipelines.real_stamps.noise_power_spectrum` makes it) it is the debiased
Whittle likelihood of Sykulski et al. (2019), whose :math:`\chi^2` has expectation exactly
:math:`N` on pure noise. For white noise :math:`\chi^2 = \sum_j r_j^2 / \sigma^2`
(Parseval). The whitened residual :math:`w = \mathrm{DFT}^{-1}(R_k / \sqrt{P_k})` has
:math:`\sum_j w_j^2 = \chi^2`, unit-variance uncorrelated pixels for circulant noise: the
"residual in sigma" of a correlated-noise fit. Lanusse et al. (2021) write the likelihood of
HST/COSMOS stamps the same way, diagonal in Fourier space with the noise power spectrum.

References:
    Lanusse et al. (2021), arXiv:2008.03833, sections 3 and 6 (Fourier-space likelihood with
    the noise power spectrum; the VAE as a prior in a forward model of observed galaxy images).
    Whittle (1953), "The analysis of multiple stationary time series", J. R. Stat. Soc. B 15, 125.
    Sykulski, Olhede, Guillaumin, Lilly, Early (2019), "The debiased Whittle likelihood",
    Biometrika 106, 251, arXiv:1605.06718.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, constraints

from surrogate.models.galaxy_vae import GalaxyVAE

__all__ = ["ForwardModel", "StationaryNormal"]


class StationaryNormal(Distribution):
    r"""Gaussian images with stationary, possibly correlated noise of power spectrum ``P_k``.

    The distribution of :math:`x = \mu + n` where :math:`n` is Gaussian noise with
    :math:`E|\mathrm{DFT}(n)_k|^2 = N P_k`; :meth:`log_prob` is the Whittle likelihood and
    :meth:`chi2` its :math:`\chi^2` (formulas in the module documentation). Sampling makes
    noise that is periodic on the stamp (a circulant covariance).

    Arguments:
        loc: ``(B, 1, S, S)`` mean images, counts per pixel.
        power: the noise power spectrum, counts², in ``torch.fft.fft2`` order (frequency 0 at
            index ``[0, 0]``), with :math:`P_{-k} = P_k`: ``(S, S)`` (one for all),
            ``(B, S, S)`` or ``(B, 1, S, S)``; finite and > 0.

    Raises:
        ValueError: shapes that do not match, or a non-positive or non-finite power.

    Example:
        >>> power = torch.full((8, 8), 0.25)  # white noise of variance 0.25
        >>> d = StationaryNormal(torch.zeros(2, 1, 8, 8), power)
        >>> d.chi2(torch.full((2, 1, 8, 8), 1.0))  # 64 pixels of 2 sigma
        tensor([256., 256.])
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: Tensor, power: Tensor):
        if loc.dim() != 4 or loc.shape[1] != 1 or loc.shape[2] != loc.shape[3]:
            raise ValueError(f"StationaryNormal: loc must have shape (B, 1, S, S), got {tuple(loc.shape)}")
        B, _, S, _ = loc.shape
        power = torch.as_tensor(power).to(loc)
        if power.dim() == 3:
            power = power[:, None]
        try:
            power = power.expand(B, 1, S, S)
        except RuntimeError:
            raise ValueError(f"StationaryNormal: power must have shape (S, S), (B, S, S) or (B, 1, S, S) with "
                             f"B = {B}, S = {S}, got {tuple(power.shape)}") from None
        if not bool(torch.isfinite(power).all()) or not bool((power > 0).all()):
            raise ValueError("StationaryNormal: power must be finite and > 0 (counts²)")
        self.loc, self.power = loc, power
        super().__init__(batch_shape=loc.shape[:1], event_shape=loc.shape[1:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        r"""Per-pixel variance, :math:`\frac{1}{N}\sum_k P_k` (counts²), ``(B, 1, S, S)``."""
        return self.power.mean(dim=(-2, -1), keepdim=True).expand_as(self.loc)

    def whiten(self, x: Tensor) -> Tensor:
        r"""Whitened residuals :math:`\mathrm{DFT}^{-1}(\mathrm{DFT}(x - \mu)_k / \sqrt{P_k})`, ``(B, 1, S, S)``:
        the residual in units of the noise (``x`` of the event shape, batch ``(B,)``)."""
        spectrum = torch.fft.fft2(x - self.loc) / self.power.sqrt()
        return torch.fft.ifft2(spectrum).real

    def chi2(self, x: Tensor) -> Tensor:
        r""":math:`\chi^2 = \frac{1}{N}\sum_k |\mathrm{DFT}(x - \mu)_k|^2 / P_k`, ``(B,)`` (dimensionless)."""
        n = self.loc.shape[-1] * self.loc.shape[-2]
        return (torch.fft.fft2(x - self.loc).abs().square() / self.power).sum(dim=(-3, -2, -1)) / n

    def log_prob(self, value: Tensor) -> Tensor:
        """Whittle log likelihood of images ``(B, 1, S, S)`` -> ``(B,)``, nats."""
        log_det = torch.log(2 * math.pi * self.power).sum(dim=(-3, -2, -1))
        return -0.5 * (self.chi2(value) + log_det)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        r"""Draws ``(*sample_shape, B, 1, S, S)`` images: white noise filtered by :math:`\sqrt{P_k}`."""
        shape = torch.Size(sample_shape) + self.loc.shape
        white = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + torch.fft.ifft2(torch.fft.fft2(white) * self.power.sqrt()).real


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

    def likelihood(self, z: Tensor, psf: Tensor, noise_variance: Tensor | float | None = None, *,
                   noise_power: Tensor | None = None) -> Independent | StationaryNormal:
        """``p(x | z, PSF, noise)``, a Gaussian over ``(1, S, S)`` images with batch ``(B,)``.

        Arguments:
            z: ``(B, D)`` latents.
            psf: PSFs (see the class).
            noise_variance: independent pixel noise: ``(B,)`` or one variance, counts².
            noise_power: stationary correlated noise instead: its power spectrum ``(S, S)``,
                ``(B, S, S)`` or ``(B, 1, S, S)``, counts² (:class:`StationaryNormal`).

        Returns:
            ``Independent(Normal)`` for a variance, :class:`StationaryNormal` for a power spectrum.

        Raises:
            ValueError: neither or both of ``noise_variance`` and ``noise_power``.
        """
        if (noise_variance is None) == (noise_power is None):
            raise ValueError("ForwardModel.likelihood: give exactly one of noise_variance and noise_power")
        if noise_power is not None:
            return StationaryNormal(self(z, psf), noise_power)
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

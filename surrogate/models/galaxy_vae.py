r"""Convolutional VAE of PSF-free galaxy light profiles with a conditional flow prior.

The model of Lanusse et al. (2021, arXiv:2008.03833) at small scale:

- :meth:`GalaxyVAE.encode` maps an observed stamp ``(B, 1, S, S)`` to the Gaussian posterior
  :math:`q(z|x)` (a ``torch.distributions.Independent(Normal)`` over ``latent_dim`` variables).
  The encoder sees ``asinh(x / input_scale)``, which compresses the large dynamic range of
  galaxy fluxes (``input_scale`` is about the typical noise level, in counts per pixel).
- :meth:`GalaxyVAE.decode` maps latents ``(B, D)`` to the PSF-free light profile
  ``(B, 1, S, S)`` in counts per pixel, **non-negative by construction**: a total flux
  :math:`F(z) = \text{flux\_scale} \cdot e^{f(z)}` times a softmax over the pixels
  (the light's distribution on the stamp), so the profile sums to exactly :math:`F(z)`.
- :meth:`GalaxyVAE.likelihood` is :math:`p(x|z, \text{PSF}, \sigma^2)`: the decoded profile
  convolved with **each example's own PSF** (:func:`surrogate.nn.psf.fft_convolve`), then
  Gaussian pixel noise of the example's variance. The network never has to learn a PSF.
- :meth:`GalaxyVAE.elbo` is the evidence lower bound with a standard-normal prior during VAE
  training (weight ``beta`` on the KL term, Higgins et al. 2017).
- :meth:`GalaxyVAE.prior` is the latent prior used for sampling: a masked autoregressive flow
  (nflows 0.14 ``MaskedAffineAutoregressiveTransform`` blocks with reverse permutations, via
  :func:`surrogate.models.flows.build_flow`) conditioned on the magnitude and the half-light
  radius, fitted afterwards to the latents of the training set
  (:func:`surrogate.losses.flow_prior_loss`).
  :meth:`GalaxyVAE.sample` draws new profiles for given magnitudes and sizes.

Training in two stages with :func:`surrogate.train.fit`,
:class:`surrogate.train.steps.LikelihoodStep` and the objectives of :mod:`surrogate.losses`
(:func:`~surrogate.losses.galaxy_vae_loss`, :func:`~surrogate.losses.flow_prior_loss`)::

    step = LikelihoodStep(vae, torch.optim.Adam(vae.vae_parameters(), 1e-3), galaxy_vae_loss)
    fit(step, loader, max_steps=...)                      # batches from GalaxyStampDataset
    latents = encode_dataset(vae, loader)                 # {"latent", "magnitude", "half_light_radius"}
    step = LikelihoodStep(vae, torch.optim.Adam(vae.prior_parameters(), 1e-3), flow_prior_loss)
    fit(step, latent_loader, max_steps=...)

References:
    Lanusse, Mandelbaum, Ravanbakhsh, Li, Freeman, Poczos (2021), "Deep generative models for
    galaxy image simulations", MNRAS 504, 5543, arXiv:2008.03833.
    Kingma & Welling (2014), "Auto-Encoding Variational Bayes", arXiv:1312.6114.
    Higgins et al. (2017), "beta-VAE", ICLR.
    Papamakarios, Pavlakou & Murray (2017), "Masked Autoregressive Flow", arXiv:1705.07057.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, constraints

from surrogate.checks import warn_outside
from surrogate.models.flows import build_flow
from surrogate.nn.psf import fft_convolve

__all__ = ["FlowPrior", "GalaxyVAE", "encode_dataset"]


class FlowPrior(Distribution):
    """The conditional flow prior ``p(z | magnitude, half_light_radius)`` as a torch distribution.

    Arguments:
        flow: an ``nflows.flows.Flow`` over ``D`` latents.
        context: ``(B, 2)`` standardised context; the distribution's batch shape is ``(B,)``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, flow: nn.Module, context: Tensor):
        self.flow = flow
        self.context = context
        features = flow._distribution._shape[0]
        super().__init__(batch_shape=context.shape[:1], event_shape=torch.Size([features]), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log density of ``value`` ``(B, D)`` (or ``(D,)`` broadcast over the batch) -> ``(B,)``."""
        if value.dim() == 1:
            value = value.expand(self.context.shape[0], -1)
        return self.flow.log_prob(value, context=self.context)

    def sample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        """Draws ``(*sample_shape, B, D)`` latents (``(B, D)`` for the default shape)."""
        shape = torch.Size(sample_shape)
        n = max(1, math.prod(shape))
        with torch.no_grad():
            z = self.flow.sample(n, context=self.context)  # (B, n, D)
        z = z.transpose(0, 1)  # (n, B, D)
        return z.reshape(*shape, *z.shape[1:]) if len(shape) else z[0]


class GalaxyVAE(nn.Module):
    r"""Convolutional VAE of PSF-free galaxy profiles with a conditional MAF latent prior.

    Arguments:
        stamp_size: side ``S`` of the square stamps, pixels; divisible by ``2**len(channels)``.
        latent_dim: number ``D`` of latent variables.
        channels: convolution channels of the encoder stages (each halves the size); the decoder
            mirrors them.
        hidden_features: width of the dense layer between the convolutions and the latents.
        input_scale: ``x / input_scale`` is passed through ``asinh`` before encoding, counts
            per pixel (about the typical pixel-noise standard deviation).
        flux_scale: typical total flux of a stamp, counts; the decoder's flux is
            ``flux_scale * exp(f(z))`` with ``f`` starting near 0.
        context_loc: ``(magnitude, log(half_light_radius / arcsec))`` subtracted from the
            prior's context ...
        context_scale: ... and divided by this (z-scoring with the training set's statistics).
        flow_hidden_features: width of the MADE networks of the prior.
        flow_transforms: number of MAF blocks of the prior.
        flow_seed: seed of the prior's fixed permutations.

    Shapes:
        ``x``: ``(B, 1, S, S)`` counts per pixel; ``psf``: ``(B, 1, P, P)`` or ``(P, P)`` with
        odd ``P <= S``; ``noise_variance``: ``(B,)`` or ``(B, 1)`` counts²; ``magnitude``,
        ``half_light_radius``: ``(B,)`` or ``(B, 1)`` (mag, arcsec).

    Raises:
        ValueError: bad sizes.

    Example:
        >>> vae = GalaxyVAE(stamp_size=16, latent_dim=4, channels=(4, 8), hidden_features=16)
        >>> vae.encode(torch.zeros(3, 1, 16, 16)).rsample().shape
        torch.Size([3, 4])
        >>> vae.decode(torch.zeros(3, 4)).shape
        torch.Size([3, 1, 16, 16])
        >>> vae.sample(5, magnitude=21.0, half_light_radius=0.4).shape
        torch.Size([5, 1, 16, 16])
    """

    def __init__(
        self,
        stamp_size: int = 32,
        latent_dim: int = 16,
        channels: Sequence[int] = (32, 64, 128),
        hidden_features: int = 256,
        *,
        input_scale: float = 1.0,
        flux_scale: float = 100.0,
        context_loc: Sequence[float] = (21.0, -1.0),
        context_scale: Sequence[float] = (1.2, 0.6),
        flow_hidden_features: int = 64,
        flow_transforms: int = 4,
        flow_seed: int = 0,
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive integers, got {channels}")
        factor = 2 ** len(channels)
        if stamp_size < factor or stamp_size % factor:
            raise ValueError(f"stamp_size must be a multiple of 2**len(channels) = {factor}, got {stamp_size}")
        if latent_dim < 1 or hidden_features < 1:
            raise ValueError(f"latent_dim and hidden_features must be >= 1, got {latent_dim}, {hidden_features}")
        if not (input_scale > 0 and flux_scale > 0):
            raise ValueError(f"input_scale and flux_scale must be > 0, got {input_scale}, {flux_scale}")
        if len(context_loc) != 2 or len(context_scale) != 2 or min(context_scale) <= 0:
            raise ValueError(f"context_loc and context_scale must be pairs, scale > 0; got {context_loc}, {context_scale}")
        self.stamp_size, self.latent_dim = int(stamp_size), int(latent_dim)
        self.input_scale, self.flux_scale = float(input_scale), float(flux_scale)
        self.register_buffer("context_loc", torch.tensor([float(v) for v in context_loc]))
        self.register_buffer("context_scale", torch.tensor([float(v) for v in context_scale]))
        low = stamp_size // factor
        self._low = low

        # Encoder: each stage halves the size (4x4 convolution, stride 2), then a 3x3 convolution
        # (skipped at full resolution, where it would dominate the cost on a CPU).
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.SiLU()]
            if i > 0:
                layers += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            c_in = c
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * low * low, hidden_features), nn.SiLU(),
                                     nn.Linear(hidden_features, 2 * latent_dim))

        # Decoder: the mirror image; the last transposed convolution gives the pixel logits.
        rev = channels[::-1]
        self.decoder_input = nn.Sequential(nn.Linear(latent_dim, hidden_features), nn.SiLU(),
                                           nn.Linear(hidden_features, rev[0] * low * low), nn.SiLU())
        layers = []
        for i, c in enumerate(rev):
            if i + 1 < len(rev):
                layers += [nn.ConvTranspose2d(c, rev[i + 1], 4, stride=2, padding=1), nn.SiLU(),
                           nn.Conv2d(rev[i + 1], rev[i + 1], 3, padding=1), nn.SiLU()]
            else:
                layers += [nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*layers)
        self.flux_head = nn.Sequential(nn.Linear(latent_dim, hidden_features), nn.SiLU(), nn.Linear(hidden_features, 1))
        self._rev0 = rev[0]

        self.flow = build_flow("maf", latent_dim, 2, hidden_features=flow_hidden_features,
                               num_transforms=flow_transforms, linear="reverse" if latent_dim > 1 else "none",
                               seed=flow_seed)

    # -- parameters of the two training stages -------------------------------------------------
    def vae_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters of the encoder and decoder (stage 1)."""
        for name, p in self.named_parameters():
            if not name.startswith("flow."):
                yield p

    def prior_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters of the flow prior (stage 2)."""
        return self.flow.parameters()

    # -- encoder / decoder ---------------------------------------------------------------------
    def _check_images(self, x: Tensor, name: str = "x") -> None:
        S = self.stamp_size
        if x.dim() != 4 or x.shape[1:] != (1, S, S):
            raise ValueError(f"GalaxyVAE: {name} must have shape (B, 1, {S}, {S}), got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Independent:
        """Posterior :math:`q(z|x)`.

        Arguments:
            x: observed stamps ``(B, 1, S, S)``, counts per pixel.

        Returns:
            A diagonal Gaussian ``Independent(Normal(loc, scale), 1)`` with batch shape ``(B,)``
            and event shape ``(D,)``.

        Raises:
            ValueError: wrong shape.
        """
        self._check_images(x)
        h = self.encoder(torch.asinh(x / self.input_scale))
        loc, raw = h.chunk(2, dim=-1)
        scale = nn.functional.softplus(raw) + 1e-4
        return Independent(Normal(loc, scale), 1)

    def decode(self, z: Tensor) -> Tensor:
        """PSF-free light profile of latents ``z``.

        Arguments:
            z: ``(B, D)`` latents.

        Returns:
            ``(B, 1, S, S)`` non-negative profiles in counts per pixel (the mean of the
            likelihood before the PSF; the total flux is ``flux_scale * exp(f(z))``).

        Raises:
            ValueError: wrong shape.
        """
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"GalaxyVAE.decode: z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        h = self.decoder_input(z).view(-1, self._rev0, self._low, self._low)
        logits = self.decoder(h).flatten(1)
        log_flux = self.flux_head(z).clamp(-20.0, 20.0) + math.log(self.flux_scale)
        profile = torch.exp(torch.log_softmax(logits, dim=1) + log_flux)
        return profile.view(-1, 1, self.stamp_size, self.stamp_size)

    @staticmethod
    def _per_example(value: Tensor, batch: int, name: str) -> Tensor:
        value = torch.as_tensor(value).reshape(-1)
        if value.numel() == 1:
            return value.expand(batch)
        if value.numel() != batch:
            raise ValueError(f"GalaxyVAE: {name} must have shape (B,) or (B, 1) with B = {batch}, got {value.numel()} values")
        return value

    def convolve(self, profile: Tensor, psf: Tensor) -> Tensor:
        """``profile`` ``(B, 1, S, S)`` convolved with ``psf`` ``(B, 1, P, P)`` or ``(P, P)``."""
        return fft_convolve(profile, psf.to(profile.dtype), check_finite=False)

    def likelihood(self, z: Tensor, psf: Tensor, noise_variance: Tensor) -> Independent:
        r""":math:`p(x | z, \text{PSF}, \sigma^2)`: Gaussian around the PSF-convolved decoded profile.

        Arguments:
            z: ``(B, D)`` latents.
            psf: ``(B, 1, P, P)`` (one per example) or ``(P, P)`` PSFs sampled at the pixel
                scale, unit sum.
            noise_variance: ``(B,)`` or ``(B, 1)`` pixel-noise variances, counts².

        Returns:
            ``Independent(Normal(mean, sigma), 3)`` over ``(1, S, S)`` images, batch ``(B,)``.
        """
        mean = self.convolve(self.decode(z), psf)
        var = self._per_example(noise_variance, z.shape[0], "noise_variance").to(mean)
        return Independent(Normal(mean, var.sqrt().view(-1, 1, 1, 1).expand_as(mean)), 3)

    def elbo(self, x: Tensor, psf: Tensor, noise_variance: Tensor, *, beta: float = 1.0) -> Tensor:
        r"""Evidence lower bound per example, one reparametrised sample, standard-normal prior.

        :math:`\text{ELBO} = E_{q(z|x)}[\log p(x|z, \text{PSF}, \sigma^2)] - \beta\,
        KL(q(z|x)\,\|\,N(0, I))` (Kingma & Welling 2014; the per-example PSF of Lanusse et al.
        2021, eq. 5).

        Arguments:
            x: ``(B, 1, S, S)`` noisy observed stamps, counts per pixel.
            psf: ``(B, 1, P, P)`` or ``(P, P)`` PSFs.
            noise_variance: ``(B,)`` or ``(B, 1)``, counts².
            beta: weight of the KL term.

        Returns:
            ``(B,)`` ELBO in nats.
        """
        self._check_images(x)
        q = self.encode(x)
        z = q.rsample()
        log_likelihood = self.likelihood(z, psf, noise_variance).log_prob(x)
        base = Independent(Normal(torch.zeros_like(z), torch.ones_like(z)), 1)
        kl = torch.distributions.kl_divergence(q, base)
        return log_likelihood - beta * kl

    # -- conditional prior and sampling -------------------------------------------------------
    def context(self, magnitude: Tensor | float, half_light_radius: Tensor | float, batch: int | None = None) -> Tensor:
        """The prior's standardised context ``(B, 2)`` from magnitudes (mag) and radii (arcsec).

        Raises:
            ValueError: non-positive radii or mismatched shapes.
        """
        device = self.context_loc.device
        m = torch.as_tensor(magnitude, dtype=torch.float32, device=device).reshape(-1)
        r = torch.as_tensor(half_light_radius, dtype=torch.float32, device=device).reshape(-1)
        n = batch if batch is not None else max(len(m), len(r))
        if len(m) == 1:
            m = m.expand(n)
        if len(r) == 1:
            r = r.expand(n)
        if len(m) != n or len(r) != n:
            raise ValueError(f"GalaxyVAE: magnitude ({len(m)}) and half_light_radius ({len(r)}) must have 1 or {n} values")
        if not bool((r > 0).all()):
            raise ValueError("GalaxyVAE: half_light_radius must be > 0 arcsec")
        raw = torch.stack([m, torch.log(r)], dim=1)
        return (raw - self.context_loc) / self.context_scale

    CONTEXT_RANGE_SIGMAS = 4.0
    """Half-width, in training standard deviations, of the magnitude and log-radius range inside
    which :meth:`warn_extrapolation` stays silent (the model keeps only the training set's mean
    and standard deviation of its context, :attr:`context_loc` and :attr:`context_scale`)."""

    def warn_extrapolation(self, magnitude: Tensor | float, half_light_radius: Tensor | float, *,
                           where: str | None = None) -> None:
        """An :class:`~surrogate.checks.ExtrapolationWarning` for magnitudes (mag) or half-light
        radii (arcsec) beyond :attr:`CONTEXT_RANGE_SIGMAS` training standard deviations of the
        training mean (of the magnitude and of the log radius); ``where`` prefixes the message
        (e.g. the name of the stamp)."""
        loc, scale = self.context_loc.tolist(), self.context_scale.tolist()
        k = self.CONTEXT_RANGE_SIGMAS
        m = torch.as_tensor(magnitude, dtype=torch.float32).reshape(-1)
        r = torch.as_tensor(half_light_radius, dtype=torch.float32).reshape(-1)
        source = f"mean +- {k:g} standard deviations of the training set"
        warn_outside("magnitude", float(m.min()), float(m.max()), (loc[0] - k * scale[0], loc[0] + k * scale[0]),
                     unit="mag", source=source, where=where, stacklevel=3)
        warn_outside("half-light radius", float(r.min()), float(r.max()),
                     (math.exp(loc[1] - k * scale[1]), math.exp(loc[1] + k * scale[1])), unit="arcsec",
                     source=source, where=where, stacklevel=3)

    def prior(self, magnitude: Tensor | float, half_light_radius: Tensor | float) -> FlowPrior:
        """The latent prior :math:`p(z | m, r_{1/2})` for ``B`` galaxies (a :class:`FlowPrior`)."""
        return FlowPrior(self.flow, self.context(magnitude, half_light_radius))

    @torch.no_grad()
    def sample(self, n: int, *, magnitude: Tensor | float, half_light_radius: Tensor | float,
               temperature: float = 1.0) -> Tensor:
        """Draws ``n`` new PSF-free profiles.

        Arguments:
            n: number of galaxies.
            magnitude: one value or ``(n,)`` values, AB mag.
            half_light_radius: one value or ``(n,)`` values, arcsec.
            temperature: scales the flow's base-distribution noise (1: exact samples).

        Returns:
            ``(n, 1, S, S)`` profiles, counts per pixel (convolve with a PSF and add noise for
            an observation, see :class:`surrogate.models.forward.ForwardModel`).

        Conditions far outside the training set give an
        :class:`~surrogate.checks.ExtrapolationWarning` (:meth:`warn_extrapolation`). A base draw
        that the prior's affine layers carry to a non-finite latent (a numerical overflow in the
        far tail, measured 2 in 2000 draws of the quality run) is drawn again, with a
        :class:`UserWarning` giving the number.

        Raises:
            RuntimeError: a galaxy's latent is still not finite after 10 draws.
        """
        context = self.context(magnitude, half_light_radius, batch=n)  # checks the values first
        self.warn_extrapolation(magnitude, half_light_radius)
        embedded = self.flow._embedding_net(context)
        z = torch.full((n, self.latent_dim), math.nan, dtype=context.dtype, device=context.device)
        todo, redrawn = torch.arange(n, device=context.device), 0
        for _ in range(10):
            noise = torch.randn(len(todo), self.latent_dim).to(context) * temperature
            z[todo] = self.flow._transform.inverse(noise, context=embedded[todo])[0]
            todo = todo[~torch.isfinite(z[todo]).all(dim=1)]
            if len(todo) == 0:
                break
            redrawn += len(todo)
        if len(todo):
            raise RuntimeError(f"GalaxyVAE.sample: {len(todo)} of {n} latents not finite after 10 draws (the prior "
                               "flow overflows for these conditions)")
        if redrawn:
            warnings.warn(f"GalaxyVAE.sample: {redrawn} of {n} latent draws were not finite (the prior flow "
                          "overflowed) and were drawn again", stacklevel=2)
        return self.decode(z)


def _flat(batch: Mapping[str, Tensor], key: str) -> Tensor:
    value = batch[key]
    return value.reshape(value.shape[0])


@torch.no_grad()
def encode_dataset(model: GalaxyVAE, loader: Iterable[Mapping[str, Tensor]], *, sample: bool = False) -> dict[str, Tensor]:
    """Encodes every batch of ``loader``: the training set of the flow prior.

    Arguments:
        model: the trained VAE.
        loader: batches with ``"observed"``, ``"magnitude"``, ``"half_light_radius"``.
        sample: take one draw of ``q(z|x)`` per stamp instead of its mean.

    Returns:
        ``{"latent": (N, D), "magnitude": (N,), "half_light_radius": (N,)}`` on the CPU.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {"latent": [], "magnitude": [], "half_light_radius": []}
    for batch in loader:
        q = model.encode(batch["observed"].to(device))
        parts["latent"].append((q.sample() if sample else q.mean).cpu())
        parts["magnitude"].append(_flat(batch, "magnitude").cpu())
        parts["half_light_radius"].append(_flat(batch, "half_light_radius").cpu())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}

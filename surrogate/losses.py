r"""Training objectives as pure functions, shared by the model families.

Wasserstein GAN with gradient penalty (WGAN-GP; Arjovsky et al. arXiv:1701.07875, Gulrajani et
al. arXiv:1704.00028). With critic scores :math:`D(x, c)` for a condition :math:`c` (e.g. the
incident energy), real samples :math:`x \sim p_{data}` and generated :math:`\tilde x = G(z, c)`:

.. math::

    L_D &= \mathbb{E}[D(\tilde x, c)] - \mathbb{E}[D(x, c)]
           + \lambda\, \mathbb{E}_{\hat x}\big[(\lVert \nabla_{\hat x} D(\hat x, c) \rVert_2 - 1)^2\big],
    \qquad \hat x = \alpha x + (1 - \alpha) \tilde x,\ \alpha \sim U(0, 1), \\
    L_G &= -\mathbb{E}[D(\tilde x, c)],

where the penalty is evaluated at the *real* sample's condition (the pair is interpolated in
:math:`x` only) and :math:`\lambda = 10` in the paper. :math:`-L_D` without the penalty estimates
the Wasserstein-1 distance between the two distributions (up to the critic's Lipschitz constant).

Samples may be tensors or dictionaries of tensors (e.g. one image per calorimeter layer); a
dictionary is treated as one sample vector (one :math:`\alpha` per sample for all its entries,
one gradient norm over all of them).
"""

from __future__ import annotations

from typing import Callable, Mapping, Union

import torch
from torch import Tensor

__all__ = ["atomic_npe_loss", "balanced_npe_loss", "calo_flow_loss", "flow_prior_loss", "galaxy_vae_loss",
           "gradient_penalty", "npe_loss",
           "wgan_critic_loss", "wgan_generator_loss"]

Sample = Union[Tensor, Mapping[str, Tensor]]


def _as_dict(x: Sample) -> tuple[dict[str, Tensor], bool]:
    if isinstance(x, Tensor):
        return {"": x}, True
    return dict(x), False


def _check_scores(scores: Tensor, name: str) -> None:
    if scores.dim() != 1:
        raise ValueError(f"{name}: expected critic scores of shape (B,), got {tuple(scores.shape)}")


def wgan_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    r"""WGAN critic loss :math:`\mathbb{E}[D(\tilde x)] - \mathbb{E}[D(x)]` (arXiv:1701.07875).

    Arguments:
        real_scores: critic scores of real samples, :math:`(B,)`.
        fake_scores: critic scores of generated samples, :math:`(B',)`.

    Returns:
        The scalar loss (to minimise); its negative estimates the Wasserstein-1 distance.

    Raises:
        ValueError: scores are not 1-D.
    """
    _check_scores(real_scores, "wgan_critic_loss(real_scores)")
    _check_scores(fake_scores, "wgan_critic_loss(fake_scores)")
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: Tensor) -> Tensor:
    r"""WGAN generator loss :math:`-\mathbb{E}[D(\tilde x)]` (arXiv:1701.07875).

    Arguments:
        fake_scores: critic scores of generated samples, :math:`(B,)`.

    Returns:
        The scalar loss (to minimise).

    Raises:
        ValueError: scores are not 1-D.
    """
    _check_scores(fake_scores, "wgan_generator_loss(fake_scores)")
    return -fake_scores.mean()


def npe_loss(flow: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    r"""Neural posterior estimation loss :math:`-\frac{1}{B}\sum_i \log q(\theta_i \mid x_i)`.

    Minimised over simulations :math:`(\theta_i, x_i) \sim p(\theta)\,p(x \mid \theta)`, it
    fits the conditional density :math:`q(\theta \mid x)` to the posterior (the expected
    forward KL divergence to the posterior, up to a constant).

    Arguments:
        flow: a conditional density with ``log_prob(theta, context=x) -> (B,)``, e.g. from
            :func:`surrogate.models.npe.build_npe_flow`.
        batch: ``{"theta": (B, D), "x": (B, *x_shape)}``.

    Returns:
        The scalar loss (to minimise).

    References:
        Papamakarios & Murray (2016), arXiv:1605.06376; Greenberg, Nonnenmacher & Macke
        (2019), arXiv:1905.07488.
    """
    return -flow.log_prob(batch["theta"], context=batch["x"]).mean()


def atomic_npe_loss(flow: torch.nn.Module, batch: Mapping[str, Tensor], *, prior: torch.distributions.Distribution,
                    num_atoms: int = 10, generator: torch.Generator | None = None) -> Tensor:
    r"""SNPE-C (automatic posterior transformation) with atomic proposals:
    :math:`-\frac{1}{B}\sum_i \log \frac{q(\theta_i \mid x_i) / p(\theta_i)}
    {\sum_{j \in A_i} q(\theta_j \mid x_i) / p(\theta_j)}`, where the atoms :math:`A_i` are
    :math:`\theta_i` and ``num_atoms - 1`` other parameters of the batch drawn without
    replacement. Minimised over simulations from any proposal, :math:`q` tends to the posterior.

    Arguments:
        flow: a conditional density with ``log_prob(theta, context=x) -> (N,)``.
        batch: ``{"theta": (B, D), "x": (B, *x_shape)}``, ``theta`` inside the prior's support.
        prior: the prior ``p(theta)`` (event shape ``(D,)``).
        num_atoms: atoms per simulation, ``>= 2``; a batch smaller than ``num_atoms`` uses all
            its ``B`` parameters (as ``sbi`` does), and with ``B`` atoms there is no randomness.
        generator: draws the atoms (default: torch's global generator).

    Returns:
        The scalar loss.

    Raises:
        ValueError: ``num_atoms < 2`` or a batch of one.

    References:
        Greenberg, Nonnenmacher & Macke (2019), arXiv:1905.07488, eq. (4) and section 2.3.
    """
    theta, x = batch["theta"], batch["x"]
    b = theta.shape[0]
    if num_atoms < 2 or b < 2:
        raise ValueError(f"atomic_npe_loss needs num_atoms >= 2 and a batch of >= 2, got num_atoms {num_atoms} and "
                         f"batch size {b}")
    num_atoms = min(num_atoms, b)
    if num_atoms == b:
        others = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, b)]) for i in range(b)])
    else:
        weights = 1.0 - torch.eye(b)
        others = torch.multinomial(weights, num_atoms - 1, replacement=False, generator=generator)
    index = torch.cat([torch.arange(b)[:, None], others], 1).to(theta.device)  # (B, K), the true theta first
    atoms = theta[index]  # (B, K, D)
    context = x[:, None].expand(b, num_atoms, *x.shape[1:]).reshape(b * num_atoms, *x.shape[1:])
    log_q = flow.log_prob(atoms.reshape(b * num_atoms, -1), context=context).reshape(b, num_atoms)
    log_p = prior.log_prob(atoms.cpu()).to(theta.device)  # (B, K)
    logits = log_q - log_p
    return -(logits[:, 0] - torch.logsumexp(logits, 1)).mean()


def balanced_npe_loss(flow: torch.nn.Module, batch: Mapping[str, Tensor], *,
                      prior: torch.distributions.Distribution, balance: float = 100.0) -> Tensor:
    r"""Balanced NPE: the NPE loss plus
    :math:`\lambda\,(\mathbb{E}_{p(\theta, x)}[d] + \mathbb{E}_{p(\theta)p(x)}[d] - 1)^2` with the
    classifier :math:`d(\theta, x) = \sigma(\log q(\theta \mid x) - \log p(\theta))`. The
    marginal pairs are :math:`(\theta_{i+1}, x_i)` (the batch's parameters rolled by one, so
    the penalty is deterministic). A balanced classifier pushes the posterior towards
    conservative (wider) estimates.

    Arguments:
        flow: a conditional density with ``log_prob(theta, context=x) -> (N,)``.
        batch: ``{"theta": (B, D), "x": (B, *x_shape)}`` from the joint, ``B >= 2``.
        prior: the prior ``p(theta)`` (event shape ``(D,)``).
        balance: :math:`\lambda` (100 in the paper); 0 gives :func:`npe_loss`.

    Returns:
        The scalar loss.

    Raises:
        ValueError: a negative ``balance`` or a batch of one.

    References:
        Delaunoy, Hermans, Rozet, Wehenkel & Louppe (2022), arXiv:2208.13624, eq. (8) (BNPE).
    """
    theta, x = batch["theta"], batch["x"]
    if balance < 0:
        raise ValueError(f"balance must be >= 0, got {balance}")
    if theta.shape[0] < 2:
        raise ValueError(f"balanced_npe_loss needs a batch of at least 2 simulations, got {theta.shape[0]}")
    both = torch.cat([theta, theta.roll(-1, 0)])
    log_q = flow.log_prob(both, context=torch.cat([x, x]))
    log_p = prior.log_prob(both.cpu()).to(theta.device)
    d = torch.sigmoid(log_q - log_p)
    b = theta.shape[0]
    penalty = (d[:b].mean() + d[b:].mean() - 1.0) ** 2
    return -log_q[:b].mean() + balance * penalty


def gradient_penalty(
    critic: Callable[..., Tensor],
    real: Sample,
    fake: Sample,
    energy: Tensor | None = None,
    *,
    alpha: Tensor | None = None,
    target: float = 1.0,
) -> Tensor:
    r"""Two-sided WGAN-GP gradient penalty (Gulrajani et al. arXiv:1704.00028, eq. 3).

    :math:`\mathbb{E}_{\hat x}[(\lVert \nabla_{\hat x} D(\hat x, c) \rVert_2 - t)^2]` on
    :math:`\hat x = \alpha x + (1 - \alpha)\tilde x`, one :math:`\alpha \sim U(0, 1)` per sample,
    drawn from torch's global CPU generator (then moved to the samples' device) so the value
    is reproducible from ``torch.manual_seed`` on any device. The graph is kept
    (``create_graph=True``), so the penalty can be back-propagated into the critic.

    Arguments:
        critic: called as ``critic(x_hat, energy)`` (or ``critic(x_hat)`` when ``energy`` is
            ``None``) and returning scores :math:`(B,)`; ``x_hat`` has the structure of ``real``.
        real: real samples, a tensor :math:`(B, *)` or a dict of such tensors.
        fake: generated samples with the same structure and shapes as ``real``, detached or not.
        energy: the condition of the *real* samples, :math:`(B, *)`, e.g. incident energy in
            GeV; passed unchanged, so the penalty is taken at fixed condition.
        alpha: optional interpolation weights :math:`(B,)` in [0, 1] (drawn when ``None``).
        target: the gradient norm aimed at (1 for a 1-Lipschitz critic).

    Returns:
        The scalar penalty (not multiplied by :math:`\lambda`).

    Raises:
        ValueError: ``real`` and ``fake`` differ in keys or shapes, ``alpha`` has the wrong
            shape, or the critic returns scores that are not :math:`(B,)`.

    References:
        Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville, "Improved Training of Wasserstein
        GANs", arXiv:1704.00028.
    """
    real_d, single = _as_dict(real)
    fake_d, _ = _as_dict(fake)
    if set(real_d) != set(fake_d):
        raise ValueError(f"gradient_penalty: real has keys {sorted(real_d)}, fake has {sorted(fake_d)}")
    batch = None
    for key, r in real_d.items():
        if r.shape != fake_d[key].shape:
            raise ValueError(
                f"gradient_penalty: real[{key!r}] has shape {tuple(r.shape)}, fake[{key!r}] has "
                f"{tuple(fake_d[key].shape)}"
            )
        if batch is None:
            batch, device, dtype = r.shape[0], r.device, r.dtype
        elif r.shape[0] != batch:
            raise ValueError(f"gradient_penalty: real[{key!r}] has batch size {r.shape[0]}, expected {batch}")
    if batch is None:
        raise ValueError("gradient_penalty: no samples given")
    if alpha is None:
        alpha = torch.rand(batch).to(device=device, dtype=dtype)
    elif tuple(alpha.shape) != (batch,):
        raise ValueError(f"gradient_penalty: alpha must have shape ({batch},), got {tuple(alpha.shape)}")
    interpolates = {}
    for key, r in real_d.items():
        a = alpha.reshape(batch, *([1] * (r.dim() - 1)))
        interpolates[key] = (a * r.detach() + (1 - a) * fake_d[key].detach()).requires_grad_(True)
    x_hat: Sample = interpolates[""] if single else interpolates
    scores = critic(x_hat) if energy is None else critic(x_hat, energy)
    if tuple(scores.shape) != (batch,):
        raise ValueError(f"gradient_penalty: the critic returned shape {tuple(scores.shape)}, expected ({batch},)")
    grads = torch.autograd.grad(scores.sum(), list(interpolates.values()), create_graph=True)
    squared = sum(g.reshape(batch, -1).pow(2).sum(dim=1) for g in grads)
    # A tiny offset keeps the gradient of the norm finite where the gradient vanishes.
    norm = torch.sqrt(squared + 1e-12)
    return (norm - target).pow(2).mean()


def galaxy_vae_loss(model: torch.nn.Module, batch: Mapping[str, Tensor], *, beta: float = 1.0) -> Tensor:
    r"""Negative ELBO per pixel, averaged over the batch: the loss of the galaxy VAE stage.

    :math:`-\frac{1}{B S^2} \sum_i \big(E_{q(z|x_i)}[\log p(x_i|z, \text{PSF}_i, \sigma_i^2)]
    - \beta\, KL(q(z|x_i)\,\|\,N(0, I))\big)`, one reparametrised sample per stamp
    (:meth:`~surrogate.models.galaxy_vae.GalaxyVAE.elbo`).

    Arguments:
        model: a :class:`~surrogate.models.galaxy_vae.GalaxyVAE`.
        batch: ``"observed"`` ``(B, 1, S, S)`` counts per pixel, ``"psf"`` ``(B, 1, P, P)``,
            ``"noise_variance"`` ``(B,)`` or ``(B, 1)`` counts² (as
            :class:`surrogate.data.galaxy.GalaxyStampDataset` yields them).
        beta: weight of the KL term (Higgins et al. 2017).

    Returns:
        A scalar tensor (nats per pixel).

    References:
        Kingma & Welling (2014), arXiv:1312.6114; Lanusse et al. (2021), arXiv:2008.03833.
    """
    x = batch["observed"]
    elbo = model.elbo(x, batch["psf"], batch["noise_variance"].reshape(-1), beta=beta)
    return -elbo.mean() / x[0].numel()


def flow_prior_loss(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    r"""Negative log density of latents under the galaxy VAE's conditional flow prior
    :math:`-\frac{1}{B}\sum_i \log p(z_i \mid m_i, r_i)` (the second training stage).

    Arguments:
        model: a :class:`~surrogate.models.galaxy_vae.GalaxyVAE` (only its ``flow`` gets
            gradients from this loss).
        batch: ``"latent"`` ``(B, D)``, ``"magnitude"`` (AB mag) and ``"half_light_radius"``
            (arcsec), each ``(B,)`` or ``(B, 1)``.

    Returns:
        A scalar tensor (nats per example).
    """
    prior = model.prior(batch["magnitude"].reshape(-1), batch["half_light_radius"].reshape(-1))
    return -prior.log_prob(batch["latent"]).mean()


def calo_flow_loss(model: torch.nn.Module, batch: Mapping[str, Tensor], *,
                   generator: torch.Generator | None = None) -> Tensor:
    r"""Mean negative log-likelihood of dequantised showers under a CaloFlow model, nats per shower.

    :math:`-\frac{1}{B}\sum_i \log p(y_i \mid E_i)` with :math:`y_i` the shower :math:`x_i`
    with cells below the readout threshold zeroed and uniform noise added
    (:meth:`~surrogate.models.calo_flow.CaloFlow.dequantize`, new noise at every call).

    Arguments:
        model: a :class:`~surrogate.models.calo_flow.CaloFlow`.
        batch: ``{layer: (B, *shape)}`` cell energies in MeV for each of the model's layers and
            ``"energy"`` ``(B, 1)`` in GeV (other keys, e.g. ``"overflow"``, are ignored).
        generator: source of the dequantisation noise (torch's global generator when ``None``).

    Returns:
        A scalar tensor (nats per shower; density per MeV^N of the N cells).

    References:
        Krause & Shih (2021), arXiv:2106.05285.
    """
    showers = model.dequantize(batch, generator=generator)
    return -model.log_prob(showers, batch["energy"]).mean()

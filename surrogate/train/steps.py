r"""Step functions: one optimisation step per batch, driven by :func:`surrogate.train.fit`.

A step is a callable object with ``modules`` and ``optimizers`` dictionaries (saved in
checkpoints) whose ``__call__(batch)`` moves the batch to the modules' device, does all the
optimizer work and returns the metrics to log as floats. Noise is drawn from torch's global CPU
generator (then moved to the device), so a run is reproducible from ``torch.manual_seed`` and a
checkpointed RNG state on any device.

- :class:`LikelihoodStep`: one model, one optimizer, a scalar loss ``loss_fn(model, batch)``
  (maximum likelihood, ELBO, NPE ...).
- :class:`CosineLikelihoodStep`: the same with a cosine learning-rate decay.
- :class:`GANStep`: a conditional WGAN-GP (Gulrajani et al. arXiv:1704.00028) for
  calorimeter showers, the two optimizers inside.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from surrogate.losses import gradient_penalty, wgan_critic_loss, wgan_generator_loss
from surrogate.train import distributed

__all__ = ["CosineLikelihoodStep", "GANStep", "LikelihoodStep", "cosine_factor"]


def _device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def cosine_factor(calls: int, total: int, min_factor: float) -> float:
    """Cosine decay factor after ``calls`` of ``total`` steps, from 1 to ``min_factor`` (then
    constant): ``m + (1 - m) (1 + cos(pi t)) / 2`` with ``t = min(calls / total, 1)``
    (Loshchilov & Hutter, arXiv:1608.03983, without restarts)."""
    t = min(calls / total, 1.0)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))


class _ParallelLoss(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``, registering only the trained parameters.

    Wrapped in ``DistributedDataParallel``, it averages the gradients of exactly the optimizer's
    parameters over ranks, whichever methods of ``model`` the loss calls (DDP only sees calls
    of its own ``forward``). The model is kept out of the module tree so that frozen parts
    (e.g. the VAE while its flow prior trains) are not expected to receive gradients.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, params: list[nn.Parameter]):
        super().__init__()
        self.trained = nn.ParameterList(params)
        self._model = (model,)
        self.loss_fn = loss_fn

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.loss_fn(self._model[0], batch)


class LikelihoodStep:
    r"""Minimises a scalar loss of one model: ``loss = loss_fn(model, batch)``.

    Data parallel: when :func:`surrogate.train.distributed.init_distributed` started several
    ranks, the loss is computed through ``DistributedDataParallel`` over the optimizer's
    parameters, so their gradients are averaged over ranks before clipping and the update: with
    equal per-rank batches, ``W`` ranks with batch ``B`` take the same steps as one rank with
    batch ``W B`` (tested). Buffers (e.g. z-scoring statistics) are not synchronised: compute
    them from the same data on every rank.

    Arguments:
        model: the network.
        optimizer: its optimizer.
        loss_fn: ``loss_fn(model, batch) -> Tensor`` (a scalar), e.g. a negative
            log-likelihood; ``batch`` is a dict of tensors already on the model's device.
        max_grad_norm: if given, gradients are clipped to this total 2-norm.

    Attributes:
        modules: ``{"model": model}``.
        optimizers: ``{"model": optimizer}``.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> step = LikelihoodStep(model, torch.optim.SGD(model.parameters(), lr=0.1),
        ...                       lambda m, b: (m(b["x"]) - b["y"]).pow(2).mean())
        >>> sorted(step({"x": torch.ones(4, 2), "y": torch.zeros(4, 1)}))
        ['loss']
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[nn.Module, dict[str, Tensor]], Tensor],
        *,
        max_grad_norm: float | None = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.max_grad_norm = max_grad_norm
        self.modules = {"model": model}
        self.optimizers = {"model": optimizer}
        self._parallel = None
        if distributed.context().distributed:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
            self._parallel = distributed.wrap_ddp(_ParallelLoss(model, loss_fn, params))

    def __call__(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One optimizer step on ``batch``; returns ``{"loss": ...}`` (and ``"grad_norm"`` when clipping).

        Raises:
            ValueError: the loss is not a scalar.
        """
        batch = _to_device(batch, _device(self.model))
        loss = self._parallel(batch) if self._parallel is not None else self.loss_fn(self.model, batch)
        if loss.dim() != 0:
            raise ValueError(f"LikelihoodStep: loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics = {"loss": float(loss.detach())}
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            metrics["grad_norm"] = float(norm)
        self.optimizer.step()
        return metrics


def _scale_learning_rates(optimizer: torch.optim.Optimizer, initial_lrs: list[float], key: str, factor: float) -> None:
    """Sets each parameter group's rate to its base rate times ``factor``. The base rate is kept
    in the group under ``key``, so it is saved with the optimizer's state; a group without it (a
    new optimizer, or a state from an older checkpoint) takes its rate from ``initial_lrs``."""
    for group, initial_lr in zip(optimizer.param_groups, initial_lrs):
        group["lr"] = group.setdefault(key, initial_lr) * factor


class CosineLikelihoodStep(LikelihoodStep):
    """:class:`~surrogate.train.steps.LikelihoodStep` with a per-step cosine learning-rate decay
    from the optimizer's learning rate to ``min_factor`` times it over ``total_steps`` calls.

    The number of calls so far and the base learning rate live in the optimizer's parameter
    groups (``"cosine_calls"``, ``"cosine_base_lr"``), so a checkpoint of the optimizer resumes the
    schedule exactly. An optimizer state without them (a checkpoint of a constant-rate run, whose
    groups ``Optimizer.load_state_dict`` puts in place of this step's) starts the schedule at its
    first call from the rates the optimizer had when this step was built.

    Arguments:
        model, optimizer, loss_fn, max_grad_norm: as for ``LikelihoodStep``.
        total_steps: length of the decay; later calls keep the final learning rate.
        min_factor: final learning rate as a fraction of the initial one.

    References:
        Loshchilov & Hutter (2017), "SGDR: Stochastic Gradient Descent with Warm Restarts",
        arXiv:1608.03983.
    """

    def __init__(self, model, optimizer, loss_fn, *, total_steps: int, min_factor: float = 0.0,
                 max_grad_norm: float | None = None):
        super().__init__(model, optimizer, loss_fn, max_grad_norm=max_grad_norm)
        if total_steps < 1 or not 0 <= min_factor <= 1:
            raise ValueError(f"total_steps must be >= 1 and min_factor in [0, 1], got {total_steps}, {min_factor}")
        self.total_steps, self.min_factor = int(total_steps), float(min_factor)
        self._initial_lrs = [float(group["lr"]) for group in optimizer.param_groups]

    def __call__(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """Sets the learning rate of this call, then one ``LikelihoodStep``; adds ``"lr"`` to the metrics."""
        calls = int(self.optimizer.param_groups[0].get("cosine_calls", 0))
        factor = cosine_factor(calls, self.total_steps, self.min_factor)
        _scale_learning_rates(self.optimizer, self._initial_lrs, "cosine_base_lr", factor)
        for group in self.optimizer.param_groups:
            group["cosine_calls"] = calls + 1
        metrics = super().__call__(batch)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics


class GANStep:
    r"""One WGAN-GP critic update per call and a generator update every ``n_critic`` calls.

    Each call takes one data batch ``{"layer_0": (B, 3, 96), "layer_1": (B, 12, 12),
    "layer_2": (B, 12, 6)`` (MeV) ``, "energy": (B, 1)`` (GeV) ``}`` and

    1. draws :math:`z \sim N(0, I)` (fresh noise), generates :math:`\tilde x = G(z, E)` at the
       batch's real energies, and updates the critic on
       :math:`L_D = \mathbb{E}[D(\tilde x)] - \mathbb{E}[D(x)] + \lambda\,GP`
       (:func:`~surrogate.losses.wgan_critic_loss`, :func:`~surrogate.losses.gradient_penalty`
       on interpolates of real and generated showers at the real energy);
    2. on every ``n_critic``-th call, draws new noise and updates the generator on
       :math:`L_G = -\mathbb{E}[D(G(z, E))]` at the same energies.

    So one call consumes one data batch and ``n_critic`` calls make one WGAN-GP iteration
    (Gulrajani et al. arXiv:1704.00028, Algorithm 1, with each critic iteration on a new batch).
    Adam with ``lr=1e-4, betas=(0.5, 0.9)`` is the paper's choice for both optimizers; for the
    small default CaloGAN networks trained for minutes on a CPU we use ``lr=1e-3`` with the same
    betas: in our runs ``1e-4`` had hardly moved the generator after 1,000 calls, while ``1e-3``
    reached the data's mean response within 1 % in every energy bin after 4,000 calls and
    stayed stable.

    If the critic has ``preprocess(showers, energy)`` and ``score(x, energy)`` methods and its
    ``forward`` accepts ``preprocessed=True`` (as
    :class:`~surrogate.models.calo_gan.CaloGANCritic` does), the penalty is taken with respect
    to the preprocessed input ``x`` (log cells and scaled physics features) instead of the MeV
    cells: a 1-Lipschitz constraint in MeV would leave the critic unconstrained on the
    high-energy cells and the energy sums. Otherwise the critic is called as
    ``critic(showers, energy)`` and the penalty is taken on the showers as given.

    **Data parallel.** Both networks may be wrapped in ``DistributedDataParallel``. The critic
    update scores real, generated and interpolated showers through the wrapper's ``forward``
    (``preprocess`` has no parameters), so the critic's gradients, the penalty's included, are
    averaged over ranks in its ``backward``; the generator update goes through the generator's
    wrapper and scores with the unwrapped critic (whose parameters get no gradient there), and
    the critic update's generated showers come from the unwrapped generator without gradients.
    Every rank then applies the same averaged gradients and the weights stay identical.

    The number of calls so far (which fixes where the generator updates fall) and the last
    generator loss are kept in the critic optimizer's first parameter group
    (``"gan_calls"``, ``"gan_last_generator_loss"``), so they are saved and restored with the
    optimizer's ``state_dict`` and a resumed run keeps the schedule exactly; so are the cosine
    schedule's base rates (``"gan_base_lr"`` in every group). A state without these keys (an
    older checkpoint) counts calls from 0 and takes the rates the optimizers had when this step
    was built.

    Arguments:
        generator: ``generator(z, energy) -> showers`` with a ``latent_dim`` attribute.
        critic: ``critic(showers, energy) -> (B,)`` scores (see above).
        generator_optimizer: optimizer of the generator's parameters.
        critic_optimizer: optimizer of the critic's parameters.
        n_critic: critic updates per generator update.
        gp_weight: :math:`\lambda` of the gradient penalty.
        cosine_calls: if given, both learning rates follow :func:`cosine_factor` over this many
            calls (from the optimizers' initial rates to ``cosine_min_factor`` times them; the
            schedule position is the restored call count, so a resumed run keeps it).
        cosine_min_factor: final fraction of the learning rates.

    Attributes:
        modules: ``{"generator": generator, "critic": critic}``.
        optimizers: ``{"generator": generator_optimizer, "critic": critic_optimizer}``.

    Raises:
        ValueError: ``n_critic`` < 1 or ``gp_weight`` < 0.

    References:
        Gulrajani et al., "Improved Training of Wasserstein GANs", arXiv:1704.00028.
    """

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        generator_optimizer: torch.optim.Optimizer,
        critic_optimizer: torch.optim.Optimizer,
        *,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        cosine_calls: int | None = None,
        cosine_min_factor: float = 0.0,
    ):
        if cosine_calls is not None and (cosine_calls < 1 or not 0 <= cosine_min_factor <= 1):
            raise ValueError(f"GANStep: need cosine_calls >= 1 and cosine_min_factor in [0, 1], got "
                             f"{cosine_calls}, {cosine_min_factor}")
        self.cosine_calls, self.cosine_min_factor = cosine_calls, float(cosine_min_factor)
        if int(n_critic) < 1:
            raise ValueError(f"GANStep: n_critic must be >= 1, got {n_critic}")
        if not gp_weight >= 0:
            raise ValueError(f"GANStep: gp_weight must be >= 0, got {gp_weight}")
        self.generator = generator
        self.critic = critic
        self.generator_optimizer = generator_optimizer
        self.critic_optimizer = critic_optimizer
        self.n_critic = int(n_critic)
        self.gp_weight = float(gp_weight)
        self.modules = {"generator": generator, "critic": critic}
        self.optimizers = {"generator": generator_optimizer, "critic": critic_optimizer}
        self._initial_lrs = {name: [float(g["lr"]) for g in opt.param_groups] for name, opt in self.optimizers.items()}

    @property
    def calls(self) -> int:
        """Number of calls (critic updates) so far, restored with the critic optimizer's state."""
        return int(self.critic_optimizer.param_groups[0].get("gan_calls", 0))

    def _critic_fns(self):
        """(preprocess, score through the wrapper, score of the unwrapped critic)."""
        unwrapped = getattr(self.critic, "module", self.critic)  # DistributedDataParallel
        if hasattr(unwrapped, "preprocess") and hasattr(unwrapped, "score"):
            return (unwrapped.preprocess, lambda x, energy: self.critic(x, energy, preprocessed=True),
                    unwrapped.score)
        return (lambda showers, energy: showers), self.critic, unwrapped

    def _noise(self, batch: int, device: torch.device) -> Tensor:
        latent_dim = getattr(self.generator, "module", self.generator).latent_dim
        return torch.randn(batch, latent_dim).to(device)

    def __call__(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One critic update (and a generator update every ``n_critic`` calls).

        Arguments:
            batch: ``"layer_0"`` (B, 3, 96), ``"layer_1"`` (B, 12, 12), ``"layer_2"``
                (B, 12, 6) in MeV and ``"energy"`` (B, 1) in GeV, float32 tensors.

        Returns:
            ``{"loss_critic": L_D with the penalty, "loss_generator": the last L_G (NaN before
            the first generator update), "gradient_penalty": GP without lambda,
            "wasserstein": E[D(x)] - E[D(G(z))]}``.

        Raises:
            ValueError: ``batch`` lacks ``"energy"`` (the networks check the shapes).
        """
        if "energy" not in batch:
            raise ValueError(f"GANStep: batch has keys {sorted(batch)}, expected the shower layers and 'energy'")
        device = _device(self.generator)
        batch = _to_device(batch, device)
        energy = batch["energy"]
        real = {k: v for k, v in batch.items() if k != "energy"}
        preprocess, score, score_unwrapped = self._critic_fns()
        if self.cosine_calls is not None:
            factor = cosine_factor(self.calls, self.cosine_calls, self.cosine_min_factor)
            for name, optimizer in self.optimizers.items():
                _scale_learning_rates(optimizer, self._initial_lrs[name], "gan_base_lr", factor)

        # Critic update.
        with torch.no_grad():
            fake = getattr(self.generator, "module", self.generator)(self._noise(energy.shape[0], device), energy)
        real_u = preprocess(real, energy)
        fake_u = preprocess(fake, energy)
        real_scores = score(real_u, energy)
        fake_scores = score(fake_u, energy)
        loss_w = wgan_critic_loss(real_scores, fake_scores)
        gp = gradient_penalty(score, real_u, fake_u, energy)
        loss_critic = loss_w + self.gp_weight * gp
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss_critic.backward()
        self.critic_optimizer.step()

        group = self.critic_optimizer.param_groups[0]
        group["gan_calls"] = calls = self.calls + 1
        if calls % self.n_critic == 0:
            # Generator update; only the generator's parameters receive gradients.
            fake_g = self.generator(self._noise(energy.shape[0], device), energy)
            fake_scores_g = score_unwrapped(preprocess(fake_g, energy), energy)
            loss_generator = wgan_generator_loss(fake_scores_g)
            self.generator_optimizer.zero_grad(set_to_none=True)
            loss_generator.backward(inputs=list(self.generator.parameters()))
            self.generator_optimizer.step()
            group["gan_last_generator_loss"] = float(loss_generator.detach())
        return {
            "loss_critic": float(loss_critic.detach()),
            "loss_generator": float(group.get("gan_last_generator_loss", math.nan)),
            "gradient_penalty": float(gp.detach()),
            "wasserstein": float(-loss_w.detach()),
        }

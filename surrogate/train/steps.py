r"""Step functions: one optimisation step per batch, driven by :func:`surrogate.train.fit`.

A step is a callable object that owns the optimizers (and learning-rate schedulers) of its
networks. ``step(batch)`` moves the batch to the networks' device, does all the optimizer work
for one batch and returns the metrics to log as floats; ``step.modules`` names the (plain,
unwrapped) networks whose weights a checkpoint stores; ``step.state_dict()`` /
``step.load_state_dict(state)`` save and restore everything else that a resumed run needs
(optimizer and scheduler states, counters). Noise is drawn from torch's global CPU generator
(then moved to the device), so a run is reproducible from ``torch.manual_seed`` and a
checkpointed RNG state on any device.

- :class:`LikelihoodStep`: one model, one optimizer, a scalar loss ``loss_fn(model, batch)``
  (maximum likelihood, ELBO, NPE ...).
- :class:`GANStep`: a conditional WGAN-GP (Gulrajani et al. arXiv:1704.00028) for
  calorimeter showers, the two optimizers inside.
- :func:`make_lr_scheduler`: the learning-rate schedules the steps take (constant or cosine,
  with an optional linear warm-up).

**Data parallel, in one place.** Callers always pass plain modules, already on this rank's
device. When :func:`surrogate.train.distributed.init_distributed` started several ranks, a
step wraps what it needs in ``DistributedDataParallel`` itself (through
:func:`surrogate.train.distributed.wrap_ddp`), so the gradients are averaged over ranks and the
weights stay identical on every rank.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from surrogate import losses
from surrogate.checks import check_choice, check_float, check_int
from surrogate.train import distributed

__all__ = ["LR_SCHEDULES", "GANStep", "LikelihoodStep", "make_lr_scheduler"]

LR_SCHEDULES = ("constant", "cosine")
"""The learning-rate schedules of :func:`make_lr_scheduler`."""


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str = "constant",
    total_steps: int | None = None,
    warmup_steps: int = 0,
    final_lr_fraction: float = 0.0,
) -> LambdaLR:
    r"""A learning-rate schedule for a step: constant or cosine decay, with optional warm-up.

    The rate of every parameter group is its base rate (the optimizer's ``lr`` when the
    scheduler is built) times a factor of :math:`k`, the number of ``scheduler.step()`` calls
    so far; call ``scheduler.step()`` after ``optimizer.step()`` (the steps of this module do).

    - warm-up, :math:`k < w`: :math:`(k + 1) / (w + 1)`, rising linearly towards 1;
    - ``"constant"``, :math:`k \ge w`: 1;
    - ``"cosine"``, :math:`k \ge w`: :math:`m + (1 - m)\,(1 + \cos \pi t) / 2` with
      :math:`t = \min((k - w) / (T - w), 1)`: from the base rate down to :math:`m` times it at
      :math:`k = T`, then constant (Loshchilov & Hutter, without restarts).

    Here :math:`w` is ``warmup_steps``, :math:`T` is ``total_steps`` (warm-up included) and
    :math:`m` is ``final_lr_fraction``. The state (position, base rates) is saved by the
    scheduler's ``state_dict``; the schedule itself is fixed by these arguments.

    Arguments:
        optimizer: the optimizer whose rates are scheduled.
        schedule: ``"constant"`` or ``"cosine"`` (:data:`LR_SCHEDULES`).
        total_steps: ``"cosine"``: scheduler steps until the rate reaches its final value,
            warm-up included; ignored by ``"constant"``.
        warmup_steps: scheduler steps of linear warm-up (0: none).
        final_lr_fraction: ``"cosine"``: final rate as a fraction of the base rate, in [0, 1].

    Returns:
        A :class:`torch.optim.lr_scheduler.LambdaLR` (it sets the rate of step 0 when built).

    Raises:
        ValueError: an unknown ``schedule``; ``warmup_steps`` < 0; ``final_lr_fraction``
            outside [0, 1]; ``"cosine"`` without ``total_steps`` > ``warmup_steps``.

    References:
        Loshchilov & Hutter (2017), "SGDR: Stochastic Gradient Descent with Warm Restarts",
        arXiv:1608.03983.

    Example:
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> scheduler = make_lr_scheduler(optimizer, schedule="cosine", total_steps=4, warmup_steps=1)
        >>> rates = []
        >>> for _ in range(6):
        ...     rates.append(round(optimizer.param_groups[0]["lr"], 3))
        ...     optimizer.step()
        ...     scheduler.step()
        >>> rates
        [0.5, 1.0, 0.75, 0.25, 0.0, 0.0]
    """
    where = "make_lr_scheduler"
    check_choice("schedule", schedule, LR_SCHEDULES, where=where)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0, where=where)
    m = check_float("final_lr_fraction", final_lr_fraction, minimum=0.0, maximum=1.0, where=where)
    if schedule == "cosine":  # the decay needs a length beyond the warm-up
        total_steps = check_int("total_steps", total_steps, minimum=warmup + 1, where=f"{where} (cosine)")
    decay = total_steps - warmup if schedule == "cosine" else 0

    def factor(k: int) -> float:  # a plain function: the scheduler's state_dict does not store it
        if k < warmup:
            return (k + 1) / (warmup + 1)
        if decay == 0:
            return 1.0
        t = min((k - warmup) / decay, 1.0)
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor)


def _device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _parallel(module: nn.Module, owner: str) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when several ranks run, else ``module``."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        raise ValueError(f"{owner}: pass the plain module, not a DistributedDataParallel wrapper: "
                         "the step wraps it itself when several ranks run")
    return distributed.wrap_ddp(module)


def _check_scheduler(scheduler: LRScheduler | None, optimizer: torch.optim.Optimizer, name: str) -> None:
    if scheduler is not None and scheduler.optimizer is not optimizer:
        raise ValueError(f"{name} belongs to another optimizer: build it on the step's optimizer "
                         "(make_lr_scheduler(optimizer, ...))")


def _state(optimizers: Mapping[str, torch.optim.Optimizer], schedulers: Mapping[str, LRScheduler | None],
           **counters: Any) -> dict[str, Any]:
    """The plain-data state of a step: optimizer and scheduler states by name, and counters."""
    return {
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in schedulers.items() if s is not None},
        **counters,
    }


def _load_state(owner: str, state: Mapping[str, Any], optimizers: Mapping[str, torch.optim.Optimizer],
                schedulers: Mapping[str, LRScheduler | None], counters: tuple[str, ...] = ()) -> None:
    """Restores what :func:`_state` saved; refuses a state of a differently built step."""
    expected = {"optimizers": sorted(optimizers),
                "schedulers": sorted(k for k, s in schedulers.items() if s is not None)}
    found = {key: sorted(state.get(key, {})) for key in expected}
    missing = [c for c in counters if c not in state]
    if found != expected or missing:
        raise ValueError(f"{owner}.load_state_dict: the state has optimizers {found['optimizers']} and schedulers "
                         f"{found['schedulers']}, this step has optimizers {expected['optimizers']} and schedulers "
                         f"{expected['schedulers']}" + (f"; the state lacks counters {missing}" if missing else "")
                         + ": was it saved by a step built differently (another family, another lr schedule)?")
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    for name in expected["schedulers"]:
        schedulers[name].load_state_dict(copy.deepcopy(dict(state["schedulers"][name])))


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

    Each call: forward, backward, optional clipping, ``optimizer.step()``, then
    ``scheduler.step()`` when a scheduler is given.

    Data parallel: when several ranks run, the loss is computed through
    ``DistributedDataParallel`` over the optimizer's parameters, so their gradients are averaged
    over ranks before clipping and the update: with equal per-rank batches, ``W`` ranks with
    batch ``B`` take the same steps as one rank with batch ``W B`` (tested). Buffers (e.g.
    z-scoring statistics) are not synchronised: compute them from the same data on every rank.

    Arguments:
        model: the network, a plain module already on this rank's device.
        optimizer: its optimizer (of the parameters to train, possibly a subset).
        loss_fn: ``loss_fn(model, batch) -> Tensor`` (a scalar), e.g. a negative
            log-likelihood; ``batch`` is a dict of tensors already on the model's device.
        scheduler: optional learning-rate scheduler of ``optimizer`` (see
            :func:`make_lr_scheduler`), stepped once per call.
        max_grad_norm: if given, gradients are clipped to this total 2-norm.

    Attributes:
        modules: ``{"model": model}``.

    Raises:
        ValueError: ``model`` is already wrapped in ``DistributedDataParallel``, or
            ``scheduler`` belongs to another optimizer.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> step = LikelihoodStep(model, optimizer, lambda m, b: (m(b["x"]) - b["y"]).pow(2).mean(),
        ...                       scheduler=make_lr_scheduler(optimizer, schedule="cosine", total_steps=10))
        >>> sorted(step({"x": torch.ones(4, 2), "y": torch.zeros(4, 1)}))
        ['loss', 'lr']
        >>> sorted(step.state_dict())
        ['optimizers', 'schedulers']
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[nn.Module, dict[str, Tensor]], Tensor],
        *,
        scheduler: LRScheduler | None = None,
        max_grad_norm: float | None = None,
    ):
        _check_scheduler(scheduler, optimizer, "LikelihoodStep: scheduler")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = loss_fn
        self.max_grad_norm = max_grad_norm
        self.modules = {"model": model}
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self._loss = _parallel(_ParallelLoss(model, loss_fn, params), "LikelihoodStep")

    def __call__(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One optimizer step on ``batch``.

        Returns:
            ``{"loss": ...}``, with ``"grad_norm"`` (before clipping) when clipping and
            ``"lr"`` (the rate of this step, first parameter group) with a scheduler.

        Raises:
            ValueError: the loss is not a scalar.
        """
        loss = self._loss(_to_device(batch, _device(self.model)))
        if loss.dim() != 0:
            raise ValueError(f"LikelihoodStep: loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics = {"loss": float(loss.detach())}
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            metrics["grad_norm"] = float(norm)
        self.optimizer.step()
        if self.scheduler is not None:
            metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
            self.scheduler.step()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizers": {"model": ...}, "schedulers": {"model": ...}}`` (no scheduler entry
        without a scheduler); plain data that ``torch.load(weights_only=True)`` reads."""
        return _state({"model": self.optimizer}, {"model": self.scheduler})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict`.

        Raises:
            ValueError: the state was saved by a step with or without a scheduler where this
                one differs.
        """
        _load_state("LikelihoodStep", state, {"model": self.optimizer}, {"model": self.scheduler})


class GANStep:
    r"""One WGAN-GP critic update per call and a generator update every ``n_critic`` calls.

    Each call takes one data batch ``{layer: (B, ny, nx)`` (MeV) ``, "energy": (B, 1)`` (GeV)
    ``}`` with the layers of the networks' geometry (CaloGAN: ``"layer_0"`` (B, 3, 96),
    ``"layer_1"`` (B, 12, 12), ``"layer_2"`` (B, 12, 6)) and

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

    **Schedules.** The critic's scheduler steps on every call, the generator's on every
    generator update: a cosine over ``max_steps`` calls for the critic is a cosine over
    ``max_steps // n_critic`` steps for the generator
    (``make_lr_scheduler(generator_optimizer, schedule="cosine", total_steps=max_steps // n_critic)``).

    If the critic has ``preprocess(showers, energy)`` and ``score(x, energy)`` methods and its
    ``forward`` accepts ``preprocessed=True`` (as
    :class:`~surrogate.models.calo_gan.CaloGANCritic` does), the penalty is taken with respect
    to the preprocessed input ``x`` (log cells and scaled physics features) instead of the MeV
    cells: a 1-Lipschitz constraint in MeV would leave the critic unconstrained on the
    high-energy cells and the energy sums. Otherwise the critic is called as
    ``critic(showers, energy)`` and the penalty is taken on the showers as given.

    **Data parallel.** When several ranks run, the step wraps both networks in
    ``DistributedDataParallel`` itself. The critic update scores real, generated and
    interpolated showers through the critic's wrapper (``preprocess`` has no parameters), so
    the critic's gradients, the penalty's included, are averaged over ranks in its
    ``backward``; the generator update goes through the generator's wrapper and scores with the
    plain critic (whose parameters get no gradient there), and the critic update's generated
    showers come from the plain generator without gradients. Every rank then applies the same
    averaged gradients and the weights stay identical.

    Arguments:
        generator: ``generator(z, energy) -> showers`` with a ``latent_dim`` attribute; a plain
            module on this rank's device.
        critic: ``critic(showers, energy) -> (B,)`` scores (see above); a plain module.
        generator_optimizer: optimizer of the generator's parameters.
        critic_optimizer: optimizer of the critic's parameters.
        n_critic: critic updates per generator update.
        gradient_penalty: :math:`\lambda`, the weight of the gradient penalty.
        generator_scheduler: optional scheduler of ``generator_optimizer``, stepped after each
            generator update.
        critic_scheduler: optional scheduler of ``critic_optimizer``, stepped every call.

    Attributes:
        modules: ``{"generator": generator, "critic": critic}``.
        calls: calls (critic updates) so far; it fixes where the generator updates fall.
        last_generator_loss: :math:`L_G` of the last generator update (NaN before the first).

    Raises:
        ValueError: ``n_critic`` < 1, ``gradient_penalty`` < 0, a network already wrapped in
            ``DistributedDataParallel``, or a scheduler of another optimizer.

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
        gradient_penalty: float = 10.0,
        generator_scheduler: LRScheduler | None = None,
        critic_scheduler: LRScheduler | None = None,
    ):
        if int(n_critic) < 1:
            raise ValueError(f"GANStep: n_critic must be >= 1, got {n_critic}")
        if not gradient_penalty >= 0:
            raise ValueError(f"GANStep: gradient_penalty must be >= 0, got {gradient_penalty}")
        _check_scheduler(generator_scheduler, generator_optimizer, "GANStep: generator_scheduler")
        _check_scheduler(critic_scheduler, critic_optimizer, "GANStep: critic_scheduler")
        self.generator, self.critic = generator, critic
        self.generator_optimizer, self.critic_optimizer = generator_optimizer, critic_optimizer
        self.generator_scheduler, self.critic_scheduler = generator_scheduler, critic_scheduler
        self.n_critic = int(n_critic)
        self.gradient_penalty = float(gradient_penalty)
        self.modules = {"generator": generator, "critic": critic}
        self.calls = 0
        self.last_generator_loss = math.nan
        self._generator = _parallel(generator, "GANStep")
        self._critic = _parallel(critic, "GANStep")

    def _critic_fns(self):
        """(preprocess, score through the wrapper, score of the plain critic)."""
        critic, wrapped = self.critic, self._critic
        if hasattr(critic, "preprocess") and hasattr(critic, "score"):
            return critic.preprocess, (lambda x, energy: wrapped(x, energy, preprocessed=True)), critic.score
        return (lambda showers, energy: showers), wrapped, critic

    def _noise(self, batch: int, device: torch.device) -> Tensor:
        return torch.randn(batch, self.generator.latent_dim).to(device)

    def __call__(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One critic update (and a generator update every ``n_critic`` calls).

        Arguments:
            batch: the shower layers ``(B, ny, nx)`` in MeV (CaloGAN: ``"layer_0"`` (B, 3, 96),
                ``"layer_1"`` (B, 12, 12), ``"layer_2"`` (B, 12, 6)) and ``"energy"`` (B, 1)
                in GeV, float32 tensors.

        Returns:
            ``{"loss_critic": L_D with the penalty, "loss_generator": the last L_G (NaN before
            the first generator update), "gradient_penalty": GP without lambda,
            "wasserstein": E[D(x)] - E[D(G(z))]}``, with ``"lr_critic"`` and
            ``"lr_generator"`` (the current rates) for the networks that have a scheduler.

        Raises:
            ValueError: ``batch`` lacks ``"energy"`` (the networks check the shapes).
        """
        if "energy" not in batch:
            raise ValueError(f"GANStep: batch has keys {sorted(batch)}, expected the shower layers and 'energy'")
        device = _device(self.generator)
        batch = _to_device(batch, device)
        energy = batch["energy"]
        real = {k: v for k, v in batch.items() if k != "energy"}
        preprocess, score, score_plain = self._critic_fns()
        metrics = {}
        if self.critic_scheduler is not None:
            metrics["lr_critic"] = float(self.critic_optimizer.param_groups[0]["lr"])
        if self.generator_scheduler is not None:
            metrics["lr_generator"] = float(self.generator_optimizer.param_groups[0]["lr"])

        # Critic update.
        with torch.no_grad():
            fake = self.generator(self._noise(energy.shape[0], device), energy)
        real_u = preprocess(real, energy)
        fake_u = preprocess(fake, energy)
        loss_w = losses.wgan_critic_loss(score(real_u, energy), score(fake_u, energy))
        gp = losses.gradient_penalty(score, real_u, fake_u, energy)
        loss_critic = loss_w + self.gradient_penalty * gp
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss_critic.backward()
        self.critic_optimizer.step()
        if self.critic_scheduler is not None:
            self.critic_scheduler.step()

        self.calls += 1
        if self.calls % self.n_critic == 0:
            # Generator update; only the generator's parameters receive gradients.
            fake_g = self._generator(self._noise(energy.shape[0], device), energy)
            loss_generator = losses.wgan_generator_loss(score_plain(preprocess(fake_g, energy), energy))
            self.generator_optimizer.zero_grad(set_to_none=True)
            loss_generator.backward(inputs=list(self.generator.parameters()))
            self.generator_optimizer.step()
            if self.generator_scheduler is not None:
                self.generator_scheduler.step()
            self.last_generator_loss = float(loss_generator.detach())
        return {
            "loss_critic": float(loss_critic.detach()),
            "loss_generator": self.last_generator_loss,
            "gradient_penalty": float(gp.detach()),
            "wasserstein": float(-loss_w.detach()),
            **metrics,
        }

    def _parts(self) -> tuple[dict[str, torch.optim.Optimizer], dict[str, LRScheduler | None]]:
        return ({"generator": self.generator_optimizer, "critic": self.critic_optimizer},
                {"generator": self.generator_scheduler, "critic": self.critic_scheduler})

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizers": {"generator", "critic"}, "schedulers": {...those given},
        "calls": int, "last_generator_loss": float}``; plain data that
        ``torch.load(weights_only=True)`` reads."""
        return _state(*self._parts(), calls=self.calls, last_generator_loss=self.last_generator_loss)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict` (optimizers, schedulers and the call counter, so a
        resumed run keeps the generator updates on the same calls).

        Raises:
            ValueError: the state lacks the counters or was saved with other schedulers.
        """
        _load_state("GANStep", state, *self._parts(), counters=("calls", "last_generator_loss"))
        self.calls = int(state["calls"])
        self.last_generator_loss = float(state["last_generator_loss"])

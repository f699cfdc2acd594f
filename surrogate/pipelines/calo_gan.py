"""The CaloGAN family: simulate -> train -> generate -> validate.

The pipeline file (``pipelines/calo_gan.toml``) is read into :class:`CaloGANConfig` by
:func:`surrogate.config.load_pipeline`; each stage is a public function, so a user can run any
one of them from Python; the CLI (``surrogate simulate|train|generate|validate|run``) only
parses arguments and dispatches through :data:`FAMILY`.

Sections of the file (every key optional unless marked)::

    [run]       pipeline = "calo_gan", output_dir, seed, device, threads
    [data]      train_file | train_recipe (one of them), reference_file | reference_recipe,
                geometry (a CaloChallenge binning XML relative to the file; absent: CaloGAN)
    [model.generator]   CaloGANGenerator(...) keyword arguments (not geometry: [data]'s)
    [model.critic]      CaloGANCritic(...) keyword arguments (not geometry)
    [train]     the shared knobs (surrogate.config.TrainConfig) and critic_learning_rate,
                beta1, beta2, n_critic, gradient_penalty, block_size
    [generate]  n_events, energy_min_gev, energy_max_gev, batch_size
    [validate]  energy_bins_gev, threshold_mev

In a CaloChallenge geometry the generator and critic take their layer streams from the binning
(:mod:`surrogate.models.calo_gan`), the showers are generated at the reference file's incident
energies into a CaloChallenge-layout file and validated with the challenge's features
(:func:`~surrogate.pipelines.showers.run_shower_pipeline`). The checkpoint then stores the
geometry (``config["geometry"]``, :func:`~surrogate.pipelines.showers.geometry_to_config`); a
checkpoint without one is CaloGAN's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from surrogate.config import PipelineConfig, TrainConfig, check_kwargs, setting
from surrogate.geometry import CALOGAN, CaloGeometry
from surrogate.models.calo_gan import CaloGANCritic, CaloGANGenerator
from surrogate.pipelines import Family
from surrogate.pipelines.shower_generation import ShowerSampler, generate_stage
from surrogate.pipelines.showers import (
    CaloDataConfig,
    GenerateConfig,
    ValidateConfig,
    data_files,
    data_geometry,
    geometry_from_config,
    geometry_to_config,
    run_shower_pipeline,
    shower_loader,
)
from surrogate.train import distributed
from surrogate.train.checkpoint import find_checkpoint, load_checkpoint
from surrogate.train.loop import FitResult, fit
from surrogate.train.steps import GANStep, make_lr_scheduler

__all__ = [
    "FAMILY",
    "CaloGANConfig",
    "CaloGANModelConfig",
    "GANTrainConfig",
    "build_calo_gan",
    "gan_sampler",
    "generate",
    "load_generator",
    "run",
    "train",
]


# --------------------------------------------------------------------------------------------
# The pipeline file


@dataclass(frozen=True)
class CaloGANModelConfig:
    """``[model]``: ``[model.generator]`` and ``[model.critic]`` hold the keyword arguments of
    :class:`~surrogate.models.calo_gan.CaloGANGenerator` and
    :class:`~surrogate.models.calo_gan.CaloGANCritic` (names and types checked)."""

    generator: Mapping[str, Any] = setting(default_factory=dict, kwargs_of="surrogate.models.calo_gan:CaloGANGenerator",
                                           exclude=("geometry",))
    critic: Mapping[str, Any] = setting(default_factory=dict, kwargs_of="surrogate.models.calo_gan:CaloGANCritic",
                                        exclude=("geometry",))


@dataclass(frozen=True)
class GANTrainConfig(TrainConfig):
    """``[train]`` of the GAN (see :class:`~surrogate.train.steps.GANStep`): the shared knobs,
    where ``learning_rate`` is the generator's, plus

    Attributes:
        critic_learning_rate: the critic's Adam rate (``None``: ``learning_rate``).
        beta1, beta2: Adam's betas of both optimizers (WGAN-GP: 0.5, 0.9).
        n_critic: critic updates per generator update; one step is one critic update.
        gradient_penalty: weight lambda of the WGAN-GP gradient penalty.
        block_size: events per contiguous HDF5 read (:class:`~surrogate.data.shower_dataset.CaloShowerDataset`).
    """

    learning_rate: float = setting(1e-4, gt=0)
    final_lr_fraction: float = setting(0.1, ge=0, le=1)
    log_every: int = setting(25, ge=1)
    critic_learning_rate: float | None = setting(None, gt=0)
    beta1: float = setting(0.5, ge=0, le=1)
    beta2: float = setting(0.9, ge=0, le=1)
    n_critic: int = setting(5, ge=1)
    gradient_penalty: float = setting(10.0, ge=0)
    block_size: int = setting(1024, ge=1)


@dataclass(frozen=True)
class CaloGANConfig(PipelineConfig):
    """A whole CaloGAN pipeline file (sections in the module documentation)."""

    data: CaloDataConfig
    model: CaloGANModelConfig = field(default_factory=CaloGANModelConfig)
    train: GANTrainConfig = field(default_factory=GANTrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    RENAMED = {"train.generator_lr": "train.learning_rate", "train.critic_lr": "train.critic_learning_rate"}


# --------------------------------------------------------------------------------------------
# Stages


def build_calo_gan(model: CaloGANModelConfig,
                   geometry: CaloGeometry = CALOGAN) -> tuple[CaloGANGenerator, CaloGANCritic]:
    """The generator and critic of ``geometry`` built from their constructor keyword arguments."""
    return CaloGANGenerator(geometry, **model.generator), CaloGANCritic(geometry, **model.critic)


def train(cfg: CaloGANConfig, *, resume: bool | str = True, progress: bool = True) -> FitResult:
    """Trains the CaloGAN generator and critic with WGAN-GP (``surrogate train``).

    Checkpoints go to ``cfg.run.output_dir/train``; with ``resume`` a killed run continues
    from its last checkpoint and ends with the same weights as an uninterrupted run. Across
    ranks each rank streams its own shard of every epoch's block order, ``[train] batch_size``
    is the batch of each rank, and :class:`~surrogate.train.steps.GANStep` averages gradients.
    With ``lr_schedule = "cosine"`` the critic's rate decays over the run's steps and the
    generator's over its updates (steps / ``n_critic``).

    Arguments:
        cfg: the pipeline configuration.
        resume: continue from the latest checkpoint if there is one (``True``; ``"anyway"`` also
            when the configuration changed; ``False`` starts afresh): see :func:`surrogate.train.fit`.
        progress: show a progress bar.

    Returns:
        The :class:`~surrogate.train.loop.FitResult` (its ``checkpoint`` is the final one).
    """
    train_file, _ = data_files(cfg, progress=progress)
    ctx = distributed.context()
    device = distributed.resolve_device(cfg.run.device)
    t = cfg.train
    geometry = data_geometry(cfg.data)
    loader = shower_loader(train_file, t, seed=cfg.run.seed, device=device, geometry=geometry)
    total = t.total_steps(len(loader) if t.max_epochs is not None else None)
    torch.manual_seed(cfg.run.seed)  # identical initial weights for the same seed, on every rank
    generator, critic = (m.to(device) for m in build_calo_gan(cfg.model, geometry or CALOGAN))
    betas = (t.beta1, t.beta2)
    g_opt = torch.optim.Adam(generator.parameters(), lr=t.learning_rate, betas=betas)
    d_opt = torch.optim.Adam(critic.parameters(), lr=t.critic_learning_rate or t.learning_rate, betas=betas)
    schedule = {"schedule": t.lr_schedule, "final_lr_fraction": t.final_lr_fraction}
    step = GANStep(
        generator, critic, g_opt, d_opt, n_critic=t.n_critic, gradient_penalty=t.gradient_penalty,
        generator_scheduler=make_lr_scheduler(g_opt, total_steps=max(1, total // t.n_critic),
                                              warmup_steps=t.warmup_steps // t.n_critic, **schedule),
        critic_scheduler=make_lr_scheduler(d_opt, total_steps=total, warmup_steps=t.warmup_steps, **schedule),
    )
    config = cfg.to_dict()
    if geometry is not None:  # a checkpoint without a geometry is CaloGAN's (runs from before geometries)
        config["geometry"] = geometry_to_config(geometry)
    if ctx.is_main:
        where = "" if geometry is None else f" in {geometry.describe()}"
        print(f"[train] {total} steps{where} on {train_file} -> {cfg.run.output_dir / 'train'} "
              f"({ctx.world_size} rank(s))")
    return fit(step, loader, max_steps=total, out_dir=cfg.run.output_dir / "train",
               checkpoint_every=t.checkpoint_every, config=config, resume=resume,
               seed=cfg.run.seed, progress=progress, log_every=t.log_every)


def load_generator(checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu") -> CaloGANGenerator:
    """Rebuilds the trained generator from a checkpoint (its stored configuration, geometry and weights).

    Arguments:
        checkpoint: a checkpoint file, or a run folder whose latest checkpoint is used.
        device: where the generator goes.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the checkpoint is not a CaloGAN one, or its geometry is unknown or malformed.
    """
    path = find_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    if "generator" not in ckpt["modules"]:
        raise ValueError(f"checkpoint {path} holds modules {sorted(ckpt['modules'])}, not a CaloGAN generator")
    config = ckpt["config"]
    geometry = geometry_from_config(config.get("geometry", CALOGAN.name), where=f"checkpoint {path}")
    kwargs = check_kwargs(CaloGANGenerator, config.get("model", {}).get("generator", {}),
                          f"{path} config [model.generator]", exclude=("geometry",))
    generator = CaloGANGenerator(geometry, **kwargs)
    generator.load_state_dict(ckpt["modules"]["generator"])
    return generator.to(device).eval()


def gan_sampler(generator: CaloGANGenerator) -> ShowerSampler:
    """The generator as a :data:`~surrogate.pipelines.shower_generation.ShowerSampler`: latent noise
    ``z ~ N(0, I)`` of shape ``(B, latent_dim)`` from the given CPU generator, showers in MeV."""
    device = next(generator.parameters()).device

    def sample(energy: torch.Tensor, rng: torch.Generator) -> Mapping[str, torch.Tensor]:
        z = torch.randn(energy.shape[0], generator.latent_dim, generator=rng)
        return generator(z.to(device), energy.to(device))

    return sample


generate = generate_stage(load_generator, gan_sampler)
"""``generate(checkpoint, output, n_events, *, energy_range_gev, batch_size, seed, device, progress)``:
showers from a trained run into a CaloGAN-layout file (:func:`~surrogate.pipelines.shower_generation.generate_stage`)."""


def run(cfg: CaloGANConfig, *, resume: bool | str = True, progress: bool = True) -> Path:
    """simulate (or read) -> train (resuming) -> generate -> validate
    (:func:`~surrogate.pipelines.showers.run_shower_pipeline`). Returns the report path."""
    return run_shower_pipeline(cfg, train=train, generate=generate, resume=resume, progress=progress)


FAMILY = Family(name="calo_gan", config=CaloGANConfig, train=train, run=run, generate=generate)

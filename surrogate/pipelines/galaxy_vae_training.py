"""The two training stages of the ``galaxy_vae`` family, driven by :func:`surrogate.train.fit`.

- :func:`model_arguments`: the :class:`~surrogate.models.galaxy_vae.GalaxyVAE` constructor
  arguments of a pipeline file's ``[model]`` plus those computed from the training set (stamp
  size, input and flux scales, the z-scoring of the prior's context).
- :func:`train_vae`: stage 1, encoder and decoder on the negative ELBO
  (:func:`surrogate.losses.galaxy_vae_loss`) with
  :class:`~surrogate.train.steps.LikelihoodStep` and a learning-rate schedule
  (:func:`~surrogate.train.steps.make_lr_scheduler`).
- :func:`train_prior`: stage 2, the conditional flow prior on the encoded training latents
  (:func:`surrogate.losses.flow_prior_loss`), the VAE frozen.

:func:`surrogate.pipelines.galaxy_vae.train` runs both from a pipeline file and writes
``model.pt``; these functions take the model and the stage's settings explicitly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from surrogate.models.galaxy_vae import GalaxyVAE
from surrogate.train import FitResult

if TYPE_CHECKING:
    from surrogate.pipelines.galaxy_vae import GalaxyPriorConfig, GalaxyTrainConfig

__all__ = ["GalaxyTrainResult", "flux_zero_point", "model_arguments", "train_prior", "train_vae"]


@dataclass
class GalaxyTrainResult(FitResult):
    """What :func:`surrogate.pipelines.galaxy_vae.train` did: a
    :class:`~surrogate.train.FitResult` of the whole training (``steps`` of both stages, the VAE
    stage's ``history``, ``checkpoint`` = ``model.pt``) and the result of each stage.

    Attributes:
        vae, prior: the :class:`~surrogate.train.FitResult` of each stage.
        model_arguments: the GalaxyVAE constructor arguments (data-derived ones included).
        seconds: wall time of each stage, ``{"train_vae_s", "train_prior_s"}``.
    """

    vae: FitResult | None = None
    prior: FitResult | None = None
    model_arguments: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def model_arguments(model: Mapping[str, Any], stamps: Mapping[str, np.ndarray], stamp_size: int) -> dict[str, Any]:
    """GalaxyVAE arguments: ``model`` plus the stamp size and the training set's normalisations.

    Arguments:
        model: constructor arguments from the pipeline file (``[model]``).
        stamps: the training set's ``"noise_variance"`` ``(N,)`` counts², ``"profile"``
            ``(N, S, S)`` counts per pixel, ``"magnitude"`` ``(N,)`` AB mag and
            ``"half_light_radius"`` ``(N,)`` arcsec.
        stamp_size: side ``S`` of the stamps, pixels.

    Returns:
        Plain data (lists, floats) for a checkpoint: ``input_scale`` is the median noise
        standard deviation, ``flux_scale`` the median total flux, ``context_loc`` /
        ``context_scale`` the mean and standard deviation of the magnitude and of
        ``log(half_light_radius)``.
    """
    log_r = np.log(stamps["half_light_radius"].astype(np.float64))
    mag = stamps["magnitude"].astype(np.float64)
    return {**model, "channels": list(model["channels"]), "stamp_size": stamp_size,
            "input_scale": float(np.median(np.sqrt(stamps["noise_variance"]))),
            "flux_scale": float(np.median(stamps["profile"].sum(axis=(1, 2)))),
            "context_loc": [float(mag.mean()), float(log_r.mean())],
            "context_scale": [float(mag.std() + 1e-6), float(log_r.std() + 1e-6)]}


def flux_zero_point(stamps: Mapping[str, np.ndarray]) -> float:
    r"""The training set's magnitude zero point: the median of ``magnitude + 2.5 log10(flux)``.

    With it an image in the training set's flux units gives the magnitude the model's prior is
    conditioned on, :math:`m = ZP - 2.5 \log_{10} F` (Pogson's relation; ``F`` the total flux
    in counts). The training magnitudes are the catalogue's F814W ``MAG_AUTO`` and the fluxes
    the PSF-free profiles' sums over the stamp (counts of a 1 s HST/ACS exposure,
    :mod:`surrogate.simulators.galaxies`), so ``ZP`` also absorbs the typical difference between
    ``MAG_AUTO`` and the total flux (about 26.0 mag for the COSMOS example catalogue).

    Arguments:
        stamps: ``"magnitude"`` ``(N,)`` AB mag and ``"profile"`` ``(N, S, S)`` counts per pixel.

    Returns:
        ``ZP`` in AB mag (magnitude of 1 count).

    Raises:
        ValueError: no stamp with a positive flux.
    """
    flux = stamps["profile"].reshape(len(stamps["profile"]), -1).astype(np.float64).sum(axis=1)
    good = flux > 0
    if not good.any():
        raise ValueError("flux_zero_point: no training stamp has a positive flux")
    return float(np.median(stamps["magnitude"][good].astype(np.float64) + 2.5 * np.log10(flux[good])))


def train_vae(model: GalaxyVAE, train_file: Path, settings: GalaxyTrainConfig, *, out_dir: Path, seed: int,
              config: Mapping[str, Any], resume: bool | str, progress: bool) -> FitResult:
    """Stage 1: trains the encoder and decoder of ``model`` on the stamps of ``train_file``.

    Across ranks each rank takes its share of every epoch's permutation
    (``DistributedSampler``; ``batch_size`` is per rank).

    Arguments:
        model: the VAE, on this rank's device.
        train_file: galaxy stamps (:mod:`surrogate.data.galaxy` layout).
        settings: ``[train]`` (batch size, rate and schedule, length, clipping, ``beta``,
            logging and checkpoints, loader workers).
        out_dir: the stage's checkpoints and ``log.csv``.
        seed: data order and training noise.
        config: plain data stored in the checkpoints.
        resume: continue from the latest checkpoint in ``out_dir`` (``True``, ``False`` or ``"anyway"``,
            as :func:`surrogate.train.fit`).
        progress: show a progress bar.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    from surrogate.data.galaxy import GalaxyStampDataset
    from surrogate.losses import galaxy_vae_loss
    from surrogate.train import distributed, fit
    from surrogate.train.steps import LikelihoodStep, make_lr_scheduler

    t = settings
    ctx = distributed.context()
    dataset = GalaxyStampDataset(train_file, keys=("observed", "psf", "noise_variance"), in_memory=True)
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, drop_last=True, num_workers=t.num_workers)
    total = t.total_steps(len(loader))
    optimizer = torch.optim.Adam(model.vae_parameters(), lr=t.learning_rate)
    scheduler = make_lr_scheduler(optimizer, schedule=t.lr_schedule, total_steps=total, warmup_steps=t.warmup_steps,
                                  final_lr_fraction=t.final_lr_fraction)
    step = LikelihoodStep(model, optimizer, functools.partial(galaxy_vae_loss, beta=t.beta), scheduler=scheduler,
                          max_grad_norm=t.max_grad_norm)
    return fit(step, loader, max_steps=total, out_dir=out_dir, checkpoint_every=t.checkpoint_every, config=config,
               resume=resume, seed=seed, progress=progress, log_every=t.log_every)


def train_prior(model: GalaxyVAE, train_file: Path, settings: GalaxyPriorConfig, *, out_dir: Path, seed: int,
                config: Mapping[str, Any], resume: bool | str, progress: bool) -> FitResult:
    """Stage 2: trains the flow prior of ``model`` on the encoded latents of ``train_file``.

    The latents (means or one draw of ``q(z|x)``, drawn with seed ``seed + 3``) are the same on
    every rank; each rank then takes its share of every epoch (data order from ``seed + 1``).

    Arguments:
        model: the VAE after stage 1, on this rank's device.
        train_file: the training stamps.
        settings: ``[prior]`` (batch size, steps, rate, which latents).
        out_dir, seed, config, resume, progress: as in :func:`train_vae`.
    """
    from torch.utils.data import DataLoader, DistributedSampler, StackDataset

    from surrogate.data.galaxy import GalaxyStampDataset
    from surrogate.losses import flow_prior_loss
    from surrogate.models.galaxy_vae import encode_dataset
    from surrogate.train import distributed, fit
    from surrogate.train.steps import LikelihoodStep

    p = settings
    ctx = distributed.context()
    stamps = GalaxyStampDataset(train_file, keys=("observed", "magnitude", "half_light_radius"), in_memory=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        latents = StackDataset(**encode_dataset(model, DataLoader(stamps, batch_size=512),
                                                sample=p.latents == "sample"))
    sampler = DistributedSampler(latents, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed + 1,
                                 drop_last=True)
    loader = DataLoader(latents, batch_size=min(p.batch_size, len(latents) // ctx.world_size), sampler=sampler,
                        drop_last=True)
    step = LikelihoodStep(model, torch.optim.Adam(model.prior_parameters(), lr=p.learning_rate), flow_prior_loss)
    return fit(step, loader, max_steps=p.max_steps, out_dir=out_dir, checkpoint_every=p.max_steps, config=config,
               resume=resume, seed=seed + 1, progress=progress, log_every=max(1, p.max_steps // 20))

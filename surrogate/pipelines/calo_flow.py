"""The CaloFlow family: simulate -> train -> generate -> validate, with an exact likelihood.

A :class:`~surrogate.models.calo_flow.CaloFlow` (two conditional spline flows, Krause & Shih,
arXiv:2106.05285) is trained by maximum likelihood of dequantised showers
(:func:`~surrogate.losses.calo_flow_loss` through :class:`~surrogate.train.steps.LikelihoodStep`),
then generates showers into a CaloGAN-layout file that is validated like the CaloGAN's, or, in a
CaloChallenge geometry (``[data] geometry``), into a CaloChallenge-layout file at the reference
file's incident energies, validated with the challenge's features. The data,
generation and validation sections are the shower families' shared ones
(:mod:`surrogate.pipelines.showers`, as in :mod:`surrogate.pipelines.calo_gan`); the pipeline
file (``pipelines/calo_flow.toml``) is read into :class:`CaloFlowConfig` by
:func:`surrogate.config.load_pipeline`; the CLI dispatches through :data:`FAMILY`.

Sections of the file (every key optional unless marked)::

    [run]       pipeline = "calo_flow", output_dir, seed, device, threads
    [data]      train_file | train_recipe (one of them), reference_file | reference_recipe,
                geometry (a CaloChallenge binning XML relative to the file; absent: CaloGAN)
    [model]     CaloFlow(...) keyword arguments (not geometry: [data]'s);
                MODEL_DEFAULTS for those left out, then CaloFlow's defaults
    [train]     the shared knobs (surrogate.config.TrainConfig; by default a cosine decay and
                gradient clipping) and block_size
    [generate]  n_events, energy_min_gev, energy_max_gev, batch_size
    [validate]  energy_bins_gev, threshold_mev (also the flow's threshold_mev unless [model] sets it)

A checkpoint stores the flow's constructor arguments as used (``config["model"]``, the run's seed
included) and its geometry (``config["geometry"]``): the name ``"CaloGAN"``, or for a
CaloChallenge geometry its parsed binning (:func:`geometry_to_config`: name and each layer's
radial edges in mm and angular bins), so :func:`load_flow` rebuilds the model from the
checkpoint alone, without the binning file.

Example (a user's own loop from the same pieces)::

    flow = CaloFlow(mixing="lu")
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    step = LikelihoodStep(flow, optimizer, calo_flow_loss, max_grad_norm=1000.0)
    for batch in loader:                        # CaloShowerDataset batches
        step(batch)
    showers = flow.sample(torch.full((8, 1), 50.0))   # {layer: (8, *shape)} MeV
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from surrogate.config import PipelineConfig, RunConfig, TrainConfig, check_kwargs, setting
from surrogate.geometry import CALOGAN
from surrogate.losses import calo_flow_loss
from surrogate.models.calo_flow import CaloFlow
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
from surrogate.train.steps import LikelihoodStep, make_lr_scheduler

__all__ = [
    "FAMILY",
    "MODEL_DEFAULTS",
    "CaloFlowConfig",
    "FlowTrainConfig",
    "flow_sampler",
    "generate",
    "load_flow",
    "run",
    "train",
]

MODEL_DEFAULTS: Mapping[str, Any] = {"mixing": "lu"}
"""``[model]`` arguments a file leaves out (the others take CaloFlow's defaults). With CaloFlow's
fixed permutations between the cell flow's blocks, 1,800 steps of the main job left 33 of the
504 latent dimensions far from N(0, 1) (cell logits near -20 the splines had not moved yet) and
samples put all of layer 1's energy into its first row; trainable LU-linear layers (with a bias)
fix that within 300 steps, for 20 % more parameters and about 15 % more time per step."""


# --------------------------------------------------------------------------------------------
# The pipeline file


@dataclass(frozen=True)
class FlowTrainConfig(TrainConfig):
    """``[train]`` of the flow (:class:`~surrogate.train.steps.LikelihoodStep` on
    :func:`~surrogate.losses.calo_flow_loss`, Adam): the shared knobs of
    :class:`~surrogate.config.TrainConfig` with defaults for this model, plus ``block_size``.

    The negative log-likelihood starts at tens of thousands of nats per shower and the first
    gradients have total norms of 1e4-1e5 (main job: 2e4 on average over the first 50 steps,
    then about 1.5e3 until the rate decays, 7e2 at the end): by default they are clipped to
    ``max_grad_norm`` = 1000 and the rate warms up over 50 steps, so that the first steps do not
    dominate Adam's moment estimates. No ``patience``: there is no validation set during training.

    Attributes:
        block_size: events per contiguous HDF5 read (:class:`~surrogate.data.shower_dataset.CaloShowerDataset`).
    """

    batch_size: int = setting(128, ge=1)
    learning_rate: float = setting(1e-3, gt=0)
    max_steps: int | None = setting(2000, ge=1)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = setting(50, ge=0)
    final_lr_fraction: float = setting(0.02, ge=0, le=1)
    max_grad_norm: float | None = setting(1000.0, gt=0)
    block_size: int = setting(1024, ge=1)

    def __post_init__(self):
        super().__post_init__()
        if self.patience is not None:
            raise ValueError("patience: the flow trains without a validation set (leave patience out)")


@dataclass(frozen=True)
class FlowValidateConfig(ValidateConfig):
    """``[validate]`` of the flow: the shower families' section plus

    Attributes:
        energy_calibration_showers: held-out showers whose incident energy is inferred through
            the flow's likelihood and compared with the E_tot calibration and NPE
            (:func:`~surrogate.pipelines.energy_inference.compare_energy_calibration`; a few
            minutes for 1000 on one CPU core); 0 skips it.
    """

    energy_calibration_showers: int = setting(1000, ge=0)


@dataclass(frozen=True)
class CaloFlowConfig(PipelineConfig):
    """A whole CaloFlow pipeline file (sections in the module documentation)."""

    data: CaloDataConfig
    model: Mapping[str, Any] = setting(defaults=MODEL_DEFAULTS, kwargs_of="surrogate.models.calo_flow:CaloFlow",
                                       exclude=("geometry",))
    train: FlowTrainConfig = field(default_factory=FlowTrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    validate: FlowValidateConfig = field(default_factory=FlowValidateConfig)

    def __post_init__(self):
        if self.data.geometry is not None and self.validate.energy_calibration_showers > 0:
            raise ValueError(f"[validate] energy_calibration_showers = {self.validate.energy_calibration_showers}: "
                             "the energy calibration reads CaloGAN-layout files; set 0 with [data] geometry")
        kwargs = _flow_kwargs(self.model, self.run, self.validate)
        noise = kwargs.get("noise_mev", inspect.signature(CaloFlow).parameters["noise_mev"].default)
        if "threshold_mev" in kwargs and not 0 < noise <= kwargs["threshold_mev"]:
            source = "[model] threshold_mev" if "threshold_mev" in self.model else "[validate] threshold_mev"
            raise ValueError(f"the flow's noise_mev ({noise} MeV) must be > 0 and <= its threshold_mev "
                             f"({kwargs['threshold_mev']} MeV, from {source})")


# --------------------------------------------------------------------------------------------
# Stages


def _flow_kwargs(model: Mapping[str, Any], run: RunConfig, validate: ValidateConfig) -> dict[str, Any]:
    """The flow's keyword arguments: ``[model]`` (over :data:`MODEL_DEFAULTS`), its ``seed``
    defaulting to ``[run] seed`` and its ``threshold_mev`` to ``[validate] threshold_mev`` (when
    that is > 0)."""
    defaults = {"seed": run.seed}
    if validate.threshold_mev > 0:
        defaults["threshold_mev"] = validate.threshold_mev
    return {**defaults, **model}


def train(cfg: CaloFlowConfig, *, resume: bool | str = True, progress: bool = True) -> FitResult:
    """Trains the flow by maximum likelihood (``surrogate train``).

    Checkpoints go to ``cfg.run.output_dir/train``; with ``resume`` a killed run continues from
    its last checkpoint (weights, optimizer, schedule, data position and the dequantisation
    noise's RNG state). Across ranks each rank streams its own shard of every epoch,
    ``[train] batch_size`` is the batch of each rank, and the step averages the gradients.

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
    kwargs = _flow_kwargs(cfg.model, cfg.run, cfg.validate)
    geometry = CALOGAN if geometry is None else geometry
    flow = CaloFlow(geometry, **kwargs).to(device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=t.learning_rate)
    scheduler = make_lr_scheduler(optimizer, schedule=t.lr_schedule, total_steps=total, warmup_steps=t.warmup_steps,
                                  final_lr_fraction=t.final_lr_fraction)
    step = LikelihoodStep(flow, optimizer, calo_flow_loss, scheduler=scheduler, max_grad_norm=t.max_grad_norm)
    config = {**cfg.to_dict(), "model": kwargs, "geometry": geometry_to_config(geometry)}
    if ctx.is_main:
        parameters = sum(p.numel() for p in flow.parameters())
        where = "" if geometry is CALOGAN else f", {geometry.describe()}"
        print(f"[train] CaloFlow ({parameters / 1e6:.2f}M parameters{where}), {total} steps on {train_file} -> "
              f"{cfg.run.output_dir / 'train'} ({ctx.world_size} rank(s))")
    return fit(step, loader, max_steps=total, out_dir=cfg.run.output_dir / "train",
               checkpoint_every=t.checkpoint_every, config=config, resume=resume,
               seed=cfg.run.seed, progress=progress, log_every=t.log_every)


def load_flow(checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu") -> CaloFlow:
    """Rebuilds the trained flow from a checkpoint (its stored arguments, geometry and weights).

    Arguments:
        checkpoint: a checkpoint file, or a run folder whose latest checkpoint is used.
        device: where the flow goes.

    Returns:
        The flow in evaluation mode.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the checkpoint is not a CaloFlow one, or its geometry is unknown or malformed.
    """
    path = find_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    config = ckpt.get("config") or {}
    if "model" not in ckpt["modules"] or config.get("run", {}).get("pipeline") != "calo_flow":
        raise ValueError(f"checkpoint {path} was not written by the calo_flow pipeline "
                         f"(pipeline {config.get('run', {}).get('pipeline')!r}, modules {sorted(ckpt['modules'])})")
    geometry = geometry_from_config(config.get("geometry", CALOGAN.name), where=f"checkpoint {path}")
    kwargs = check_kwargs(CaloFlow, config.get("model", {}), f"{path} config [model]", exclude=("geometry",))
    flow = CaloFlow(geometry, **kwargs)
    flow.load_state_dict(ckpt["modules"]["model"])
    return flow.to(device).eval()


def flow_sampler(model: CaloFlow) -> ShowerSampler:
    """The flow as a :data:`~surrogate.pipelines.shower_generation.ShowerSampler`: base noise from the
    given CPU generator, showers in MeV with cells below ``model.threshold_mev`` set to 0."""
    device = next(model.parameters()).device

    def sample(energy: torch.Tensor, rng: torch.Generator) -> Mapping[str, torch.Tensor]:
        return model.sample(energy.to(device), generator=rng)

    return sample


generate = generate_stage(load_flow, flow_sampler)
"""``generate(checkpoint, output, n_events, *, energy_range_gev, batch_size, seed, device, progress)``:
showers from a trained run into a CaloGAN-layout file, or (``layout="calochallenge"``, ``geometry``,
``energies_from``) a CaloChallenge-layout one (:func:`~surrogate.pipelines.shower_generation.generate_stage`)."""


def run(cfg: CaloFlowConfig, *, resume: bool | str = True, progress: bool = True) -> Path:
    """simulate (or read) -> train (resuming) -> generate -> validate
    (:func:`~surrogate.pipelines.showers.run_shower_pipeline`), then, unless
    ``[validate] energy_calibration_showers = 0``, incident-energy inference through the flow's
    likelihood on held-out showers against the E_tot calibration and NPE: the section
    ``"energy_calibration"`` of ``report.json`` and ``energy_calibration.png`` beside it.

    Returns:
        The path of ``report.json``.
    """
    report = run_shower_pipeline(cfg, train=train, generate=generate, progress=progress)
    n = cfg.validate.energy_calibration_showers
    with distributed.main_rank_first():
        if n > 0 and distributed.context().is_main:
            from surrogate.metrics.report import write_report
            from surrogate.pipelines.energy_inference import compare_energy_calibration

            print(f"[validate] incident-energy inference on {n} held-out showers")
            found = compare_energy_calibration(cfg.run.output_dir / "train", report.parent, max_showers=n,
                                               energy_bins_gev=cfg.validate.energy_bins_gev, seed=cfg.run.seed,
                                               device=cfg.run.device, progress=progress)
            merged = {**json.loads(report.read_text()), **json.loads(found.read_text())}
            write_report(report, merged)
            found.unlink()
    return report


FAMILY = Family(name="calo_flow", config=CaloFlowConfig, train=train, run=run, generate=generate)

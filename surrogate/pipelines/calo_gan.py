"""The CaloGAN family: simulate -> train -> generate -> validate.

The pipeline file (``pipelines/calo_gan.toml``) is read into :class:`CaloGANConfig` by
:func:`surrogate.config.load_pipeline`; each stage is a public function, so a user can run any
one of them from Python; the CLI (``surrogate simulate|train|generate|validate|run``) only
parses arguments and dispatches through :data:`FAMILY`.

Sections of the file (every key optional unless marked)::

    [run]       pipeline = "calo_gan", output_dir, seed, device, threads
    [data]      train_file | train_recipe (one of them), reference_file | reference_recipe
    [model.generator]   CaloGANGenerator(...) keyword arguments
    [model.critic]      CaloGANCritic(...) keyword arguments
    [train]     the shared knobs (surrogate.config.TrainConfig) and critic_learning_rate,
                beta1, beta2, n_critic, gradient_penalty, block_size
    [generate]  n_events, energy_min_gev, energy_max_gev, batch_size
    [validate]  energy_bins_gev
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from surrogate.config import PipelineConfig, SimulateConfig, TrainConfig, check_kwargs, load_simulate_recipe, setting
from surrogate.data.calo import CaloShowerDataset, validate_calogan
from surrogate.models.calo_gan import CaloGANCritic, CaloGANGenerator
from surrogate.pipelines import Family
from surrogate.pipelines.showers import ShowerSampler, generate_showers_distributed
from surrogate.train import distributed
from surrogate.train.checkpoint import find_checkpoint, load_checkpoint
from surrogate.train.loop import FitResult, fit
from surrogate.train.steps import GANStep, make_lr_scheduler

__all__ = [
    "FAMILY",
    "CaloDataConfig",
    "CaloGANConfig",
    "CaloGANModelConfig",
    "GANTrainConfig",
    "GenerateConfig",
    "ValidateConfig",
    "build_calo_gan",
    "data_files",
    "gan_sampler",
    "generate",
    "load_generator",
    "run",
    "simulate",
    "train",
]


# --------------------------------------------------------------------------------------------
# The pipeline file


@dataclass(frozen=True)
class CaloDataConfig:
    """``[data]``: the training and reference (held-out) showers.

    Either give existing CaloGAN-layout files (``train_file``, ``reference_file``; e.g.
    CaloGAN's Geant4 files) or dataset recipes to simulate them into ``output_dir/data/`` (a
    simulated file that already exists is reused).
    """

    train_file: Path | None = None
    reference_file: Path | None = None
    train_recipe: Path | None = None
    reference_recipe: Path | None = None

    def __post_init__(self):
        for kind in ("train", "reference"):
            if (getattr(self, f"{kind}_file") is None) == (getattr(self, f"{kind}_recipe") is None):
                raise ValueError(f"give exactly one of {kind}_file and {kind}_recipe")


@dataclass(frozen=True)
class CaloGANModelConfig:
    """``[model]``: ``[model.generator]`` and ``[model.critic]`` hold the keyword arguments of
    :class:`~surrogate.models.calo_gan.CaloGANGenerator` and
    :class:`~surrogate.models.calo_gan.CaloGANCritic` (names and types checked)."""

    generator: Mapping[str, Any] = setting(default_factory=dict, kwargs_of="surrogate.models.calo_gan:CaloGANGenerator")
    critic: Mapping[str, Any] = setting(default_factory=dict, kwargs_of="surrogate.models.calo_gan:CaloGANCritic")


@dataclass(frozen=True)
class GANTrainConfig(TrainConfig):
    """``[train]`` of the GAN (see :class:`~surrogate.train.steps.GANStep`): the shared knobs,
    where ``learning_rate`` is the generator's, plus

    Attributes:
        critic_learning_rate: the critic's Adam rate (``None``: ``learning_rate``).
        beta1, beta2: Adam's betas of both optimizers (WGAN-GP: 0.5, 0.9).
        n_critic: critic updates per generator update; one step is one critic update.
        gradient_penalty: weight lambda of the WGAN-GP gradient penalty.
        block_size: events per contiguous HDF5 read (:class:`~surrogate.data.calo.CaloShowerDataset`).
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
class GenerateConfig:
    """``[generate]``: showers generated for validation (incident energies uniform, GeV)."""

    n_events: int = setting(10000, ge=1)
    energy_min_gev: float = setting(1.0, gt=0)
    energy_max_gev: float = setting(100.0, gt=0)
    batch_size: int = setting(1024, ge=1)

    def __post_init__(self):
        if self.energy_max_gev < self.energy_min_gev:
            raise ValueError(f"energy_max_gev {self.energy_max_gev} < energy_min_gev {self.energy_min_gev}")


@dataclass(frozen=True)
class ValidateConfig:
    """``[validate]``: incident-energy bins ``[low, high]`` in GeV of the report."""

    energy_bins_gev: tuple[tuple[float, float], ...] = ((1.0, 10.0), (10.0, 30.0), (30.0, 60.0), (60.0, 100.0))

    def __post_init__(self):
        for low, high in self.energy_bins_gev:
            if not 0 <= low < high:
                raise ValueError(f"energy_bins_gev: each bin is [low, high] with 0 <= low < high, got {[low, high]}")


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


def simulate(recipe: SimulateConfig, *, output: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Runs the reference simulator of a dataset recipe and writes its HDF5 file atomically.

    Arguments:
        recipe: the ``[simulate]`` table of a dataset recipe.
        output: overrides ``recipe.output``.
        progress: show a progress bar.

    Returns:
        The file written.
    """
    from surrogate.simulators.gflash import simulate_to_file

    path = Path(output if output is not None else recipe.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    simulate_to_file(
        path, recipe.n_events, particle=recipe.particle,
        energy_range_gev=(recipe.energy_min_gev, recipe.energy_max_gev), seed=recipe.seed, progress=progress,
    )
    return path


def data_files(cfg: CaloGANConfig, *, progress: bool = True) -> tuple[Path, Path]:
    """The training and reference files: given (and checked), reused, or simulated.

    With several ranks, rank 0 simulates while the others wait, then they find the files in
    place (:func:`~surrogate.train.distributed.main_rank_first`).

    Returns:
        ``(train_file, reference_file)``.

    Raises:
        ValueError: a given file is not a valid CaloGAN-layout file.
    """
    main = distributed.context().is_main
    with distributed.main_rank_first():
        out = []
        for kind in ("train", "reference"):
            given = getattr(cfg.data, f"{kind}_file")
            if given is not None:
                validate_calogan(given)
                out.append(Path(given))
                continue
            recipe = load_simulate_recipe(getattr(cfg.data, f"{kind}_recipe"))
            path = cfg.run.output_dir / "data" / Path(recipe.output).name
            if path.exists():
                validate_calogan(path)
                if main:
                    print(f"[simulate] reusing {path}")
            else:
                print(f"[simulate] {recipe.n_events} {recipe.particle} showers -> {path}")
                simulate(recipe, output=path, progress=progress)
            out.append(path)
    return out[0], out[1]


def build_calo_gan(model: CaloGANModelConfig) -> tuple[CaloGANGenerator, CaloGANCritic]:
    """The generator and critic built from their constructor keyword arguments."""
    return CaloGANGenerator(**model.generator), CaloGANCritic(**model.critic)


def train(cfg: CaloGANConfig, *, resume: bool = True, progress: bool = True) -> FitResult:
    """Trains the CaloGAN generator and critic with WGAN-GP (``surrogate train``).

    Checkpoints go to ``cfg.run.output_dir/train``; with ``resume`` a killed run continues
    from its last checkpoint and ends with the same weights as an uninterrupted run. Across
    ranks each rank streams its own shard of every epoch's block order, ``[train] batch_size``
    is the batch of each rank, and :class:`~surrogate.train.steps.GANStep` averages gradients.
    With ``lr_schedule = "cosine"`` the critic's rate decays over the run's steps and the
    generator's over its updates (steps / ``n_critic``).

    Arguments:
        cfg: the pipeline configuration.
        resume: continue from the latest checkpoint if there is one.
        progress: show a progress bar.

    Returns:
        The :class:`~surrogate.train.loop.FitResult` (its ``checkpoint`` is the final one).
    """
    train_file, _ = data_files(cfg, progress=progress)
    ctx = distributed.context()
    device = distributed.resolve_device(cfg.run.device)
    t = cfg.train
    dataset = CaloShowerDataset(train_file, layout="calogan", block_size=t.block_size, shuffle=True, seed=cfg.run.seed,
                                rank=ctx.rank, world_size=ctx.world_size, drop_last=ctx.distributed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, num_workers=t.num_workers, drop_last=True,
                                         persistent_workers=False, pin_memory=device.type == "cuda")
    total = t.total_steps(len(loader) if t.max_epochs is not None else None)
    torch.manual_seed(cfg.run.seed)  # identical initial weights for the same seed, on every rank
    generator, critic = (m.to(device) for m in build_calo_gan(cfg.model))
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
    if ctx.is_main:
        print(f"[train] {total} steps on {train_file} -> {cfg.run.output_dir / 'train'} ({ctx.world_size} rank(s))")
    return fit(step, loader, max_steps=total, out_dir=cfg.run.output_dir / "train",
               checkpoint_every=t.checkpoint_every, config=cfg.to_dict(), resume=resume,
               seed=cfg.run.seed, progress=progress, log_every=t.log_every)


def load_generator(checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu") -> CaloGANGenerator:
    """Rebuilds the trained generator from a checkpoint (its stored configuration and weights).

    Arguments:
        checkpoint: a checkpoint file, or a run folder whose latest checkpoint is used.
        device: where the generator goes.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the checkpoint is not a CaloGAN one.
    """
    path = find_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    if "generator" not in ckpt["modules"]:
        raise ValueError(f"checkpoint {path} holds modules {sorted(ckpt['modules'])}, not a CaloGAN generator")
    kwargs = ckpt["config"].get("model", {}).get("generator", {})
    generator = CaloGANGenerator(**check_kwargs(CaloGANGenerator, kwargs, f"{path} config [model.generator]"))
    generator.load_state_dict(ckpt["modules"]["generator"])
    return generator.to(device).eval()


def gan_sampler(generator: CaloGANGenerator) -> ShowerSampler:
    """The generator as a :data:`~surrogate.pipelines.showers.ShowerSampler`: latent noise
    ``z ~ N(0, I)`` of shape ``(B, latent_dim)`` from the given CPU generator, showers in MeV."""
    device = next(generator.parameters()).device

    def sample(energy: torch.Tensor, rng: torch.Generator) -> Mapping[str, torch.Tensor]:
        z = torch.randn(energy.shape[0], generator.latent_dim, generator=rng)
        return generator(z.to(device), energy.to(device))

    return sample


def generate(checkpoint: str | os.PathLike, output: str | os.PathLike, n_events: int, *,
             energy_range_gev: tuple[float, float] = (1.0, 100.0), batch_size: int = 1024, seed: int = 0,
             device: str = "auto", progress: bool = True) -> Path:
    """Generates ``n_events`` showers from a trained run into a CaloGAN-layout file
    (``surrogate generate``), across ranks when several are running.

    Arguments:
        checkpoint: checkpoint file or run folder.
        output: HDF5 file to write.
        n_events: number of showers.
        energy_range_gev: incident energies uniform in (min, max), GeV.
        batch_size: showers per generator call.
        seed: seed of energies and noise (rank ``r`` uses ``seed + r``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: show a progress bar.

    Returns:
        The file written.
    """
    generator = load_generator(checkpoint, device=distributed.resolve_device(device))
    return generate_showers_distributed(gan_sampler(generator), output, n_events, energy_range_gev=energy_range_gev,
                                        batch_size=batch_size, seed=seed, progress=progress)


def run(cfg: CaloGANConfig, *, progress: bool = True) -> Path:
    """simulate (or read) -> train (resuming) -> generate -> validate. Returns the report path.

    Across ranks: rank 0 simulates while the others wait, all ranks train, all generate their
    shard of the showers, and rank 0 validates while the others wait.
    """
    from surrogate.pipelines.fastsim import validate_calo

    out = cfg.run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    _, reference_file = data_files(cfg, progress=progress)
    result = train(cfg, resume=True, progress=progress)
    generated = out / "generated.h5"
    g = cfg.generate
    main = distributed.context().is_main
    if main:
        print(f"[generate] {g.n_events} showers -> {generated}")
    generate(result.checkpoint, generated, g.n_events, energy_range_gev=(g.energy_min_gev, g.energy_max_gev),
             batch_size=g.batch_size, seed=cfg.run.seed + 1, device=cfg.run.device, progress=progress)
    with distributed.main_rank_first():
        if main:
            print(f"[validate] {reference_file} vs {generated}")
            validate_calo(reference_file, generated, out / "report", energy_bins_gev=cfg.validate.energy_bins_gev,
                          seed=cfg.run.seed, progress=progress)
    return out / "report" / "report.json"


FAMILY = Family(name="calo_gan", config=CaloGANConfig, train=train, run=run, generate=generate)

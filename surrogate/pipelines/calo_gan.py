"""The CaloGAN fast-simulation pipeline: simulate -> train -> generate -> validate.

Each stage is a public function, so a user can run any one of them from Python; the CLI
(``surrogate simulate|train|generate|validate|run``) only parses arguments and calls these.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from surrogate.config import CaloPipelineConfig, SimulateConfig, check_kwargs, load_simulate_recipe
from surrogate.data.calo import CALOGAN_LAYERS, CaloGANWriter, CaloShowerDataset, validate_calogan
from surrogate.models.calo_gan import CaloGANCritic, CaloGANGenerator
from surrogate.train import distributed
from surrogate.train.distributed import resolve_device
from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint
from surrogate.train.loop import FitResult, fit
from surrogate.train.steps import GANStep

__all__ = [
    "build_calo_gan",
    "generate_showers",
    "generate_showers_distributed",
    "load_generator",
    "run_calo_pipeline",
    "simulate",
    "train_calo_gan",
]


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


def build_calo_gan(generator: Mapping[str, Any], critic: Mapping[str, Any]) -> tuple[CaloGANGenerator, CaloGANCritic]:
    """Builds the generator and critic from their constructor keyword arguments.

    Raises:
        ValueError: an argument name that the constructor does not take.
    """
    g = CaloGANGenerator(**check_kwargs(CaloGANGenerator, generator, "[model.generator]"))
    d = CaloGANCritic(**check_kwargs(CaloGANCritic, critic, "[model.critic]"))
    return g, d


def _data_files(cfg: CaloPipelineConfig, progress: bool) -> tuple[Path, Path]:
    """The training and reference files: given, reused, or simulated (by rank 0 alone)."""
    if distributed.context().distributed:
        if distributed.context().is_main:
            files = _data_files_here(cfg, progress)
        distributed.barrier()
        if not distributed.context().is_main:
            files = _data_files_here(cfg, False, quiet=True)
        return files
    return _data_files_here(cfg, progress)


def _data_files_here(cfg: CaloPipelineConfig, progress: bool, *, quiet: bool = False) -> tuple[Path, Path]:
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
            if not quiet:
                print(f"[simulate] reusing {path}")
        else:
            print(f"[simulate] {recipe.n_events} {recipe.particle} showers -> {path}")
            simulate(recipe, output=path, progress=progress)
        out.append(path)
    return out[0], out[1]


def train_calo_gan(cfg: CaloPipelineConfig, train_file: str | os.PathLike, *, resume: bool = True, progress: bool = True) -> FitResult:
    """Trains the CaloGAN generator and critic with WGAN-GP on a CaloGAN-layout file.

    Checkpoints go to ``cfg.run.output_dir/train``; with ``resume`` a killed run continues
    from its last checkpoint and ends with the same weights as an uninterrupted run.

    Across ranks (:func:`surrogate.train.distributed.init_distributed`): both networks are
    wrapped in ``DistributedDataParallel`` (see :class:`~surrogate.train.steps.GANStep`), each
    rank streams its own shard of every epoch's block order, ``[train] batch_size`` is the
    batch of each rank, and rank 0 writes the checkpoints.

    Arguments:
        cfg: the pipeline configuration.
        train_file: CaloGAN-layout HDF5 file of training showers.
        resume: continue from the latest checkpoint if there is one.
        progress: show a progress bar.

    Returns:
        The :class:`~surrogate.train.loop.FitResult` (its ``checkpoint`` is the final one).
    """
    ctx = distributed.context()
    device = resolve_device(cfg.run.device)
    torch.manual_seed(cfg.run.seed)  # identical initial weights for the same seed, on every rank
    generator, critic = build_calo_gan(cfg.generator, cfg.critic)
    generator = distributed.wrap_ddp(generator.to(device))
    critic = distributed.wrap_ddp(critic.to(device))
    t = cfg.train
    step = GANStep(
        generator, critic,
        torch.optim.Adam(generator.parameters(), lr=t.generator_lr, betas=(t.beta1, t.beta2)),
        torch.optim.Adam(critic.parameters(), lr=t.critic_lr, betas=(t.beta1, t.beta2)),
        n_critic=t.n_critic, gp_weight=t.gradient_penalty,
        cosine_calls=t.max_steps if t.lr_schedule == "cosine" else None, cosine_min_factor=t.final_lr_fraction,
    )
    dataset = CaloShowerDataset(train_file, layout="calogan", block_size=t.block_size, shuffle=True, seed=cfg.run.seed,
                                rank=ctx.rank, world_size=ctx.world_size, drop_last=ctx.distributed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=t.batch_size, num_workers=t.num_workers, drop_last=True,
        persistent_workers=False, pin_memory=device.type == "cuda",
    )
    return fit(
        step, loader, max_steps=t.max_steps, out_dir=cfg.run.output_dir / "train",
        checkpoint_every=t.checkpoint_every, config=cfg.to_dict(), resume=resume,
        seed=cfg.run.seed, progress=progress, log_every=t.log_every,
    )


def load_generator(checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu") -> CaloGANGenerator:
    """Rebuilds the trained generator from a checkpoint (its stored configuration and weights).

    Arguments:
        checkpoint: a checkpoint file, or a run folder whose latest checkpoint is used.
        device: where the generator goes.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the checkpoint is not a CaloGAN one.
    """
    path = Path(checkpoint)
    if path.is_dir():
        found = latest_checkpoint(path) or latest_checkpoint(path / "train")
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path}/checkpoints or {path}/train/checkpoints")
        path = found
    ckpt = load_checkpoint(path)
    if "generator" not in ckpt["modules"]:
        raise ValueError(f"checkpoint {path} holds modules {sorted(ckpt['modules'])}, not a CaloGAN generator")
    kwargs = ckpt["config"].get("model", {}).get("generator", {})
    generator = CaloGANGenerator(**check_kwargs(CaloGANGenerator, kwargs, f"{path} config [model.generator]"))
    generator.load_state_dict(ckpt["modules"]["generator"])
    return generator.to(device).eval()


@torch.no_grad()
def generate_showers(
    generator: CaloGANGenerator,
    output: str | os.PathLike,
    n_events: int,
    *,
    energy_range_gev: tuple[float, float] = (1.0, 100.0),
    batch_size: int = 1024,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Generates showers at incident energies uniform in a range and writes the CaloGAN layout.

    The file is written in batches and atomically, so any CaloGAN reader reads it. The
    generator does not model the energy outside the cell grid: ``overflow`` is written as 0.

    Arguments:
        generator: a trained generator (on any device).
        output: HDF5 file to write.
        n_events: number of showers.
        energy_range_gev: (min, max) incident energy in GeV; equal values give one energy.
        batch_size: showers per generator call.
        seed: seed of a private generator for energies and latent noise (global RNG untouched).
        progress: show a progress bar.

    Returns:
        The file written.

    Raises:
        ValueError: ``n_events`` or ``batch_size`` < 1, or a bad energy range.
    """
    lo, hi = map(float, energy_range_gev)
    if n_events < 1 or batch_size < 1:
        raise ValueError(f"n_events and batch_size must be >= 1, got {n_events}, {batch_size}")
    if not 0 < lo <= hi:
        raise ValueError(f"energy range must satisfy 0 < min <= max (GeV), got {lo}:{hi}")
    device = next(generator.parameters()).device
    rng = torch.Generator(device="cpu").manual_seed(seed)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with CaloGANWriter(output, n_events) as writer, tqdm(total=n_events, disable=not progress, desc="generate", unit="shower") as bar:
        for start in range(0, n_events, batch_size):
            b = min(batch_size, n_events - start)
            energy = lo + (hi - lo) * torch.rand(b, 1, generator=rng)
            z = torch.randn(b, generator.latent_dim, generator=rng)
            showers = generator(z.to(device), energy.to(device))
            batch = {k: showers[k].float().cpu().numpy() for k in CALOGAN_LAYERS}
            batch["energy"] = energy.numpy().astype(np.float32)
            batch["overflow"] = np.zeros((b, 3), dtype=np.float32)
            writer.write(batch)
            bar.update(b)
    return output


def generate_showers_distributed(
    generator: CaloGANGenerator,
    output: str | os.PathLike,
    n_events: int,
    *,
    seed: int = 0,
    progress: bool = True,
    **kwargs: Any,
) -> Path:
    """:func:`generate_showers` across ranks: rank ``r`` writes events
    ``[r N / W, (r + 1) N / W)`` (seed ``seed + r``) to ``<output>.shards/rank_<r>.h5``; rank 0
    checks that every shard is complete and joins them into ``output``, a file of HDF5 virtual
    datasets (:func:`surrogate.data.hdf5.stitch_shards`; keep the ``.shards`` folder beside it).
    In a single process this is :func:`generate_showers`.

    Arguments:
        generator, output, n_events, seed, progress: as for :func:`generate_showers`.
        kwargs: the other arguments of :func:`generate_showers`.

    Returns:
        ``output`` (on every rank, after it is complete).

    Raises:
        ValueError: on every rank, when rank 0 finds a shard missing or incomplete (the message
            names it).
    """
    from surrogate.data.hdf5 import stitch_shards

    ctx = distributed.context()
    if not ctx.distributed:
        return generate_showers(generator, output, n_events, seed=seed, progress=progress, **kwargs)
    output = Path(output)
    folder = output.with_name(output.name + ".shards")
    folder.mkdir(parents=True, exist_ok=True)
    counts = [(r + 1) * n_events // ctx.world_size - r * n_events // ctx.world_size for r in range(ctx.world_size)]
    shards = [folder / f"rank_{r:05d}.h5" for r in range(ctx.world_size)]
    if counts[ctx.rank] > 0:
        generate_showers(generator, shards[ctx.rank], counts[ctx.rank], seed=seed + ctx.rank,
                         progress=progress and ctx.is_main, **kwargs)
    distributed.barrier()
    error = None
    if ctx.is_main:
        try:
            nonempty = [(p, n) for p, n in zip(shards, counts) if n > 0]
            stitch_shards(output, [p for p, _ in nonempty], [n for _, n in nonempty])
        except (OSError, ValueError) as exc:
            error = exc
    error = distributed.broadcast_object(None if error is None else str(error))
    if error is not None:
        raise ValueError(f"distributed generation into {output} failed: {error}")
    return output


def run_calo_pipeline(cfg: CaloPipelineConfig, *, progress: bool = True) -> Path:
    """simulate (or read) -> train (resuming) -> generate -> validate. Returns the report path.

    Across ranks: rank 0 simulates while the others wait, all ranks train, all generate their
    shard of the showers, and rank 0 validates while the others wait
    (:func:`~surrogate.train.distributed.barrier`: no timeout, no CPU).
    """
    from surrogate.pipelines.fastsim import validate_calo

    ctx = distributed.context()
    say = print if ctx.is_main else (lambda *a, **k: None)
    out = cfg.run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    train_file, reference_file = _data_files(cfg, progress)
    say(f"[train] {cfg.train.max_steps} steps on {train_file} -> {out / 'train'} ({ctx.world_size} rank(s))")
    result = train_calo_gan(cfg, train_file, resume=True, progress=progress)
    generator = load_generator(result.checkpoint, device=resolve_device(cfg.run.device))
    generated = out / "generated.h5"
    g = cfg.generate
    say(f"[generate] {g.n_events} showers -> {generated}")
    generate_showers_distributed(generator, generated, g.n_events, energy_range_gev=(g.energy_min_gev, g.energy_max_gev),
                                 batch_size=g.batch_size, seed=cfg.run.seed + 1, progress=progress)
    if ctx.is_main:
        say(f"[validate] {reference_file} vs {generated}")
        validate_calo(reference_file, generated, out / "report", energy_bins_gev=cfg.validate.energy_bins_gev,
                      seed=cfg.run.seed, progress=progress)
    distributed.barrier()
    return out / "report" / "report.json"

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
from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint
from surrogate.train.loop import FitResult, fit
from surrogate.train.steps import GANStep

__all__ = [
    "build_calo_gan",
    "generate_showers",
    "load_generator",
    "resolve_device",
    "run_calo_pipeline",
    "simulate",
    "train_calo_gan",
]


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` gives CUDA when a GPU is present, else the CPU.

    Raises:
        ValueError: ``"cuda"`` asked for on a machine without a CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA device")
    return torch.device(name)


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

    Arguments:
        cfg: the pipeline configuration.
        train_file: CaloGAN-layout HDF5 file of training showers.
        resume: continue from the latest checkpoint if there is one.
        progress: show a progress bar.

    Returns:
        The :class:`~surrogate.train.loop.FitResult` (its ``checkpoint`` is the final one).
    """
    device = resolve_device(cfg.run.device)
    torch.manual_seed(cfg.run.seed)  # identical initial weights for the same seed
    generator, critic = build_calo_gan(cfg.generator, cfg.critic)
    generator.to(device)
    critic.to(device)
    t = cfg.train
    step = GANStep(
        generator, critic,
        torch.optim.Adam(generator.parameters(), lr=t.generator_lr, betas=(t.beta1, t.beta2)),
        torch.optim.Adam(critic.parameters(), lr=t.critic_lr, betas=(t.beta1, t.beta2)),
        n_critic=t.n_critic, gp_weight=t.gradient_penalty,
    )
    dataset = CaloShowerDataset(train_file, layout="calogan", block_size=t.block_size, shuffle=True, seed=cfg.run.seed)
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


def run_calo_pipeline(cfg: CaloPipelineConfig, *, progress: bool = True) -> Path:
    """simulate (or read) -> train (resuming) -> generate -> validate. Returns the report path."""
    from surrogate.pipelines.fastsim import validate_calo

    out = cfg.run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    train_file, reference_file = _data_files(cfg, progress)
    print(f"[train] {cfg.train.max_steps} steps on {train_file} -> {out / 'train'}")
    result = train_calo_gan(cfg, train_file, resume=True, progress=progress)
    generator = load_generator(result.checkpoint, device=resolve_device(cfg.run.device))
    generated = out / "generated.h5"
    g = cfg.generate
    print(f"[generate] {g.n_events} showers -> {generated}")
    generate_showers(generator, generated, g.n_events, energy_range_gev=(g.energy_min_gev, g.energy_max_gev),
                     batch_size=g.batch_size, seed=cfg.run.seed + 1, progress=progress)
    print(f"[validate] {reference_file} vs {generated}")
    validate_calo(reference_file, generated, out / "report", energy_bins_gev=cfg.validate.energy_bins_gev,
                  seed=cfg.run.seed, progress=progress)
    return out / "report" / "report.json"

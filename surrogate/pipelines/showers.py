"""Shower generation shared by every calorimeter family: energies in, a CaloGAN-layout file out.

A family hands over a *sampler*, ``sample(energy, generator) -> {"layer_0": (B, 3, 96),
"layer_1": (B, 12, 12), "layer_2": (B, 12, 6)}`` (cell energies in MeV, tensors on any device)
for incident energies ``energy`` of shape ``(B, 1)`` in GeV, drawing its noise from the CPU
``torch.Generator`` it is given; :func:`generate_showers` draws the energies, calls it batch by
batch and writes the file atomically; :func:`generate_showers_distributed` splits the events
over ranks and joins the shards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from surrogate.data.calo import CaloGANWriter
from surrogate.geometry import CALOGAN_LAYERS
from surrogate.train import distributed

__all__ = ["ShowerSampler", "generate_showers", "generate_showers_distributed"]

ShowerSampler = Callable[[Tensor, torch.Generator], Mapping[str, Tensor]]
"""``sample(energy (B, 1) GeV, generator) -> {layer: (B, *shape) MeV}``."""


@torch.no_grad()
def generate_showers(
    sample: ShowerSampler,
    output: str | os.PathLike,
    n_events: int,
    *,
    energy_range_gev: tuple[float, float] = (1.0, 100.0),
    batch_size: int = 1024,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Generates showers at incident energies uniform in a range and writes the CaloGAN layout.

    The file is written in batches and atomically, so any CaloGAN reader reads it. The models
    do not describe the energy outside the cell grid: ``overflow`` is written as 0.

    Arguments:
        sample: the family's sampler (see the module documentation).
        output: HDF5 file to write.
        n_events: number of showers.
        energy_range_gev: (min, max) incident energy in GeV; equal values give one energy.
        batch_size: showers per sampler call.
        seed: seed of a private generator for energies and noise (global RNG untouched): the
            energies of a batch are drawn first, then the sampler's noise.
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
    rng = torch.Generator(device="cpu").manual_seed(seed)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with CaloGANWriter(output, n_events) as writer, tqdm(total=n_events, disable=not progress, desc="generate",
                                                         unit="shower") as bar:
        for start in range(0, n_events, batch_size):
            b = min(batch_size, n_events - start)
            energy = lo + (hi - lo) * torch.rand(b, 1, generator=rng)
            showers = sample(energy, rng)
            batch = {k: showers[k].float().cpu().numpy() for k in CALOGAN_LAYERS}
            batch["energy"] = energy.numpy().astype(np.float32)
            batch["overflow"] = np.zeros((b, 3), dtype=np.float32)
            writer.write(batch)
            bar.update(b)
    return output


def generate_showers_distributed(
    sample: ShowerSampler,
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
    datasets (:func:`surrogate.data.event_writer.stitch_shards`; keep the ``.shards`` folder beside it).
    In a single process this is :func:`generate_showers`.

    Arguments:
        sample, output, n_events, seed, progress: as for :func:`generate_showers`.
        kwargs: the other arguments of :func:`generate_showers`.

    Returns:
        ``output`` (on every rank, after it is complete).

    Raises:
        ValueError: on every rank, when rank 0 finds a shard missing or incomplete (the message
            names it).
    """
    from surrogate.data.event_writer import stitch_shards

    ctx = distributed.context()
    if not ctx.distributed:
        return generate_showers(sample, output, n_events, seed=seed, progress=progress, **kwargs)
    output = Path(output)
    folder = output.with_name(output.name + ".shards")
    folder.mkdir(parents=True, exist_ok=True)
    counts = [(r + 1) * n_events // ctx.world_size - r * n_events // ctx.world_size for r in range(ctx.world_size)]
    shards = [folder / f"rank_{r:05d}.h5" for r in range(ctx.world_size)]
    if counts[ctx.rank] > 0:
        generate_showers(sample, shards[ctx.rank], counts[ctx.rank], seed=seed + ctx.rank,
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

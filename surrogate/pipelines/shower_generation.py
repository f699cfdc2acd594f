"""Generation for the shower families: showers from a sampler into CaloGAN- or CaloChallenge-layout
files (one process or across ranks), the training energy range a run may generate in without an
extrapolation warning, and the ``generate`` stage (``surrogate generate``) of a family.

A family hands over a *sampler*, ``sample(energy, generator) -> {"layer_0": (B, 3, 96),
"layer_1": (B, 12, 12), "layer_2": (B, 12, 6)}`` (cell energies in MeV, tensors on any device)
for incident energies ``energy`` of shape ``(B, 1)`` in GeV, drawing its noise from the CPU
``torch.Generator`` it is given; :func:`generate_showers` draws the energies, calls it batch by
batch and writes the file atomically; :func:`generate_showers_distributed` splits the events
over ranks and joins the shards. In the CaloChallenge layout the sampler returns the layers of
the file's geometry (:func:`surrogate.data.binning.read_binning_xml`), which are flattened into
the challenge's voxel order, and the incident energies may be those of a reference file
(:func:`energies_from_file`), as the challenge's evaluation expects. A model's ``geometry``
attribute says which voxels it generates; the CaloChallenge layout is refused for a model of
another geometry.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from surrogate.checks import ExtrapolationWarning, check_choice, check_int, warn_outside
from surrogate.config import load_simulate_recipe
from surrogate.data.calo import CALOGAN_FIELDS, CaloGANWriter
from surrogate.data.hdf5 import check_layout, open_hdf5
from surrogate.geometry import CALOGAN, CALOGAN_LAYERS, CaloGeometry
from surrogate.train import distributed
from surrogate.train.checkpoint import checkpoint_config, find_checkpoint

__all__ = [
    "EDGE_TOLERANCE",
    "ShowerSampler",
    "energies_from_file",
    "generate_showers",
    "generate_showers_distributed",
    "generate_stage",
    "training_energy_range",
]


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
    layout: str = "calogan",
    geometry: CaloGeometry | None = None,
    energies_mev: np.ndarray | None = None,
) -> Path:
    """Generates showers and writes them, batch by batch and atomically, in either file layout.

    ``layout="calogan"``: the CaloGAN layout (energies in GeV); the models do not describe the
    energy outside the cell grid, so ``overflow`` is written as 0. ``layout="calochallenge"``:
    the CaloChallenge layout, ``incident_energies`` (N, 1) and ``showers`` (N, voxels) in MeV,
    the sampler's layers flattened by ``geometry`` (:meth:`~surrogate.geometry.CaloGeometry.flatten`),
    which the challenge's evaluation script reads as its own files.

    Arguments:
        sample: the family's sampler (see the module documentation); it must return the layers
            of ``geometry``.
        output: HDF5 file to write.
        n_events: number of showers.
        energy_range_gev: (min, max) incident energy in GeV, drawn uniformly; equal values give
            one energy. Not used when ``energies_mev`` is given.
        batch_size: showers per sampler call.
        seed: seed of a private generator for energies and noise (global RNG untouched): the
            energies of a batch are drawn first, then the sampler's noise.
        progress: show a progress bar.
        layout: ``"calogan"`` or ``"calochallenge"``.
        geometry: the voxels of a ``"calochallenge"`` file (required there); for ``"calogan"``
            ``None`` or CaloGAN's.
        energies_mev: the incident energies to generate at, ``(n_events,)`` in MeV, > 0 (e.g.
            from a reference file, :func:`energies_from_file`), written unchanged (float32);
            ``None`` draws them uniformly in ``energy_range_gev``.

    Returns:
        The file written.

    Raises:
        ValueError: ``n_events`` or ``batch_size`` < 1, a bad energy range or ``energies_mev``,
            an unknown layout, a missing or non-CaloGAN geometry, or sampler output that does not
            match the geometry.
    """
    from surrogate.data.calo import CaloChallengeWriter

    lo, hi = map(float, energy_range_gev)
    if n_events < 1 or batch_size < 1:
        raise ValueError(f"n_events and batch_size must be >= 1, got {n_events}, {batch_size}")
    if not (math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"energy range must satisfy 0 < min <= max < inf (GeV), got {lo}:{hi}")
    check_choice("layout", layout, ("calogan", "calochallenge"))
    if layout == "calochallenge" and not isinstance(geometry, CaloGeometry):
        raise ValueError(f"layout 'calochallenge' needs the geometry of its voxels, got {geometry!r}")
    if layout == "calogan" and geometry is not None and not CALOGAN.same_voxels(geometry):
        raise ValueError(f"layout 'calogan' holds CaloGAN's cells, not geometry {geometry.describe()}; "
                         "use layout 'calochallenge'")
    if energies_mev is not None:
        energies_mev = np.asarray(energies_mev, dtype=np.float64)
        if energies_mev.shape != (n_events,) or not bool(np.all(np.isfinite(energies_mev) & (energies_mev > 0))):
            raise ValueError(f"energies_mev must be finite, > 0 MeV and of shape ({n_events},), got shape "
                             f"{energies_mev.shape}")
    rng = torch.Generator(device="cpu").manual_seed(seed)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if layout == "calochallenge":
        writer = CaloChallengeWriter(output, n_events, n_voxels=geometry.n_voxels, attrs={"geometry": geometry.name})
    else:
        writer = CaloGANWriter(output, n_events)
    with writer, tqdm(total=n_events, disable=not progress, desc="generate", unit="shower") as bar:
        for start in range(0, n_events, batch_size):
            b = min(batch_size, n_events - start)
            if energies_mev is None:
                energy = lo + (hi - lo) * torch.rand(b, 1, generator=rng)
                energy_mev = None
            else:
                energy_mev = energies_mev[start:start + b, None]
                energy = torch.from_numpy(energy_mev / 1000.0).float()
            showers = sample(energy, rng)
            if layout == "calochallenge":
                cells = geometry.flatten({k: v.float().cpu() for k, v in showers.items()})
                if energy_mev is None:
                    energy_mev = 1000.0 * energy.double().numpy()
                writer.write({"incident_energies": energy_mev.astype(np.float32), "showers": cells.numpy()})
            else:
                batch = {k: showers[k].float().cpu().numpy() for k in CALOGAN_LAYERS}
                batch["energy"] = energy.numpy().astype(np.float32)
                batch["overflow"] = np.zeros((b, 3), dtype=np.float32)
                writer.write(batch)
            bar.update(b)
    return output


def energies_from_file(path: str | os.PathLike, n_events: int | None = None, *, seed: int = 0) -> np.ndarray:
    """Incident energies to generate at, drawn from a reference file's.

    Arguments:
        path: a shower file of either layout (:func:`~surrogate.data.calo.read_incident_energies`).
        n_events: how many; ``None`` takes all the file's energies in file order (a generated
            file then matches the reference's energies one to one, as the challenge's evaluation
            wants). Otherwise a seeded draw: without replacement when ``n_events`` is at most the
            file's count (all of them gives a permutation), with replacement beyond.
        seed: seed of the draw.

    Returns:
        float64 ``(n_events,)`` in MeV.

    Raises:
        FileNotFoundError, ValueError: As :func:`~surrogate.data.calo.read_incident_energies`,
            or ``n_events < 1``.
    """
    from surrogate.data.calo import read_incident_energies

    energies = read_incident_energies(path)
    if n_events is None:
        return energies
    n_events = check_int("n_events", n_events, minimum=1)
    rng = np.random.default_rng(seed)
    return energies[rng.choice(energies.size, n_events, replace=n_events > energies.size)]


def generate_showers_distributed(
    sample: ShowerSampler,
    output: str | os.PathLike,
    n_events: int,
    *,
    seed: int = 0,
    progress: bool = True,
    energies_mev: np.ndarray | None = None,
    **kwargs: Any,
) -> Path:
    """:func:`generate_showers` across ranks: rank ``r`` writes events
    ``[r N / W, (r + 1) N / W)`` (seed ``seed + r``; those of ``energies_mev``) to
    ``<output>.shards/rank_<r>.h5``; rank 0
    checks that every shard is complete and joins them into ``output``, a file of HDF5 virtual
    datasets (:func:`surrogate.data.event_writer.stitch_shards`; keep the ``.shards`` folder beside it).
    In a single process this is :func:`generate_showers`.

    Arguments:
        sample, output, n_events, seed, progress, energies_mev: as for :func:`generate_showers`.
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
        return generate_showers(sample, output, n_events, seed=seed, progress=progress, energies_mev=energies_mev,
                                **kwargs)
    output = Path(output)
    folder = output.with_name(output.name + ".shards")
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [r * n_events // ctx.world_size for r in range(ctx.world_size + 1)]
    counts = [bounds[r + 1] - bounds[r] for r in range(ctx.world_size)]
    shards = [folder / f"rank_{r:05d}.h5" for r in range(ctx.world_size)]
    if counts[ctx.rank] > 0:
        mine = None if energies_mev is None else np.asarray(energies_mev)[bounds[ctx.rank]:bounds[ctx.rank + 1]]
        generate_showers(sample, shards[ctx.rank], counts[ctx.rank], seed=seed + ctx.rank,
                         progress=progress and ctx.is_main, energies_mev=mine, **kwargs)
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


EDGE_TOLERANCE = 1.03
"""Factor by which generation may reach below the smallest and above the largest training
incident energy without a warning: a training file's smallest and largest energies fall a few
per cent inside the range they were drawn from."""


def training_energy_range(checkpoint: str | os.PathLike) -> tuple[float, float, str]:
    """The incident-energy range a shower run (calo_gan, calo_flow) was trained on, from its checkpoint's stored config.

    The ``[data] train_recipe``'s ``[simulate]`` range when that recipe is still readable (the
    range of the training showers), else the smallest and largest incident energy of the
    ``[data] train_file`` when it is still readable; otherwise ``[generate] energy_min_gev,
    energy_max_gev`` (the range the run generates and validates over).

    Arguments:
        checkpoint: checkpoint file or run folder.

    Returns:
        ``(low, high, source)``: GeV, and which of the two was used.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: neither range stored.
    """
    path = find_checkpoint(checkpoint)
    config = checkpoint_config(path)
    data = config.get("data") or {}
    recipe, train_file = data.get("train_recipe"), data.get("train_file")
    if recipe is not None and Path(recipe).is_file():
        table = load_simulate_recipe(recipe)
        return table.energy_min_gev, table.energy_max_gev, f"[data] train_recipe {recipe}"
    if train_file is not None and Path(train_file).is_file() and data.get("geometry") is not None:
        from surrogate.data.calo import read_incident_energies

        energy = read_incident_energies(train_file) / 1000.0
        return float(energy.min()), float(energy.max()), f"[data] train_file {train_file}"
    if train_file is not None and Path(train_file).is_file():
        with open_hdf5(train_file) as file:
            check_layout(file, CALOGAN_FIELDS, path=train_file)
            energy = file["energy"][:]
        return float(energy.min()), float(energy.max()), f"[data] train_file {train_file}"
    generate = config.get("generate") or {}
    if "energy_min_gev" in generate and "energy_max_gev" in generate:
        return float(generate["energy_min_gev"]), float(generate["energy_max_gev"]), "[generate]"
    raise ValueError(f"checkpoint {path} stores no energy range ([data] train_recipe or [generate]); "
                     "pass energy_range_gev")


def generate_stage(load: Callable[..., torch.nn.Module],
                   sampler: Callable[[torch.nn.Module], ShowerSampler]) -> Callable[..., Path]:
    """A shower family's ``generate`` stage (``surrogate generate``) from its loader and sampler.

    Arguments:
        load: ``load(checkpoint, *, device) -> model`` (a checkpoint file or run folder); the
            model's ``geometry`` attribute is the :class:`~surrogate.geometry.CaloGeometry` of
            the showers it generates.
        sampler: ``sampler(model) -> ShowerSampler``.

    Returns:
        ``generate(checkpoint, output, n_events, *, energy_range_gev=(1, 100), batch_size=1024,
        seed=0, device="auto", progress=True, layout="calogan", geometry=None,
        energies_from=None) -> Path`` (its docstring below), across ranks when several are
        running (:func:`generate_showers_distributed`; rank ``r`` seeds ``seed + r``).
    """

    def generate(checkpoint: str | os.PathLike, output: str | os.PathLike, n_events: int | None, *,
                 energy_range_gev: tuple[float, float] = (1.0, 100.0), batch_size: int = 1024, seed: int = 0,
                 device: str = "auto", progress: bool = True, layout: str = "calogan",
                 geometry: CaloGeometry | None = None, energies_from: str | os.PathLike | None = None) -> Path:
        """``n_events`` showers of the trained run ``checkpoint`` (file or folder) into ``output``.

        Incident energies are uniform in ``energy_range_gev`` (GeV), or drawn from the file
        ``energies_from`` (:func:`energies_from_file`; ``n_events=None`` takes all of its energies
        in order). ``layout="calogan"`` writes the CaloGAN layout; ``layout="calochallenge"``
        the CaloChallenge layout in ``geometry`` (required), which must be the model's own
        (:meth:`~surrogate.geometry.CaloGeometry.same_voxels`): a model trained on CaloGAN's three
        layers is refused. ``device`` is ``"auto"``, ``"cpu"`` or ``"cuda"``. Returns ``output``.
        Energies outside the training range (:func:`training_energy_range`, widened by the factor
        :data:`EDGE_TOLERANCE` at both ends) give an :class:`~surrogate.checks.ExtrapolationWarning`.

        Raises:
            ValueError: an unknown layout, ``layout="calochallenge"`` without a geometry or with
                one that is not the model's, ``layout="calogan"`` for a model of another
                geometry, ``n_events=None`` without ``energies_from``, or a bad
                energies file (each message names the file or value).
        """
        check_choice("layout", layout, ("calogan", "calochallenge"))
        if layout == "calochallenge" and geometry is None:
            raise ValueError("layout 'calochallenge' needs the geometry of its voxels (a binning file: --geometry)")
        if layout == "calogan" and geometry is not None and not CALOGAN.same_voxels(geometry):
            raise ValueError(f"geometry {geometry.describe()} is not CaloGAN's; it needs layout 'calochallenge' "
                             "(--format calochallenge)")
        if energies_from is None and n_events is None:
            raise ValueError("give the number of showers (--n) or a file to take the energies from (--energies-from)")
        energies_mev = None if energies_from is None else energies_from_file(energies_from, n_events, seed=seed)
        n_events = n_events if energies_mev is None else energies_mev.size
        asked = list(map(float, energy_range_gev)) if energies_mev is None else [
            float(energies_mev.min()) / 1000.0, float(energies_mev.max()) / 1000.0]
        try:
            low, high, source = training_energy_range(checkpoint)
        except ValueError as exc:
            warnings.warn(f"{exc}: cannot check the energies against it", ExtrapolationWarning, stacklevel=2)
        else:
            if not (low / EDGE_TOLERANCE <= asked[0] and asked[1] <= high * EDGE_TOLERANCE):
                warn_outside("incident energy", *asked, (low, high), unit="GeV", source=source, where=checkpoint)
        model = load(checkpoint, device=distributed.resolve_device(device))
        trained_on = model.geometry
        if layout == "calochallenge" and not trained_on.same_voxels(geometry):
            raise ValueError(f"checkpoint {checkpoint}: the model generates showers in geometry "
                             f"{trained_on.describe()}, not in {geometry.describe()}; the CaloChallenge layout needs "
                             "a model trained in that geometry")
        if layout == "calogan" and not CALOGAN.same_voxels(trained_on):
            raise ValueError(f"checkpoint {checkpoint}: the model generates showers in geometry "
                             f"{trained_on.describe()}, not CaloGAN's; write them in the CaloChallenge layout "
                             "(--format calochallenge --geometry <its binning file>)")
        return generate_showers_distributed(sampler(model), output, n_events, energy_range_gev=energy_range_gev,
                                            batch_size=batch_size, seed=seed, progress=progress, layout=layout,
                                            geometry=geometry, energies_mev=energies_mev)

    return generate

"""What every calorimeter-shower family shares: the ``[data]``, ``[generate]`` and ``[validate]``
sections of its pipeline file, the reference data (simulated or given), the training loader,
and the whole ``run`` (train -> generate -> validate). Generation itself (a family's sampler into
CaloGAN- or CaloChallenge-layout files, across ranks, and the ``generate`` stage) is in
:mod:`surrogate.pipelines.shower_generation`. The families (:mod:`surrogate.pipelines.calo_gan`,
:mod:`surrogate.pipelines.calo_flow`) add their model, its ``[model]`` and ``[train]`` sections
and ``train`` / ``generate`` stages. Both train on CaloGAN-layout files or, with ``[data]
geometry``, on CaloChallenge-layout files in that geometry; a checkpoint stores the geometry
(:func:`geometry_to_config`), so a trained model generates without the binning file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from surrogate.config import PipelineConfig, SimulateConfig, TrainConfig, load_simulate_recipe, setting
from surrogate.data.calo import validate_calogan
from surrogate.data.hdf5 import open_hdf5
from surrogate.data.shower_dataset import CaloShowerDataset
from surrogate.geometry import CALOGAN, CaloGeometry, PolarLayer
from surrogate.simulators.gflash import READOUT_THRESHOLD_MEV
from surrogate.train import distributed
from surrogate.train.loop import FitResult

__all__ = [
    "GEOMETRIES",
    "CaloDataConfig",
    "GenerateConfig",
    "ValidateConfig",
    "data_files",
    "data_geometry",
    "geometry_from_config",
    "geometry_to_config",
    "run_shower_pipeline",
    "shower_loader",
    "simulate",
]


# --------------------------------------------------------------------------------------------
# Sections shared by the shower families' pipeline files


@dataclass(frozen=True)
class CaloDataConfig:
    """``[data]``: the training and reference (held-out) showers.

    Either give existing files (``train_file``, ``reference_file``; e.g. CaloGAN's Geant4 files)
    or dataset recipes to simulate them into ``output_dir/data/`` (a simulated file that already
    exists is reused). Without ``geometry`` the files are in the CaloGAN layout; with
    ``geometry``, a CaloChallenge binning file (XML, relative to the pipeline file; read by
    :func:`surrogate.data.binning.read_binning_xml`), they are CaloChallenge-layout files in
    that geometry (only the calo_flow family trains on them). ``geometry`` is left out of the
    stored configuration when absent, so CaloGAN-layout runs store what they always did.
    """

    train_file: Path | None = None
    reference_file: Path | None = None
    train_recipe: Path | None = None
    reference_recipe: Path | None = None
    geometry: Path | None = field(default=None, metadata={"omit_if_none": True})

    def __post_init__(self):
        for kind in ("train", "reference"):
            if (getattr(self, f"{kind}_file") is None) == (getattr(self, f"{kind}_recipe") is None):
                raise ValueError(f"give exactly one of {kind}_file and {kind}_recipe")


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
    """``[validate]``: incident-energy bins ``[low, high]`` in GeV of the report, and the readout
    threshold ``threshold_mev`` in MeV applied to both files (cells below it are empty; default
    0.01 MeV, :data:`~surrogate.simulators.gflash.READOUT_THRESHOLD_MEV`)."""

    energy_bins_gev: tuple[tuple[float, float], ...] = ((1.0, 10.0), (10.0, 30.0), (30.0, 60.0), (60.0, 100.0))
    threshold_mev: float = setting(READOUT_THRESHOLD_MEV, ge=0)

    def __post_init__(self):
        for low, high in self.energy_bins_gev:
            if not 0 <= low < high:
                raise ValueError(f"energy_bins_gev: each bin is [low, high] with 0 <= low < high, got {[low, high]}")


# --------------------------------------------------------------------------------------------
# Data


def simulate(recipe: SimulateConfig, *, output: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Runs the reference simulator of a dataset recipe and writes its HDF5 file atomically.

    A recipe without ``geometry`` writes CaloGAN-layout showers
    (:func:`surrogate.simulators.gflash_runs.simulate_to_file`); one with a CaloChallenge binning
    file writes the CaloChallenge layout in that geometry
    (:func:`surrogate.simulators.gflash_calochallenge.simulate_calochallenge_to_file`).

    Arguments:
        recipe: the ``[simulate]`` table of a dataset recipe.
        output: overrides ``recipe.output``.
        progress: show a progress bar.

    Returns:
        The file written.
    """
    from surrogate.simulators.gflash_runs import simulate_to_file

    path = Path(output if output is not None else recipe.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if recipe.geometry is not None:
        from surrogate.data.binning import read_binning_xml
        from surrogate.simulators.gflash_calochallenge import simulate_calochallenge_to_file

        simulate_calochallenge_to_file(
            path, recipe.n_events, geometry=read_binning_xml(recipe.geometry), calorimeter=recipe.calorimeter,
            particle=recipe.particle, energy_distribution=recipe.energy_distribution,
            energy_range_gev=(recipe.energy_min_gev, recipe.energy_max_gev), seed=recipe.seed,
            threshold_mev=recipe.threshold_mev, progress=progress,
        )
        return path
    simulate_to_file(
        path, recipe.n_events, particle=recipe.particle,
        energy_range_gev=(recipe.energy_min_gev, recipe.energy_max_gev), seed=recipe.seed, progress=progress,
        threshold_mev=recipe.threshold_mev,
    )
    return path


def data_files(cfg: PipelineConfig, *, progress: bool = True, quiet: bool = False) -> tuple[Path, Path]:
    """The training and reference files: given (and checked), reused, or simulated.

    With several ranks, rank 0 simulates while the others wait, then they find the files in
    place (:func:`~surrogate.train.distributed.main_rank_first`).

    Arguments:
        cfg: a pipeline configuration with a ``data`` section of type :class:`CaloDataConfig`
            and ``run`` (CaloGAN's, CaloFlow's).
        progress: show the simulator's progress bar.
        quiet: do not say that an existing file is reused.

    Returns:
        ``(train_file, reference_file)``.

    Raises:
        ValueError: a given or reused file is not a valid file of the run's layout (CaloGAN's,
            or the CaloChallenge's in ``[data] geometry`` with that geometry's voxel count), or a
            recipe simulates another geometry than ``[data] geometry``.
    """
    from surrogate.data.binning import read_binning_xml

    main = distributed.context().is_main
    geometry = data_geometry(cfg.data)

    def check(path: Path) -> None:
        if geometry is None:
            validate_calogan(path)
            return
        from surrogate.data.calo import validate_calochallenge

        validate_calochallenge(path)
        with open_hdf5(path) as file:
            voxels = file["showers"].shape[1]
        if voxels != geometry.n_voxels:
            raise ValueError(f"{path}: 'showers' has {voxels} voxels per event; [data] geometry "
                             f"{geometry.describe()} has {geometry.n_voxels}")

    with distributed.main_rank_first():
        out = []
        for kind in ("train", "reference"):
            given = getattr(cfg.data, f"{kind}_file")
            if given is not None:
                check(Path(given))
                out.append(Path(given))
                continue
            recipe = load_simulate_recipe(getattr(cfg.data, f"{kind}_recipe"))
            if (recipe.geometry is None) != (geometry is None) or (
                    geometry is not None and not read_binning_xml(recipe.geometry).same_voxels(geometry)):
                raise ValueError(f"[data] {kind}_recipe {getattr(cfg.data, f'{kind}_recipe')}: simulates geometry "
                                 f"{recipe.geometry or 'CaloGAN'}, not [data] geometry "
                                 f"{cfg.data.geometry or 'CaloGAN'}")
            path = cfg.run.output_dir / "data" / Path(recipe.output).name
            if path.exists():
                check(path)
                if main and not quiet:
                    print(f"[simulate] reusing {path}")
            else:
                print(f"[simulate] {recipe.n_events} {recipe.particle} showers -> {path}")
                simulate(recipe, output=path, progress=progress)
            out.append(path)
    return out[0], out[1]


def data_geometry(data: CaloDataConfig) -> CaloGeometry | None:
    """The geometry of ``[data] geometry`` (:func:`~surrogate.data.binning.read_binning_xml`),
    or ``None`` for CaloGAN-layout data.

    Raises:
        FileNotFoundError, ValueError: As :func:`~surrogate.data.binning.read_binning_xml`.
    """
    if data.geometry is None:
        return None
    from surrogate.data.binning import read_binning_xml

    return read_binning_xml(data.geometry)


def shower_loader(train_file: str | os.PathLike, train: TrainConfig, *, seed: int, device: torch.device,
                  geometry: CaloGeometry | None = None) -> torch.utils.data.DataLoader:
    """Batches of training showers streamed from a shower file in shuffled contiguous blocks
    (:class:`~surrogate.data.shower_dataset.CaloShowerDataset`), this rank's shard of every epoch.

    Arguments:
        train_file: the HDF5 file: CaloGAN layout, or CaloChallenge layout when ``geometry`` is given.
        train: the ``[train]`` section (``batch_size`` per rank, ``num_workers``, and the
            family's ``block_size``: events per contiguous read).
        seed: shuffling seed (the same on every rank).
        device: where training runs (pinned memory on CUDA).
        geometry: the voxels of a CaloChallenge-layout file; ``None`` for CaloGAN's.

    Returns:
        A ``DataLoader`` of ``{layer: (B, *shape)`` (MeV) ``, "energy": (B, 1)`` (GeV) ``}``
        (CaloGAN: ``"layer_0", "layer_1", "layer_2"``; else the geometry's layers).
    """
    ctx = distributed.context()
    layout = "calogan" if geometry is None else "calochallenge"
    dataset = CaloShowerDataset(train_file, layout=layout, block_size=train.block_size, shuffle=True, seed=seed,
                                rank=ctx.rank, world_size=ctx.world_size, drop_last=ctx.distributed,
                                geometry=geometry)
    return torch.utils.data.DataLoader(dataset, batch_size=train.batch_size, num_workers=train.num_workers,
                                       drop_last=True, persistent_workers=False, pin_memory=device.type == "cuda")


# --------------------------------------------------------------------------------------------
# Generation


# --------------------------------------------------------------------------------------------
# Geometry in a checkpoint

GEOMETRIES: Mapping[str, CaloGeometry] = {CALOGAN.name: CALOGAN}
"""Geometries a checkpoint may name (``config["geometry"]`` a string); others are stored in full
(:func:`geometry_to_config`)."""


def geometry_to_config(geometry: CaloGeometry) -> str | dict[str, Any]:
    """What a checkpoint stores of a geometry: the name of one of :data:`GEOMETRIES` (CaloGAN's),
    else ``{"name": str, "layers": [{"name": str, "r_edges_mm": [float, ...], "n_alpha": int}, ...]}``
    (plain JSON-like data; the checkpoint then needs no binning file).

    Raises:
        ValueError: a geometry that is neither one of :data:`GEOMETRIES` nor made of
            :class:`~surrogate.geometry.PolarLayer` s.
    """
    for name, known in GEOMETRIES.items():
        if geometry.name == name and known.same_voxels(geometry):
            return name
    if not all(isinstance(layer, PolarLayer) for layer in geometry.layers):
        raise ValueError(f"geometry {geometry.describe()}: only CaloGAN's or PolarLayer geometries can be stored")
    return {"name": geometry.name,
            "layers": [{"name": layer.name, "r_edges_mm": list(layer.r_edges_mm), "n_alpha": layer.n_alpha}
                       for layer in geometry.layers]}


def geometry_from_config(stored: str | Mapping[str, Any], *, where: str = "checkpoint") -> CaloGeometry:
    """The geometry :func:`geometry_to_config` stored.

    Arguments:
        stored: a name of :data:`GEOMETRIES`, or the stored binning.
        where: names the checkpoint in errors.

    Raises:
        ValueError: an unknown name or malformed binning (the message names ``where`` and the value).
    """
    if isinstance(stored, str):
        if stored not in GEOMETRIES:
            raise ValueError(f"{where}: unknown geometry {stored!r}; known: {sorted(GEOMETRIES)}")
        return GEOMETRIES[stored]
    try:
        layers = [PolarLayer(layer["name"], tuple(layer["r_edges_mm"]), layer["n_alpha"]) for layer in stored["layers"]]
        return CaloGeometry(stored["name"], layers)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where}: config geometry must be a name or {{'name', 'layers': [{{'name', 'r_edges_mm', "
                         f"'n_alpha'}}]}}, got {stored!r} ({exc!r})") from None


# --------------------------------------------------------------------------------------------
# The whole pipeline


def run_shower_pipeline(cfg: PipelineConfig, *, train: Callable[..., FitResult], generate: Callable[..., Path],
                        resume: bool | str = True, progress: bool = True) -> Path:
    """simulate (or read) -> train (resuming) -> generate -> validate, for a shower family.

    Across ranks: rank 0 simulates while the others wait, all ranks train, all generate their
    shard of the showers, and rank 0 validates while the others wait.

    Arguments:
        cfg: the family's configuration (with ``run``, ``data``, ``generate`` and ``validate``
            sections of the types above).
        train: the family's ``train(cfg, *, resume, progress) -> FitResult``.
        generate: the family's ``generate(checkpoint, output, n_events, ...) -> Path``.
        resume: as :func:`surrogate.train.fit`'s (``True``, ``False`` or ``"anyway"``).
        progress: show progress bars.

    With ``[data] geometry`` (a CaloChallenge geometry) the showers are generated into a
    CaloChallenge-layout file at the reference file's incident energies, in its order
    (``[generate] n_events`` of them drawn without replacement when fewer than the file's;
    :func:`~surrogate.pipelines.shower_generation.energies_from_file`), and validated with the challenge's features
    (:func:`surrogate.pipelines.fastsim_calochallenge.validate_calochallenge_files`, fast
    classifier test, at ``[validate] threshold_mev``).

    Returns:
        The path of ``report.json`` (:func:`surrogate.pipelines.fastsim.validate_calo`, or
        :func:`~surrogate.pipelines.fastsim_calochallenge.validate_calochallenge_files`).
    """
    from surrogate.pipelines.fastsim import validate_calo

    out = cfg.run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    result = train(cfg, resume=resume, progress=progress)
    _, reference_file = data_files(cfg, quiet=True)
    generated = out / "generated.h5"
    g = cfg.generate
    main = distributed.context().is_main
    geometry = data_geometry(cfg.data)
    if geometry is not None:
        from surrogate.data.calo import read_incident_energies
        from surrogate.pipelines.fastsim_calochallenge import validate_calochallenge_files

        n_reference = read_incident_energies(reference_file).size
        n_events = None if g.n_events >= n_reference else g.n_events
        if main:
            print(f"[generate] {n_events or n_reference} showers at the incident energies of {reference_file} -> "
                  f"{generated}")
        generate(result.checkpoint, generated, n_events, batch_size=g.batch_size, seed=cfg.run.seed + 1,
                 device=cfg.run.device, progress=progress, layout="calochallenge", geometry=geometry,
                 energies_from=reference_file)
        with distributed.main_rank_first():
            if main:
                print(f"[validate] {reference_file} vs {generated} (CaloChallenge features)")
                validate_calochallenge_files(reference_file, generated, out / "report", geometry=geometry,
                                             threshold_mev=cfg.validate.threshold_mev, seed=cfg.run.seed,
                                             progress=progress)
        return out / "report" / "report.json"
    if main:
        print(f"[generate] {g.n_events} showers -> {generated}")
    generate(result.checkpoint, generated, g.n_events, energy_range_gev=(g.energy_min_gev, g.energy_max_gev),
             batch_size=g.batch_size, seed=cfg.run.seed + 1, device=cfg.run.device, progress=progress)
    with distributed.main_rank_first():
        if main:
            print(f"[validate] {reference_file} vs {generated}")
            validate_calo(reference_file, generated, out / "report", energy_bins_gev=cfg.validate.energy_bins_gev,
                          seed=cfg.run.seed, progress=progress, threshold_mev=cfg.validate.threshold_mev)
    return out / "report" / "report.json"

"""One loader for every pipeline file: typed, frozen configuration parsed from TOML.

Used only at the edge (the CLI and ``surrogate run``): models and layers take explicit
constructor arguments (their signature *is* their configuration), and a pipeline turns the
configuration into constructor calls.

Every pipeline file has the shared sections

* ``[run]`` (:class:`RunConfig`): which model family (``pipeline``), where it writes, seed,
  device, threads;
* ``[data]``: what the family trains on (files or a simulator recipe; family specific);
* ``[train]`` (:class:`TrainConfig`, extended by a family with its own knobs): one name per
  knob across families: ``learning_rate``, ``batch_size``, ``max_steps`` / ``max_epochs``,
  ``lr_schedule``, ``warmup_steps``, ``final_lr_fraction``, ``patience``, ``max_grad_norm``,
  ``checkpoint_every``, ``log_every``, ``num_workers``;
* ``[model]``: the constructor arguments of the family's model(s);

plus the family's own stages (``[generate]``, ``[validate]`` ...). A family declares its file
as a frozen dataclass deriving from :class:`PipelineConfig`; :func:`load_pipeline` reads
``[run] pipeline``, looks the family up in :mod:`surrogate.pipelines` and builds that dataclass,
checking every key: unknown names, wrong types and out-of-range values raise
:class:`ConfigError` naming the file, the section, the key, what was expected and the value
found. Keys that were renamed keep working for one release with a
:class:`ConfigDeprecationWarning` naming the new key (each family lists its renames in
``RENAMED``).

Sections are typed with the conventions of :mod:`surrogate.config_types` (``setting``, nested
dataclasses, tables of constructor keyword arguments); relative paths in a pipeline file are
resolved against the file's folder.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

from surrogate.config_types import (
    ConfigDeprecationWarning,
    ConfigError,
    Mismatch,
    build_section,
    check_kwargs,
    coerce,
    constructor_table,
    plain,
    setting,
    type_name,
)

__all__ = [
    "ConfigDeprecationWarning",
    "ConfigError",
    "PipelineConfig",
    "RunConfig",
    "SimulateConfig",
    "TrainConfig",
    "build_section",
    "check_kwargs",
    "load_pipeline",
    "load_simulate_recipe",
    "read_toml",
    "setting",
]


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a TOML file.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: the path is a directory, or the file is not valid TOML (with the parser's
            line and column).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, expected a TOML configuration file")
    if not path.is_file():
        raise FileNotFoundError(f"configuration file {path} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Shared sections


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: which family, where it writes, and the process settings.

    Attributes:
        pipeline: the model family (a name registered in :mod:`surrogate.pipelines`).
        output_dir: folder for data, checkpoints, generated files and the report (relative to
            the pipeline file).
        seed: seeds data simulation, model initialisation, training noise and sampling.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``; with several ranks the
            device follows the launcher (``cuda:<local rank>`` or CPU).
        threads: ``torch.set_num_threads`` for this run (0 leaves torch's default).
    """

    pipeline: str
    output_dir: Path = Path("runs/default")
    seed: int = setting(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = setting(0, ge=0)


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the optimisation knobs every family shares (one name each).

    Training ends after ``max_steps`` optimizer steps or ``max_epochs`` passes over the
    training data, whichever comes first (a family sets the defaults; at least one is set).

    Attributes:
        batch_size: examples per optimizer step and rank.
        learning_rate: Adam(W) learning rate.
        max_steps: optimizer steps (``None``: no limit in steps).
        max_epochs: passes over the data (``None``: no limit in epochs).
        lr_schedule: ``"constant"``, or ``"cosine"``: decay to ``final_lr_fraction`` times the
            rate over the run (:func:`surrogate.train.steps.make_lr_scheduler`).
        warmup_steps: linear learning-rate warm-up at the start.
        final_lr_fraction: final rate of the cosine schedule as a fraction of the initial one.
        patience: validations without improvement before early stopping (``None``: never).
        max_grad_norm: clip gradients to this total 2-norm (``None``: no clipping).
        checkpoint_every: steps between checkpoints (a final one is always written).
        log_every: steps averaged into one row of ``log.csv``.
        num_workers: ``DataLoader`` worker processes.
    """

    batch_size: int = setting(128, ge=1)
    learning_rate: float = setting(1e-3, gt=0)
    max_steps: int | None = setting(1000, ge=1)
    max_epochs: int | None = setting(None, ge=1)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = setting(0, ge=0)
    final_lr_fraction: float = setting(0.0, ge=0, le=1)
    patience: int | None = setting(None, ge=1)
    max_grad_norm: float | None = setting(None, gt=0)
    checkpoint_every: int = setting(500, ge=1)
    log_every: int = setting(50, ge=1)
    num_workers: int = setting(0, ge=0)

    def __post_init__(self):
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("set max_steps or max_epochs (or both: training stops at the first)")

    def total_steps(self, steps_per_epoch: int | None = None) -> int:
        """Optimizer steps of the run: ``min(max_steps, max_epochs * steps_per_epoch)``.

        Raises:
            ValueError: ``max_epochs`` is set and ``steps_per_epoch`` is not known.
        """
        limits = [] if self.max_steps is None else [self.max_steps]
        if self.max_epochs is not None:
            if steps_per_epoch is None:
                raise ValueError("[train] max_epochs needs a dataset with a known number of batches per epoch")
            limits.append(self.max_epochs * steps_per_epoch)
        return min(limits)


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline file. Families derive from it, adding their ``data``, ``model``,
    ``train`` and stage sections as fields whose types are dataclasses (or tables of
    constructor arguments), each with a default.

    Attributes:
        source: the file it was read from (``None`` when built in Python).
        run: the ``[run]`` section.
        RENAMED: class attribute, ``{"old.path": "new.path"}`` of keys and sections renamed
            in this family's files (``"training": "train"`` moves a section,
            ``"train.lr": "train.learning_rate"`` a key; applied in order).
        RETIRED_VALUES: class attribute, ``{"section.key": (old value, advice)}``: a value whose
            meaning is now spelt differently (e.g. ``max_grad_norm = 0`` for "no clipping"); the
            key is dropped (its default applies) with a warning naming the file and the advice.
    """

    source: Path | None
    run: RunConfig
    RENAMED: ClassVar[Mapping[str, str]] = {}
    RETIRED_VALUES: ClassVar[Mapping[str, tuple[Any, str]]] = {}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and reports): paths become strings, tuples lists."""
        return plain(self)


def _move(data: dict[str, Any], old: str, new: str, path: Path) -> None:
    """Moves ``old`` (a dotted path in the parsed file) to ``new``, merging tables."""
    *old_parents, old_key = old.split(".")
    holder = data
    for part in old_parents:
        holder = holder.get(part)
        if not isinstance(holder, dict):
            return
    if old_key not in holder:
        return
    value = holder.pop(old_key)
    table = isinstance(value, dict)  # a moved section is named [a.b], a moved key [a] b
    old_name = "[" + old + "]" if table or not old_parents else f"[{'.'.join(old_parents)}] {old_key}"
    new_parts = new.split(".")
    new_name = "[" + new + "]" if table or len(new_parts) == 1 else f"[{'.'.join(new_parts[:-1])}] {new_parts[-1]}"
    warnings.warn(f"{path}: {old_name} is deprecated, use {new_name}", ConfigDeprecationWarning, stacklevel=4)
    target = data
    for part in new_parts[:-1]:
        target = target.setdefault(part, {})
    last = new_parts[-1]
    if last in target and isinstance(target[last], dict) and isinstance(value, dict):
        clash = sorted(set(target[last]) & set(value))
        if clash:
            raise ConfigError(f"{path}: {old_name} and {new_name} both set {clash}; keep only {new_name}")
        target[last].update(value)
    elif last in target:
        raise ConfigError(f"{path}: both {old_name} (deprecated) and {new_name} are set; keep only {new_name}")
    else:
        target[last] = value


def load_pipeline(path: str | os.PathLike) -> PipelineConfig:
    """Reads a pipeline file (``pipelines/*.toml``) into its family's frozen configuration.

    ``[run] pipeline`` names the family (:func:`surrogate.pipelines.get_family`); relative paths
    are resolved against the file's folder; renamed keys are moved with a
    :class:`ConfigDeprecationWarning`.

    Arguments:
        path: the TOML file.

    Returns:
        An instance of the family's :class:`PipelineConfig` subclass.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: invalid TOML, a missing ``[run]`` or ``pipeline``, an unknown family,
            section or key, or a bad value (each named with the file and key).
    """
    from surrogate.pipelines import get_family

    path = Path(path)
    data = read_toml(path)
    run = data.get("run")
    if not isinstance(run, Mapping):
        raise ConfigError(f"{path}: missing section [run] (with pipeline = \"<family>\")")
    if "pipeline" not in run:  # files written before the registry meant the calorimeter GAN
        warnings.warn(f"{path}: [run] has no pipeline; assuming pipeline = \"calo_gan\" (set it: the default "
                      "will be removed)", ConfigDeprecationWarning, stacklevel=2)
        run["pipeline"] = "calo_gan"
    if not isinstance(run["pipeline"], str):
        raise ConfigError(f"{path} [run] pipeline: expected a string, got {run['pipeline']!r}")
    cls = get_family(run["pipeline"], where=f"{path} [run] pipeline").config
    for old, new in cls.RENAMED.items():
        _move(data, old, new, path)
    for dotted, (value, advice) in cls.RETIRED_VALUES.items():
        section, _, key = dotted.rpartition(".")
        table = data.get(section)
        if isinstance(table, dict) and key in table and type(table[key]) is not bool and table[key] == value:
            found = table.pop(key)
            warnings.warn(f"{path}: [{section}] {key} = {found!r} is deprecated: {advice}", ConfigDeprecationWarning,
                          stacklevel=2)
    sections = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; allowed: {sorted(sections)}")
    base = path.resolve().parent
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {"source": path}
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing section [{f.name}]")
            continue
        where = f"{path} [{f.name}]"
        try:
            values[f.name] = coerce(data[f.name], hints[f.name], where, base)
        except Mismatch:
            raise ConfigError(f"{where}: expected {type_name(hints[f.name])}, got {data[f.name]!r}") from None
        if f.metadata.get("kwargs_of"):
            values[f.name] = constructor_table(values[f.name], f.metadata, where)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Dataset recipes (datasets/*.toml)


@dataclass(frozen=True)
class SimulateConfig:
    """``[simulate]`` of a calorimeter dataset recipe (``datasets/calogan_*.toml``,
    ``datasets/calochallenge_*.toml``).

    Attributes:
        simulator: ``"gflash"`` (parametrized EM showers).
        particle: ``"e+"``, ``"e-"`` or ``"gamma"``.
        n_events: number of showers.
        energy_min_gev, energy_max_gev: range of the incident energies, GeV.
        energy_distribution: ``"uniform"`` (the only one for CaloGAN files), ``"log-uniform"``
            or ``"powers-of-two"`` (:func:`surrogate.simulators.gflash_calochallenge.sample_incident_energies`).
        geometry: a CaloChallenge binning file (XML, relative to the recipe's folder): the
            showers are then written in the CaloChallenge layout; ``None``: the CaloGAN geometry
            and layout.
        calorimeter: the sampling calorimeter behind a ``geometry``'s voxels, a name of
            :data:`surrogate.simulators.gflash_calochallenge.CALORIMETERS` (``"atlas_barrel"``,
            ``"par04"``); CaloGAN's when ``geometry`` is ``None``.
        seed: random seed.
        threshold_mev: readout threshold in MeV: cells below it are written as 0 (default
            0.01 MeV, :data:`surrogate.simulators.gflash.READOUT_THRESHOLD_MEV`; 0: no threshold).
        output: HDF5 file to write (relative to the current working directory).
    """

    simulator: Literal["gflash"] = "gflash"
    particle: Literal["e+", "e-", "gamma"] = "e+"
    n_events: int = setting(10000, ge=1)
    energy_min_gev: float = setting(1.0, gt=0)
    energy_max_gev: float = setting(100.0, gt=0)
    energy_distribution: Literal["uniform", "log-uniform", "powers-of-two"] = "uniform"
    geometry: Path | None = None
    calorimeter: Literal["atlas_barrel", "par04", "calogan"] | None = None
    seed: int = setting(0, ge=0)
    threshold_mev: float = setting(0.01, ge=0)
    output: Path = Path("data/showers.h5")

    def __post_init__(self):
        if not self.energy_min_gev <= self.energy_max_gev:
            raise ValueError(f"need energy_min_gev <= energy_max_gev, got {self.energy_min_gev}, {self.energy_max_gev}")
        if self.geometry is None and (self.energy_distribution != "uniform" or self.calorimeter is not None):
            raise ValueError("energy_distribution other than \"uniform\" and calorimeter need a geometry (a "
                             "CaloChallenge binning file); CaloGAN files have uniform energies and CaloGAN's "
                             "calorimeter")
        if self.geometry is not None and self.calorimeter is None:
            raise ValueError(f"geometry {self.geometry} needs a calorimeter (\"atlas_barrel\" for dataset 1, "
                             "\"par04\" for datasets 2 and 3)")


def load_simulate_recipe(path: str | os.PathLike) -> SimulateConfig:
    """Reads a calorimeter dataset recipe (a TOML file with a ``[simulate]`` table).

    The ``output`` path is kept relative to the current working directory, as documented in
    ``datasets/README.md``; a relative ``geometry`` is resolved against the recipe's folder.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: invalid TOML, a missing ``[simulate]`` table or a bad value (named with the
            file and key).
    """
    data = read_toml(path)
    if "simulate" not in data:
        raise ConfigError(f"{path}: no [simulate] table")
    recipe = build_section(SimulateConfig, data["simulate"], f"{path} [simulate]")
    if recipe.geometry is not None and not recipe.geometry.is_absolute():
        recipe = dataclasses.replace(recipe, geometry=Path(path).parent / recipe.geometry)
    return recipe

"""Typed, frozen configuration parsed from TOML: used only at the edge (CLI, pipeline files).

Models and layers take explicit constructor arguments (their signature *is* their
configuration); the ``[model.*]`` tables of a pipeline file are passed to those constructors as
keyword arguments after checking the names against the signature. Everything else is one frozen
dataclass per section. Unknown keys, wrong types and out-of-range values raise ``ValueError``
naming the file, the section and the key.

Relative paths inside a configuration file are resolved against that file's folder, so a
pipeline runs the same from any working directory.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = [
    "CaloPipelineConfig",
    "DataConfig",
    "GenerateConfig",
    "RunConfig",
    "SimulateConfig",
    "TrainConfig",
    "ValidateConfig",
    "check_kwargs",
    "load_calo_pipeline",
    "load_simulate_recipe",
    "read_toml",
]


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a TOML file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid TOML (with the parser's line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file {path} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from exc


def _build(cls: type, table: Mapping[str, Any], where: str, base: Path | None = None):
    """Builds the dataclass ``cls`` from a TOML table, checking names and types."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a table, got {type(table).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in table.items():
        kind = fields[name].type
        if "Path" in str(kind) and value is not None:
            if not isinstance(value, str):
                raise ValueError(f"{where}.{name}: expected a path string, got {value!r}")
            p = Path(value).expanduser()
            value = p if (p.is_absolute() or base is None) else base / p
        elif "float" in str(kind) and "tuple" not in str(kind) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif "tuple" in str(kind) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
    for name, f in fields.items():
        value = getattr(obj, name)
        expected = {"int": int, "float": float, "str": str, "bool": bool}.get(str(f.type))
        if expected is not None and (not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))):
            raise ValueError(f"{where}.{name}: expected {expected.__name__}, got {value!r}")
    return obj


def _positive(where: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{where}.{name}: must be > 0, got {value!r}")


@dataclass(frozen=True)
class SimulateConfig:
    """``[simulate]`` of a dataset recipe (``datasets/*.toml``): the reference simulator's run.

    Attributes:
        simulator: ``"gflash"`` (parametrized EM showers in the CaloGAN geometry).
        particle: ``"e+"`` or ``"gamma"``.
        n_events: number of showers.
        energy_min_gev, energy_max_gev: incident energies are uniform in this range, GeV.
        seed: random seed.
        output: HDF5 file to write (relative to the current working directory).
    """

    simulator: str = "gflash"
    particle: str = "e+"
    n_events: int = 10000
    energy_min_gev: float = 1.0
    energy_max_gev: float = 100.0
    seed: int = 0
    output: Path = Path("data/showers.h5")

    def __post_init__(self):
        if self.simulator != "gflash":
            raise ValueError(f"simulator must be 'gflash', got {self.simulator!r}")
        if self.particle not in ("e+", "gamma"):
            raise ValueError(f"particle must be 'e+' or 'gamma', got {self.particle!r}")
        if self.n_events <= 0:
            raise ValueError(f"n_events must be > 0, got {self.n_events}")
        if not 0 < self.energy_min_gev <= self.energy_max_gev:
            raise ValueError(f"need 0 < energy_min_gev <= energy_max_gev, got {self.energy_min_gev}, {self.energy_max_gev}")


def load_simulate_recipe(path: str | os.PathLike) -> SimulateConfig:
    """Reads a dataset recipe (a TOML file with a ``[simulate]`` table).

    The ``output`` path is kept relative to the current working directory, as documented in
    ``datasets/README.md``.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_toml`; missing ``[simulate]`` table or
            bad values (named with file and key).
    """
    data = read_toml(path)
    if "simulate" not in data:
        raise ValueError(f"{path}: no [simulate] table")
    return _build(SimulateConfig, data["simulate"], f"{path} [simulate]")


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: what the pipeline is and where it writes.

    Attributes:
        pipeline: ``"calo_gan"`` (others are added by their model families).
        output_dir: folder for data, checkpoints, generated files and the report.
        seed: seeds model initialisation and training noise.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        threads: ``torch.set_num_threads`` for this run (0 leaves torch's default).
    """

    pipeline: str = "calo_gan"
    output_dir: Path = Path("runs/default")
    seed: int = 0
    device: str = "auto"
    threads: int = 0

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: the training and reference (held-out) showers.

    Either give existing files (``train_file``, ``reference_file``; e.g. CaloGAN's Geant4
    files) or recipes to simulate them into ``output_dir/data/``. A simulated file that already
    exists is reused.
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
class TrainConfig:
    """``[train]``: optimisation settings (see :class:`surrogate.train.steps.GANStep`)."""

    batch_size: int = 128
    max_steps: int = 1000
    generator_lr: float = 1e-4
    critic_lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.9
    n_critic: int = 5
    gradient_penalty: float = 10.0
    lr_schedule: str = "constant"  # or "cosine": both rates decay to final_lr_fraction over max_steps
    final_lr_fraction: float = 0.1
    checkpoint_every: int = 500
    log_every: int = 25
    block_size: int = 1024
    num_workers: int = 0

    def __post_init__(self):
        _positive("[train]", batch_size=self.batch_size, max_steps=self.max_steps,
                  generator_lr=self.generator_lr, critic_lr=self.critic_lr, n_critic=self.n_critic,
                  checkpoint_every=self.checkpoint_every, log_every=self.log_every, block_size=self.block_size)
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"[train] lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"[train] final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")


@dataclass(frozen=True)
class GenerateConfig:
    """``[generate]``: showers generated for validation (incident energies uniform, GeV)."""

    n_events: int = 10000
    energy_min_gev: float = 1.0
    energy_max_gev: float = 100.0
    batch_size: int = 1024

    def __post_init__(self):
        _positive("[generate]", n_events=self.n_events, batch_size=self.batch_size, energy_min_gev=self.energy_min_gev)
        if self.energy_max_gev < self.energy_min_gev:
            raise ValueError(f"energy_max_gev {self.energy_max_gev} < energy_min_gev {self.energy_min_gev}")


@dataclass(frozen=True)
class ValidateConfig:
    """``[validate]``: incident-energy bins (GeV) of the report."""

    energy_bins_gev: tuple = ((1.0, 10.0), (10.0, 30.0), (30.0, 60.0), (60.0, 100.0))

    def __post_init__(self):
        for b in self.energy_bins_gev:
            if len(b) != 2 or not b[0] < b[1]:
                raise ValueError(f"energy_bins_gev: each bin is [low, high] with low < high, got {b!r}")


@dataclass(frozen=True)
class CaloPipelineConfig:
    """A whole ``surrogate run`` file for the CaloGAN family.

    Attributes:
        source: the file it was read from.
        run, data, train, generate, validate: the sections above.
        generator, critic: keyword arguments of ``CaloGANGenerator`` / ``CaloGANCritic``
            (``[model.generator]``, ``[model.critic]``).
    """

    source: Path
    run: RunConfig
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    generator: Mapping[str, Any] = field(default_factory=dict)
    critic: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and the report); paths become strings."""

        def plain(v):
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, (tuple, list)):
                return [plain(x) for x in v]
            if isinstance(v, Mapping):
                return {k: plain(x) for k, x in v.items()}
            return v

        out = {"source": str(self.source)}
        for name in ("run", "data", "train", "generate", "validate"):
            out[name] = plain(dataclasses.asdict(getattr(self, name)))
        out["model"] = {"generator": plain(dict(self.generator)), "critic": plain(dict(self.critic))}
        return out


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Checks that ``kwargs`` are keyword arguments of ``fn`` (a class or function).

    Raises:
        ValueError: an unknown name, listing the accepted ones.
    """
    params = inspect.signature(fn).parameters
    names = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown argument(s) {unknown} for {fn.__name__}; accepted: {names}")
    return dict(kwargs)


_SECTIONS = {"run", "data", "model", "train", "generate", "validate"}


def load_calo_pipeline(path: str | os.PathLike) -> CaloPipelineConfig:
    """Reads a CaloGAN pipeline file (``pipelines/calo_gan.toml``).

    Relative paths are resolved against the file's folder.

    Raises:
        FileNotFoundError, ValueError: unreadable file, unknown sections or keys, bad values.
    """
    path = Path(path)
    data = read_toml(path)
    base = path.resolve().parent
    unknown = sorted(set(data) - _SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; allowed: {sorted(_SECTIONS)}")
    for required in ("run", "data"):
        if required not in data:
            raise ValueError(f"{path}: missing section [{required}]")
    model = data.get("model", {})
    bad = sorted(set(model) - {"generator", "critic"})
    if bad:
        raise ValueError(f"{path} [model]: unknown table(s) {bad}; allowed: ['critic', 'generator']")
    return CaloPipelineConfig(
        source=path,
        run=_build(RunConfig, data["run"], f"{path} [run]", base),
        data=_build(DataConfig, data["data"], f"{path} [data]", base),
        train=_build(TrainConfig, data.get("train", {}), f"{path} [train]", base),
        generate=_build(GenerateConfig, data.get("generate", {}), f"{path} [generate]", base),
        validate=_build(ValidateConfig, data.get("validate", {}), f"{path} [validate]", base),
        generator=dict(model.get("generator", {})),
        critic=dict(model.get("critic", {})),
    )

"""Dataset recipes (``datasets/*.toml``): ``[simulate] simulator = ...`` picks the reference
simulator that writes the file (``surrogate simulate RECIPE``).

:data:`SIMULATORS` maps each ``simulator`` value to a function ``(path, table, *, output, n,
seed, progress) -> (file written, description)``; a new simulator adds an entry there.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from surrogate.config import ConfigError, load_simulate_recipe, read_toml

__all__ = ["SIMULATORS", "simulate_recipe"]


def _showers(path: Path, table: Mapping[str, Any], *, output, n, seed, progress) -> tuple[Path, str]:
    from surrogate.pipelines.showers import simulate

    recipe = load_simulate_recipe(path)
    changes = {k: v for k, v in (("n_events", n), ("seed", seed)) if v is not None}
    recipe = dataclasses.replace(recipe, **changes)
    return simulate(recipe, output=output, progress=progress), f"{recipe.n_events} showers"


def _galaxies(path: Path, table: Mapping[str, Any], *, output, n, seed, progress) -> tuple[Path, str]:
    from surrogate.simulators.galaxies import simulate_galaxies_from_recipe

    table = {**table, **{k: v for k, v in (("n", n), ("seed", seed)) if v is not None}}
    written = simulate_galaxies_from_recipe(table, output=output, progress=progress, base_dir=path.parent)
    return written, "galaxy stamps"


SIMULATORS: dict[str, Callable[..., tuple[Path, str]]] = {"gflash": _showers, "galsim_cosmos": _galaxies}
"""Reference simulators of dataset recipes, by their ``[simulate] simulator`` name."""


def simulate_recipe(path: str | os.PathLike, *, output: str | os.PathLike | None = None, n: int | None = None,
                    seed: int | None = None, progress: bool = True) -> tuple[Path, str]:
    """Runs a dataset recipe.

    Arguments:
        path: the recipe (TOML with a ``[simulate]`` table).
        output: file to write instead of the recipe's ``output``.
        n: number of events instead of the recipe's.
        seed: seed instead of the recipe's.
        progress: show a progress bar.

    Returns:
        ``(file written, what it holds)``.

    Raises:
        FileNotFoundError: the recipe does not exist.
        ConfigError: no ``[simulate]`` table, an unknown ``simulator``, or a bad value.
    """
    path = Path(path)
    table = read_toml(path).get("simulate")
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: no [simulate] table")
    name = table.get("simulator", "gflash")
    if name not in SIMULATORS:
        raise ConfigError(f"{path} [simulate] simulator: expected one of {sorted(SIMULATORS)}, got {name!r}")
    return SIMULATORS[name](path, table, output=output, n=n, seed=seed, progress=progress)

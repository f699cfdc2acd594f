"""Model families and their pipelines, behind one registry.

Each family is a module ``surrogate/pipelines/<family>.py`` of public stage functions
(simulate, train, sample or generate, validate, run) and a :class:`Family` record that the CLI
dispatches through; adding a family adds a line to :data:`FAMILIES` (or a call to
:func:`register_family` from a user's own package) and touches no ``if`` in the CLI::

    family = get_family("calo_gan")
    cfg = surrogate.config.load_pipeline("pipelines/calo_gan.toml")   # a family.config instance
    result = family.train(cfg, resume=True, progress=True)           # -> FitResult
    report = family.run(cfg, resume=True, progress=True)             # -> path of report.json

Families are imported when first asked for, so reading a calorimeter pipeline does not import
nflows or GalSim.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["FAMILIES", "Family", "family_names", "get_family", "register_family"]


@dataclass(frozen=True)
class Family:
    """A model family as the CLI sees it.

    Attributes:
        name: the ``[run] pipeline`` value of its files.
        config: its :class:`surrogate.config.PipelineConfig` subclass (the file's schema).
        train: ``train(cfg, *, resume=True, progress=True)`` -> a
            :class:`surrogate.train.FitResult` (``surrogate train``); ``resume`` is ``True``,
            ``False`` or ``"anyway"`` (as :func:`surrogate.train.fit`'s).
        run: ``run(cfg, *, resume=True, progress=True)`` -> the path of ``report.json``
            (``surrogate run``).
        generate: ``generate(checkpoint, output, n_events, *, energy_range_gev, batch_size, seed,
            device, progress)`` -> the file written (``surrogate generate``), or ``None`` for a
            family that does not generate events.
        sample: ``sample(run_dir, observation_csv, output_csv, *, n, seed, device)`` -> the file
            written (``surrogate sample``: posterior samples of one observation), or ``None`` for a
            family that estimates no posterior.
    """

    name: str
    config: type
    train: Callable[..., Any]
    run: Callable[..., Any]
    generate: Callable[..., Any] | None = None
    sample: Callable[..., Any] | None = None


FAMILIES: dict[str, str] = {
    "calo_gan": "surrogate.pipelines.calo_gan",
    "calo_flow": "surrogate.pipelines.calo_flow",
    "galaxy_vae": "surrogate.pipelines.galaxy_vae",
    "npe": "surrogate.pipelines.npe",
}
"""Built-in families: name -> module holding its ``FAMILY`` record."""

_REGISTERED: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Adds (or replaces) a family, e.g. one defined outside this package.

    Raises:
        TypeError: ``family`` is not a :class:`Family`.
    """
    if not isinstance(family, Family):
        raise TypeError(f"register_family expects a Family, got {type(family).__name__}")
    _REGISTERED[family.name] = family


def family_names() -> list[str]:
    """Names of the built-in and registered families."""
    return sorted({*FAMILIES, *_REGISTERED})


def get_family(name: str, *, where: str = "pipeline") -> Family:
    """The family called ``name`` (importing its module on first use).

    Arguments:
        name: a family name, e.g. ``"calo_gan"``.
        where: how an error names the value (e.g. ``"file.toml [run] pipeline"``).

    Raises:
        surrogate.config.ConfigError: no family has that name.
    """
    if name not in _REGISTERED and name in FAMILIES:
        register_family(importlib.import_module(FAMILIES[name]).FAMILY)
    if name not in _REGISTERED:
        from surrogate.config import ConfigError

        raise ConfigError(f"{where}: unknown model family {name!r}; known: {family_names()}")
    return _REGISTERED[name]

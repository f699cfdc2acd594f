"""Where a ROOT hit tree keeps its event numbers, cell ids and energies: :class:`RootHitMapping`.

A hit tree (see :mod:`surrogate.data.root_hits`) stores one entry per hit. The mapping names its
TTree and branches, says how a cell id decodes into ``(layer, strip)`` of a dense array and in
which unit the energies are; it is built from a TOML table (``[data.root]``) with
:meth:`RootHitMapping.from_config`.

Example:
    >>> import numpy as np
    >>> mapping = RootHitMapping.from_config({"tree": "HitStrips", "event_branch": "Event", "cell_branch": "Laystrip",
    ...                                       "energy_branch": "Energy", "cell_divisor": 1000, "first_layer": 1,
    ...                                       "first_strip": 1})
    >>> layer, strip = mapping.decode(np.array([1001, 3108]))
    >>> layer.tolist(), strip.tolist()
    ([0, 2], [0, 107])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from surrogate.checks import check_int

__all__ = ["RootHitMapping"]


@dataclass(frozen=True)
class RootHitMapping:
    """Where a hit tree keeps its event numbers, cell ids and energies, and how ids become cells.

    A cell id decodes as ``layer = id // cell_divisor`` and ``strip = id % cell_divisor`` (or
    ``layer = first_layer``, ``strip = id`` when ``cell_divisor`` is ``None``: one layer); the
    dense array index is ``(layer - first_layer, strip - first_strip)``.

    Arguments:
        tree: Name of the TTree, e.g. ``"HitStrips"``.
        event_branch: Flat integer branch with the event number of each hit.
        cell_branch: Flat integer branch with the cell id of each hit.
        energy_branch: Flat floating-point branch with each hit's deposited energy, in
            ``energy_unit``.
        cell_divisor: Layer/strip split of the cell id (``1000`` for ``id = 1000 * layer + strip``),
            or ``None`` for a single layer whose strip is the id itself.
        first_layer: Layer number of the first layer (index 0 of the dense array).
        first_strip: Strip number of the first strip (index 0).
        n_layers: Layers of the dense array; ``None`` infers ``max(layer) - first_layer + 1`` from
            the data (always 1 without ``cell_divisor``).
        n_strips: Strips per layer; ``None`` infers ``max(strip) - first_strip + 1``. At most
            ``cell_divisor - first_strip``.
        energy_unit: Unit of the energy branch (stored as the HDF5 ``"unit"`` attribute); default
            ``"MeV"``, Geant4's internal unit. Values are not rescaled.

    Raises:
        ValueError: For an empty name, a non-integer or out-of-range number, or inconsistent
            options; the message names the option.
    """

    tree: str
    event_branch: str
    cell_branch: str
    energy_branch: str
    cell_divisor: int | None = None
    first_layer: int = 0
    first_strip: int = 0
    n_layers: int | None = None
    n_strips: int | None = None
    energy_unit: str = "MeV"

    def __post_init__(self) -> None:
        for name in ("tree", "event_branch", "cell_branch", "energy_branch", "energy_unit"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"RootHitMapping: {name} must be a non-empty string, got {value!r}")
        where = "RootHitMapping"
        check_int("cell_divisor", self.cell_divisor, minimum=1, optional=True, where=where)
        check_int("first_layer", self.first_layer, where=where)
        check_int("first_strip", self.first_strip, minimum=0, where=where)
        check_int("n_layers", self.n_layers, minimum=1, optional=True, where=where)
        check_int("n_strips", self.n_strips, minimum=1, optional=True, where=where)
        if self.cell_divisor is None and self.n_layers not in (None, 1):
            raise ValueError(f"RootHitMapping: n_layers={self.n_layers} needs a cell_divisor (without one there is one layer)")
        if self.cell_divisor is not None:
            if self.first_strip >= self.cell_divisor:
                raise ValueError(
                    f"RootHitMapping: first_strip={self.first_strip} must be < cell_divisor={self.cell_divisor}"
                )
            if self.n_strips is not None and self.first_strip + self.n_strips > self.cell_divisor:
                raise ValueError(
                    f"RootHitMapping: first_strip + n_strips = {self.first_strip + self.n_strips} exceeds "
                    f"cell_divisor={self.cell_divisor}: strips at or beyond the divisor cannot be encoded"
                )

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> RootHitMapping:
        """Builds a mapping from a plain dict, e.g. a TOML table.

        Example TOML table::

            [data.root]
            tree = "HitStrips"
            event_branch = "Event"
            cell_branch = "Laystrip"
            energy_branch = "Energy"
            cell_divisor = 1000
            first_layer = 1
            first_strip = 1

        Arguments:
            table: Keys are the constructor's argument names; ``tree``, ``event_branch``,
                ``cell_branch`` and ``energy_branch`` are required.

        Returns:
            The mapping.

        Raises:
            ValueError: For a non-mapping, unknown or missing keys (all named, with the accepted
                keys), or bad values (as the constructor).
        """
        if not isinstance(table, Mapping):
            raise ValueError(f"RootHitMapping: expected a table (dict) of options, got {type(table).__name__}")
        fields = dataclasses.fields(cls)
        known = [f.name for f in fields]
        unknown = sorted(str(k) for k in table if k not in known)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in table]
        if unknown or missing:
            raise ValueError(
                f"RootHitMapping: unknown keys {unknown}, missing keys {missing}; "
                f"required keys {required}, optional {[k for k in known if k not in required]}"
            )
        return cls(**dict(table))

    def to_config(self) -> dict[str, Any]:
        """The options as a plain dict (``from_config(m.to_config()) == m``); ``None`` means inferred."""
        return dataclasses.asdict(self)

    def decode(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell ids to 0-based ``(layer, strip)`` indices of the dense array (not range-checked).

        Arguments:
            cells: Integer cell ids, any shape.

        Returns:
            ``(layer, strip)``: int64 arrays of the same shape; ``layer = id // cell_divisor -
            first_layer``, ``strip = id % cell_divisor - first_strip`` (``layer = 0``,
            ``strip = id - first_strip`` without a ``cell_divisor``).
        """
        cells = np.asarray(cells).astype(np.int64, copy=False)
        if self.cell_divisor is None:
            return np.zeros_like(cells), cells - self.first_strip
        layer, strip = np.divmod(cells, self.cell_divisor)
        return layer - self.first_layer, strip - self.first_strip

"""Calorimeter geometries: readout layers, their cell grids, cell sizes and depths.

A :class:`CaloGeometry` says what the cells of a shower *are*: the readout layers front to
back, each a :class:`CaloLayer` with its name, its grid of cells (rows x columns, CaloGAN's
eta x phi), the cell size in mm and the layer's extent along the shower axis. File layouts
(:mod:`surrogate.data.calo`), models (:mod:`surrogate.models.calo_gan`), metrics
(:mod:`surrogate.metrics.showers`, :mod:`surrogate.metrics.plots`) and simulators
(:mod:`surrogate.simulators.gflash`) all take their geometry from here; every geometry
constant is defined in this module only.

**CaloGAN** (:data:`CALOGAN`; Paganini, de Oliveira, Nachman, arXiv:1705.02355, Sec. 2, and
1712.10321): a 480 mm x 480 mm lead/liquid-argon calorimeter read out in three layers, the
shower axis through the centre ``(0, 0)`` of every layer:

=============  ==========  =============  ================  ======================
layer          cells       cell (dy, dx)  depth (GFlash)    sampling layers
=============  ==========  =============  ================  ======================
``layer_0``    3 x 96      160 x 5 mm     0 - 90 mm         0 - 14
``layer_1``    12 x 12     40 x 40 mm     90 - 438 mm       15 - 72
``layer_2``    12 x 6      40 x 80 mm     438 - 480 mm      73 - 79
=============  ==========  =============  ================  ======================

Axis -2 of a layer's cell array is y (rows), axis -1 is x (columns); cell ``(r, c)`` of a layer
with ``(ny, nx)`` cells of ``(dy, dx)`` mm is centred at ``y = (r + 0.5) dy - ny dy / 2``,
``x = (c + 0.5) dx - nx dx / 2`` (:meth:`CaloLayer.cell_centres_mm`). The depths are those of
our GFlash stand-in (:mod:`surrogate.simulators.gflash`): 80 sampling layers of 2 mm Pb + 4 mm
LAr (:attr:`CaloGeometry.sampling_layer_mm`), read out in groups of 15, 58 and 7; CaloGAN's own
Geant4 layers are 90, 347 and 43 mm deep. In radiation lengths of the Pb/LAr mixture
(X0_eff = 15.6 mm, computed from the materials by
:class:`surrogate.simulators.gflash_params.SamplingCalorimeter`) the layers are 5.8, 22.3 and
2.7 X0 deep, 30.8 X0 in all (:meth:`CaloLayer.depth_x0`).

**More geometries.** The CaloChallenge 2022 datasets (Krause et al., arXiv:2410.21611) define
their voxels in XML binning files: per layer, radial bin edges in mm and a number of angular
bins. Such a geometry will be another :class:`CaloGeometry` instance whose layers are polar
grids: a layer class with ``r_edges_mm`` and ``n_alpha`` offering the same interface as
:class:`CaloLayer` (``name``, ``shape``, ``n_cells``, ``depth_mm``, ``cell_centres_mm``), so
code that loops over ``geometry.layers`` and asks ``geometry.n_voxels`` works unchanged. (Not
implemented yet.)

Example:
    >>> CALOGAN.layer_names
    ('layer_0', 'layer_1', 'layer_2')
    >>> CALOGAN.n_voxels, CALOGAN.layer("layer_2").shape, CALOGAN.sampling_layer_ends
    (504, (12, 6), (15, 73, 80))
    >>> y, x = CALOGAN.cell_centres_mm("layer_1")
    >>> float(x[0]), float(x[-1])
    (-220.0, 220.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from surrogate.checks import check_float, check_int

__all__ = [
    "CALOGAN",
    "CALOGAN_LAYERS",
    "CALOGAN_LAYER_SHAPES",
    "CaloGeometry",
    "CaloLayer",
]


_LAYER_INTERFACE = ("name", "shape", "n_cells", "depth_mm", "cell_centres_mm")
"""What :class:`CaloGeometry` needs of a layer."""


@dataclass(frozen=True)
class CaloLayer:
    """One readout layer: a grid of equal rectangular cells centred on the shower axis.

    Arguments:
        name: Layer name, the key of its cell array in files and dicts, e.g. ``"layer_0"``.
        shape: Cells ``(ny, nx)``: rows along y (CaloGAN's eta), columns along x (phi).
        cell_size_mm: Cell size ``(dy, dx)`` in mm.
        depth_mm: ``(front, back)`` of the layer along the shower axis, mm from the front face
            of the calorimeter.

    Raises:
        ValueError: An empty name, non-positive cell counts or sizes, or ``front >= back``.
    """

    name: str
    shape: tuple[int, int]
    cell_size_mm: tuple[float, float]
    depth_mm: tuple[float, float]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"CaloLayer: name must be a non-empty string, got {self.name!r}")
        where = f"CaloLayer {self.name!r}"
        if len(self.shape) != 2 or len(self.cell_size_mm) != 2 or len(self.depth_mm) != 2:
            raise ValueError(
                f"{where}: shape, cell_size_mm and depth_mm must be pairs, got {self.shape}, "
                f"{self.cell_size_mm}, {self.depth_mm}"
            )
        shape = tuple(check_int(f"shape[{i}]", n, minimum=1, where=where) for i, n in enumerate(self.shape))
        size = tuple(
            check_float(f"cell_size_mm[{i}]", d, minimum=0.0, exclusive_minimum=True, unit="mm", where=where)
            for i, d in enumerate(self.cell_size_mm)
        )
        front = check_float("depth_mm[0]", self.depth_mm[0], minimum=0.0, unit="mm", where=where)
        back = check_float("depth_mm[1]", self.depth_mm[1], minimum=front, exclusive_minimum=True, unit="mm",
                           where=where)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "cell_size_mm", size)
        object.__setattr__(self, "depth_mm", (front, back))

    @property
    def n_cells(self) -> int:
        """Number of cells ``ny * nx``."""
        return self.shape[0] * self.shape[1]

    @property
    def half_size_mm(self) -> tuple[float, float]:
        """Half the grid's extent ``(ny dy / 2, nx dx / 2)`` in mm: cells cover ``-h ... +h``."""
        return (self.shape[0] * self.cell_size_mm[0] / 2, self.shape[1] * self.cell_size_mm[1] / 2)

    @property
    def thickness_mm(self) -> float:
        """Extent along the shower axis, ``back - front``, in mm."""
        return self.depth_mm[1] - self.depth_mm[0]

    def depth_x0(self, radiation_length_mm: float) -> tuple[float, float]:
        """``(front, back)`` in radiation lengths of a material with ``X0 = radiation_length_mm``.

        Arguments:
            radiation_length_mm: The (effective) radiation length of the calorimeter material in
                mm, e.g. ``CALOGAN_CALORIMETER.radiation_length_mm`` (15.6 mm for CaloGAN's Pb/LAr).

        Returns:
            ``(depth_mm[0] / X0, depth_mm[1] / X0)``.

        Raises:
            ValueError: If ``radiation_length_mm`` is not a finite number > 0.
        """
        x0 = check_float("radiation_length_mm", radiation_length_mm, minimum=0.0, exclusive_minimum=True, unit="mm")
        return (self.depth_mm[0] / x0, self.depth_mm[1] / x0)

    def cell_centres_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates, the shower axis at 0.

        Returns:
            ``(y, x)``: float64 arrays ``(ny,)`` and ``(nx,)`` in mm,
            ``y = (r + 0.5) dy - ny dy / 2``, ``x = (c + 0.5) dx - nx dx / 2``.
        """
        (ny, nx), (dy, dx), (hy, hx) = self.shape, self.cell_size_mm, self.half_size_mm
        y = (np.arange(ny, dtype=np.float64) + 0.5) * dy - hy
        x = (np.arange(nx, dtype=np.float64) + 0.5) * dx - hx
        return y, x


@dataclass(frozen=True)
class CaloGeometry:
    """A calorimeter: its readout layers, front to back, and (for a sampling calorimeter) its sampling layers.

    Arguments:
        name: Name used in messages, e.g. ``"CaloGAN"``.
        layers: The readout layers, front to back (at least one, distinct names, not overlapping
            in depth): :class:`CaloLayer` s, or any layer type with ``name``, ``shape``,
            ``n_cells``, ``depth_mm`` and ``cell_centres_mm()`` (the polar layers of a future
            CaloChallenge geometry; :attr:`cell_sizes_mm` needs ``cell_size_mm`` too).
        sampling_layer_mm: ``(passive, active)`` thickness in mm of one sampling layer of a
            sampling calorimeter (CaloGAN: 2 mm Pb, 4 mm LAr), or ``None``; when given, every
            layer boundary must fall on a sampling-layer boundary.

    Raises:
        ValueError: For no layers, a repeated name, overlapping layers, bad sampling thicknesses
            or a layer boundary inside a sampling layer; the message names the geometry.
    """

    name: str
    layers: tuple[CaloLayer, ...]
    sampling_layer_mm: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers or not all(all(hasattr(layer, a) for a in _LAYER_INTERFACE) for layer in layers):
            raise ValueError(
                f"CaloGeometry {self.name!r}: layers must be a non-empty sequence of CaloLayer (or layers with "
                f"{', '.join(_LAYER_INTERFACE)}), got {layers!r}"
            )
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"CaloGeometry {self.name!r}: layer names must be distinct, got {names}")
        for before, after in zip(layers, layers[1:]):
            if after.depth_mm[0] < before.depth_mm[1]:
                raise ValueError(
                    f"CaloGeometry {self.name!r}: layer {after.name!r} starts at {after.depth_mm[0]} mm, "
                    f"before {before.name!r} ends at {before.depth_mm[1]} mm; expected layers front to back"
                )
        if self.sampling_layer_mm is not None:
            where = f"CaloGeometry {self.name!r}"
            passive, active = (
                check_float(f"sampling_layer_mm[{i}]", d, minimum=0.0, exclusive_minimum=True, unit="mm", where=where)
                for i, d in enumerate(self.sampling_layer_mm)
            )
            object.__setattr__(self, "sampling_layer_mm", (passive, active))
            for layer in layers:
                for depth in layer.depth_mm:
                    count = depth / (passive + active)
                    if not math.isclose(count, round(count), rel_tol=0.0, abs_tol=1e-9):
                        raise ValueError(
                            f"{where}: layer {layer.name!r} boundary at {depth} mm is not a multiple of the "
                            f"sampling layer thickness {passive + active} mm"
                        )

    @property
    def n_layers(self) -> int:
        """Number of readout layers."""
        return len(self.layers)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names of the readout layers, front to back."""
        return tuple(layer.name for layer in self.layers)

    @property
    def layer_shapes(self) -> Mapping[str, tuple[int, int]]:
        """Read-only ``{name: (ny, nx)}``, front to back."""
        return MappingProxyType({layer.name: layer.shape for layer in self.layers})

    @property
    def cell_sizes_mm(self) -> Mapping[str, tuple[float, float]]:
        """Read-only ``{name: (dy, dx)}`` in mm, front to back."""
        return MappingProxyType({layer.name: layer.cell_size_mm for layer in self.layers})

    @property
    def n_voxels(self) -> int:
        """Cells of all layers together (504 for CaloGAN)."""
        return sum(layer.n_cells for layer in self.layers)

    @property
    def depth_mm(self) -> float:
        """Depth of the back face of the last layer, mm from the front face (480 mm for CaloGAN)."""
        return self.layers[-1].depth_mm[1]

    @property
    def sampling_layer_ends(self) -> tuple[int, ...]:
        """Index (exclusive) of the last sampling layer of each readout layer, e.g. ``(15, 73, 80)``.

        Raises:
            ValueError: If the geometry has no ``sampling_layer_mm``.
        """
        if self.sampling_layer_mm is None:
            raise ValueError(f"CaloGeometry {self.name!r} is not a sampling calorimeter (no sampling_layer_mm)")
        thickness = sum(self.sampling_layer_mm)
        return tuple(int(round(layer.depth_mm[1] / thickness)) for layer in self.layers)

    def layer(self, name: str) -> CaloLayer:
        """The layer called ``name``.

        Raises:
            ValueError: If there is no such layer (the message lists the layer names).
        """
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"unknown {self.name} layer {name!r}; expected one of {self.layer_names}")

    def cell_centres_mm(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates of layer ``name``: ``(y, x)`` float64 ``(ny,)``, ``(nx,)`` in mm.

        See :meth:`CaloLayer.cell_centres_mm`.

        Raises:
            ValueError: If there is no such layer.
        """
        return self.layer(name).cell_centres_mm()


def _calogan_layers(shapes: Sequence[tuple[int, int]], sizes: Sequence[tuple[float, float]],
                    ends_mm: Sequence[float]) -> tuple[CaloLayer, ...]:
    fronts = (0.0, *ends_mm[:-1])
    return tuple(
        CaloLayer(f"layer_{i}", shape, size, (front, back))
        for i, (shape, size, front, back) in enumerate(zip(shapes, sizes, fronts, ends_mm))
    )


CALOGAN = CaloGeometry(
    "CaloGAN",
    _calogan_layers(
        shapes=((3, 96), (12, 12), (12, 6)),
        sizes=((160.0, 5.0), (40.0, 40.0), (40.0, 80.0)),
        ends_mm=(90.0, 438.0, 480.0),
    ),
    sampling_layer_mm=(2.0, 4.0),
)
"""The CaloGAN calorimeter (arXiv:1705.02355): three layers of 3 x 96, 12 x 12 and 12 x 6 cells."""

CALOGAN_LAYERS = CALOGAN.layer_names
"""``CALOGAN.layer_names``: ``("layer_0", "layer_1", "layer_2")``, front to back."""

CALOGAN_LAYER_SHAPES = CALOGAN.layer_shapes
"""``CALOGAN.layer_shapes``: read-only ``{"layer_0": (3, 96), "layer_1": (12, 12), "layer_2": (12, 6)}``."""

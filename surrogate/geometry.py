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

**CaloChallenge geometries** (Krause et al., arXiv:2410.21611; :class:`PolarLayer`): the
challenge's datasets define their voxels in XML binning files (read by
:func:`surrogate.data.binning.read_binning_xml`): per layer, radial bin edges in mm and a number of
equal angular bins ``alpha`` covering ``[-pi, pi)``. A polar layer's cell array has shape
``(n_alpha, n_r)``: axis -2 is the angle, axis -1 the radius, so its row-major flattening is the
challenge's voxel order (layer, then angle, then radius; ``XMLHandler.fill_r_a_lists`` of the
challenge's ``code/XMLHandler.py``). A voxel's centre is ``(eta, phi) = (r_mid cos a_mid,
r_mid sin a_mid)`` with ``r_mid`` the middle of its radial bin and ``a_mid`` the middle of its
angular bin (``XMLHandler.SetEtaAndPhiFromPolar``). Layers without radial bins (``r_edges="0"``)
hold no voxels and are left out; DS1 photons keep layers 0, 1, 2, 3 and 12 (368 voxels), DS1
pions 0-3 and 12-14 (533), DS2 all 45 (6480).

**One interface for both kinds of layer.** Every layer has ``name``, ``shape`` (its cell array
per event), ``n_cells``, ``depth_mm`` (``(front, back)`` in mm, or ``None`` when the binning does
not say, as the challenge's XML files do not), ``voxel_centres_mm()`` and ``voxel_areas_mm2()``
(flat arrays in the layer's row-major order) and ``two_dimensional`` (whether the voxels resolve
both transverse directions; the challenge computes centres and widths in eta and phi only for
those). A :class:`CaloGeometry` flattens a shower dict ``{layer: (N, *shape)}`` into the flat
voxel array ``(N, n_voxels)`` of the CaloChallenge file layout (layers front to back, each
row-major) and back (:meth:`CaloGeometry.flatten`, :meth:`CaloGeometry.unflatten`); for CaloGAN
that order is ``layer_0`` (288), ``layer_1`` (144), ``layer_2`` (72).

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
from typing import Any

import numpy as np

from surrogate.checks import check_float
from surrogate.calo_layers import LAYER_INTERFACE, CaloLayer, PolarLayer

__all__ = [
    "CALOGAN",
    "CALOGAN_LAYERS",
    "CALOGAN_LAYER_SHAPES",
    "CaloGeometry",
    "CaloLayer",
    "PolarLayer",
]


@dataclass(frozen=True)
class CaloGeometry:
    """A calorimeter: its readout layers, front to back, and (for a sampling calorimeter) its sampling layers.

    Arguments:
        name: Name used in messages, e.g. ``"CaloGAN"``.
        layers: The readout layers, front to back (at least one, distinct names, not overlapping
            in depth where depths are known): :class:`CaloLayer` s, :class:`PolarLayer` s, or any
            layer type with ``name``, ``shape``, ``n_cells``, ``depth_mm``, ``voxel_centres_mm()``,
            ``voxel_areas_mm2()`` and ``two_dimensional`` (:attr:`cell_sizes_mm` and
            :meth:`cell_centres_mm` need :class:`CaloLayer` s).
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
        if not layers or not all(all(hasattr(layer, a) for a in LAYER_INTERFACE) for layer in layers):
            raise ValueError(
                f"CaloGeometry {self.name!r}: layers must be a non-empty sequence of CaloLayer (or layers with "
                f"{', '.join(LAYER_INTERFACE)}), got {layers!r}"
            )
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"CaloGeometry {self.name!r}: layer names must be distinct, got {names}")
        known = [layer for layer in layers if layer.depth_mm is not None]
        for before, after in zip(known, known[1:]):
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
            for layer in known:
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
        """Read-only ``{name: (dy, dx)}`` in mm, front to back.

        Raises:
            ValueError: If a layer is not a rectangular :class:`CaloLayer`.
        """
        return MappingProxyType({layer.name: self._grid(layer.name).cell_size_mm for layer in self.layers})

    @property
    def n_voxels(self) -> int:
        """Cells of all layers together (504 for CaloGAN)."""
        return sum(layer.n_cells for layer in self.layers)

    @property
    def layer_slices(self) -> Mapping[str, slice]:
        """Read-only ``{name: slice}``: where each layer's voxels lie in the flat voxel vector."""
        slices, start = {}, 0
        for layer in self.layers:
            slices[layer.name] = slice(start, start + layer.n_cells)
            start += layer.n_cells
        return MappingProxyType(slices)

    @property
    def depth_mm(self) -> float:
        """Depth of the back face of the last layer, mm from the front face (480 mm for CaloGAN).

        Raises:
            ValueError: If the last layer's depth is unknown (``depth_mm is None``).
        """
        if self.layers[-1].depth_mm is None:
            raise ValueError(f"CaloGeometry {self.name!r}: the depth of layer {self.layers[-1].name!r} is unknown")
        return self.layers[-1].depth_mm[1]

    def flatten(self, showers: Mapping[str, Any]) -> Any:
        """Concatenates the layers of a shower dict into the flat voxel array of the CaloChallenge layout.

        Arguments:
            showers: ``{layer name: (N, *layer.shape)}`` for every layer (numpy arrays or torch
                tensors, all of the same kind; other keys such as ``"energy"`` are ignored).

        Returns:
            ``(N, n_voxels)`` of the same kind and dtype: the layers front to back, each
            flattened row-major (for a :class:`PolarLayer`: angle, then radius).

        Raises:
            ValueError: If a layer is missing or has the wrong shape (the message names it).
        """
        parts = []
        for layer in self.layers:
            if layer.name not in showers:
                raise ValueError(f"{self.name}: showers lack layer {layer.name!r}; expected layers {self.layer_names}")
            cells = showers[layer.name]
            shape = tuple(cells.shape)
            if len(shape) != 3 or shape[1:] != tuple(layer.shape):
                raise ValueError(f"{self.name}: showers[{layer.name!r}] has shape {shape}; expected "
                                 f"(N, {', '.join(map(str, layer.shape))})")
            parts.append(cells.reshape(shape[0], layer.n_cells))
        if type(parts[0]).__module__.startswith("torch"):
            import torch

            return torch.cat(parts, dim=1)
        return np.concatenate(parts, axis=1)

    def unflatten(self, voxels: Any) -> dict[str, Any]:
        """Splits flat voxel arrays ``(N, n_voxels)`` into ``{layer name: (N, *layer.shape)}`` views.

        Arguments:
            voxels: ``(N, n_voxels)`` numpy array or torch tensor in the order of :meth:`flatten`.

        Returns:
            One array (or tensor) per layer, front to back, sharing memory with ``voxels`` where possible.

        Raises:
            ValueError: If ``voxels`` is not ``(N, n_voxels)``.
        """
        shape = tuple(voxels.shape)
        if len(shape) != 2 or shape[1] != self.n_voxels:
            raise ValueError(f"{self.name}: voxels have shape {shape}; expected (N, {self.n_voxels})")
        return {name: voxels[:, cut].reshape(shape[0], *self.layer(name).shape)
                for name, cut in self.layer_slices.items()}

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

    def same_voxels(self, other: CaloGeometry) -> bool:
        """Whether ``other`` has the same voxels: the same layers in the same order, each with the
        same name, kind and bins (cell grid and size, or radial edges and angular bins); the
        geometries' names and the layers' depths may differ."""
        return isinstance(other, CaloGeometry) and [_voxel_key(a) for a in self.layers] == [
            _voxel_key(b) for b in other.layers]

    def describe(self) -> str:
        """One line for messages: ``"'CaloGAN' (3 layers, 504 voxels)"``."""
        return f"{self.name!r} ({self.n_layers} layer{'s' if self.n_layers != 1 else ''}, {self.n_voxels} voxels)"

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

        See :meth:`CaloLayer.cell_centres_mm`; any layer's voxel centres are given by its
        ``voxel_centres_mm()``.

        Raises:
            ValueError: If there is no such layer, or it is not a rectangular :class:`CaloLayer`.
        """
        return self._grid(name).cell_centres_mm()

    def _grid(self, name: str) -> CaloLayer:
        layer = self.layer(name)
        if not isinstance(layer, CaloLayer):
            raise ValueError(f"{self.name} layer {name!r} is a {type(layer).__name__}, not a rectangular CaloLayer")
        return layer


def _voxel_key(layer: Any) -> tuple:
    if isinstance(layer, PolarLayer):
        return ("polar", layer.name, layer.r_edges_mm, layer.n_alpha)
    if isinstance(layer, CaloLayer):
        return ("grid", layer.name, layer.shape, layer.cell_size_mm)
    return (type(layer).__name__, layer.name, tuple(layer.shape))


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

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

from surrogate.checks import check_float, check_int

__all__ = [
    "CALOGAN",
    "CALOGAN_LAYERS",
    "CALOGAN_LAYER_SHAPES",
    "CaloGeometry",
    "CaloLayer",
    "PolarLayer",
]


_LAYER_INTERFACE = ("name", "shape", "n_cells", "depth_mm", "voxel_centres_mm", "voxel_areas_mm2", "two_dimensional")
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

    @property
    def two_dimensional(self) -> bool:
        """Always ``True``: a grid of cells resolves both transverse directions."""
        return True

    def voxel_centres_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre of every cell in row-major order, as the challenge's features take them.

        Returns:
            ``(eta, phi)``: float64 arrays ``(ny * nx,)`` in mm; ``eta`` is the cell's y (row)
            and ``phi`` its x (column) coordinate, for cell ``r * nx + c``.
        """
        y, x = self.cell_centres_mm()
        return np.repeat(y, self.shape[1]), np.tile(x, self.shape[0])

    def voxel_areas_mm2(self) -> np.ndarray:
        """Area ``dy * dx`` of every cell, float64 ``(ny * nx,)`` in mm^2."""
        return np.full(self.n_cells, self.cell_size_mm[0] * self.cell_size_mm[1])


@dataclass(frozen=True)
class PolarLayer:
    """One readout layer binned in radius and angle about the shower axis (CaloChallenge 2022).

    The voxels are the rings ``r_edges_mm[i] <= r < r_edges_mm[i + 1]`` cut into ``n_alpha``
    equal angular sectors ``-pi + 2 pi j / n_alpha <= alpha < -pi + 2 pi (j + 1) / n_alpha``;
    the cell array of an event has shape ``(n_alpha, n_r)`` (angle, then radius), the order of
    the challenge's flat voxel vector. ``alpha`` is measured from the eta axis towards the phi
    axis: a point at ``(eta, phi)`` mm has ``r = hypot(eta, phi)``, ``alpha = atan2(phi, eta)``.

    Arguments:
        name: Layer name, e.g. ``"layer_12"`` (the challenge's layer id after ``layer_``).
        r_edges_mm: Radial bin edges in mm, strictly increasing, the first >= 0 (at least two).
        n_alpha: Number of angular bins (>= 1; 1 means the layer is binned in r only).
        depth_mm: ``(front, back)`` along the shower axis in mm from the calorimeter's front
            face, or ``None`` when unknown (the challenge's binning files do not give depths).

    Raises:
        ValueError: An empty name, fewer than two or non-increasing or negative edges, a
            non-integer or non-positive ``n_alpha``, or ``front >= back``; the message names the layer.

    References:
        Krause et al., arXiv:2410.21611; the binning files and ``code/XMLHandler.py`` of
        github.com/CaloChallenge/homepage.

    Example:
        >>> layer = PolarLayer("layer_1", (0.0, 2.0, 4.0), 4)
        >>> layer.shape, layer.n_cells
        ((4, 2), 8)
        >>> eta, phi = layer.voxel_centres_mm()
        >>> [round(float(v), 3) for v in eta[:2]], [round(float(v), 3) for v in phi[:2]]
        ([-0.707, -2.121], [-0.707, -2.121])
    """

    name: str
    r_edges_mm: tuple[float, ...]
    n_alpha: int = 1
    depth_mm: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"PolarLayer: name must be a non-empty string, got {self.name!r}")
        where = f"PolarLayer {self.name!r}"
        try:
            edges = tuple(float(r) for r in self.r_edges_mm)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: r_edges_mm must be a sequence of numbers (mm), got {self.r_edges_mm!r}") from None
        if len(edges) < 2 or not all(math.isfinite(r) for r in edges) or edges[0] < 0 or any(
                b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"{where}: r_edges_mm must be at least two finite, strictly increasing edges >= 0 mm, "
                             f"got {self.r_edges_mm!r}")
        n_alpha = check_int("n_alpha", self.n_alpha, minimum=1, where=where)
        object.__setattr__(self, "r_edges_mm", edges)
        object.__setattr__(self, "n_alpha", n_alpha)
        if self.depth_mm is not None:
            if len(self.depth_mm) != 2:
                raise ValueError(f"{where}: depth_mm must be a pair (front, back) in mm or None, got {self.depth_mm}")
            front = check_float("depth_mm[0]", self.depth_mm[0], minimum=0.0, unit="mm", where=where)
            back = check_float("depth_mm[1]", self.depth_mm[1], minimum=front, exclusive_minimum=True, unit="mm",
                               where=where)
            object.__setattr__(self, "depth_mm", (front, back))

    @property
    def n_r(self) -> int:
        """Number of radial bins."""
        return len(self.r_edges_mm) - 1

    @property
    def shape(self) -> tuple[int, int]:
        """Cells ``(n_alpha, n_r)``: angle, then radius."""
        return (self.n_alpha, self.n_r)

    @property
    def n_cells(self) -> int:
        """Number of voxels ``n_alpha * n_r``."""
        return self.n_alpha * self.n_r

    @property
    def two_dimensional(self) -> bool:
        """Whether the layer has more than one angular bin (the challenge's "binned in alpha")."""
        return self.n_alpha > 1

    def alpha_edges(self) -> np.ndarray:
        """Angular bin edges, float64 ``(n_alpha + 1,)`` in radians, from ``-pi`` to ``pi``."""
        return np.linspace(-np.pi, np.pi, self.n_alpha + 1)

    def voxel_centres_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre of every voxel in the flat order (angle, then radius), as the challenge defines it.

        Returns:
            ``(eta, phi)``: float64 arrays ``(n_alpha * n_r,)`` in mm, ``r_mid cos(a_mid)`` and
            ``r_mid sin(a_mid)`` with ``r_mid`` the middle of the radial bin and ``a_mid`` the
            middle of the angular bin (0 for a layer with one angular bin, so ``eta = r_mid``,
            ``phi = 0`` there).
        """
        edges = np.asarray(self.r_edges_mm)
        r_mid = np.tile(0.5 * (edges[1:] + edges[:-1]), self.n_alpha)
        a = self.alpha_edges()
        a_mid = np.repeat(0.5 * (a[1:] + a[:-1]), self.n_r)
        return r_mid * np.cos(a_mid), r_mid * np.sin(a_mid)

    def voxel_areas_mm2(self) -> np.ndarray:
        """Area ``pi (r_hi^2 - r_lo^2) / n_alpha`` of every voxel, float64 ``(n_alpha * n_r,)`` in mm^2."""
        edges = np.asarray(self.r_edges_mm)
        return np.tile(np.pi * np.diff(edges**2) / self.n_alpha, self.n_alpha)

    def voxel_index(self, eta_mm: np.ndarray, phi_mm: np.ndarray) -> np.ndarray:
        """Flat voxel index of points at transverse positions ``(eta, phi)``; ``n_cells`` outside.

        Arguments:
            eta_mm, phi_mm: Positions in mm relative to the shower axis, broadcastable float
                arrays ``(*)``.

        Returns:
            int64 array ``(*)``: ``j * n_r + i`` for angular bin ``j`` and radial bin ``i``;
            ``n_cells`` for points with ``r < r_edges_mm[0]`` or ``r >= r_edges_mm[-1]``.
        """
        eta, phi = np.broadcast_arrays(np.asarray(eta_mm), np.asarray(phi_mm))
        edges_sq = np.square(np.asarray(self.r_edges_mm, dtype=np.float64))
        r_sq = eta.astype(np.float64) ** 2 + phi.astype(np.float64) ** 2
        i = np.searchsorted(edges_sq, r_sq, side="right") - 1
        inside = (i >= 0) & (i < self.n_r)
        if self.n_alpha > 1:
            alpha = np.arctan2(phi, eta)
            j = np.floor((alpha + np.pi) * (self.n_alpha / (2.0 * np.pi))).astype(np.int64)
            np.clip(j, 0, self.n_alpha - 1, out=j)  # alpha = pi (phi = +0, eta < 0) joins the last bin
            index = j * self.n_r + i
        else:
            index = i.astype(np.int64)
        return np.where(inside, index, self.n_cells).astype(np.int64)


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
        if not layers or not all(all(hasattr(layer, a) for a in _LAYER_INTERFACE) for layer in layers):
            raise ValueError(
                f"CaloGeometry {self.name!r}: layers must be a non-empty sequence of CaloLayer (or layers with "
                f"{', '.join(_LAYER_INTERFACE)}), got {layers!r}"
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

"""The readout layers of a calorimeter geometry (:mod:`surrogate.geometry`): a rectangular grid of
cells (:class:`CaloLayer`, the CaloGAN layers) and a polar grid of voxels in radius and angle
(:class:`PolarLayer`, the CaloChallenge layers). Both offer the interface the geometry and the
challenge's features use: ``name``, ``shape``, ``n_cells``, ``depth_mm``, ``voxel_centres_mm()``,
``voxel_areas_mm2()`` and ``two_dimensional``. Lengths in mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from surrogate.checks import check_float, check_int

__all__ = [
    "CaloLayer",
    "LAYER_INTERFACE",
    "PolarLayer",
]


LAYER_INTERFACE = ("name", "shape", "n_cells", "depth_mm", "voxel_centres_mm", "voxel_areas_mm2", "two_dimensional")
"""What :class:`surrogate.geometry.CaloGeometry` needs of a layer."""


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

"""HDF5 layout of galaxy stamps: noisy observation, its PSF and noise, the PSF-free truth.

One file holds ``N`` stamps of ``S x S`` pixels at one pixel scale, with PSF stamps of
``P x P`` pixels (``P`` odd, the PSF centred on the middle pixel, as :mod:`surrogate.nn.psf`
expects), written by :class:`GalaxyWriter` / :func:`write_galaxies`
(atomically, through :func:`surrogate.data.hdf5.atomic_output`) and read by
:func:`read_galaxies` or :class:`GalaxyStampDataset`:

=====================  =======  ============  ==============  =====================================
key                    dtype    shape         unit            content
=====================  =======  ============  ==============  =====================================
``observed``           float32  (N, S, S)     counts          noisy PSF-convolved stamp (can be < 0)
``psf``                float32  (N, P, P)     1               PSF sampled at the pixel centres,
                                                              unit sum, >= 0
``noise_variance``     float32  (N,)          counts^2        variance of the Gaussian pixel noise
``profile``            float32  (N, S, S)     counts          PSF-free noiseless profile, >= 0
``magnitude``          float32  (N,)          mag             AB magnitude (COSMOS F814W)
``half_light_radius``  float32  (N,)          arcsec          PSF-free half-light radius, > 0
=====================  =======  ============  ==============  =====================================

Counts are per pixel. Each dataset has a ``unit`` attribute; the file has the attributes
``layout = "galaxy_stamps"``, ``pixel_scale_arcsec``, ``stamp_size``, ``psf_size``,
``flux_unit``, ``psf_centre`` (text), and, when made by the simulator, ``simulation`` (JSON
of its settings). Array axis -2 is y (rows), axis -1 is x (columns), as in ``galsim.Image.array``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from surrogate.checks import check_choice, check_float, check_int
from surrogate.data.event_writer import COMPRESSIONS, GZIP_LEVEL, chunk_events_for
from surrogate.data.hdf5 import as_float32, atomic_output, open_hdf5

__all__ = [
    "GALAXY_KEYS",
    "GALAXY_LAYOUT",
    "GALAXY_UNITS",
    "GalaxyFileInfo",
    "GalaxyStampDataset",
    "GalaxyWriter",
    "galaxy_file_info",
    "read_galaxies",
    "validate_galaxies",
    "write_galaxies",
]

GALAXY_LAYOUT = "galaxy_stamps"
GALAXY_KEYS = ("observed", "psf", "noise_variance", "profile", "magnitude", "half_light_radius")
GALAXY_UNITS = {
    "observed": "counts",
    "psf": "1",
    "noise_variance": "counts^2",
    "profile": "counts",
    "magnitude": "mag",
    "half_light_radius": "arcsec",
}
_DESCRIPTIONS = {
    "observed": "noisy observed stamp: profile convolved with the PSF and the pixel, plus Gaussian noise; counts per pixel",
    "psf": "PSF sampled at the pixel centres on the stamp's pixel scale, unit sum, centred on pixel (P//2, P//2)",
    "noise_variance": "variance of the Gaussian pixel noise of 'observed', counts^2 per pixel",
    "profile": "PSF-free noiseless light profile integrated over each pixel, counts per pixel",
    "magnitude": "AB magnitude of the galaxy (COSMOS F814W MAG_AUTO plus the flux jitter)",
    "half_light_radius": "radius of the circle about the centre holding half the PSF-free flux, arcsec",
}
# Allowed values per key: "any" (finite), "nonneg" (finite >= 0), "pos" (finite > 0).
_RANGES = {"observed": "any", "psf": "nonneg", "noise_variance": "pos", "profile": "nonneg",
           "magnitude": "any", "half_light_radius": "pos"}
_PSF_CENTRE = "PSF origin at 0-based pixel (P//2, P//2), the middle pixel (P is odd)"


def _expected_shape(key: str, stamp_size: int | str, psf_size: int | str) -> tuple:
    if key in ("observed", "profile"):
        return (stamp_size, stamp_size)
    if key == "psf":
        return (psf_size, psf_size)
    return ()


def _check_values(values: np.ndarray, key: str, *, where: Any, offset: int = 0) -> None:
    """Raises ValueError naming ``where``, the key and the first bad event if values are out of range."""
    if values.size == 0:
        return
    flat = values.reshape(len(values), -1)
    kind = _RANGES[key]
    ok = np.isfinite(flat)
    if kind == "nonneg":
        ok &= flat >= 0
    elif kind == "pos":
        ok &= flat > 0
    if ok.all():
        return
    event = int(np.flatnonzero(~ok.all(axis=1))[0])
    bad = flat[event][~ok[event]][0]
    want = {"any": "finite values", "nonneg": "finite values >= 0", "pos": "finite values > 0"}[kind]
    raise ValueError(f"{where}: '{key}': expected {want} in {GALAXY_UNITS[key]}, found {bad!r} at stamp {offset + event}")


@dataclass(frozen=True)
class GalaxyFileInfo:
    """What a galaxy file holds (read by :func:`galaxy_file_info` without reading the stamps).

    Attributes:
        path: the file.
        n: number of stamps.
        stamp_size: side ``S`` of the stamps, pixels.
        psf_size: side ``P`` of the PSF stamps, pixels.
        pixel_scale: arcsec per pixel.
        simulation: the simulator's settings (empty if the file was not simulated here).
    """

    path: Path
    n: int
    stamp_size: int
    psf_size: int
    pixel_scale: float
    simulation: dict = field(default_factory=dict)


def _info(file: h5py.File, path: Any) -> GalaxyFileInfo:
    """Checks the layout (metadata only) and returns the file's description."""
    if file.attrs.get("layout") not in (GALAXY_LAYOUT, GALAXY_LAYOUT.encode()):
        raise ValueError(f"{path}: attribute 'layout' is {file.attrs.get('layout')!r}, expected {GALAXY_LAYOUT!r} (a galaxy stamp file)")
    try:
        scale = float(file.attrs["pixel_scale_arcsec"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: missing or bad attribute 'pixel_scale_arcsec', expected a number > 0 (arcsec/pixel)") from None
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{path}: attribute 'pixel_scale_arcsec' = {scale}, expected a number > 0 (arcsec/pixel)")
    lengths = {}
    sizes = {}
    for key in GALAXY_KEYS:
        obj = file.get(key)
        if not isinstance(obj, h5py.Dataset):
            found = ", ".join(sorted(file.keys())) or "none"
            raise ValueError(f"{path}: missing dataset '{key}' ({_DESCRIPTIONS[key]}, unit {GALAXY_UNITS[key]}); found: {found}")
        if obj.dtype.kind != "f":
            raise ValueError(f"{path}: dataset '{key}' has dtype {obj.dtype}, expected a float dataset")
        shape = obj.shape
        template = _expected_shape(key, "S", "P")
        if len(shape) != 1 + len(template) or (template and shape[1] != shape[2]):
            want = ", ".join(["N", *map(str, template)])
            raise ValueError(f"{path}: dataset '{key}' has shape {shape}, expected ({want})")
        unit = obj.attrs.get("unit")
        unit = unit.decode() if isinstance(unit, bytes) else unit
        if unit is not None and unit != GALAXY_UNITS[key]:
            raise ValueError(f"{path}: dataset '{key}' has unit {unit!r}, expected {GALAXY_UNITS[key]!r}")
        lengths[key] = shape[0]
        if template:
            sizes[key] = shape[1]
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: datasets have different numbers of stamps {lengths}; expected one N for all")
    if sizes["observed"] != sizes["profile"]:
        raise ValueError(f"{path}: 'observed' is {sizes['observed']}x{sizes['observed']} but 'profile' is "
                         f"{sizes['profile']}x{sizes['profile']}; expected the same stamp size")
    if sizes["psf"] % 2 == 0 or sizes["psf"] > sizes["observed"]:
        raise ValueError(f"{path}: 'psf' stamps are {sizes['psf']}x{sizes['psf']}, expected an odd size <= the stamp size {sizes['observed']}")
    simulation = file.attrs.get("simulation")
    try:
        simulation = json.loads(simulation) if simulation is not None else {}
    except (TypeError, ValueError):
        simulation = {}
    return GalaxyFileInfo(Path(path), int(lengths["observed"]), int(sizes["observed"]), int(sizes["psf"]), scale, simulation)


def galaxy_file_info(path: str | os.PathLike) -> GalaxyFileInfo:
    """Checks a galaxy file's layout (no values read) and describes it.

    Arguments:
        path: HDF5 file in the layout of this module.

    Returns:
        A :class:`GalaxyFileInfo`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not HDF5, not a galaxy file, a missing dataset or attribute, or wrong
            shapes/dtypes/units (naming the file, the key and what was expected).
    """
    with open_hdf5(path) as file:
        return _info(file, path)


def read_galaxies(path: str | os.PathLike, *, start: int = 0, stop: int | None = None,
                  keys: Sequence[str] | None = None, check: bool = True) -> dict[str, np.ndarray]:
    """Reads stamps ``[start, stop)`` of a galaxy file.

    Arguments:
        path: the file.
        start, stop: stamp range (``stop=None``: to the end).
        keys: which datasets to read (default all of :data:`GALAXY_KEYS`).
        check: check the values (finite; ranges of the table in the module documentation).

    Returns:
        ``{key: float32 array}`` with shapes ``(n, S, S)``, ``(n, P, P)`` or ``(n,)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad layout or values (see :func:`galaxy_file_info`), a bad range or an unknown key.
    """
    keys = tuple(GALAXY_KEYS if keys is None else keys)
    unknown = [k for k in keys if k not in GALAXY_KEYS]
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a galaxy file has {list(GALAXY_KEYS)}")
    with open_hdf5(path) as file:
        info = _info(file, path)
        stop = info.n if stop is None else stop
        if not 0 <= start <= stop <= info.n:
            raise ValueError(f"{path}: stamp range [{start}, {stop}) is not within [0, {info.n}]")
        out = {key: as_float32(file[key][start:stop]) for key in keys}
    if check:
        for key, values in out.items():
            _check_values(values, key, where=path, offset=start)
    return out


def validate_galaxies(path: str | os.PathLike, *, block: int = 4096) -> GalaxyFileInfo:
    """Checks a whole galaxy file, layout and every value, block by block.

    Arguments:
        path: the file.
        block: stamps per read.

    Returns:
        The file's :class:`GalaxyFileInfo`.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_galaxies`.
    """
    with open_hdf5(path) as file:
        info = _info(file, path)
        for lo in range(0, info.n, block):
            for key in GALAXY_KEYS:
                _check_values(as_float32(file[key][lo:lo + block]), key, where=path, offset=lo)
    return info


class GalaxyWriter:
    """Streams galaxy stamps into a new HDF5 file, atomically.

    The file appears under ``path`` only when the ``with`` block exits normally after exactly
    ``n`` stamps were written (an exception or too few stamps leave no file, and an existing
    one untouched).

    Arguments:
        path: destination; its folder must exist.
        n: number of stamps (>= 1).
        stamp_size: side ``S`` of the stamps, pixels.
        psf_size: side ``P`` of the PSF stamps, odd, ``<= S``.
        pixel_scale: arcsec per pixel.
        compression: ``"gzip"`` (level 4 + shuffle), ``"lzf"`` or ``None``.
        simulation: settings of the simulator, stored as the JSON attribute ``simulation``.

    Raises:
        ValueError: bad arguments (at construction), a bad batch (in :meth:`write`), too few
            stamps (on exit); messages name the file and the key.

    Example:
        >>> import tempfile, numpy as np
        >>> path = Path(tempfile.mkdtemp()) / "g.h5"
        >>> batch = {"observed": np.zeros((2, 8, 8)), "psf": np.ones((2, 3, 3)) / 9,
        ...          "noise_variance": np.ones(2), "profile": np.zeros((2, 8, 8)),
        ...          "magnitude": np.full(2, 21.0), "half_light_radius": np.full(2, 0.4)}
        >>> with GalaxyWriter(path, 2, stamp_size=8, psf_size=3, pixel_scale=0.2) as writer:
        ...     writer.write(batch)
        >>> read_galaxies(path)["psf"].shape
        (2, 3, 3)
    """

    def __init__(self, path: str | os.PathLike, n: int, *, stamp_size: int, psf_size: int, pixel_scale: float,
                 compression: str | None = "gzip", simulation: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.n = check_int("n", n, minimum=1, where=self.path)
        self.stamp_size = check_int("stamp_size", stamp_size, minimum=1, where=self.path)
        self.psf_size = check_int("psf_size", psf_size, minimum=1, where=self.path)
        if psf_size % 2 == 0 or psf_size > stamp_size:
            raise ValueError(f"{self.path}: psf_size must be odd and <= stamp_size={stamp_size}, got {psf_size}")
        self.pixel_scale = check_float("pixel_scale", pixel_scale, minimum=0.0, exclusive_minimum=True,
                                       unit="arcsec/pixel", where=self.path)
        self.compression = check_choice("compression", compression, COMPRESSIONS, where=self.path)
        self.simulation = dict(simulation) if simulation is not None else None
        self.n_written = 0
        self._stack: ExitStack | None = None
        self._file: h5py.File | None = None

    def __enter__(self) -> GalaxyWriter:
        if self._stack is not None or self.n_written:
            raise RuntimeError(f"{self.path}: a GalaxyWriter can be entered only once")
        with ExitStack() as stack:
            tmp = stack.enter_context(atomic_output(self.path))
            file = stack.enter_context(h5py.File(tmp, "w"))
            file.attrs.update({
                "layout": GALAXY_LAYOUT, "pixel_scale_arcsec": self.pixel_scale, "stamp_size": self.stamp_size,
                "psf_size": self.psf_size, "flux_unit": "counts per pixel", "psf_centre": _PSF_CENTRE,
            })
            if self.simulation is not None:
                file.attrs["simulation"] = json.dumps(self.simulation, sort_keys=True)
            for key in GALAXY_KEYS:
                shape = _expected_shape(key, self.stamp_size, self.psf_size)
                chunk = chunk_events_for(shape, self.n)
                dataset = file.create_dataset(
                    key, shape=(self.n, *shape), dtype=np.float32, chunks=(chunk, *shape),
                    compression=self.compression, compression_opts=GZIP_LEVEL if self.compression == "gzip" else None,
                    shuffle=self.compression == "gzip",
                )
                dataset.attrs["unit"] = GALAXY_UNITS[key]
                dataset.attrs["description"] = _DESCRIPTIONS[key]
            self._file = file
            self._stack = stack.pop_all()
        return self

    def write(self, batch: Mapping[str, Any]) -> None:
        """Appends a batch of stamps.

        Arguments:
            batch: every key of :data:`GALAXY_KEYS`: ``"observed"``/``"profile"`` ``(n, S, S)``,
                ``"psf"`` ``(n, P, P)``, the others ``(n,)``; real floating dtypes, values as in
                the module's table.

        Raises:
            ValueError: missing/unknown keys, wrong dtype or shape, different lengths, bad
                values or more than ``n`` stamps in total (naming the file and the key).
            RuntimeError: outside the ``with`` block.
        """
        if self._file is None:
            raise RuntimeError(f"{self.path}: write() outside the writer's `with` block")
        missing = [k for k in GALAXY_KEYS if k not in batch]
        extra = [k for k in batch if k not in GALAXY_KEYS]
        if missing or extra:
            raise ValueError(f"{self.path}: batch keys {sorted(batch)}: missing {missing}, unknown {extra}; expected {list(GALAXY_KEYS)}")
        arrays = {}
        for key in GALAXY_KEYS:
            array = np.asarray(batch[key])
            shape = _expected_shape(key, self.stamp_size, self.psf_size)
            if array.dtype.kind != "f":
                raise ValueError(f"{self.path}: batch '{key}' has dtype {array.dtype}, expected a real floating dtype")
            if array.ndim != len(shape) + 1 or array.shape[1:] != shape:
                want = ", ".join(["n", *map(str, shape)])
                raise ValueError(f"{self.path}: batch '{key}' has shape {array.shape}, expected ({want})")
            array = as_float32(array)
            _check_values(array, key, where=f"{self.path} (batch)", offset=self.n_written)
            arrays[key] = array
        lengths = {k: len(a) for k, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{self.path}: batch arrays have different lengths {lengths}")
        m = lengths["observed"]
        if self.n_written + m > self.n:
            raise ValueError(f"{self.path}: batch of {m} stamps would exceed n={self.n} ({self.n_written} already written)")
        for key, array in arrays.items():
            self._file[key][self.n_written:self.n_written + m] = array
        self.n_written += m

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        stack, self._stack, self._file = self._stack, None, None
        if stack is None:
            return False
        if exc_type is None and self.n_written != self.n:
            error = ValueError(f"{self.path}: only {self.n_written} of n={self.n} stamps were written; file not created")
            stack.__exit__(ValueError, error, None)
            raise error
        return bool(stack.__exit__(exc_type, exc, tb))


def write_galaxies(path: str | os.PathLike, stamps: Mapping[str, Any], *, pixel_scale: float,
                   compression: str | None = "gzip", simulation: Mapping[str, Any] | None = None) -> Path:
    """Writes a dict of stamps (as returned by :func:`read_galaxies`) to a new file, atomically.

    Arguments:
        path: destination.
        stamps: every key of :data:`GALAXY_KEYS` (shapes and units in the module documentation).
        pixel_scale: arcsec per pixel.
        compression, simulation: as :class:`GalaxyWriter`.

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: as :meth:`GalaxyWriter.write`.
    """
    for key in ("observed", "psf"):
        if key not in stamps:
            raise ValueError(f"{path}: stamps lack '{key}'; expected keys {list(GALAXY_KEYS)}")
    observed, psf = np.asarray(stamps["observed"]), np.asarray(stamps["psf"])
    if observed.ndim != 3 or psf.ndim != 3:
        raise ValueError(f"{path}: 'observed' {observed.shape} and 'psf' {psf.shape} must be (N, S, S) and (N, P, P)")
    with GalaxyWriter(path, len(observed), stamp_size=observed.shape[-1], psf_size=psf.shape[-1],
                      pixel_scale=pixel_scale, compression=compression, simulation=simulation) as writer:
        writer.write(stamps)
    return Path(path)


class GalaxyStampDataset(Dataset):
    """Map-style torch dataset of galaxy stamps; the file is opened lazily in each worker.

    ``__init__`` only checks the layout (a short open and close); the HDF5 handle is opened at
    the first ``__getitem__`` in each process (DataLoader workers included), because h5py
    handles do not survive fork or pickling.

    Items are dicts of float32 tensors: ``"observed"`` and ``"profile"`` ``(1, S, S)``
    (counts per pixel, a channel axis added), ``"psf"`` ``(1, P, P)``, ``"noise_variance"``
    (counts^2), ``"magnitude"`` (mag) and ``"half_light_radius"`` (arcsec) ``(1,)``.

    Arguments:
        path: galaxy file.
        start, stop: the stamps ``[start, stop)`` of the file form the dataset.
        keys: which datasets to return (default all).
        in_memory: read the whole range at the first access (per process) instead of stamp by
            stamp; fast for files that fit in memory.

    Attributes:
        info: the file's :class:`GalaxyFileInfo`.

    Raises:
        FileNotFoundError, ValueError: as :func:`galaxy_file_info`; a bad range or key.
    """

    def __init__(self, path: str | os.PathLike, *, start: int = 0, stop: int | None = None,
                 keys: Sequence[str] | None = None, in_memory: bool = False):
        self.path = Path(path)
        self.info = galaxy_file_info(self.path)
        self.start = int(start)
        self.stop = self.info.n if stop is None else int(stop)
        if not 0 <= self.start <= self.stop <= self.info.n:
            raise ValueError(f"{self.path}: stamp range [{start}, {stop}) is not within [0, {self.info.n}]")
        self.keys = tuple(GALAXY_KEYS if keys is None else keys)
        unknown = [k for k in self.keys if k not in GALAXY_KEYS]
        if unknown:
            raise ValueError(f"{self.path}: unknown key(s) {unknown}; a galaxy file has {list(GALAXY_KEYS)}")
        self.in_memory = bool(in_memory)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._cache: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_pid"], state["_cache"] = None, None, None
        return state

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = open_hdf5(self.path)
            self._pid = os.getpid()
        return self._file

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} stamps")
        index = index % len(self)
        if self.in_memory:
            if self._cache is None or self._pid != os.getpid():
                self._cache = read_galaxies(self.path, start=self.start, stop=self.stop, keys=self.keys)
                self._pid = os.getpid()
            values = {k: self._cache[k][index] for k in self.keys}
        else:
            file = self._handle()
            values = {k: as_float32(file[k][self.start + index]) for k in self.keys}
            for k, v in values.items():
                _check_values(v[None], k, where=self.path, offset=self.start + index)
        return {k: torch.from_numpy(np.array(v, dtype=np.float32).reshape(1, *np.shape(v))) for k, v in values.items()}

    def close(self) -> None:
        """Closes this process's file handle (reopened on the next access)."""
        if self._file is not None:
            self._file.close()
            self._file = None

"""Parameter-data pairs ``(theta, x)`` of a simulator in an HDF5 file, for simulation-based inference.

Layout: two datasets with the simulation index first, ``theta`` ``(N, D)`` and ``x``
``(N, *x_shape)``, any float or integer type (read as float32); a failed simulation may be a row
of NaN (the NPE pipeline drops and counts it).

**Memory.** Training holds the pairs it uses in memory as float32, and NPE training copies them
twice more (the valid rows, then the training split): about three times ``N (D + prod(x_shape))
4`` bytes. :func:`read_pairs` reads only the rows asked for, block by block (a float64 file never
sits in memory whole), and refuses before reading when ``copies`` times their size would not fit
in the memory available (Linux ``MemAvailable``), naming the sizes. A file larger than memory is
used by reading part of it (``[data] num_simulations`` in a pipeline file); training does not
stream from disk.

Example:
    >>> import tempfile, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "pairs.h5"
    >>> _ = write_pairs(path, np.zeros((10, 2)), np.ones((10, 3, 4)))
    >>> pairs_info(path)
    (10, 2, (3, 4))
    >>> theta, x = read_pairs(path, start=2, stop=5)
    >>> theta.shape, x.shape, x.dtype
    (torch.Size([3, 2]), torch.Size([3, 3, 4]), torch.float32)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from surrogate.data.hdf5 import SCAN_BYTES, as_float32, atomic_output, open_hdf5

__all__ = ["available_memory", "pairs_info", "read_pairs", "write_pairs"]


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _datasets(file: h5py.File, path: Any) -> tuple[h5py.Dataset, h5py.Dataset]:
    for key, expected in (("theta", "(N, D)"), ("x", "(N, ...)")):
        if key not in file or not isinstance(file[key], h5py.Dataset):
            raise ValueError(f"{path}: no dataset {key!r} (expected 'theta' (N, D) and 'x' (N, ...); found "
                             f"{sorted(file.keys())})")
        ds = file[key]
        if ds.dtype.kind not in "fiub" or ds.ndim < 1 or (key == "theta" and ds.ndim != 2):
            raise ValueError(f"{path}: dataset {key!r} must hold numbers of shape {expected}, got {ds.dtype} "
                             f"{ds.shape}")
    theta, x = file["theta"], file["x"]
    if theta.shape[0] != x.shape[0]:
        raise ValueError(f"{path}: 'theta' has {theta.shape[0]} rows and 'x' {x.shape[0]}; they must pair up")
    return theta, x


def pairs_info(path: str | os.PathLike) -> tuple[int, int, tuple[int, ...]]:
    """``(N, D, x_shape)`` of a pairs file, read from its metadata.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not HDF5, a dataset missing or of the wrong shape or type (naming it).
    """
    with open_hdf5(path) as f:
        theta, x = _datasets(f, path)
        shape = tuple(int(s) for s in x.shape[1:])
        return int(theta.shape[0]), int(theta.shape[1]), shape if shape else (1,)


def read_pairs(path: str | os.PathLike, *, start: int = 0, stop: int | None = None,
               copies: int = 1) -> tuple[Tensor, Tensor]:
    """Rows ``start:stop`` of ``theta`` and ``x`` as float32 tensors.

    Arguments:
        path: the HDF5 file.
        start, stop: the rows (``stop`` ``None``: to the end).
        copies: refuse rows that would not fit this many times in the memory available (the
            NPE pipeline asks for 3: training copies them twice); 0: no check.

    Returns:
        ``(theta (n, D), x (n, *x_shape))``; ``x`` of a 1-D dataset becomes ``(n, 1)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: see :func:`pairs_info`; rows out of range.
        MemoryError: the rows would not fit ``copies`` times in the memory available (naming the
            sizes).
    """
    with open_hdf5(path) as f:
        theta_ds, x_ds = _datasets(f, path)
        n = theta_ds.shape[0]
        stop = n if stop is None else stop
        if not 0 <= start < stop <= n:
            raise ValueError(f"{path}: rows {start}:{stop} are outside its {n} rows")
        x_shape = tuple(x_ds.shape[1:]) or (1,)
        row_bytes = 4 * (theta_ds.shape[1] + int(np.prod(x_shape)))
        need, free = (stop - start) * row_bytes, available_memory()
        if copies and free is not None and copies * need > free:
            raise MemoryError(f"{path}: rows {start}:{stop} take {need / 1e9:.2f} GB as float32 ({copies} copies: "
                              f"{copies * need / 1e9:.2f} GB), more than the {free / 1e9:.2f} GB of memory "
                              "available; read fewer ([data] num_simulations)")
        theta = np.empty((stop - start, theta_ds.shape[1]), dtype=np.float32)
        x = np.empty((stop - start, *x_shape), dtype=np.float32)
        block = max(1, SCAN_BYTES // max(1, row_bytes * 2))
        for lo in range(start, stop, block):
            hi = min(stop, lo + block)
            theta[lo - start:hi - start] = as_float32(theta_ds[lo:hi])
            x[lo - start:hi - start] = as_float32(x_ds[lo:hi]).reshape(hi - lo, *x_shape)
    return torch.from_numpy(theta), torch.from_numpy(x)


def write_pairs(path: str | os.PathLike, theta: Any, x: Any) -> Path:
    """Writes ``theta (N, D)`` and ``x (N, ...)`` as float32 datasets, atomically.

    Raises:
        ValueError: ``theta`` not 2-D or the lengths differ.
    """
    theta, x = np.asarray(theta, dtype=np.float32), np.asarray(x, dtype=np.float32)
    if theta.ndim != 2 or x.ndim < 1 or theta.shape[0] != x.shape[0]:
        raise ValueError(f"need theta (N, D) and x (N, ...) of the same length, got {theta.shape} and {x.shape}")
    path = Path(path)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("theta", data=theta)
            f.create_dataset("x", data=x)
    return path

"""Tables of numbers in sbibm's CSV format: a header row, then one row per sample.

sbibm names the columns ``parameter_1, parameter_2, ...`` for parameters (true parameters,
posterior samples) and ``data_1, data_2, ...`` for observations (Lueckmann et al. 2021,
arXiv:2101.04653; the files in ``datasets/sbibm``). Files ending in ``.bz2`` are compressed.

Example:
    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "samples.csv"
    >>> _ = write_csv(path, torch.tensor([[0.5, -1.0], [0.25, 2.0]]), prefix="parameter")
    >>> print(path.read_text(), end="")
    parameter_1,parameter_2
    0.5,-1
    0.25,2
    >>> read_csv(path)
    array([[ 0.5 , -1.  ],
           [ 0.25,  2.  ]], dtype=float32)
"""

from __future__ import annotations

import bz2
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from surrogate.data.hdf5 import atomic_output

__all__ = ["read_csv", "write_csv"]


def read_csv(path: str | os.PathLike) -> np.ndarray:
    """The numbers of a CSV file with a header row, ``(rows, columns)`` float32.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no data row, rows of different lengths or a value that is not a number
            (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rt") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "no data": refused below
            values = np.loadtxt(f, delimiter=",", skiprows=1, ndmin=2, dtype=np.float32)
    except ValueError as exc:
        raise ValueError(f"{path}: not a CSV table of numbers with one header row ({exc})") from exc
    if values.shape[0] == 0:
        raise ValueError(f"{path}: no data row below the header")
    return values


def write_csv(path: str | os.PathLike, values: Any, *, prefix: str = "parameter") -> Path:
    """Writes ``values (rows, columns)`` with the header ``<prefix>_1,<prefix>_2,...``, atomically,
    each number with 9 significant digits (float32 read back exactly).

    Raises:
        ValueError: ``values`` not 2-D.
    """
    values = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (rows, columns), got {values.shape}")
    path = Path(path)
    header = ",".join(f"{prefix}_{i + 1}" for i in range(values.shape[1]))
    with atomic_output(path) as tmp:
        np.savetxt(tmp, values, delimiter=",", header=header, comments="", fmt="%.9g")
    return path

"""Calorimeter shower files: the CaloGAN and CaloChallenge HDF5 layouts, and a streaming Dataset.

**CaloGAN layout** (Paganini, de Oliveira, Nachman, arXiv:1705.02355 and 1712.10321): one HDF5
dataset per key, event axis first; the layers, their cells and cell sizes are those of
:data:`surrogate.geometry.CALOGAN`:

==============  ============  ======  ===================================================
key             shape         unit    meaning
==============  ============  ======  ===================================================
``layer_0``     (N, 3, 96)    MeV     cell energies of the first layer
``layer_1``     (N, 12, 12)   MeV     cell energies of the middle layer
``layer_2``     (N, 12, 6)    MeV     cell energies of the last layer
``energy``      (N, 1)        GeV     incident particle energy
``overflow``    (N, 3)        MeV     energy per layer deposited outside the cell grid
==============  ============  ======  ===================================================

**CaloChallenge layout** (Krause et al., "CaloChallenge 2022", arXiv:2410.21611):
``incident_energies`` (N, 1) in MeV and ``showers`` (N, V) voxel energies in MeV, ``V`` fixed per
dataset (368 and 533 in dataset 1, 6480 in dataset 2, 40500 in dataset 3).

Files we write store float32, chunked and compressed (see :mod:`surrogate.data.event_writer`), with a
``"unit"`` attribute on every dataset and a ``"layout"`` attribute on the file; readers accept
files without attributes (CaloGAN's public Geant4 files have none) and any float dtype (those
files store float64), and return float32. Every reader checks the layout at open and raises
:class:`ValueError` naming the file, the key and expected vs found; cell values are checked (finite,
>= 0; incident energies > 0) for the events actually read, :func:`validate_calogan` and
:func:`validate_calochallenge` scan a whole file chunk by chunk.

Example:
    >>> import tempfile, numpy as np
    >>> from surrogate.data import read_calogan, write_calogan
    >>> n = 4
    >>> showers = {"layer_0": np.ones((n, 3, 96), np.float32), "layer_1": np.ones((n, 12, 12), np.float32),
    ...            "layer_2": np.ones((n, 12, 6), np.float32), "energy": np.full((n, 1), 50.0, np.float32),
    ...            "overflow": np.zeros((n, 3), np.float32)}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = write_calogan(f"{d}/showers.h5", showers)
    ...     back = read_calogan(f"{d}/showers.h5", start=1, stop=3)
    >>> back["layer_1"].shape, back["energy"][:, 0].tolist()
    ((2, 12, 12), [50.0, 50.0])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from surrogate.checks import check_int
from surrogate.data.event_writer import EventWriter
from surrogate.data.hdf5 import Field, as_float32, check_layout, check_values, open_hdf5, scan_values
from surrogate.geometry import CALOGAN

__all__ = [
    "CALOCHALLENGE_FIELDS",
    "CALOGAN_FIELDS",
    "CALOGAN_KEYS",
    "CALOGAN_UNITS",
    "CaloChallengeWriter",
    "CaloGANWriter",
    "read_calochallenge",
    "read_calogan",
    "read_incident_energies",
    "validate_calochallenge",
    "validate_calogan",
    "write_calochallenge",
    "write_calogan",
]

CALOGAN_FIELDS = (
    *(Field(layer.name, layer.shape, "MeV", description=f"cell energies of {layer.name}") for layer in CALOGAN.layers),
    Field("energy", (1,), "GeV", positive=True, description="incident energy"),
    Field(
        "overflow", (CALOGAN.n_layers,), "MeV",
        description=f"energy per layer beyond +-{CALOGAN.layers[0].half_size_mm[1]:g} mm",
    ),
)
"""The CaloGAN layout as :class:`surrogate.data.hdf5.Field` s."""
CALOGAN_KEYS = tuple(f.name for f in CALOGAN_FIELDS)
"""``("layer_0", "layer_1", "layer_2", "energy", "overflow")``."""
CALOGAN_UNITS = {f.name: f.unit for f in CALOGAN_FIELDS}
"""Unit of every CaloGAN key: MeV, except ``"energy"`` in GeV."""

CALOCHALLENGE_FIELDS = (
    Field("incident_energies", (1,), "MeV", positive=True, description="incident energy"),
    Field("showers", (None,), "MeV", description="voxel energies"),
)
"""The CaloChallenge layout; ``showers`` has a free voxel count ``V``."""

LAYOUTS = {"calogan": CALOGAN_FIELDS, "calochallenge": CALOCHALLENGE_FIELDS}


def _read(path: str | os.PathLike, fields: tuple[Field, ...], start: int, stop: int | None) -> dict[str, np.ndarray]:
    with open_hdf5(path) as file:
        n_events, _ = check_layout(file, fields, path=path)
        stop = n_events if stop is None else stop
        start, stop = check_int("start", start, where=path), check_int("stop", stop, where=path)
        if not 0 <= start <= stop <= n_events:
            raise ValueError(
                f"{path}: expected 0 <= start <= stop <= {n_events} (events in the file), got start={start}, stop={stop}"
            )
        out = {}
        for field in fields:
            values = as_float32(file[field.name][start:stop])
            check_values(values, field, path=path, offset=start)
            out[field.name] = values
        return out


def _validate(path: str | os.PathLike, fields: tuple[Field, ...]) -> int:
    with open_hdf5(path) as file:
        n_events, _ = check_layout(file, fields, path=path)
        for field in fields:
            scan_values(file[field.name], field, path=path)
        return n_events


def read_calogan(path: str | os.PathLike, *, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Reads events ``[start, stop)`` of a CaloGAN-layout file.

    Arguments:
        path: HDF5 file in the CaloGAN layout (ours or CaloGAN's Geant4 files).
        start, stop: Event range, ``0 <= start <= stop <= N``; ``stop=None`` means ``N``.

    Returns:
        ``{"layer_0": (n, 3, 96), "layer_1": (n, 12, 12), "layer_2": (n, 12, 6)`` cell energies in
        MeV, ``"energy": (n, 1)`` incident energy in GeV, ``"overflow": (n, 3)`` in MeV``}``, all
        float32, ``n = stop - start``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not HDF5, a key is missing, a shape, dtype or unit attribute is wrong,
            lengths differ, the range is invalid, or a value read is non-finite or negative
            (incident energy <= 0). The message names the file and key.

    References:
        Paganini, de Oliveira, Nachman, arXiv:1705.02355 and arXiv:1712.10321.
    """
    return _read(path, CALOGAN_FIELDS, start, stop)


def validate_calogan(path: str | os.PathLike) -> int:
    """Checks a whole CaloGAN-layout file: metadata, then every value chunk by chunk.

    Arguments:
        path: HDF5 file.

    Returns:
        The number of events ``N``.

    Raises:
        FileNotFoundError, ValueError: As :func:`read_calogan`, for any event of the file.

    References:
        Paganini, de Oliveira, Nachman, arXiv:1705.02355 and arXiv:1712.10321.
    """
    return _validate(path, CALOGAN_FIELDS)


class CaloGANWriter(EventWriter):
    """Streams showers into a new CaloGAN-layout file; atomic (see :class:`~surrogate.data.event_writer.EventWriter`).

    The file appears under ``path`` only after exactly ``n_events`` events were written and the
    ``with`` block exited normally.

    Example::

        with CaloGANWriter("showers.h5", n_events=10_000) as writer:
            for batch in batches:       # dicts with the five CaloGAN keys, (n, ...) each
                writer.write(batch)

    Arguments:
        path: Destination file; its directory must exist.
        n_events: Number of events the file will hold (>= 1).
        compression: ``"gzip"`` (level 4, default, readable everywhere), ``"lzf"`` (15 % faster
            to read, h5py only) or ``None``; measurements in :mod:`surrogate.data.event_writer`.
        chunk_events: Events per chunk; ``None`` chooses per dataset (at most 512 KiB and 1024
            events per chunk).
        attrs: Further file attributes to store next to ``layout = "calogan"`` (e.g. the
            simulator's ``{"readout_threshold_mev": 0.01}``).

    Raises:
        ValueError: Naming the file and key, for a bad batch (see :meth:`write`: the five keys
            ``"layer_0"`` (n, 3, 96), ``"layer_1"`` (n, 12, 12), ``"layer_2"`` (n, 12, 6),
            ``"overflow"`` (n, 3) in MeV and >= 0, ``"energy"`` (n, 1) in GeV and > 0, float), or
            when the block exits with fewer than ``n_events`` events written.

    References:
        Paganini, de Oliveira, Nachman, arXiv:1705.02355 and arXiv:1712.10321.
    """

    def __init__(
        self, path: str | os.PathLike, n_events: int, *, compression: str | None = "gzip",
        chunk_events: int | None = None, attrs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            path, n_events, fields=CALOGAN_FIELDS, event_shapes={f.name: f.shape for f in CALOGAN_FIELDS},
            compression=compression, chunk_events=chunk_events, attrs={**(attrs or {}), "layout": "calogan"},
        )

    def __enter__(self) -> CaloGANWriter:
        super().__enter__()
        return self


def _n_events(path: str | os.PathLike, arrays: Mapping[str, object], key: str) -> int:
    value = arrays[key]
    shape = getattr(value, "shape", None)
    if not shape:
        kind = type(value).__name__
        raise ValueError(f"{path}: '{key}' must be an array with an event axis, got {kind} of shape {shape}")
    return int(shape[0])


def write_calogan(
    path: str | os.PathLike,
    showers: Mapping[str, np.ndarray],
    *,
    compression: str | None = "gzip",
    chunk_events: int | None = None,
) -> Path:
    """Writes showers in the CaloGAN layout, atomically (with :class:`CaloGANWriter`).

    Arguments:
        path: Destination file; its directory must exist. An existing file is replaced.
        showers: ``"layer_0"`` (N, 3, 96), ``"layer_1"`` (N, 12, 12), ``"layer_2"`` (N, 12, 6)
            and ``"overflow"`` (N, 3) in MeV, ``"energy"`` (N, 1) in GeV; any float dtype, stored as
            float32 (float32 input round-trips bit-exactly).
        compression, chunk_events: As :class:`CaloGANWriter`.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ValueError: Naming the file and key, for a missing key, a wrong shape or dtype, different
            lengths, no events, or a non-finite or negative value.

    References:
        Paganini, de Oliveira, Nachman, arXiv:1705.02355 and arXiv:1712.10321.
    """
    if "energy" not in showers:
        raise ValueError(f"{path}: missing key 'energy'; expected keys {list(CALOGAN_KEYS)}")
    n = _n_events(path, showers, "energy")
    with CaloGANWriter(path, n, compression=compression, chunk_events=chunk_events) as writer:
        writer.write(showers)
    return Path(path)


def read_calochallenge(path: str | os.PathLike, *, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Reads events ``[start, stop)`` of a CaloChallenge-layout file.

    Arguments:
        path: HDF5 file with ``incident_energies`` (N, 1) and ``showers`` (N, V).
        start, stop: Event range, ``0 <= start <= stop <= N``; ``stop=None`` means ``N``.

    Returns:
        ``{"incident_energies": (n, 1), "showers": (n, V)}``, float32, both in MeV.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: As :func:`read_calogan`, naming the file and key.

    References:
        Krause et al., "CaloChallenge 2022: A Community Challenge for Fast Calorimeter
        Simulation", arXiv:2410.21611.
    """
    return _read(path, CALOCHALLENGE_FIELDS, start, stop)


def read_incident_energies(path: str | os.PathLike) -> np.ndarray:
    """The incident energies of a shower file of either layout, in MeV.

    Arguments:
        path: HDF5 file in the CaloChallenge layout (``incident_energies``, MeV) or the CaloGAN
            layout (``energy``, GeV); the layout is recognised by these keys.

    Returns:
        float64 ``(N,)`` in MeV (CaloGAN's GeV times 1000).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file has neither key, does not match the layout, or an energy is not
            finite and > 0 (the message names the file and key).

    References:
        Krause et al., arXiv:2410.21611; Paganini et al., arXiv:1705.02355.
    """
    with open_hdf5(path) as file:
        layout = "calochallenge" if "incident_energies" in file else "calogan" if "energy" in file else None
        if layout is None:
            raise ValueError(f"{path}: no 'incident_energies' (CaloChallenge layout, MeV) or 'energy' (CaloGAN "
                             f"layout, GeV); found keys {sorted(file)}")
        fields = LAYOUTS[layout]
        check_layout(file, fields, path=path)
        field = fields[0] if layout == "calochallenge" else next(f for f in fields if f.name == "energy")
        values = as_float32(file[field.name][:])
        check_values(values, field, path=path)
    scale = 1.0 if layout == "calochallenge" else 1000.0
    return values.reshape(-1).astype(np.float64) * scale


def validate_calochallenge(path: str | os.PathLike) -> int:
    """Checks a whole CaloChallenge-layout file: metadata, then every value chunk by chunk.

    Arguments:
        path: HDF5 file.

    Returns:
        The number of events ``N``.

    Raises:
        FileNotFoundError, ValueError: As :func:`read_calochallenge`, for any event of the file.

    References:
        Krause et al., arXiv:2410.21611.
    """
    return _validate(path, CALOCHALLENGE_FIELDS)


class CaloChallengeWriter(EventWriter):
    """Streams showers into a new CaloChallenge-layout file; atomic like :class:`CaloGANWriter`.

    Arguments:
        path: Destination file; its directory must exist.
        n_events: Number of events the file will hold (>= 1).
        n_voxels: Voxels per shower ``V``.
        compression, chunk_events: As :class:`CaloGANWriter`.
        attrs: Further file attributes to store next to ``layout = "calochallenge"`` (e.g.
            ``{"readout_threshold_mev": 1.0, "geometry": "binning_dataset_1_photons"}``); the
            challenge's evaluation reads only the two datasets.

    Raises:
        ValueError: For a bad batch (keys ``"incident_energies"`` (n, 1) > 0 and ``"showers"``
            (n, V) >= 0, both MeV) or fewer than ``n_events`` events written.

    References:
        Krause et al., arXiv:2410.21611.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_events: int,
        *,
        n_voxels: int,
        compression: str | None = "gzip",
        chunk_events: int | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        n_voxels = check_int("n_voxels", n_voxels, minimum=1, where=path)
        super().__init__(
            path, n_events, fields=CALOCHALLENGE_FIELDS,
            event_shapes={"incident_energies": (1,), "showers": (n_voxels,)},
            compression=compression, chunk_events=chunk_events,
            attrs={**(attrs or {}), "layout": "calochallenge"},
        )

    def __enter__(self) -> CaloChallengeWriter:
        super().__enter__()
        return self


def write_calochallenge(
    path: str | os.PathLike,
    incident_energies: np.ndarray,
    showers: np.ndarray,
    *,
    compression: str | None = "gzip",
    chunk_events: int | None = None,
) -> Path:
    """Writes showers in the CaloChallenge layout, atomically.

    Arguments:
        path: Destination file; its directory must exist. An existing file is replaced.
        incident_energies: (N, 1) incident energies in MeV, > 0.
        showers: (N, V) voxel energies in MeV, >= 0.
        compression, chunk_events: As :class:`CaloGANWriter`.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ValueError: Naming the file and key, for a wrong shape or dtype, different lengths, no
            events, or a non-finite or out-of-range value.

    References:
        Krause et al., arXiv:2410.21611.
    """
    arrays = {"incident_energies": incident_energies, "showers": showers}
    n = _n_events(path, arrays, "incident_energies")
    shape = getattr(showers, "shape", ())
    if len(shape) != 2:
        raise ValueError(f"{path}: 'showers' has shape {shape}, expected (N, V)")
    with CaloChallengeWriter(path, n, n_voxels=shape[1], compression=compression, chunk_events=chunk_events) as writer:
        writer.write(arrays)
    return Path(path)



"""HDF5 building blocks shared by every event-file layout: atomic output, checked opening and layout checks.

An *event file* stores one HDF5 dataset per quantity, each with the event index as its first
axis: ``(N, *event_shape)``. A layout (see :mod:`surrogate.data.calo`) is a tuple of
:class:`Field` objects naming the datasets, their per-event shapes and units. This module knows
nothing about calorimeters; it opens files with clear errors and checks a file against a layout
(metadata at once, values chunk by chunk so a file larger than memory can be checked).
:func:`atomic_output`, the write-all-or-nothing context manager, serves every writer of the
project (HDF5, PNG, JSON, checkpoints). Event files are written by
:class:`surrogate.data.event_writer.EventWriter` (chunking and compression choices, with their
measurements, are documented there).

Files are opened with a 4 MiB chunk cache per dataset, which holds several of the chunks our
writers make (at most 512 KiB each), so a block read does not decompress a chunk twice.

References:
    The HDF5 Group, "Chunking in HDF5" and "Improving I/O performance when working with HDF5
    compressed datasets" (chunk cache, chunk size guidance), https://docs.hdfgroup.org/.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from surrogate.rundir import remove_abandoned_temporaries, temporary_name

__all__ = [
    "Field",
    "as_float32",
    "atomic_output",
    "check_layout",
    "check_values",
    "open_hdf5",
    "scan_values",
]

CHUNK_CACHE_BYTES = 4 * 1024 * 1024  # per dataset when reading: holds several of our chunks
SCAN_BYTES = 16 * 1024 * 1024  # values are checked in pieces of at most about this size


@dataclass(frozen=True)
class Field:
    """One dataset of an event-file layout.

    Arguments:
        name: Dataset name in the file, e.g. ``"layer_0"``.
        shape: Per-event shape; ``None`` marks a size that is free but the same for every event,
            e.g. ``(None,)`` for the CaloChallenge voxel axis.
        unit: Physical unit of the values, stored as the dataset attribute ``"unit"``.
        positive: If true, values must be > 0 (incident energies); else >= 0 (deposits).
        description: Human-readable meaning, used in error messages.
    """

    name: str
    shape: tuple[int | None, ...]
    unit: str
    positive: bool = False
    description: str = ""

    def expected(self) -> str:
        """Text such as ``"float dataset of shape (N, 3, 96) in MeV"`` for error messages."""
        dims = ", ".join(["N", *("V" if d is None else str(d) for d in self.shape)])
        what = f" ({self.description})" if self.description else ""
        return f"float dataset of shape ({dims}) in {self.unit}{what}"


@contextmanager
def atomic_output(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Context manager for writing ``path`` all at once or not at all.

    Yields a temporary path in the same directory (``.NAME.<host>-<pid>.RANDOM.tmpSUFFIX``: hidden,
    and the original suffix kept so writers that infer the format from it still work). Temporaries
    of the same ``NAME`` left by writers that were killed are removed first
    (:func:`surrogate.rundir.remove_abandoned_temporaries`). The body writes that
    file; on normal exit it is flushed to disk and renamed to ``path`` with :func:`os.replace`
    (atomic on POSIX: readers see the old file or the complete new one). If the body raises (also
    ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left untouched. A process
    killed outright (SIGKILL, power loss) may leave the hidden temporary file, never a partial
    ``path``; the next writer of ``path`` on this host removes it.

    Arguments:
        path: Final destination. Its directory must exist.
        fsync: Flush the file and its directory to disk before/after the rename, so the new
            content survives a system crash, not just a process crash.

    Yields:
        The temporary path (:class:`pathlib.Path`) to write to. The body must create it.

    Raises:
        FileNotFoundError: If the directory of ``path`` does not exist, or the body did not create
            the temporary file.
        IsADirectoryError: If ``path`` is an existing directory.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path}: directory does not exist", str(parent))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "cannot write a file over a directory", str(path))
    remove_abandoned_temporaries(parent, target=path.name)
    tmp = temporary_name(path, secrets.token_hex(6))
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(errno.ENOENT, f"nothing was written for {path}", str(tmp))
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_directory(parent)


def _fsync_directory(directory: Path) -> None:
    """Persists a rename in ``directory`` (best effort: not every platform can open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """Opens an existing HDF5 file read-only, with clear errors.

    Arguments:
        path: The file.

    Returns:
        An open :class:`h5py.File` (use it as a context manager).

    Raises:
        FileNotFoundError: If ``path`` does not exist (the error names it).
        IsADirectoryError: If ``path`` is a directory.
        ValueError: If ``path`` is not an HDF5 file or HDF5 cannot open it (truncated file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such HDF5 file", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "expected an HDF5 file, found a directory", str(path))
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path}: not an HDF5 file (no HDF5 signature found)")
    try:
        return h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
    except PermissionError:
        raise
    except OSError as error:
        raise ValueError(f"{path}: HDF5 cannot open this file ({error})") from error


def _unit_of(dataset: h5py.Dataset) -> str | None:
    unit = dataset.attrs.get("unit")
    if isinstance(unit, bytes):
        unit = unit.decode()
    return None if unit is None else str(unit)


def check_layout(
    file: h5py.File, fields: Sequence[Field], *, path: str | os.PathLike | None = None
) -> tuple[int, dict[str, tuple[int, ...]]]:
    """Checks a file's metadata against a layout without reading any values.

    Each field must be a dataset of a real floating-point type (float16/32/64: CaloGAN's Geant4
    files store float64) with shape ``(N, *field.shape)``, the same ``N`` for every field, and, if
    it has a ``"unit"`` attribute, the field's unit. Other datasets in the file are ignored.

    Arguments:
        file: Open HDF5 file.
        fields: The layout.
        path: Name used in error messages (defaults to ``file.filename``).

    Returns:
        ``(n_events, event_shapes)``: the common ``N`` and each field's per-event shape.

    Raises:
        ValueError: Naming the file, the dataset and what was expected vs found, for a missing
            dataset, a group in its place, a non-float dtype, a wrong shape or unit, different
            lengths, no events at all, or a virtual dataset's source that holds too few events.
        FileNotFoundError: A virtual dataset's source file is missing (named).
    """
    where = path if path is not None else file.filename
    shapes: dict[str, tuple[int, ...]] = {}
    lengths: dict[str, int] = {}
    for field in fields:
        obj = file.get(field.name)
        if obj is None:
            found = ", ".join(sorted(file.keys())) or "none"
            raise ValueError(
                f"{where}: missing dataset '{field.name}': expected a {field.expected()}; found datasets: {found}"
            )
        if not isinstance(obj, h5py.Dataset):
            raise ValueError(f"{where}: '{field.name}' is a {type(obj).__name__}, expected a {field.expected()}")
        if obj.dtype.kind != "f":
            raise ValueError(f"{where}: dataset '{field.name}' has dtype {obj.dtype}, expected a {field.expected()}")
        shape = tuple(obj.shape)
        ok = len(shape) == len(field.shape) + 1 and all(
            (d >= 1) if want is None else (d == want) for d, want in zip(shape[1:], field.shape)
        )
        if not ok:
            raise ValueError(f"{where}: dataset '{field.name}' has shape {shape}, expected a {field.expected()}")
        unit = _unit_of(obj)
        if unit is not None and unit != field.unit:
            raise ValueError(f"{where}: dataset '{field.name}' has unit attribute {unit!r}, expected {field.unit!r}")
        if obj.is_virtual:
            _check_virtual_sources(file, obj, where)
        shapes[field.name] = shape[1:]
        lengths[field.name] = shape[0]
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"'{k}': {n}" for k, n in lengths.items())
        raise ValueError(f"{where}: datasets have different numbers of events ({found}); expected one N for all")
    n_events = next(iter(lengths.values())) if lengths else 0
    if fields and n_events == 0:
        raise ValueError(f"{where}: the file holds no events (datasets {', '.join(lengths)} have length 0)")
    return n_events, shapes


def _check_virtual_sources(file: h5py.File, dataset: h5py.Dataset, where: Any) -> None:
    """Every source file of a virtual dataset (e.g. per-rank shards joined by
    :func:`surrogate.data.event_writer.stitch_shards`) must exist and hold the events mapped
    from it: HDF5 reads a missing or short source as fill values, without an error.

    Raises:
        FileNotFoundError: a source file is missing (named).
        ValueError: a source lacks the dataset or holds fewer events than mapped (named).
    """
    folder = Path(file.filename).resolve().parent
    for source in dataset.virtual_sources():
        name = Path(source.file_name)
        path = name if name.is_absolute() else folder / name
        (first, *_), (last, *_) = source.vspace.get_select_bounds()
        needed = last - first + 1
        if not path.is_file():
            raise FileNotFoundError(f"{where}: dataset '{dataset.name.lstrip('/')}' maps events {first} to {last} "
                                    f"to {path}, which is missing (a lost shard?)")
        with h5py.File(path, "r") as shard:
            held = shard.get(source.dset_name)
            count = held.shape[0] if isinstance(held, h5py.Dataset) and held.shape else None
        if count is None or count < needed:
            what = f"holds {count} events" if count is not None else f"has no dataset '{source.dset_name}'"
            raise ValueError(f"{where}: dataset '{dataset.name.lstrip('/')}' maps {needed} events to {path}, which "
                             f"{what}")


def check_values(values: np.ndarray, field: Field, *, path: Any, offset: int = 0, what: str = "dataset") -> None:
    """Raises if ``values`` (events ``offset, offset + 1, ...`` of ``field``) are non-finite or out of range.

    Arguments:
        values: Array ``(n, *field.shape)`` of any real dtype.
        field: What the values are (range: > 0 if ``field.positive`` else >= 0).
        path: File name for the message.
        offset: Index of ``values[0]`` in the file, so the message names the right event.
        what: ``"dataset"`` or ``"batch"``: how the message refers to the key.

    Raises:
        ValueError: Naming the file, the key, the first bad event and its bad value.
    """
    if values.size == 0:
        return
    flat = values.reshape(len(values), -1)
    finite = np.isfinite(flat)
    in_range = finite & ((flat > 0) if field.positive else (flat >= 0))
    if in_range.all():
        return
    bad_event = int(np.flatnonzero(~in_range.all(axis=1))[0])
    row = flat[bad_event]
    bad_value = row[~in_range[bad_event]][0]
    limit = "> 0" if field.positive else ">= 0"
    kind = "non-finite" if not np.isfinite(bad_value) else "out-of-range"
    raise ValueError(
        f"{path}: {what} '{field.name}': expected finite values {limit} {field.unit}, "
        f"found {kind} value {bad_value!r} at event {offset + bad_event}"
    )


def scan_values(dataset: h5py.Dataset, field: Field, *, path: Any, start: int = 0, stop: int | None = None) -> None:
    """:func:`check_values` over events ``[start, stop)`` of a dataset, read piece by piece.

    Values are checked after conversion to float32, as the readers return them (a float64 value
    beyond float32's range counts as non-finite). Reads whole chunks, about 16 MiB at a time, so
    files larger than memory can be checked.

    Arguments:
        dataset: The HDF5 dataset ``(N, ...)``.
        field: Its layout field.
        path: File name for error messages.
        start, stop: Event range (default: all).

    Raises:
        ValueError: As :func:`check_values`.
    """
    stop = dataset.shape[0] if stop is None else stop
    event_bytes = max(1, int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize)
    step = max(1, SCAN_BYTES // event_bytes)
    if dataset.chunks is not None:
        chunk = dataset.chunks[0]
        step = max(chunk, step // chunk * chunk)
    for lo in range(start, stop, step):
        hi = min(stop, lo + step)
        check_values(as_float32(dataset[lo:hi]), field, path=path, offset=lo)


def as_float32(values: np.ndarray) -> np.ndarray:
    """``values`` as float32 (no copy if already); values beyond float32's range become inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values, dtype=np.float32)

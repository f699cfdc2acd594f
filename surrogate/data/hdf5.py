"""HDF5 building blocks shared by every event-file layout: atomic output, checked reads, writers.

An *event file* stores one HDF5 dataset per quantity, each with the event index as its first
axis: ``(N, *event_shape)``. A layout (see :mod:`surrogate.data.calo`) is a tuple of
:class:`Field` objects naming the datasets, their per-event shapes and units. This module knows
nothing about calorimeters; it opens files with clear errors, checks a file against a layout
(metadata at once, values chunk by chunk so a file larger than memory can be checked), and writes
event files chunked, compressed and atomically.

Storage choices, measured with h5py 3.16 / HDF5 2.0 on 32768 showers of our GFlash simulator
(:mod:`surrogate.simulators.gflash`; 93 % of the ``layer_0`` cells are zero, 64 % of ``layer_1``),
reading blocks of 1024 events in random order as :class:`surrogate.data.calo.CaloShowerDataset`
does, CPU time of one core (wall-clock times on this shared machine were too noisy):

* **Chunks** hold whole events; ``chunk_events`` = the largest power of two whose uncompressed
  size is at most 512 KiB, capped at 1024 events (``layer_0``: 256 events = 288 KiB, ``layer_1``:
  512, ``layer_2``, ``energy``, ``overflow``: 1024). Read throughput: 328 MB/s with this rule,
  317 MB/s at 256 KiB, 292 MB/s at 64 KiB (more chunks, more per-chunk overhead and a bigger chunk
  index); without the 1024-event cap 235 MB/s, and 1 MiB / 2 MiB chunks 229 / 166 MB/s: a block
  read then decompresses whole chunks it needs only part of, and chunks above the 1 MiB default
  chunk cache are decompressed again by the next block. Powers of two keep chunk boundaries on
  the boundaries of power-of-two blocks (``block_size`` >= 1024 reads whole chunks only).
* **Compression**: ``"gzip"`` level 4 without the shuffle filter is the default: 18.6 % of the raw
  size, 330 MB/s read (about 160 000 CaloGAN events per second and core, far more than a training
  step consumes), 130 MB/s write, and readable by every HDF5 tool and language. ``"lzf"`` reads
  ~15 % faster (380 MB/s) and writes 2.5x faster at 21.8 % of the raw size, but its filter ships
  only with h5py (HDF5's own tools, C++/ROOT and other languages cannot read it): use it for
  scratch files only h5py reads. The byte-shuffle filter, usually good for floats, hurt on these
  sparse showers (gzip: 22.7 %, 240 MB/s; lzf: 28.1 %, 280 MB/s), so it is off. gzip level 1 was
  larger and slower to read (24.4 %, 260 MB/s with shuffle). ``None``: 1.3 GB/s, 5.4x larger.

References:
    The HDF5 Group, "Chunking in HDF5" and "Improving I/O performance when working with HDF5
    compressed datasets" (chunk cache, chunk size guidance), https://docs.hdfgroup.org/.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

__all__ = [
    "COMPRESSIONS",
    "EventWriter",
    "Field",
    "as_float32",
    "atomic_output",
    "check_layout",
    "check_values",
    "chunk_events_for",
    "open_hdf5",
    "scan_values",
    "stitch_shards",
]

COMPRESSIONS = ("gzip", "lzf", None)
"""Accepted values of every writer's ``compression`` argument (``"gzip"`` means level 4)."""

GZIP_LEVEL = 4
CHUNK_TARGET_BYTES = 512 * 1024
CHUNK_MAX_EVENTS = 1024
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

    Yields a temporary path in the same directory (``.NAME.RANDOM.tmpSUFFIX``: hidden, and the
    original suffix kept so writers that infer the format from it still work). The body writes that
    file; on normal exit it is flushed to disk and renamed to ``path`` with :func:`os.replace`
    (atomic on POSIX: readers see the old file or the complete new one). If the body raises (also
    ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left untouched. A process
    killed outright (SIGKILL, power loss) may leave the hidden temporary file, never a partial
    ``path``.

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
    tmp = parent / f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}"
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
            dataset, a group in its place, a non-float dtype, a wrong shape or unit, or
            different lengths.
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
        shapes[field.name] = shape[1:]
        lengths[field.name] = shape[0]
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"'{k}': {n}" for k, n in lengths.items())
        raise ValueError(f"{where}: datasets have different numbers of events ({found}); expected one N for all")
    return (next(iter(lengths.values())) if lengths else 0), shapes


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


def chunk_events_for(event_shape: Sequence[int], n_events: int, *, itemsize: int = 4) -> int:
    """Events per chunk: largest power of two with at most 512 KiB per chunk, capped at 1024.

    See the module docstring for the measurements behind these numbers.

    Arguments:
        event_shape: Per-event shape of the dataset.
        n_events: Number of events in the dataset (a chunk never exceeds it).
        itemsize: Bytes per value (4 for float32).

    Returns:
        The chunk length along the event axis, between 1 and ``max(n_events, 1)``.
    """
    event_bytes = max(1, int(np.prod(event_shape, dtype=np.int64)) * itemsize)
    fit = max(1, CHUNK_TARGET_BYTES // event_bytes)
    power = 1 << (fit.bit_length() - 1)
    return max(1, min(power, CHUNK_MAX_EVENTS, n_events))


class EventWriter:
    """Streams events into a new HDF5 file of a given layout, atomically.

    The datasets are created with their final length ``n_events``, float32, chunked along the
    event axis and compressed (see the module docstring). :meth:`write` appends batches. The file
    appears under ``path`` only when the ``with`` block exits normally after exactly ``n_events``
    events were written; otherwise (an exception, too few events, a killed process) no file
    appears under ``path`` and an existing one is left as it was.

    Arguments:
        path: Destination file; its directory must exist.
        n_events: Number of events the file will hold (>= 1).
        fields: The layout.
        event_shapes: Per-event shape of every field (resolves the ``None`` sizes of the layout).
        compression: ``"gzip"`` (level 4), ``"lzf"`` or ``None``.
        chunk_events: Events per chunk for every dataset; ``None`` chooses per dataset with
            :func:`chunk_events_for`.
        attrs: File attributes to store (e.g. ``{"layout": "calogan"}``).

    Raises:
        ValueError: For a bad ``n_events``, ``compression`` or ``chunk_events`` (at construction),
            a bad batch (in :meth:`write`) or too few events (on exit).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_events: int,
        *,
        fields: Sequence[Field],
        event_shapes: Mapping[str, Sequence[int]],
        compression: str | None = "gzip",
        chunk_events: int | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if isinstance(n_events, bool) or not isinstance(n_events, (int, np.integer)) or n_events < 1:
            raise ValueError(f"{self.path}: n_events must be an integer >= 1, got {n_events!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"{self.path}: compression must be one of {COMPRESSIONS}, got {compression!r}")
        if chunk_events is not None and (not isinstance(chunk_events, (int, np.integer)) or chunk_events < 1):
            raise ValueError(f"{self.path}: chunk_events must be an integer >= 1 or None, got {chunk_events!r}")
        self.n_events = int(n_events)
        self.fields = tuple(fields)
        self.event_shapes = {f.name: tuple(int(d) for d in event_shapes[f.name]) for f in self.fields}
        self.compression = compression
        self.chunk_events = chunk_events
        self.attrs = dict(attrs or {})
        self.n_written = 0
        self._stack: ExitStack | None = None
        self._file: h5py.File | None = None

    def __enter__(self) -> EventWriter:
        if self._stack is not None or self.n_written:
            raise RuntimeError(f"{self.path}: an EventWriter can be entered only once")
        with ExitStack() as stack:
            tmp = stack.enter_context(atomic_output(self.path))
            file = stack.enter_context(h5py.File(tmp, "w"))
            file.attrs.update(self.attrs)
            for field in self.fields:
                shape = self.event_shapes[field.name]
                chunk = self.chunk_events or chunk_events_for(shape, self.n_events)
                dataset = file.create_dataset(
                    field.name,
                    shape=(self.n_events, *shape),
                    dtype=np.float32,
                    chunks=(min(chunk, self.n_events), *shape),
                    compression=self.compression,
                    compression_opts=GZIP_LEVEL if self.compression == "gzip" else None,
                )
                dataset.attrs["unit"] = field.unit
                if field.description:
                    dataset.attrs["description"] = field.description
            self._file = file
            self._stack = stack.pop_all()
        return self

    def write(self, batch: Mapping[str, Any]) -> None:
        """Appends a batch of events.

        Arguments:
            batch: One array per field, ``(n, *event_shape)``, any real floating dtype (stored as
                float32), finite, >= 0 (> 0 for positive fields), the same ``n`` for all.

        Raises:
            ValueError: Naming the file and key, for a missing or unknown key, a non-float dtype,
                a wrong shape, different lengths, bad values, or more than ``n_events`` in total.
            RuntimeError: If the writer is not open.
        """
        if self._file is None:
            raise RuntimeError(f"{self.path}: write() outside the writer's `with` block")
        names = [f.name for f in self.fields]
        missing = [k for k in names if k not in batch]
        unknown = [k for k in batch if k not in names]
        if missing or unknown:
            raise ValueError(
                f"{self.path}: batch keys {sorted(batch)}: missing {missing}, unknown {unknown}; expected exactly {names}"
            )
        arrays: dict[str, np.ndarray] = {}
        for field in self.fields:
            array = np.asarray(batch[field.name])
            shape = self.event_shapes[field.name]
            if array.dtype.kind != "f":
                raise ValueError(
                    f"{self.path}: batch '{field.name}' has dtype {array.dtype}, expected a real floating dtype"
                )
            if array.shape[1:] != shape or array.ndim != len(shape) + 1:
                want = ", ".join(map(str, shape))
                raise ValueError(f"{self.path}: batch '{field.name}' has shape {array.shape}, expected (n, {want})")
            array = as_float32(array)
            check_values(array, field, path=self.path, offset=self.n_written, what="batch")
            arrays[field.name] = array
        lengths = {k: len(a) for k, a in arrays.items()}
        n = next(iter(lengths.values()))
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{self.path}: batch arrays have different lengths {lengths}; expected one n for all")
        if self.n_written + n > self.n_events:
            raise ValueError(
                f"{self.path}: batch of {n} events would exceed n_events={self.n_events} "
                f"({self.n_written} already written)"
            )
        for name, array in arrays.items():
            self._file[name][self.n_written:self.n_written + n] = array
        self.n_written += n

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        stack, self._stack, self._file = self._stack, None, None
        if stack is None:
            return False
        if exc_type is None and self.n_written != self.n_events:
            error = ValueError(
                f"{self.path}: only {self.n_written} of n_events={self.n_events} events were written; file not created"
            )
            stack.__exit__(ValueError, error, None)  # closes and removes the temporary file
            raise error
        return bool(stack.__exit__(exc_type, exc, tb))


def stitch_shards(
    output: str | os.PathLike, shards: Sequence[str | os.PathLike], expected_events: Sequence[int]
) -> Path:
    """Joins per-rank event files into one file of HDF5 virtual datasets (no data copied).

    Every top-level dataset of the shards becomes a virtual dataset of the concatenated events
    (axis 0), with the attributes of the first shard's dataset and file. Before anything is
    written, every shard is checked to exist, to hold the same datasets with the same event
    shapes and dtypes, and to hold exactly its expected number of events in every dataset:
    HDF5 reads a missing or short source as fill values, silently, so an unchecked virtual file
    could hide a lost shard. The virtual file stores the shards' paths relative to its own
    folder (keep them side by side; HDF5 resolves relative sources against the virtual file's
    folder) and is written atomically.

    Arguments:
        output: the virtual HDF5 file to write.
        shards: per-rank files, in rank order.
        expected_events: events each shard must hold, same order.

    Returns:
        ``output``.

    Raises:
        FileNotFoundError: a shard does not exist (named).
        ValueError: a shard that cannot be read, has other datasets, event shapes or dtypes than
            the first, or a wrong number of events (named with the expected count), or
            ``len(shards) != len(expected_events)``.
    """
    output = Path(output)
    shards = [Path(p) for p in shards]
    if len(shards) != len(expected_events) or not shards:
        raise ValueError(f"need one expected event count per shard, got {len(shards)} shards and {len(expected_events)} counts")
    layout: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
    for shard, n in zip(shards, expected_events):
        if not shard.is_file():
            raise FileNotFoundError(errno.ENOENT, f"shard {shard} is missing: its rank did not finish", str(shard))
        with open_hdf5(shard) as f:
            found = {k: (f[k].shape[1:], f[k].dtype) for k in f if isinstance(f[k], h5py.Dataset)}
            for key in found:
                if f[key].shape[0] != n:
                    raise ValueError(f"shard {shard}: dataset {key!r} holds {f[key].shape[0]} events, expected {n}")
        if layout is None:
            layout = found
        elif found != layout:
            raise ValueError(f"shard {shard}: datasets {found} differ from those of {shards[0]}: {layout}")
    assert layout is not None
    total = int(sum(expected_events))
    with atomic_output(output) as tmp, h5py.File(tmp, "w", libver="latest") as out, h5py.File(shards[0], "r") as first:
        out.attrs.update(dict(first.attrs))
        for key, (event_shape, dtype) in layout.items():
            virtual = h5py.VirtualLayout(shape=(total, *event_shape), dtype=dtype)
            start = 0
            for shard, n in zip(shards, expected_events):
                if n:
                    source = os.path.relpath(shard.resolve(), output.resolve().parent)
                    virtual[start:start + n] = h5py.VirtualSource(source, key, shape=(n, *event_shape))
                start += n
            dataset = out.create_virtual_dataset(key, virtual, fillvalue=np.nan if np.dtype(dtype).kind == "f" else 0)
            dataset.attrs.update(dict(first[key].attrs))
    return output

"""Writing event files: the chunked, compressed, atomic :class:`EventWriter` and shard stitching.

An event file (see :mod:`surrogate.data.hdf5`) is written by :class:`EventWriter` from batches
of events, float32, chunked along the event axis and compressed, and appears under its name only
when complete. :func:`stitch_shards` joins the files written by several ranks into one file of
HDF5 virtual datasets without copying the events.

Storage choices, measured with h5py 3.16 / HDF5 2.0 on 32768 showers of our GFlash simulator
(:mod:`surrogate.simulators.gflash`; 93 % of the ``layer_0`` cells are zero, 64 % of ``layer_1``),
reading blocks of 1024 events in random order as :class:`surrogate.data.shower_dataset.CaloShowerDataset`
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
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from surrogate.checks import check_choice, check_int
from surrogate.data.hdf5 import Field, as_float32, atomic_output, check_values, open_hdf5

__all__ = [
    "COMPRESSIONS",
    "EventWriter",
    "chunk_events_for",
    "stitch_shards",
]

COMPRESSIONS = ("gzip", "lzf", None)
"""Accepted values of every writer's ``compression`` argument (``"gzip"`` means level 4)."""

GZIP_LEVEL = 4
CHUNK_TARGET_BYTES = 512 * 1024
CHUNK_MAX_EVENTS = 1024


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
        self.n_events = check_int("n_events", n_events, minimum=1, where=self.path)
        self.compression = check_choice("compression", compression, COMPRESSIONS, where=self.path)
        self.chunk_events = check_int("chunk_events", chunk_events, minimum=1, optional=True, where=self.path)
        self.fields = tuple(fields)
        self.event_shapes = {f.name: tuple(int(d) for d in event_shapes[f.name]) for f in self.fields}
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

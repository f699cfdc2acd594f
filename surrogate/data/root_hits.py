"""Per-event hit lists of a ROOT TTree to dense cell arrays: reader, Dataset and HDF5 conversion.

Simulation output in ROOT often stores one TTree entry per *hit*: an event number, a cell id and
the deposited energy. :func:`read_root_hits` turns such a tree into one dense array per event,
``cells[i, layer, strip]`` = the sum of the energies of event ``i``'s hits in that cell, and
:class:`RootHitDataset` serves those arrays to a ``DataLoader``. Which branches hold what, and how
a cell id decodes into ``(layer, strip)``, is a :class:`~surrogate.data.root_mapping.RootHitMapping`,
built from a TOML table with :meth:`~surrogate.data.root_mapping.RootHitMapping.from_config`.
:func:`root_hits_to_hdf5` converts a hit tree once into an HDF5 event file (atomically, chunked
and compressed, with :class:`~surrogate.data.event_writer.EventWriter`). Trees are opened and
read in chunks with the building blocks of :mod:`surrogate.data.root`.

Choices:

* **Events are the sorted distinct values of the event branch.** Row ``i`` of the output belongs
  to the ``i``-th smallest event number found in the tree (returned as ``"event"``). A hit tree
  only knows events that have hits: events without any hit are absent (the Geant4 test file below
  fired 1000 events, 453 of them left hits). Hits of one event need not be adjacent.
* **Two passes.** The first pass reads only the event and cell branches, to find the events, check
  every cell id against the dense shape (or infer the shape) and check the order; the second reads
  the energies and sums them per cell (``np.add.at``, vectorised per chunk, in float64, returned
  as float32). If the event branch is non-decreasing (Geant4 writes one event after the other),
  the second pass emits finished events chunk by chunk and carries an event that straddles a
  chunk boundary into the next chunk, so converting to HDF5 needs memory for one chunk and its
  events only; otherwise the dense array of all events is filled in memory.
* **Hits outside the dense shape are an error**, not an overflow column: a cell id that decodes
  to a layer or strip outside ``n_layers`` x ``n_strips`` raises :class:`ValueError` naming the
  file, tree, branch, entry, event and id. Leave ``n_layers``/``n_strips`` unset to size the
  array from the data.
* **Units.** Cell energies keep the unit of the energy branch, declared by
  :attr:`~surrogate.data.root_mapping.RootHitMapping.energy_unit` (default MeV, Geant4's internal energy unit); nothing is
  rescaled. Energies must be finite and >= 0.

The real file used in the tests, ``uproot-from-geant4.root`` (scikit-hep-testdata 0.3.12), holds
Geant4 hits of a three-layer strip detector in the TTree ``HitStrips``: 4808 hits of 453 events
(event numbers 0 ... 998, hits ordered by event), ``Laystrip = 1000 * layer + strip`` with layers
1 ... 3 and strips 1 ... 108 (88, 108 and 99 strips used), ``Energy`` in MeV (the file's
``edep_*`` histograms are titled "Energy deposited [MeV]"). With
``RootHitMapping(tree="HitStrips", event_branch="Event", cell_branch="Laystrip",
energy_branch="Energy", cell_divisor=1000, first_layer=1, first_strip=1)`` it becomes ``cells``
of shape (453, 3, 108) in MeV.

uproot is an optional dependency (``pip install 'physics-surrogate[root]'``), imported only when a
ROOT file is read.

Example:
    >>> import tempfile, numpy as np, uproot
    >>> from surrogate.data import RootHitMapping, read_root_hits
    >>> mapping = RootHitMapping.from_config({"tree": "hits", "event_branch": "event", "cell_branch": "cell",
    ...                                       "energy_branch": "edep", "cell_divisor": 100})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with uproot.recreate(f"{d}/hits.root") as f:
    ...         _ = f.mktree("hits", {"event": "int32", "cell": "int32", "edep": "float32"})
    ...         f["hits"].extend({"event": np.array([7, 7, 9], np.int32), "cell": np.array([3, 3, 102], np.int32),
    ...                           "edep": np.array([1.0, 0.5, 2.0], np.float32)})
    ...     hits = read_root_hits(f"{d}/hits.root", mapping)
    >>> hits["cells"].shape, hits["event"].tolist(), hits["cells"][0, 0, 3], hits["cells"][1, 1, 2]
    ((2, 2, 4), [7, 9], np.float32(1.5), np.float32(2.0))
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from surrogate.checks import check_int
from surrogate.data.event_writer import EventWriter
from surrogate.data.hdf5 import Field
from surrogate.data.root import DEFAULT_STEP_SIZE, check_step_size, flat_branch_dtype, iterate_chunks, open_tree
from surrogate.data.root_mapping import RootHitMapping
from surrogate.data.sharding import shard_length

__all__ = ["RootHitDataset", "read_root_hits", "root_hits_to_hdf5"]


_INT = "a flat integer branch (one {what} per hit)"


class _Scan(NamedTuple):
    """What the first pass over a hit tree found."""

    n_entries: int
    events: np.ndarray  # sorted distinct event numbers, int64
    starts: np.ndarray | None  # first entry of each event if the event branch is non-decreasing, else None
    shape: tuple[int, int]  # (n_layers, n_strips)


def _check_branches(tree: Any, mapping: RootHitMapping, path: Any) -> None:
    flat_branch_dtype(tree, mapping.event_branch, path=path, role="event index", kinds="iu",
                expected=_INT.format(what="event number"))
    flat_branch_dtype(tree, mapping.cell_branch, path=path, role="cell index", kinds="iu",
                expected=_INT.format(what="cell id"))
    flat_branch_dtype(tree, mapping.energy_branch, path=path, role="energy", kinds="f",
                expected=f"a flat floating-point branch (one energy per hit, in {mapping.energy_unit})")


def _cell_error(path: Any, mapping: RootHitMapping, entry: int, event: int, cell: int, layer: int, strip: int,
                shape: tuple[int | None, int | None]) -> ValueError:
    n_layers, n_strips = shape
    layers = f"{mapping.first_layer} ... {mapping.first_layer + n_layers - 1}" if n_layers else f">= {mapping.first_layer}"
    strips = f"{mapping.first_strip} ... {mapping.first_strip + n_strips - 1}" if n_strips else f">= {mapping.first_strip}"
    if mapping.cell_divisor:
        split = (f"layer {layer + mapping.first_layer}, strip {strip + mapping.first_strip} "
                 f"(id // {mapping.cell_divisor}, id % {mapping.cell_divisor})")
        expected = f"layers {layers} and strips {strips}"
    else:
        split, expected = f"strip {strip + mapping.first_strip}", f"strips {strips}"
    return ValueError(
        f"{path}: tree '{mapping.tree}': branch '{mapping.cell_branch}' (cell index) has id {cell} at entry {entry} "
        f"(event {event}), which decodes to {split}, outside the dense shape; expected {expected} (set n_layers / "
        f"n_strips / first_layer / first_strip in the mapping, or leave n_layers and n_strips unset to infer them)"
    )


def _scan(tree: Any, mapping: RootHitMapping, path: Any, step_size: int | str) -> _Scan:
    """First pass: event and cell branches only. Finds the events and their order, checks or infers the shape."""
    _check_branches(tree, mapping, path)
    n_entries = int(tree.num_entries)
    given = (mapping.n_layers if mapping.cell_divisor is not None else 1, mapping.n_strips)
    uniques, starts = [], []
    monotonic, previous = True, None
    high = np.array([-1, -1], dtype=np.int64)
    for offset, arrays in iterate_chunks(tree, [mapping.event_branch, mapping.cell_branch], step_size):
        events = arrays[mapping.event_branch].astype(np.int64, copy=False)
        if len(events) == 0:
            continue
        layer, strip = mapping.decode(arrays[mapping.cell_branch])
        bad = (layer < 0) | (strip < 0)
        if given[0] is not None:
            bad |= layer >= given[0]
        if given[1] is not None:
            bad |= strip >= given[1]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _cell_error(path, mapping, offset + i, int(events[i]), int(arrays[mapping.cell_branch][i]),
                              int(layer[i]), int(strip[i]), given)
        high = np.maximum(high, [layer.max(), strip.max()])
        uniques.append(np.unique(events))
        if monotonic:
            before = events[0] - 1 if previous is None else previous
            if events[0] < before or np.any(events[1:] < events[:-1]):
                monotonic = False
            else:
                starts.append(offset + np.flatnonzero(np.diff(events, prepend=before) != 0))
        previous = events[-1]
    if n_entries == 0 and None in given:
        raise ValueError(
            f"{path}: tree '{mapping.tree}' has no entries, so the dense shape cannot be inferred; "
            f"expected hits, or n_layers and n_strips in the mapping"
        )
    shape = tuple(int(g) if g is not None else int(h) + 1 for g, h in zip(given, high))
    events = np.unique(np.concatenate(uniques)) if uniques else np.zeros(0, np.int64)
    entry_starts = (np.concatenate(starts) if starts else np.zeros(0, np.int64)) if monotonic else None
    return _Scan(n_entries, events, entry_starts, shape)


def _check_energies(energies: np.ndarray, mapping: RootHitMapping, path: Any, offset: int, events: np.ndarray) -> None:
    ok = np.isfinite(energies) & (energies >= 0)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"{path}: tree '{mapping.tree}': branch '{mapping.energy_branch}' (energy) has value {float(energies[i])!r} at "
            f"entry {offset + i} (event {int(events[i])}); expected finite energies >= 0 {mapping.energy_unit}"
        )


def _dense_blocks(
    tree: Any, mapping: RootHitMapping, scan: _Scan, path: Any, step_size: int | str
) -> Iterator[tuple[int, np.ndarray]]:
    """Second pass: yields ``(first_row, cells)`` blocks of consecutive rows; row ``i`` is event ``scan.events[i]``.

    ``cells`` is float64 ``(n, n_layers * n_strips)``; blocks come in row order and cover every row
    once. ``scan`` may be restricted to a shard: its events (and entry starts) only.
    """
    n_rows = len(scan.events)
    if n_rows == 0:
        return
    n_cells = scan.shape[0] * scan.shape[1]
    names = [mapping.event_branch, mapping.cell_branch, mapping.energy_branch]

    def flat(arrays: Mapping[str, np.ndarray], offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        events = arrays[mapping.event_branch].astype(np.int64, copy=False)
        energies = arrays[mapping.energy_branch].astype(np.float64)
        _check_energies(energies, mapping, path, offset, events)
        layer, strip = mapping.decode(arrays[mapping.cell_branch])
        rows = np.searchsorted(scan.events, events)
        # Hits of events outside scan.events (another rank's shard) are dropped.
        found = scan.events[np.minimum(rows, n_rows - 1)] == events
        if not found.all():
            rows, layer, strip, energies = rows[found], layer[found], strip[found], energies[found]
        return rows, layer * scan.shape[1] + strip, energies

    if scan.starts is None:  # hits of an event may be anywhere: fill all rows in memory
        cells = np.zeros((n_rows, n_cells))
        for offset, arrays in iterate_chunks(tree, names, step_size):
            rows, index, energies = flat(arrays, offset)
            np.add.at(cells, (rows, index), energies)
        yield 0, cells
        return

    # Ordered hits: read only the entries of these events; starts[n_rows] (if present) ends them.
    start = int(scan.starts[0])
    stop = int(scan.starts[n_rows]) if n_rows < len(scan.starts) else scan.n_entries
    pending: tuple[int, np.ndarray] | None = None  # the last event of the previous chunk, maybe unfinished
    for offset, arrays in iterate_chunks(tree, names, step_size, start, stop):
        if len(arrays[mapping.event_branch]) == 0:
            continue
        rows, index, energies = flat(arrays, offset)
        if len(rows) == 0:
            continue
        first, last = int(rows[0]), int(rows[-1])
        block = np.zeros((last - first + 1, n_cells))
        np.add.at(block, (rows - first, index), energies)
        if pending is not None:
            if pending[0] == first:
                block[0] += pending[1]
            else:
                yield pending[0], pending[1][None]
        if last > first:
            yield first, block[:-1]
        pending = (last, block[-1])
    if pending is not None:
        yield pending[0], pending[1][None]


def _shard(n_events: int, rank: int, world_size: int, drop_last: bool) -> tuple[int, int]:
    world_size = check_int("world_size", world_size, minimum=1)
    rank = check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size={world_size}, got {rank}")
    total = n_events // world_size * world_size if drop_last else n_events
    lo = rank * total // world_size
    return lo, lo + shard_length(n_events, rank, world_size, drop_last=drop_last)


def _read_rows(tree: Any, mapping: RootHitMapping, scan: _Scan, path: Any, step_size: int | str) -> np.ndarray:
    """All rows of ``scan`` as one ``(n, n_layers, n_strips)`` float32 array."""
    cells = np.zeros((len(scan.events), *scan.shape), dtype=np.float32)
    flat_view = cells.reshape(len(scan.events), -1)
    for first, block in _dense_blocks(tree, mapping, scan, path, step_size):
        flat_view[first:first + len(block)] = block
    return cells


def read_root_hits(
    path: str | os.PathLike, mapping: RootHitMapping, *, step_size: int | str = DEFAULT_STEP_SIZE
) -> dict[str, np.ndarray]:
    """Reads a hit tree into dense per-event cell arrays, chunk by chunk.

    See the module docstring for how events are identified (sorted distinct event numbers; events
    without hits are absent), how hits straddling chunks are summed and what is checked.

    Arguments:
        path: ROOT file.
        mapping: Tree, branches and cell-id decoding.
        step_size: Entries (hits) per chunk, or a memory size such as ``"50 MB"``. The result does
            not depend on it.

    Returns:
        ``{"cells": (N, n_layers, n_strips) float32`` energy sums per cell in
        ``mapping.energy_unit`` (MeV), ``"event": (N,) int64`` event numbers, increasing``}``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: Naming the file, tree and branch and what was expected: not a ROOT file, no
            such TTree, a missing branch, a branch of the wrong type (an event or cell branch
            that is not a flat integer, an energy branch that is not a flat float; jagged
            branches), a cell id outside the dense shape, a non-finite or negative energy, or an
            empty tree with the shape left to infer.
    """
    if not isinstance(mapping, RootHitMapping):
        raise ValueError(f"{path}: mapping must be a RootHitMapping (see RootHitMapping.from_config), got {mapping!r}")
    check_step_size(step_size)
    with open_tree(path, mapping.tree) as tree:
        scan = _scan(tree, mapping, path, step_size)
        cells = _read_rows(tree, mapping, scan, path, step_size)
    return {"cells": cells, "event": scan.events}


class RootHitDataset(torch.utils.data.Dataset):
    """The dense per-event cell arrays of a hit tree as a map-style Dataset, optionally one rank's shard.

    Construction runs the first pass of :func:`read_root_hits` over the whole tree (event and cell
    branches: finds the events, checks every cell id, infers the shape the same way on every
    rank) and keeps only small metadata. The cells of this rank's events are read on first access
    in each process and cached; pickling drops the cache and no file handle is kept, so the
    dataset is cheap to send to DataLoader workers (each reads its shard once). Memory: the shard's
    ``(n, n_layers, n_strips)`` float32 array per process; for files larger than that, convert
    them once with :func:`root_hits_to_hdf5`.

    With ``world_size > 1`` rank ``r`` gets the contiguous events
    ``[r * N // world_size, (r + 1) * N // world_size)`` of the sorted event list (disjoint, together
    all ``N``); with ``drop_last`` every rank gets ``N // world_size`` events and the last
    ``N % world_size`` are skipped, so data-parallel ranks take equal numbers of steps. If the
    event branch is non-decreasing only the entries of the shard are read. Cells are not
    normalised (leave that to the model, e.g. ``log1p``).

    Arguments:
        path: ROOT file.
        mapping: Tree, branches and cell-id decoding.
        rank, world_size: This process's rank and the number of data-parallel ranks.
        drop_last: Give every rank exactly ``N // world_size`` events.
        step_size: Entries per chunk when reading (as :func:`read_root_hits`).

    Attributes:
        events: ``(n,)`` int64 event numbers of this shard, in order.
        shape: ``(n_layers, n_strips)``.
        n_events: Events ``N`` in the whole tree.

    Returns:
        ``dataset[i]`` = ``{"cells": (n_layers, n_strips) float32 tensor}`` in ``mapping.energy_unit``
        (MeV) for the ``i``-th event of the shard.

    Raises:
        FileNotFoundError, ValueError: As :func:`read_root_hits` (at construction, except bad
            energies, found on first access); ValueError for a bad rank / world_size.
        IndexError: For an index outside ``[-len, len)``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mapping: RootHitMapping,
        *,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        step_size: int | str = DEFAULT_STEP_SIZE,
    ) -> None:
        super().__init__()
        if not isinstance(mapping, RootHitMapping):
            raise ValueError(f"{path}: mapping must be a RootHitMapping, got {mapping!r}")
        check_step_size(step_size)
        self.path, self.mapping, self.step_size = Path(path), mapping, step_size
        with open_tree(self.path, mapping.tree) as tree:
            scan = _scan(tree, mapping, self.path, step_size)
        self.n_events = len(scan.events)
        self.rank, self.world_size, self.drop_last = rank, world_size, bool(drop_last)
        self._lo, self._hi = _shard(self.n_events, rank, world_size, self.drop_last)
        self.events = scan.events[self._lo:self._hi]
        self.shape = scan.shape
        # What the second pass needs about this shard only (entry offsets of its events, if ordered).
        starts = None if scan.starts is None else scan.starts[self._lo:self._hi + 1]
        self._scan = _Scan(scan.n_entries, self.events, starts, scan.shape)
        self._cells: np.ndarray | None = None

    def __len__(self) -> int:
        return self._hi - self._lo

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cells"] = None
        return state

    def _load(self) -> np.ndarray:
        if self._cells is None:
            with open_tree(self.path, self.mapping.tree) as tree:
                self._cells = _read_rows(tree, self.mapping, self._scan, self.path, self.step_size)
        return self._cells

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self)
        try:
            index = check_int("index", index, minimum=-n, maximum=n - 1, where=self.path)
        except ValueError as error:  # out of range: IndexError, as sequences raise (ends iteration)
            raise IndexError(f"{error} ({n} events)") from None
        return {"cells": torch.from_numpy(self._load()[index])}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, tree={self.mapping.tree!r}, events={len(self)} of "
            f"{self.n_events}, shape={self.shape}, rank={self.rank}, world_size={self.world_size})"
        )


class _HitWriter(EventWriter):
    """EventWriter for ``cells`` plus an int64 ``event`` dataset (EventWriter itself writes floats only)."""

    def __enter__(self) -> _HitWriter:
        super().__enter__()
        try:
            dataset = self._file.create_dataset("event", shape=(self.n_events,), dtype=np.int64)
            dataset.attrs["description"] = "event number of each row in the source tree"
        except BaseException as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def write(self, batch: Mapping[str, Any]) -> None:
        batch = dict(batch)
        events = np.asarray(batch.pop("event"))
        first = self.n_written
        super().write(batch)
        self._file["event"][first:self.n_written] = events


def root_hits_to_hdf5(
    path_in: str | os.PathLike,
    mapping: RootHitMapping,
    path_out: str | os.PathLike,
    *,
    step_size: int | str = DEFAULT_STEP_SIZE,
    compression: str | None = "gzip",
) -> Path:
    """Converts a hit tree into an HDF5 event file, atomically, reading the tree chunk by chunk.

    The file holds ``cells`` ``(N, n_layers, n_strips)`` float32 (``"unit"`` attribute
    ``mapping.energy_unit``, MeV by default) and ``event`` ``(N,)`` int64, chunked and compressed
    as every event file (:class:`~surrogate.data.event_writer.EventWriter`), and the file attributes
    ``layout = "root_hits"``, ``source`` (the ROOT file's name), ``tree`` and ``mapping`` (the
    mapping as JSON, with the inferred shape filled in). Rows are the same as
    :func:`read_root_hits`'. If the event branch is non-decreasing, memory is bounded by one chunk
    and its events; otherwise all dense rows are built in memory first. The first pass checks the
    whole tree before anything is written; the file appears under ``path_out`` only if the
    conversion succeeds (an existing file is then replaced), otherwise nothing is left behind.

    Arguments:
        path_in: ROOT file.
        mapping: Tree, branches and cell-id decoding.
        path_out: Destination HDF5 file; its directory must exist.
        step_size: Entries per chunk, or a memory size such as ``"50 MB"``.
        compression: ``"gzip"`` (default), ``"lzf"`` or ``None`` (see :mod:`surrogate.data.event_writer`).

    Returns:
        ``path_out`` as a :class:`pathlib.Path`.

    Raises:
        FileNotFoundError: If ``path_in`` or the directory of ``path_out`` does not exist.
        ValueError: As :func:`read_root_hits`, or for a tree without events (an event file needs
            at least one), or a bad ``compression``.
    """
    if not isinstance(mapping, RootHitMapping):
        raise ValueError(f"{path_in}: mapping must be a RootHitMapping, got {mapping!r}")
    check_step_size(step_size)
    with open_tree(path_in, mapping.tree) as tree:
        scan = _scan(tree, mapping, path_in, step_size)
        n = len(scan.events)
        if n == 0:
            raise ValueError(f"{path_in}: tree '{mapping.tree}' has no hits, nothing to write to {path_out}")
        resolved = dataclasses.replace(mapping, n_layers=scan.shape[0] if mapping.cell_divisor else None,
                                       n_strips=scan.shape[1])
        field = Field("cells", scan.shape, mapping.energy_unit, description="energy per (layer, strip) cell")
        attrs = {"layout": "root_hits", "source": Path(path_in).name, "tree": mapping.tree,
                 "mapping": json.dumps(resolved.to_config())}
        writer = _HitWriter(path_out, n, fields=(field,), event_shapes={"cells": scan.shape},
                            compression=compression, attrs=attrs)
        with writer:
            for first, block in _dense_blocks(tree, mapping, scan, path_in, step_size):
                writer.write({"cells": block.reshape(len(block), *scan.shape),
                              "event": scan.events[first:first + len(block)]})
    return Path(path_out)

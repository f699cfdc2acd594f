"""Streaming calorimeter showers for training: :class:`CaloShowerDataset` reads a CaloGAN- or
CaloChallenge-layout file (:mod:`surrogate.data.calo`) in contiguous blocks, each rank and
DataLoader worker its own share of an epoch (:mod:`surrogate.data.sharding`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from surrogate.checks import check_choice, check_int
from surrogate.data.calo import LAYOUTS
from surrogate.data.hdf5 import as_float32, check_layout, check_values, open_hdf5, scan_values
from surrogate.data.sharding import epoch_segments, shard_length
from surrogate.geometry import CaloGeometry

__all__ = [
    "CaloShowerDataset",
]


class CaloShowerDataset(torch.utils.data.IterableDataset):
    """Streams the showers of an HDF5 file in shuffled contiguous blocks; for files larger than memory.

    Each epoch the events are cut into blocks of ``block_size`` consecutive events, the blocks are
    visited in an order drawn from ``(seed, epoch)``, and the resulting sequence is split evenly
    into one piece per rank and then per DataLoader worker (:mod:`surrogate.data.sharding`); each
    worker reads its blocks with one contiguous read per dataset and yields their events in a
    random order (again seeded by ``(seed, epoch, block)``). Every event is yielded exactly once
    per epoch across all ranks and workers; the order depends only on ``seed``, ``epoch``,
    ``world_size`` and the number of workers, so a resumed run replays it. Events are mixed only
    within a block: a file sorted by energy should be shuffled once on disk.

    The file is opened lazily in each process that iterates (``__init__`` only opens it briefly to
    check the layout and the incident energies), because h5py handles do not survive fork or
    pickling. Cell values are checked for each block as it is read.

    Call :meth:`set_epoch` before iterating each epoch. With ``persistent_workers=True`` the
    DataLoader's workers keep the copy of the dataset they started with, so use the default
    ``persistent_workers=False``.

    Arguments:
        path: HDF5 file in the chosen layout.
        layout: ``"calogan"`` or ``"calochallenge"``.
        block_size: Events per contiguous read; powers of two >= 1024 read whole chunks of the
            files we write (smaller blocks work, a little slower).
        shuffle: Shuffle the block order and the events within each block; else file order.
        seed: Non-negative seed.
        rank, world_size: This process's rank and the number of data-parallel ranks.
        drop_last: Give every rank exactly ``N // world_size`` events per epoch (data-parallel
            ranks must take equal numbers of steps); the rest of the epoch's order is skipped.
        geometry: For ``"calochallenge"`` files only: the geometry of their voxels (e.g.
            :func:`surrogate.data.binning.read_binning_xml` of the dataset's binning file). Events
            are then yielded as CaloGAN-layout events are, one array per layer and the incident
            energy in GeV, which is what the shower models take.

    Yields:
        For ``"calogan"``: ``{"layer_0": (3, 96), "layer_1": (12, 12), "layer_2": (12, 6)`` in MeV,
        ``"energy": (1,)`` in GeV``}``; for ``"calochallenge"``: ``{"showers": (V,),
        "incident_energies": (1,)}`` in MeV, or with a ``geometry`` ``{layer: layer.shape`` in
        MeV, ``"energy": (1,)`` in GeV``}``. All float32 tensors.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: For an unknown layout or bad option, a file not matching the layout or with
            bad incident energies, a ``geometry`` with another voxel count than the file's, or one
            given for a CaloGAN file (at construction), or bad cell values (when read); messages
            name the file and key.

    References:
        Paganini, de Oliveira, Nachman, arXiv:1705.02355; Krause et al., arXiv:2410.21611.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        layout: str = "calogan",
        block_size: int = 1024,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        geometry: CaloGeometry | None = None,
    ) -> None:
        super().__init__()
        check_choice("layout", layout, sorted(LAYOUTS))
        epoch_segments(0, block_size, seed=seed, rank=rank, world_size=world_size)  # checks the options
        self.path = Path(path)
        self.layout = layout
        if geometry is not None and (layout != "calochallenge" or not isinstance(geometry, CaloGeometry)):
            raise ValueError(f"{self.path}: geometry applies to layout 'calochallenge' (CaloGAN files have CaloGAN's "
                             f"geometry), got layout {layout!r} and {type(geometry).__name__}")
        fields = LAYOUTS[layout]
        self._fields = tuple(f for f in fields if f.name != "overflow")
        with open_hdf5(self.path) as file:
            self.n_events, self.event_shapes = check_layout(file, fields, path=self.path)
            for field in self._fields:
                if field.positive:  # incident energies: small, checked in full now
                    scan_values(file[field.name], field, path=self.path)
        if geometry is not None:
            if self.event_shapes["showers"] != (geometry.n_voxels,):
                raise ValueError(f"{self.path}: 'showers' has {self.event_shapes['showers'][0]} voxels per event; "
                                 f"expected {geometry.n_voxels} of geometry {geometry.describe()}")
        self.geometry = geometry
        self.block_size, self.shuffle, self.seed = block_size, bool(shuffle), seed
        self.rank, self.world_size, self.drop_last = rank, world_size, bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose order the next iteration yields (a non-negative integer)."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def __len__(self) -> int:
        """Events this rank yields per epoch (over all its DataLoader workers)."""
        return shard_length(self.n_events, self.rank, self.world_size, drop_last=self.drop_last)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        segments = epoch_segments(
            self.n_events, self.block_size, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
            rank=self.rank, world_size=self.world_size, worker=worker, num_workers=num_workers,
            drop_last=self.drop_last,
        )
        return self._events(segments, self.epoch)

    def _events(self, segments: list, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        with open_hdf5(self.path) as file:
            for segment in segments:
                block = {}
                for field in self._fields:
                    values = as_float32(file[field.name][segment.start:segment.stop])
                    check_values(values, field, path=self.path, offset=segment.start)
                    block[field.name] = values
                n = segment.stop - segment.start
                if self.shuffle:
                    rng = np.random.default_rng([self.seed, epoch, 1, segment.block, segment.start])
                    order = rng.permutation(n)
                    block = {k: v[order] for k, v in block.items()}
                if self.geometry is not None:  # the shower models' form: layers in MeV, energy in GeV
                    energy = block["incident_energies"] / np.float32(1000.0)
                    block = {**self.geometry.unflatten(block["showers"]), "energy": energy}
                for i in range(n):
                    yield {k: torch.from_numpy(v[i]) for k, v in block.items()}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, layout={self.layout!r}, n_events={self.n_events}, "
            f"block_size={self.block_size}, shuffle={self.shuffle}, seed={self.seed}, rank={self.rank}, "
            f"world_size={self.world_size}, drop_last={self.drop_last}, epoch={self.epoch})"
        )

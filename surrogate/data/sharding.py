"""Which events each rank and DataLoader worker reads in an epoch: a seeded plan of contiguous blocks.

The events ``0 .. N-1`` of a file are cut into blocks of ``block_size`` consecutive events (the
last one may be shorter). An epoch visits the blocks in an order drawn from ``(seed, epoch)``;
concatenated, they form the epoch's event sequence. That sequence is cut into ``world_size``
consecutive pieces of (almost) equal length, one per rank, and each rank's piece again into one
per DataLoader worker. A piece is a list of :class:`Segment` s, each a contiguous run of events
inside one block, so every read is contiguous on disk. Every event is in exactly one piece per
epoch, and the plan depends only on its arguments (a resumed run replays it exactly).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from surrogate.checks import check_int

__all__ = ["Segment", "epoch_segments", "shard_length", "split_evenly"]


class Segment(NamedTuple):
    """Events ``[start, stop)`` of the file, all inside block ``block``."""

    block: int
    start: int
    stop: int


def shard_length(n_events: int, rank: int, world_size: int, *, drop_last: bool = False) -> int:
    """Number of events rank ``rank`` reads per epoch under :func:`epoch_segments`.

    Arguments:
        n_events: Events in the file.
        rank, world_size: This process's rank and the number of ranks.
        drop_last: If true, every rank gets ``n_events // world_size`` events and the last
            ``n_events % world_size`` events of the epoch's order are skipped.

    Returns:
        ``n_events // world_size`` or one more (the first ``n_events % world_size`` ranks).
    """
    total = n_events // world_size * world_size if drop_last else n_events
    return (rank + 1) * total // world_size - rank * total // world_size


def split_evenly(segments: list[Segment], part: int, n_parts: int) -> list[Segment]:
    """Piece ``part`` of ``n_parts`` consecutive pieces of (almost) equal event count.

    Arguments:
        segments: An event sequence as segments, in order.
        part: Which piece, ``0 <= part < n_parts``.
        n_parts: Number of pieces.

    Returns:
        The segments (cut where needed) of events ``[part * T // n_parts, (part + 1) * T // n_parts)``
        of the sequence, ``T`` its total length.
    """
    total = sum(s.stop - s.start for s in segments)
    lo, hi = part * total // n_parts, (part + 1) * total // n_parts
    piece, position = [], 0
    for s in segments:
        length = s.stop - s.start
        a, b = max(lo, position), min(hi, position + length)
        if a < b:
            piece.append(Segment(s.block, s.start + a - position, s.start + b - position))
        position += length
        if position >= hi:
            break
    return piece


def epoch_segments(
    n_events: int,
    block_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    drop_last: bool = False,
) -> list[Segment]:
    """The segments one (rank, worker) pair reads in one epoch, in reading order.

    Arguments:
        n_events: Events in the file.
        block_size: Events per block (the unit of reading and of shuffling the order).
        shuffle: Visit blocks in a random order drawn from ``(seed, epoch)``; else in file order.
        seed: Non-negative base seed.
        epoch: Non-negative epoch number.
        rank, world_size: This process's rank and the number of ranks (``0 <= rank < world_size``).
        worker, num_workers: This DataLoader worker and the number of workers of this rank.
        drop_last: Give every rank exactly ``n_events // world_size`` events (see
            :func:`shard_length`); data-parallel ranks must take the same number of steps.

    Returns:
        A list of :class:`Segment`.

    Raises:
        ValueError: For a negative count or seed, ``block_size < 1``, or an index out of range.
    """
    n_events = check_int("n_events", n_events, minimum=0)
    block_size = check_int("block_size", block_size, minimum=1)
    seed, epoch = check_int("seed", seed, minimum=0), check_int("epoch", epoch, minimum=0)
    world_size = check_int("world_size", world_size, minimum=1)
    num_workers = check_int("num_workers", num_workers, minimum=1)
    rank, worker = check_int("rank", rank, minimum=0), check_int("worker", worker, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must satisfy 0 <= rank < world_size={world_size}, got {rank!r}")
    if worker >= num_workers:
        raise ValueError(f"worker must satisfy 0 <= worker < num_workers={num_workers}, got {worker!r}")
    n_blocks = -(-n_events // block_size)
    order = np.random.default_rng([seed, epoch, 0]).permutation(n_blocks) if shuffle else np.arange(n_blocks)
    sequence = [Segment(int(b), int(b) * block_size, min(n_events, (int(b) + 1) * block_size)) for b in order]
    if drop_last:
        sequence = _head(sequence, n_events // world_size * world_size)
    mine = split_evenly(sequence, rank, world_size)
    return split_evenly(mine, worker, num_workers)


def _head(segments: list[Segment], n: int) -> list[Segment]:
    """The first ``n`` events of a segment sequence."""
    out, left = [], n
    for s in segments:
        if left <= 0:
            break
        take = min(left, s.stop - s.start)
        out.append(Segment(s.block, s.start, s.start + take))
        left -= take
    return out

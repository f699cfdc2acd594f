"""The per-epoch block plan: every event exactly once across ranks x workers, seeded orders."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from surrogate.data.sharding import Segment, epoch_segments, shard_length


def _events(segments):
    return np.concatenate([np.arange(s.start, s.stop) for s in segments]) if segments else np.zeros(0, int)


@pytest.mark.parametrize("n_events,block_size", [(0, 4), (1, 4), (10, 1), (103, 8), (64, 16), (100, 1000)])
@pytest.mark.parametrize("world_size,num_workers", [(1, 1), (1, 3), (3, 1), (4, 2)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_event_once_per_epoch(n_events, block_size, world_size, num_workers, drop_last):
    seen = []
    for rank in range(world_size):
        rank_events = []
        for worker in range(num_workers):
            segs = epoch_segments(
                n_events, block_size, seed=3, epoch=2, rank=rank, world_size=world_size,
                worker=worker, num_workers=num_workers, drop_last=drop_last,
            )
            for s in segs:  # every segment is a contiguous run inside one block
                assert s.block * block_size <= s.start < s.stop <= min(n_events, (s.block + 1) * block_size)
            rank_events.append(_events(segs))
        rank_events = np.concatenate(rank_events)
        assert len(rank_events) == shard_length(n_events, rank, world_size, drop_last=drop_last)
        seen.append(rank_events)
    seen = np.concatenate(seen)
    assert len(np.unique(seen)) == len(seen), "an event was read twice"
    if drop_last:
        assert len(seen) == n_events // world_size * world_size
        assert len({shard_length(n_events, r, world_size, drop_last=True) for r in range(world_size)}) == 1
    else:
        np.testing.assert_array_equal(np.sort(seen), np.arange(n_events))


def test_order_depends_on_seed_and_epoch_only():
    plan = lambda seed, epoch: epoch_segments(1000, 10, seed=seed, epoch=epoch)  # noqa: E731
    assert plan(0, 0) == plan(0, 0)
    orders = [tuple(s.block for s in plan(seed, epoch)) for seed, epoch in itertools.product(range(3), range(3))]
    assert len(set(orders)) == len(orders), "every (seed, epoch) gives its own block order"
    assert sorted(orders[0]) == list(range(100))


def test_no_shuffle_is_file_order():
    segs = epoch_segments(25, 10, shuffle=False, seed=5, epoch=7)
    assert segs == [Segment(0, 0, 10), Segment(1, 10, 20), Segment(2, 20, 25)]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(block_size=0), dict(seed=-1), dict(epoch=-1), dict(rank=2, world_size=2), dict(world_size=0),
        dict(worker=1, num_workers=1),
    ],
)
def test_bad_options(kwargs):
    args = dict(block_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        epoch_segments(10, **args)

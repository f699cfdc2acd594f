"""EventWriter: chunk choice and the storage of the files it writes; stitching shards into one virtual file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from surrogate.data.event_writer import CHUNK_MAX_EVENTS, CHUNK_TARGET_BYTES, EventWriter, chunk_events_for, stitch_shards
from surrogate.data.hdf5 import Field


@pytest.mark.parametrize("event_shape", [(3, 96), (12, 12), (12, 6), (1,), (3,), (40500,), (300_000,)])
@pytest.mark.parametrize("n_events", [1, 5, 100_000])
def test_chunk_events_for(event_shape, n_events):
    chunk = chunk_events_for(event_shape, n_events)
    event_bytes = 4 * int(np.prod(event_shape))
    assert 1 <= chunk <= min(n_events, CHUNK_MAX_EVENTS)
    if chunk == n_events and chunk < CHUNK_MAX_EVENTS:
        return  # clamped to the file's length
    assert chunk & (chunk - 1) == 0, "power of two"
    assert chunk == 1 or chunk * event_bytes <= CHUNK_TARGET_BYTES
    # the largest such power of two: doubling it would break the size target or the cap
    assert 2 * chunk * event_bytes > CHUNK_TARGET_BYTES or 2 * chunk > CHUNK_MAX_EVENTS


@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_event_writer_storage(tmp_path, compression):
    fields = (Field("a", (4, 5), "MeV"), Field("e", (1,), "GeV", positive=True))
    path = tmp_path / "f.h5"
    n = 3000
    shapes = {"a": (4, 5), "e": (1,)}
    with EventWriter(path, n, fields=fields, event_shapes=shapes, compression=compression, attrs={"layout": "test"}) as w:
        for lo in range(0, n, 700):  # batches not aligned with chunks
            m = min(700, n - lo)
            w.write({"a": np.full((m, 4, 5), 2.0), "e": np.arange(lo + 1, lo + m + 1, dtype=np.float64)[:, None]})
    with h5py.File(path) as f:
        assert f.attrs["layout"] == "test"
        assert f["a"].attrs["unit"] == "MeV" and f["e"].attrs["unit"] == "GeV"
        assert f["a"].dtype == np.float32 and f["a"].shape == (n, 4, 5)
        assert f["a"].chunks == (chunk_events_for((4, 5), n), 4, 5)
        assert f["a"].compression == compression
        if compression == "gzip":
            assert f["a"].compression_opts == 4
        np.testing.assert_array_equal(f["e"][:, 0], np.arange(1, n + 1))


def _shard(path, first: int, n: int):
    fields = (Field("a", (2,), "MeV"),)
    with EventWriter(path, n, fields=fields, event_shapes={"a": (2,)}, attrs={"layout": "test"}) as writer:
        writer.write({"a": np.arange(first, first + n, dtype=np.float64)[:, None].repeat(2, axis=1)})
    return path


def test_stitch_shards_joins_without_copying_and_checks_every_shard(tmp_path):
    shards = [_shard(tmp_path / "s0.h5", 0, 3), _shard(tmp_path / "s1.h5", 3, 4)]
    out = stitch_shards(tmp_path / "all.h5", shards, [3, 4])
    with h5py.File(out) as f:
        assert f["a"].is_virtual and f.attrs["layout"] == "test" and f["a"].attrs["unit"] == "MeV"
        np.testing.assert_array_equal(f["a"][:, 0], np.arange(7))
    with pytest.raises(ValueError, match=r"s1.h5: dataset 'a' holds 4 events, expected 5"):
        stitch_shards(tmp_path / "bad.h5", shards, [3, 5])
    with pytest.raises(FileNotFoundError, match="s2.h5 is missing"):
        stitch_shards(tmp_path / "bad.h5", [*shards, tmp_path / "s2.h5"], [3, 4, 1])
    with pytest.raises(ValueError, match="one expected event count per shard"):
        stitch_shards(tmp_path / "bad.h5", shards, [3])
    assert not (tmp_path / "bad.h5").exists()

"""CaloGAN / CaloChallenge files: round trips, clear errors for bad input, atomic writes, the Dataset."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import surrogate.data as data
from surrogate.data import (
    CALOGAN_KEYS,
    CaloChallengeWriter,
    CaloGANWriter,
    CaloShowerDataset,
    read_calochallenge,
    read_calogan,
    read_incident_energies,
    validate_calochallenge,
    validate_calogan,
    write_calochallenge,
    write_calogan,
)
from surrogate.geometry import CALOGAN_LAYER_SHAPES, CaloGeometry, PolarLayer

REPO = Path(__file__).resolve().parents[2]


def make_calogan(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random sparse showers in the CaloGAN layout; ``energy`` = 1, 2, ..., n GeV identifies events."""
    out = {}
    for key, shape in CALOGAN_LAYER_SHAPES.items():
        cells = rng.exponential(50.0, (n, *shape)) * (rng.random((n, *shape)) < 0.4)
        out[key] = cells.astype(np.float32)
    out["energy"] = np.arange(1, n + 1, dtype=np.float32)[:, None]
    out["overflow"] = rng.exponential(5.0, (n, 3)).astype(np.float32)
    return out


def write_raw(path: Path, arrays: dict, *, dtype=np.float64) -> Path:
    """Writes arrays with plain h5py, like CaloGAN's public Geant4 files: float64, no attributes."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            value = np.asarray(value)
            f.create_dataset(key, data=value.astype(dtype) if value.dtype.kind == "f" else value)
    return path


def collect(dataset, *, num_workers: int = 0, batch_size: int = 4) -> dict[str, np.ndarray]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]} if batches else {}


# ----------------------------------------------------------------------------- round trips


def test_public_names_reexported():
    assert set(data.__all__) >= {
        "atomic_output", "read_calogan", "write_calogan", "CaloGANWriter", "CaloShowerDataset",
        "validate_calogan", "read_calochallenge", "write_calochallenge", "validate_calochallenge",
    }
    for name in data.__all__:
        assert getattr(data, name) is not None


@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_calogan_round_trip_bit_exact(tmp_path, rng, compression):
    showers = make_calogan(rng, 300)
    path = write_calogan(tmp_path / "s.h5", showers, compression=compression, chunk_events=64)
    back = read_calogan(path)
    assert set(back) == set(CALOGAN_KEYS)
    for key in CALOGAN_KEYS:
        assert back[key].dtype == np.float32
        assert back[key].tobytes() == showers[key].tobytes(), key
    part = read_calogan(path, start=70, stop=200)
    for key in CALOGAN_KEYS:
        np.testing.assert_array_equal(part[key], showers[key][70:200])
    assert validate_calogan(path) == 300
    with h5py.File(path) as f:
        assert f.attrs["layout"] == "calogan"
        assert {k: f[k].attrs["unit"] for k in CALOGAN_KEYS} == {
            "layer_0": "MeV", "layer_1": "MeV", "layer_2": "MeV", "energy": "GeV", "overflow": "MeV"}
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]


def test_calogan_streaming_writer_equals_one_shot(tmp_path, rng):
    showers = make_calogan(rng, 250)
    with CaloGANWriter(tmp_path / "stream.h5", 250) as writer:
        for lo in range(0, 250, 37):  # batches not aligned with chunks
            writer.write({k: v[lo:lo + 37] for k, v in showers.items()})
            assert not (tmp_path / "stream.h5").exists()
    back = read_calogan(tmp_path / "stream.h5")
    for key in CALOGAN_KEYS:
        assert back[key].tobytes() == showers[key].tobytes()


def test_reads_float64_file_without_attributes(tmp_path, rng):
    showers = {k: v.astype(np.float64) for k, v in make_calogan(rng, 20).items()}
    path = write_raw(tmp_path / "geant4_like.h5", {**showers, "extra_info": np.zeros(20)})
    back = read_calogan(path)
    for key in CALOGAN_KEYS:
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], showers[key].astype(np.float32))
    assert validate_calogan(path) == 20
    assert len(CaloShowerDataset(path)) == 20


def test_writer_accepts_float64_and_float16(tmp_path, rng):
    showers = make_calogan(rng, 10)
    mixed = {k: v.astype(np.float64 if i % 2 else np.float16) for i, (k, v) in enumerate(showers.items())}
    back = read_calogan(write_calogan(tmp_path / "m.h5", mixed))
    for key in CALOGAN_KEYS:
        np.testing.assert_array_equal(back[key], mixed[key].astype(np.float32))


@pytest.mark.parametrize("n_voxels", [1, 368, 6480])
def test_calochallenge_round_trip_bit_exact(tmp_path, rng, n_voxels):
    n = 40
    energies = rng.uniform(1e3, 1e6, (n, 1)).astype(np.float32)
    showers = (rng.exponential(10.0, (n, n_voxels)) * (rng.random((n, n_voxels)) < 0.3)).astype(np.float32)
    path = write_calochallenge(tmp_path / "cc.h5", energies, showers)
    back = read_calochallenge(path)
    assert back["incident_energies"].tobytes() == energies.tobytes()
    assert back["showers"].tobytes() == showers.tobytes()
    np.testing.assert_array_equal(read_calochallenge(path, start=5, stop=9)["showers"], showers[5:9])
    assert validate_calochallenge(path) == n
    with h5py.File(path) as f:
        assert f["showers"].attrs["unit"] == "MeV" and f["incident_energies"].attrs["unit"] == "MeV"


# ----------------------------------------------------------------------------- bad files

METADATA_CASES = {
    "missing key": ("overflow", lambda a: a.pop("overflow")),
    "wrong layer shape": ("layer_1", lambda a: a.update(layer_1=a["layer_1"][:, :, :11])),
    "energy without axis": ("energy", lambda a: a.update(energy=a["energy"][:, 0])),
    "int dtype": ("layer_0", lambda a: a.update(layer_0=a["layer_0"].astype(np.int32))),
    "string dtype": ("energy", lambda a: a.update(energy=np.full((len(a["energy"]), 1), b"50"))),
    "complex dtype": ("layer_2", lambda a: a.update(layer_2=a["layer_2"].astype(np.complex64))),
    "mismatched lengths": ("layer_2", lambda a: a.update(layer_2=a["layer_2"][:-1])),
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_bad_calogan_metadata_names_file_and_key(tmp_path, rng, case):
    key, mutate = METADATA_CASES[case]
    arrays = make_calogan(rng, 12)
    mutate(arrays)
    path = write_raw(tmp_path / "bad.h5", arrays)
    for reader in (read_calogan, validate_calogan, CaloShowerDataset):
        with pytest.raises(ValueError) as info:
            reader(path)
        message = str(info.value)
        assert str(path) in message and f"'{key}'" in message and "expected" in message, message


def test_wrong_unit_attribute_and_group(tmp_path, rng):
    path = write_calogan(tmp_path / "units.h5", make_calogan(rng, 5))
    with h5py.File(path, "a") as f:
        f["energy"].attrs["unit"] = "MeV"
    with pytest.raises(ValueError, match=r"'energy' has unit attribute 'MeV', expected 'GeV'"):
        read_calogan(path)
    with h5py.File(path, "a") as f:
        del f["layer_0"]
        f.create_group("layer_0")
    with pytest.raises(ValueError, match=r"'layer_0' is a Group"):
        validate_calogan(path)


VALUE_CASES = {  # key, event, value
    "nan cell": ("layer_1", 7, np.nan),
    "negative cell": ("layer_0", 3, -1.0),
    "inf overflow": ("overflow", 9, np.inf),
    "zero energy": ("energy", 5, 0.0),
    "negative energy": ("energy", 2, -10.0),
    "nan energy": ("energy", 10, np.nan),
    "float64 beyond float32": ("layer_2", 4, 1e300),
}


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_bad_calogan_values_name_file_key_and_event(tmp_path, rng, case):
    key, event, value = VALUE_CASES[case]
    arrays = {k: v.astype(np.float64) for k, v in make_calogan(rng, 12).items()}
    arrays[key][event].flat[0] = value
    path = write_raw(tmp_path / "bad.h5", arrays)
    calls = (lambda: validate_calogan(path), lambda: read_calogan(path), lambda: read_calogan(path, start=event, stop=event + 1))
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert str(path) in message and f"'{key}'" in message and f"event {event}" in message, message
    # readers check the events they read: the rest of the file stays readable
    assert len(read_calogan(path, start=event + 1)["energy"]) == 12 - event - 1
    if key == "overflow":  # not used for training: the Dataset does not read it
        assert len(collect(CaloShowerDataset(path))["energy"]) == 12
    elif key == "energy":  # incident energies are checked in full when the Dataset is built
        with pytest.raises(ValueError, match=f"'{key}'.*event {event}"):
            CaloShowerDataset(path)
    else:  # cells are checked block by block while iterating
        with pytest.raises(ValueError, match=f"'{key}'.*event {event}"):
            collect(CaloShowerDataset(path, block_size=4))


@pytest.mark.parametrize("case", ["missing showers", "1-D showers", "lengths", "int energies", "negative voxel"])
def test_bad_calochallenge_files(tmp_path, rng, case):
    arrays = {"incident_energies": rng.uniform(1e3, 1e5, (8, 1)), "showers": rng.exponential(1.0, (8, 30))}
    key = "showers"
    if case == "missing showers":
        del arrays["showers"]
    elif case == "1-D showers":
        arrays["showers"] = arrays["showers"][:, 0]
    elif case == "lengths":
        arrays["showers"] = arrays["showers"][:7]
    elif case == "int energies":
        key = "incident_energies"
        arrays[key] = np.full((8, 1), 1000, dtype=np.int64)
    else:
        arrays["showers"][6, 11] = -0.5
    path = write_raw(tmp_path / "cc.h5", arrays)
    iterate = lambda p: collect(CaloShowerDataset(p, layout="calochallenge"))  # noqa: E731
    for reader in (read_calochallenge, validate_calochallenge, iterate):
        with pytest.raises(ValueError) as info:
            reader(path)
        assert str(path) in str(info.value) and f"'{key}'" in str(info.value), str(info.value)


def test_missing_and_non_hdf5_files(tmp_path):
    missing = tmp_path / "nope.h5"
    for reader in (read_calogan, validate_calogan, read_calochallenge, CaloShowerDataset):
        with pytest.raises(FileNotFoundError) as info:
            reader(missing)
        assert str(missing) in str(info.value)
    text = tmp_path / "showers.csv"
    text.write_text("layer_0\n1.0\n")
    for reader in (read_calogan, validate_calochallenge, CaloShowerDataset):
        with pytest.raises(ValueError, match="not an HDF5 file") as info:
            reader(text)
        assert str(text) in str(info.value)


@pytest.mark.parametrize("start,stop", [(-1, None), (5, 4), (0, 11), (11, None), (1.5, None)])
def test_bad_read_range(tmp_path, rng, start, stop):
    path = write_calogan(tmp_path / "s.h5", make_calogan(rng, 10))
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        read_calogan(path, start=start, stop=stop)


# ----------------------------------------------------------------------------- bad batches, interrupted writes

BATCH_CASES = {
    "missing key": ("overflow", lambda b: b.pop("overflow")),
    "unknown key": ("layer_3", lambda b: b.update(layer_3=b["layer_2"])),
    "wrong shape": ("layer_0", lambda b: b.update(layer_0=b["layer_0"][:, :2])),
    "int dtype": ("layer_1", lambda b: b.update(layer_1=b["layer_1"].astype(np.int64))),
    "nan": ("layer_2", lambda b: b["layer_2"].__setitem__((1, 0, 0), np.nan)),
    "negative": ("overflow", lambda b: b["overflow"].__setitem__((2, 1), -3.0)),
    "zero energy": ("energy", lambda b: b["energy"].__setitem__((0, 0), 0.0)),
    "lengths": ("energy", lambda b: b.update(energy=b["energy"][:3])),
}


@pytest.mark.parametrize("case", sorted(BATCH_CASES))
def test_bad_batch_names_file_and_key_and_leaves_no_file(tmp_path, rng, case):
    key, mutate = BATCH_CASES[case]
    batch = make_calogan(rng, 5)
    mutate(batch)
    path = tmp_path / "out.h5"
    with pytest.raises(ValueError) as info:
        with CaloGANWriter(path, 10) as writer:
            writer.write(make_calogan(rng, 5))
            writer.write(batch)
    assert str(path) in str(info.value) and key in str(info.value), str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_writer_too_many_or_too_few_events(tmp_path, rng):
    path = tmp_path / "out.h5"
    with pytest.raises(ValueError, match="would exceed n_events=4"):
        with CaloGANWriter(path, 4) as writer:
            writer.write(make_calogan(rng, 5))
    with pytest.raises(ValueError, match="only 3 of n_events=4"):
        with CaloGANWriter(path, 4) as writer:
            writer.write(make_calogan(rng, 3))
    assert list(tmp_path.iterdir()) == []
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="n_events"):
            CaloGANWriter(path, bad)
    with pytest.raises(ValueError, match="compression"):
        CaloGANWriter(path, 4, compression="zstd")
    with pytest.raises(ValueError, match="n_voxels"):
        CaloChallengeWriter(path, 4, n_voxels=0)


def test_exception_inside_writer_keeps_old_file(tmp_path, rng):
    path = write_calogan(tmp_path / "s.h5", make_calogan(rng, 3))
    with pytest.raises(RuntimeError, match="simulated crash"):
        with CaloGANWriter(path, 100) as writer:
            writer.write(make_calogan(rng, 50))
            raise RuntimeError("simulated crash")
    assert list(tmp_path.iterdir()) == [path]
    assert len(read_calogan(path)["energy"]) == 3  # the previous complete file, untouched


def test_exception_inside_atomic_output_with_h5py(tmp_path):
    path = tmp_path / "a.h5"
    with pytest.raises(OSError):
        with data.atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("x", data=np.zeros(10))
            raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import sys, time
import numpy as np
from surrogate.data import CaloGANWriter
n = 2000
batch = {"layer_0": np.ones((500, 3, 96), np.float32), "layer_1": np.ones((500, 12, 12), np.float32),
         "layer_2": np.ones((500, 12, 6), np.float32), "energy": np.ones((500, 1), np.float32),
         "overflow": np.zeros((500, 3), np.float32)}
with CaloGANWriter(sys.argv[1], n) as writer:
    writer.write(batch)
    print("half written", flush=True)
    time.sleep(120)
    for _ in range(3):
        writer.write(batch)
"""


def test_sigkill_mid_write_leaves_no_file_under_final_name(tmp_path, rng):
    path = write_calogan(tmp_path / "s.h5", make_calogan(rng, 3))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "half written", proc.stderr.read()
        leftovers = [p for p in tmp_path.iterdir() if p != path]
        assert len(leftovers) == 1 and leftovers[0].name.startswith(".s.h5.") and leftovers[0].stat().st_size > 0
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # the old file is still the complete old file; the partial one only exists as a hidden temporary
    assert len(read_calogan(path)["energy"]) == 3
    assert all(p == path or p.name.startswith(".s.h5.") for p in tmp_path.iterdir())


# ----------------------------------------------------------------------------- the Dataset


@pytest.fixture
def event_file(tmp_path, rng):
    showers = make_calogan(rng, 103)
    return write_calogan(tmp_path / "events.h5", showers, chunk_events=16), showers


@pytest.mark.parametrize(
    "world_size,num_workers,block_size", [(1, 0, 8), (1, 2, 8), (3, 0, 1), (2, 2, 7), (4, 0, 1000)]
)
def test_each_event_once_per_epoch_across_ranks_and_workers(event_file, world_size, num_workers, block_size):
    path, showers = event_file
    ids = []
    for rank in range(world_size):
        dataset = CaloShowerDataset(path, block_size=block_size, seed=11, rank=rank, world_size=world_size)
        dataset.set_epoch(3)
        got = collect(dataset, num_workers=num_workers)
        assert len(got["energy"]) == len(dataset)
        rank_ids = got["energy"][:, 0].astype(int)
        # every yielded event carries its own cells (the within-block shuffle moves all keys together)
        for key in ("layer_0", "layer_1", "layer_2"):
            np.testing.assert_array_equal(got[key], showers[key][rank_ids - 1])
        ids.append(rank_ids)
    ids = np.concatenate(ids)
    np.testing.assert_array_equal(np.sort(ids), np.arange(1, 104))
    assert not np.array_equal(ids, np.arange(1, 104)), "shuffled"


def test_drop_last_gives_equal_ranks(event_file):
    path, _ = event_file
    ids = []
    for rank in range(4):
        dataset = CaloShowerDataset(path, block_size=8, rank=rank, world_size=4, drop_last=True)
        got = collect(dataset)["energy"][:, 0]
        assert len(got) == len(dataset) == 103 // 4
        ids.append(got)
    ids = np.concatenate(ids)
    assert len(np.unique(ids)) == len(ids) == 100


def test_order_is_seeded_by_seed_and_epoch(event_file):
    path, _ = event_file

    def order(seed, epoch, num_workers=0):
        dataset = CaloShowerDataset(path, block_size=8, seed=seed)
        dataset.set_epoch(epoch)
        return collect(dataset, num_workers=num_workers)["energy"][:, 0]

    first = order(0, 0)
    np.testing.assert_array_equal(order(0, 0), first)  # a fresh instance (a resumed run) replays it
    assert not np.array_equal(order(0, 1), first)
    assert not np.array_equal(order(1, 0), first)
    np.testing.assert_array_equal(order(0, 5, num_workers=2), order(0, 5, num_workers=2))
    assert not np.array_equal(order(0, 5, num_workers=2), order(0, 6, num_workers=2))


def test_shuffles_within_a_block_and_no_shuffle_is_file_order(event_file):
    path, _ = event_file
    one_block = collect(CaloShowerDataset(path, block_size=1024, seed=0))["energy"][:, 0]
    assert not np.array_equal(one_block, np.arange(1, 104))
    np.testing.assert_array_equal(np.sort(one_block), np.arange(1, 104))
    ordered = CaloShowerDataset(path, block_size=5, shuffle=False)
    ordered.set_epoch(4)
    np.testing.assert_array_equal(collect(ordered)["energy"][:, 0], np.arange(1, 104))


def test_yields_float32_tensors_of_the_layout(event_file):
    path, _ = event_file
    item = next(iter(CaloShowerDataset(path, block_size=4)))
    shapes = {k: tuple(v.shape) for k, v in item.items()}
    assert shapes == {"layer_0": (3, 96), "layer_1": (12, 12), "layer_2": (12, 6), "energy": (1,)}
    assert all(v.dtype == torch.float32 for v in item.values())
    batch = next(iter(torch.utils.data.DataLoader(CaloShowerDataset(path), batch_size=16)))
    assert batch["layer_0"].shape == (16, 3, 96) and batch["energy"].shape == (16, 1)


def test_calochallenge_dataset(tmp_path, rng):
    energies = np.arange(1, 31, dtype=np.float32)[:, None] * 1000.0
    showers = rng.exponential(1.0, (30, 45)).astype(np.float32)
    path = write_calochallenge(tmp_path / "cc.h5", energies, showers)
    dataset = CaloShowerDataset(path, layout="calochallenge", block_size=4, seed=2)
    got = collect(dataset, num_workers=2, batch_size=3)
    assert set(got) == {"incident_energies", "showers"} and got["showers"].shape == (30, 45)
    rows = (got["incident_energies"][:, 0] / 1000.0).astype(int) - 1
    np.testing.assert_array_equal(np.sort(rows), np.arange(30))
    np.testing.assert_array_equal(got["showers"], showers[rows])


def test_calochallenge_dataset_with_a_geometry_yields_the_models_form(tmp_path, rng):
    """With the file's geometry, challenge events arrive as CaloGAN events do: one array per layer
    (MeV) in the challenge's voxel order, the incident energy in GeV; every event once."""
    geometry = CaloGeometry("toy", [PolarLayer("layer_0", (0.0, 1.0, 2.0, 3.0), 2), PolarLayer("layer_4", (0.0, 5.0), 1)])
    energies = np.arange(1, 21, dtype=np.float32)[:, None] * 1000.0
    showers = rng.exponential(1.0, (20, geometry.n_voxels)).astype(np.float32)
    path = write_calochallenge(tmp_path / "cc.h5", energies, showers)
    dataset = CaloShowerDataset(path, layout="calochallenge", geometry=geometry, block_size=8, seed=1)
    got = collect(dataset, num_workers=0, batch_size=6)
    assert set(got) == {"layer_0", "layer_4", "energy"}
    assert got["layer_0"].shape == (20, 2, 3) and got["layer_4"].shape == (20, 1, 1)
    rows = np.rint(got["energy"][:, 0]).astype(int) - 1  # GeV
    np.testing.assert_array_equal(np.sort(rows), np.arange(20))
    np.testing.assert_array_equal(got["layer_0"].reshape(20, 6), showers[rows, :6])
    np.testing.assert_array_equal(got["layer_4"][:, 0, 0], showers[rows, 6])
    wrong = CaloGeometry("seven", [PolarLayer("layer_0", (0.0, 1.0), 7)])
    with pytest.raises(ValueError, match=r"cc.h5: 'showers' has 7 voxels per event; expected 6 of geometry 'six' \(1 layer, 6 voxels\)"):
        CaloShowerDataset(path, layout="calochallenge", geometry=CaloGeometry("six", [PolarLayer("a", (0.0, 1.0), 6)]))
    assert CaloShowerDataset(path, layout="calochallenge", geometry=wrong).n_events == 20
    with pytest.raises(ValueError, match="geometry applies to layout 'calochallenge'"):
        CaloShowerDataset(path, layout="calogan", geometry=wrong)


def test_incident_energies_of_either_layout_in_mev(tmp_path, rng):
    energies = np.array([[256.0], [4194304.0]], np.float32)
    path = write_calochallenge(tmp_path / "cc.h5", energies, np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(read_incident_energies(path), [256.0, 4194304.0])
    calogan = {name: np.zeros((2, *shape), np.float32) for name, shape in CALOGAN_LAYER_SHAPES.items()}
    calogan |= {"energy": np.array([[2.0], [50.0]], np.float32), "overflow": np.zeros((2, 3), np.float32)}
    np.testing.assert_allclose(read_incident_energies(write_calogan(tmp_path / "cg.h5", calogan)), [2000.0, 50000.0])
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["x"] = np.ones(3)
    with pytest.raises(ValueError, match=r"other.h5: no 'incident_energies' .* or 'energy'"):
        read_incident_energies(tmp_path / "other.h5")


def test_calochallenge_writer_stores_attributes(tmp_path):
    path = tmp_path / "a.h5"
    with CaloChallengeWriter(path, 1, n_voxels=2, attrs={"geometry": "toy", "layout": "ignored"}) as writer:
        writer.write({"incident_energies": np.ones((1, 1), np.float32), "showers": np.zeros((1, 2), np.float32)})
    with h5py.File(path, "r") as file:
        assert file.attrs["geometry"] == "toy" and file.attrs["layout"] == "calochallenge"


def test_dataset_holds_no_file_handle_and_pickles(event_file):
    path, _ = event_file
    dataset = CaloShowerDataset(path, block_size=8)
    iterator = iter(dataset)
    next(iterator)
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(clone) == 103 and clone.path == dataset.path
    iterator.close()


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(layout="root"), "layout"), (dict(block_size=0), "block_size"), (dict(seed=-1), "seed"),
     (dict(rank=2, world_size=2), "rank"), (dict(world_size=0), "world_size")],
)
def test_dataset_bad_options(event_file, kwargs, match):
    path, _ = event_file
    with pytest.raises(ValueError, match=match):
        CaloShowerDataset(path, **kwargs)
    with pytest.raises(ValueError, match="epoch"):
        CaloShowerDataset(path).set_epoch(-1)

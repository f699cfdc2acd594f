"""Galaxy stamp files: round trip, atomic writes, clear errors for bad input, the lazy Dataset."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from surrogate.data.galaxy import (
    GALAXY_KEYS,
    GALAXY_UNITS,
    GalaxyStampDataset,
    GalaxyWriter,
    galaxy_file_info,
    read_galaxies,
    validate_galaxies,
    write_galaxies,
)


def make_stamps(rng: np.random.Generator, n: int, size: int = 12, psf: int = 5) -> dict[str, np.ndarray]:
    """Random stamps; ``magnitude`` = 20, 21, ... identifies each stamp."""
    profile = rng.exponential(1.0, (n, size, size)).astype(np.float32)
    kernel = rng.random((n, psf, psf)).astype(np.float32)
    return {
        "observed": (profile + rng.normal(0.0, 0.5, (n, size, size))).astype(np.float32),
        "psf": kernel / kernel.sum(axis=(1, 2), keepdims=True),
        "noise_variance": np.full(n, 0.25, np.float32),
        "profile": profile,
        "magnitude": 20.0 + np.arange(n, dtype=np.float32),
        "half_light_radius": rng.uniform(0.1, 1.0, n).astype(np.float32),
    }


def test_round_trip(tmp_path, rng):
    stamps = make_stamps(rng, 7)
    path = write_galaxies(tmp_path / "g.h5", stamps, pixel_scale=0.2, simulation={"seed": 3})
    back = read_galaxies(path)
    assert set(back) == set(GALAXY_KEYS)
    for key in GALAXY_KEYS:
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], stamps[key])
    info = galaxy_file_info(path)
    assert (info.n, info.stamp_size, info.psf_size, info.pixel_scale) == (7, 12, 5, 0.2)
    assert info.simulation == {"seed": 3}
    with h5py.File(path) as f:
        assert f.attrs["layout"] == "galaxy_stamps"
        assert f.attrs["pixel_scale_arcsec"] == 0.2
        for key in GALAXY_KEYS:
            assert f[key].attrs["unit"] == GALAXY_UNITS[key]
    part = read_galaxies(path, start=2, stop=5, keys=("magnitude",))
    np.testing.assert_array_equal(part["magnitude"], [22.0, 23.0, 24.0])
    assert validate_galaxies(path).n == 7


def test_streaming_writer_is_atomic(tmp_path, rng):
    stamps = make_stamps(rng, 6)
    path = tmp_path / "g.h5"
    with GalaxyWriter(path, 6, stamp_size=12, psf_size=5, pixel_scale=0.1) as writer:
        writer.write({k: v[:4] for k, v in stamps.items()})
        assert not path.exists()  # only the hidden temporary file exists while writing
        writer.write({k: v[4:] for k, v in stamps.items()})
    np.testing.assert_array_equal(read_galaxies(path)["observed"], stamps["observed"])

    with pytest.raises(ValueError, match="only 4 of n=6"):
        with GalaxyWriter(tmp_path / "short.h5", 6, stamp_size=12, psf_size=5, pixel_scale=0.1) as writer:
            writer.write({k: v[:4] for k, v in stamps.items()})
    with pytest.raises(RuntimeError, match="boom"):
        with GalaxyWriter(tmp_path / "crash.h5", 6, stamp_size=12, psf_size=5, pixel_scale=0.1) as writer:
            writer.write({k: v[:4] for k, v in stamps.items()})
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.h5"]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.pop("psf"), r"missing \['psf'\]"),
        (lambda s: s.update(extra=np.zeros(3)), r"unknown \['extra'\]"),
        (lambda s: s.update(profile=s["profile"][:, :, :5]), r"'profile' has shape \(3, 12, 5\), expected \(n, 12, 12\)"),
        (lambda s: s.update(magnitude=np.arange(3)), r"'magnitude' has dtype int64"),
        (lambda s: s["profile"].__setitem__((1, 0, 0), -1.0), r"'profile': expected finite values >= 0 .* at stamp 1"),
        (lambda s: s["observed"].__setitem__((2, 3, 3), np.nan), r"'observed': expected finite values .* at stamp 2"),
        (lambda s: s["noise_variance"].__setitem__(0, 0.0), r"'noise_variance': expected finite values > 0"),
        (lambda s: s.update(half_light_radius=s["half_light_radius"][:2]), r"different lengths"),
    ],
)
def test_bad_batches_are_named(tmp_path, rng, change, match):
    stamps = make_stamps(rng, 3)
    change(stamps)
    path = tmp_path / "bad.h5"
    with pytest.raises(ValueError, match=match) as info:
        with GalaxyWriter(path, 3, stamp_size=12, psf_size=5, pixel_scale=0.1) as writer:
            writer.write(stamps)
    assert str(path) in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(psf_size=4), "psf_size must be odd"),
    (dict(psf_size=13), "psf_size must be odd and <= stamp_size"),
    (dict(pixel_scale=0.0), "pixel_scale must be a finite number > 0 arcsec/pixel"),
    (dict(compression="zip"), "compression must be one of"),
])
def test_bad_writer_arguments(tmp_path, kwargs, match):
    args = dict(stamp_size=12, psf_size=5, pixel_scale=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        GalaxyWriter(tmp_path / "g.h5", 3, **args)


def test_read_errors_name_file_and_key(tmp_path, rng):
    with pytest.raises(FileNotFoundError):
        read_galaxies(tmp_path / "missing.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        read_galaxies(text)

    path = write_galaxies(tmp_path / "g.h5", make_stamps(rng, 4), pixel_scale=0.1)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(path.read_bytes())
    with h5py.File(broken, "a") as f:
        del f["psf"]
    with pytest.raises(ValueError, match=r"broken.h5: missing dataset 'psf'"):
        read_galaxies(broken)

    wrong = tmp_path / "wrong.h5"
    wrong.write_bytes(path.read_bytes())
    with h5py.File(wrong, "a") as f:
        del f["noise_variance"]
        f["noise_variance"] = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"wrong.h5: dataset 'noise_variance' has shape \(4, 2\), expected \(N\)"):
        galaxy_file_info(wrong)

    calo = tmp_path / "calo.h5"
    with h5py.File(calo, "w") as f:
        f.attrs["layout"] = "calogan"
    with pytest.raises(ValueError, match="expected 'galaxy_stamps'"):
        read_galaxies(calo)

    nan = tmp_path / "nan.h5"
    nan.write_bytes(path.read_bytes())
    with h5py.File(nan, "a") as f:
        f["half_light_radius"][2] = np.nan
    with pytest.raises(ValueError, match=r"nan.h5: 'half_light_radius': .* at stamp 2"):
        validate_galaxies(nan)
    with pytest.raises(ValueError, match=r"stamp range \[3, 9\)"):
        read_galaxies(path, start=3, stop=9)
    with pytest.raises(ValueError, match="unknown key"):
        read_galaxies(path, keys=("energy",))


def test_dataset_is_lazy_and_picklable(tmp_path, rng):
    stamps = make_stamps(rng, 10)
    path = write_galaxies(tmp_path / "g.h5", stamps, pixel_scale=0.1)
    dataset = GalaxyStampDataset(path, start=2, stop=9)
    assert dataset._file is None  # nothing held open after __init__
    assert len(dataset) == 7
    item = dataset[0]
    assert item["observed"].shape == (1, 12, 12) and item["psf"].shape == (1, 5, 5)
    assert item["magnitude"].shape == (1,) and float(item["magnitude"]) == 22.0
    assert all(v.dtype == torch.float32 for v in item.values())
    clone = pickle.loads(pickle.dumps(dataset))  # the open handle is not pickled
    assert clone._file is None and float(clone[-1]["magnitude"]) == 28.0
    memory = GalaxyStampDataset(path, start=2, stop=9, in_memory=True)
    for i in (0, 3, 6):
        for key in GALAXY_KEYS:
            torch.testing.assert_close(memory[i][key], dataset[i][key])
    with pytest.raises(IndexError):
        dataset[7]
    dataset.close()


def test_dataloader_workers_open_their_own_handles(tmp_path, rng):
    path = write_galaxies(tmp_path / "g.h5", make_stamps(rng, 10), pixel_scale=0.1)
    dataset = GalaxyStampDataset(path, keys=("magnitude", "observed"))
    loader = DataLoader(dataset, batch_size=5, num_workers=2, shuffle=False)
    batches = list(loader)
    magnitudes = torch.cat([b["magnitude"] for b in batches]).reshape(-1)
    torch.testing.assert_close(magnitudes, 20.0 + torch.arange(10.0))
    assert batches[0]["observed"].shape == (5, 1, 12, 12)

"""atomic_output and checked opening of HDF5 files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from surrogate.data.hdf5 import atomic_output, open_hdf5


def test_atomic_output_renames_on_success(tmp_path):
    target = tmp_path / "report.json"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.json.") and tmp.suffix == ".json"
        tmp.write_text("complete")
        assert not target.exists()  # nothing under the final name while writing
    assert target.read_text() == "complete"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_output_exception_removes_temporary_and_keeps_old_file(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_output_keyboard_interrupt_removes_temporary(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "a.h5") as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_output(tmp_path / "never.txt"):
            pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        with atomic_output(tmp_path / "missing_dir" / "x.txt"):
            pass
    assert "missing_dir" in str(info.value)
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError):
        with atomic_output(tmp_path / "adir"):
            pass


def test_open_hdf5_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(FileNotFoundError) as info:
        open_hdf5(missing)
    assert str(missing) in str(info.value)
    for name, content in [("text.h5", b"layer_0,layer_1\n1,2\n"), ("empty.h5", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="not an HDF5 file") as info:
            open_hdf5(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_open_hdf5_truncated_file(tmp_path):
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as f:
        f.create_dataset("x", data=np.arange(100_000, dtype=np.float32), chunks=(1000,), compression="gzip")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError) as info:
        with open_hdf5(truncated) as f:
            f["x"][:]
    assert str(truncated) in str(info.value)

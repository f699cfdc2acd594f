"""Pairs files (theta, x in HDF5) and sbibm's CSV tables."""

from __future__ import annotations

import bz2
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from surrogate.data import pairs
from surrogate.data.pairs import pairs_info, read_pairs, write_pairs
from surrogate.data.sbibm_csv import read_csv, write_csv

SBIBM = Path(__file__).resolve().parents[2] / "datasets" / "sbibm"


def test_read_pairs_reads_the_rows_asked_for_as_float32(tmp_path, monkeypatch):
    theta = np.arange(20.0).reshape(10, 2)  # float64 in the file
    x = np.arange(30, dtype=np.int16).reshape(10, 3)
    write_pairs(tmp_path / "p.h5", theta, x)
    monkeypatch.setattr(pairs, "SCAN_BYTES", 16)  # several blocks
    t, v = read_pairs(tmp_path / "p.h5", start=3, stop=9)
    assert t.dtype == v.dtype == torch.float32
    assert torch.equal(t, torch.tensor(theta[3:9], dtype=torch.float32)) and torch.equal(v, torch.tensor(x[3:9]).float())
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["theta"], f["x"] = theta, np.ones(10)
    assert pairs_info(tmp_path / "one.h5") == (10, 2, (1,)) and read_pairs(tmp_path / "one.h5")[1].shape == (10, 1)
    monkeypatch.setattr(pairs, "available_memory", lambda: 100)  # bytes; a row takes 20
    with pytest.raises(MemoryError, match=r"p.h5: rows 0:10 take 0.00 GB .* read fewer \(\[data\] num_simulations\)"):
        read_pairs(tmp_path / "p.h5")
    assert read_pairs(tmp_path / "p.h5", stop=5)[0].shape == (5, 2)  # 100 bytes fit once
    with pytest.raises(MemoryError, match=r"\(3 copies"):
        read_pairs(tmp_path / "p.h5", stop=5, copies=3)


def test_pairs_file_errors_name_the_file_and_dataset(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["theta"], f["y"] = np.zeros((4, 2)), np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"bad.h5: no dataset 'x' .* found \['theta', 'y'\]"):
        pairs_info(path)
    with h5py.File(path, "w") as f:
        f["theta"], f["x"] = np.zeros(4), np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"bad.h5: dataset 'theta' must hold numbers of shape \(N, D\)"):
        pairs_info(path)
    with h5py.File(path, "w") as f:
        f["theta"], f["x"] = np.zeros((4, 1)), np.zeros((5, 2))
    with pytest.raises(ValueError, match="'theta' has 4 rows and 'x' 5"):
        pairs_info(path)
    write_pairs(path, np.zeros((4, 1)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"rows 2:9 are outside its 4 rows"):
        read_pairs(path, start=2, stop=9)


def test_csv_header_is_sbibm_s_and_values_round_trip(tmp_path):
    with bz2.open(SBIBM / "slcp" / "num_observation_1" / "reference_posterior_samples.csv.bz2", "rt") as f:
        sbibm_header = f.readline().strip()
    samples = torch.randn(7, 5, dtype=torch.float32)
    path = write_csv(tmp_path / "s.csv", samples, prefix="parameter")
    assert path.read_text().splitlines()[0] == sbibm_header == "parameter_1,parameter_2,parameter_3,parameter_4,parameter_5"
    assert np.array_equal(read_csv(path), samples.numpy())  # 9 significant digits hold float32 exactly
    observation = SBIBM / "two_moons" / "num_observation_1" / "observation.csv"
    assert read_csv(observation).shape == (1, 2)
    (tmp_path / "empty.csv").write_text("data_1\n")
    with pytest.raises(ValueError, match="empty.csv: no data row"):
        read_csv(tmp_path / "empty.csv")
    (tmp_path / "text.csv").write_text("data_1\nabc\n")
    with pytest.raises(ValueError, match="text.csv: not a CSV table of numbers"):
        read_csv(tmp_path / "text.csv")

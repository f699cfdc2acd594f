"""write_report: strict JSON (no NaN tokens), numpy and paths converted, atomic, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from surrogate.metrics.report import to_json, write_report


def strict_loads(text: str):
    """json.loads that refuses the non-standard NaN / Infinity / -Infinity tokens."""

    def refuse(token: str):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_inf_become_null_and_the_file_is_strict_json(tmp_path):
    report = {"nan": float("nan"), "inf": np.inf, "minus_inf": -np.float32(np.inf),
              "nested": {"values": [1.0, np.nan, {"deep": np.float64("inf")}], "array": np.array([np.nan, 2.0])}}
    path = write_report(tmp_path / "report.json", report)
    assert path == tmp_path / "report.json"
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.startswith('{\n  "nan": null')  # indent 2
    assert strict_loads(text) == {"nan": None, "inf": None, "minus_inf": None,
                                  "nested": {"values": [1.0, None, {"deep": None}], "array": [None, 2.0]}}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_round_trip_of_nested_values(tmp_path):
    report = {
        "auc": np.float32(0.75), "n": np.int64(3), "ok": np.bool_(True), "flag": False, "name": "calo",
        "path": Path("/data/showers.h5"), "none": None,
        "bins": [(1.0, 10.0), (10.0, 100.0)],
        "matrix": np.arange(6, dtype=np.int32).reshape(2, 3),
        "tensor": torch.tensor([0.5, 1.5]),
        "per_layer": {0: {"E": np.float64(1.25)}, "layer_1": [np.float16(0.5)]},
    }
    back = strict_loads(write_report(tmp_path / "r.json", report).read_text())
    assert back == {
        "auc": 0.75, "n": 3, "ok": True, "flag": False, "name": "calo", "path": "/data/showers.h5", "none": None,
        "bins": [[1.0, 10.0], [10.0, 100.0]], "matrix": [[0, 1, 2], [3, 4, 5]], "tensor": [0.5, 1.5],
        "per_layer": {"0": {"E": 1.25}, "layer_1": [0.5]},
    }
    assert type(back["n"]) is int and type(back["ok"]) is bool
    assert to_json(report) == back  # what is written is exactly the conversion


def test_replaces_atomically_and_refuses_what_it_cannot_write(tmp_path):
    path = tmp_path / "r.json"
    write_report(path, {"a": 1})
    with pytest.raises(TypeError, match=r"report\['b'\]: cannot write a object"):
        write_report(path, {"a": 2, "b": object()})
    assert strict_loads(path.read_text()) == {"a": 1}  # the old report is untouched
    with pytest.raises(TypeError, match="mapping"):
        write_report(path, [1, 2])
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing" / "r.json", {"a": 1})
    write_report(path, {"a": 3})
    assert strict_loads(path.read_text()) == {"a": 3}

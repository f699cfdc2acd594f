"""The calo_flow family end to end on tiny data: the pipeline file through the one loader, train ->
generate -> validate, `surrogate generate` on the trained run, and configuration errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surrogate.config import ConfigError, load_pipeline
from surrogate.data.calo import read_calogan
from surrogate.pipelines import get_family
from surrogate.pipelines.calo_flow import FAMILY, CaloFlowConfig, load_flow
from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint

THRESHOLD_MEV = 0.5  # well above the dequantisation noise, so the check below means something
TINY_MODEL = f"""
hidden_features = 8
num_transforms = 2
num_bins = 4
energy_hidden_features = 8
energy_num_transforms = 2
threshold_mev = {THRESHOLD_MEV}
"""


def _write_config(folder: Path, train: Path, reference: Path, *, model: str = TINY_MODEL,
                  train_extra: str = "") -> Path:
    text = f"""
[run]
pipeline = "calo_flow"
output_dir = "run"
seed = 3
device = "cpu"
threads = 1
[data]
train_file = "{train}"
reference_file = "{reference}"
[model]
{model}
[train]
batch_size = 32
max_steps = 6
warmup_steps = 2
checkpoint_every = 3
log_every = 3
block_size = 64
{train_extra}
[generate]
n_events = 200
energy_min_gev = 5.0
energy_max_gev = 50.0
batch_size = 100
[validate]
energy_bins_gev = [[5.0, 20.0], [20.0, 50.0]]
energy_calibration_showers = 40
"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "calo_flow.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, gflash_files) -> tuple[CaloFlowConfig, Path]:
    """The tiny pipeline run once: its configuration and report path."""
    path = _write_config(tmp_path_factory.mktemp("calo_flow"), *gflash_files)
    cfg = load_pipeline(path)
    return cfg, get_family("calo_flow").run(cfg, progress=False)


def test_file_loads_into_the_family_schema(trained):
    cfg, _ = trained
    assert isinstance(cfg, CaloFlowConfig) and get_family("calo_flow") is FAMILY
    assert cfg.model["hidden_features"] == 8 and cfg.train.max_grad_norm is not None
    assert cfg.run.output_dir == cfg.source.parent.resolve() / "run"


def test_run_trains_generates_and_reports(trained):
    cfg, report_path = trained
    report = json.loads(report_path.read_text())
    for key in ("auc_high_level", "auc_cells"):
        assert 0.0 <= report["summary"][key] <= 1.0, report["classifier"]
    assert report["generated"]["n_events"] == 200
    section = report["energy_calibration"]  # incident-energy inference through the flow, in the same report
    assert (report_path.parent / "energy_calibration.png").is_file()
    assert not (report_path.parent / "energy_calibration.json").exists()
    assert set(section["methods"]) == {"calibration", "flow", "npe"} and section["settings"]["n_reference"] == 40
    for label, methods in section["bins"].items():
        assert set(methods) == {"calibration", "flow", "npe"}, label
    ckpt = load_checkpoint(latest_checkpoint(cfg.run.output_dir / "train"))
    assert ckpt["step"] == 6
    assert ckpt["config"]["run"]["pipeline"] == "calo_flow" and ckpt["config"]["geometry"] == "CaloGAN"
    assert ckpt["config"]["model"] == {"mixing": "lu", "seed": 3, **cfg.model}  # the arguments as used
    flow = load_flow(cfg.run.output_dir)
    assert flow.threshold_mev == THRESHOLD_MEV and not flow.training
    again = FAMILY.train(cfg, progress=False)  # resumes from the final checkpoint: nothing left to do
    assert again.steps == 6


def test_generate_through_the_cli_applies_the_threshold(trained, tmp_path):
    cfg, _ = trained
    out = tmp_path / "generated.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "surrogate", "--threads", "1", "--no-progress", "generate",
         str(cfg.run.output_dir / "train"), "--n", "130", "--energy", "10:20", "--batch-size", "50", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    generated = read_calogan(out)
    assert generated["layer_0"].shape == (130, 3, 96) and generated["layer_2"].shape == (130, 12, 6)
    assert 10.0 <= generated["energy"].min() and generated["energy"].max() <= 20.0
    for layer in ("layer_0", "layer_1", "layer_2"):
        cells = generated[layer]
        assert np.all((cells == 0) | (cells >= THRESHOLD_MEV)), layer
        assert np.any(cells > 0), layer


@pytest.mark.parametrize("model, train_extra, message", [
    ('hidden_features = "x"', "", r"calo_flow.toml \[model\] hidden_features: expected an integer, got 'x'"),
    ("width = 3", "", r"\[model\]: unknown argument\(s\) \['width'\] for CaloFlow"),
    ('geometry = "CaloGAN"', "", r"\[model\]: unknown argument\(s\) \['geometry'\]"),
    ("", "patience = 3", r"\[train\]: patience: the flow trains without a validation set"),
    ("noise_mev = 0.05", "", r"noise_mev \(0.05 MeV\) must be > 0 and <= its threshold_mev \(0.01 MeV, "
                             r"from \[validate\]"),
])
def test_config_errors_name_the_key(tmp_path, model, train_extra, message):
    path = _write_config(tmp_path, tmp_path / "a.h5", tmp_path / "b.h5", model=model, train_extra=train_extra)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path)

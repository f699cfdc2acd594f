"""The command line end to end on tiny data: train, kill, resume, generate, validate, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from surrogate.data.calo import read_calogan
from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args, check=True, **kwargs):
    proc = subprocess.run([sys.executable, "-m", "surrogate", "--threads", "1", "--no-progress", *map(str, args)],
                          capture_output=True, text=True, env=ENV, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"surrogate {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


GENERATE = """[generate]
n_events = 300
energy_min_gev = 5.0
energy_max_gev = 50.0
"""


def _final_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = load_checkpoint(latest_checkpoint(run / "train"))
    assert ckpt["step"] == 24
    return ckpt["modules"]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, gflash_files, tiny_calo_gan_config):
    straight = tiny_calo_gan_config(tmp_path / "straight", *gflash_files, extra=GENERATE)
    _cli("train", straight)

    killed = tiny_calo_gan_config(tmp_path / "killed", *gflash_files, extra=GENERATE)
    run = tmp_path / "killed" / "run" / "train" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "surrogate", "--threads", "1", "--no-progress", "train", str(killed)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "step_00000008.pt").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_at_kill = load_checkpoint(latest_checkpoint(run.parent))["step"]
    assert steps_at_kill < 24
    _cli("train", killed)  # resumes

    a, b = _final_weights(tmp_path / "straight" / "run"), _final_weights(tmp_path / "killed" / "run")
    for net in ("generator", "critic"):
        for key in a[net]:
            torch.testing.assert_close(a[net][key], b[net][key], rtol=0, atol=0, msg=f"{net}.{key}")


def test_generate_and_validate(tmp_path, gflash_files, tiny_calo_gan_config):
    config = tiny_calo_gan_config(tmp_path, *gflash_files, max_steps=4, extra=GENERATE)
    _cli("train", config)
    out = tmp_path / "gen.h5"
    _cli("generate", tmp_path / "run" / "train", "--n", 130, "--energy", "10:20", "--batch-size", 50, "--out", out)
    gen = read_calogan(out)
    assert gen["layer_1"].shape == (130, 12, 12) and np.all(gen["layer_0"] >= 0)
    assert gen["energy"].min() >= 10.0 and gen["energy"].max() <= 20.0
    proc = _cli("validate", gflash_files[1], out, "--out", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert 0.0 <= report["summary"]["auc_high_level"] <= 1.0
    assert (tmp_path / "report" / report["plots"]["mean_response"]).is_file()
    assert "report.json" in proc.stdout


@pytest.mark.parametrize(("extra", "expected"), [([], {}), (["--threshold-mev", "0"], {"threshold_mev": 0.0})])
def test_validate_passes_the_readout_threshold(monkeypatch, tmp_path, extra, expected):
    """``--threshold-mev`` reaches validate_calo; without it validate_calo's default (0.01 MeV) holds."""
    import surrogate.pipelines.fastsim as fastsim
    from surrogate.cli import main

    calls = []
    monkeypatch.setattr(fastsim, "validate_calo", lambda *args, **kwargs: calls.append(kwargs))
    assert main(["--no-progress", "validate", "ref.h5", "gen.h5", "--out", str(tmp_path), *extra]) == 0
    assert {k: v for k, v in calls[0].items() if k == "threshold_mev"} == expected


def test_validate_with_a_binning_file_uses_the_challenge_evaluation(monkeypatch, tmp_path):
    """``--geometry XML`` sends both files to the CaloChallenge validation in that geometry, with the
    evaluation's threshold unless ``--threshold-mev`` is given."""
    import surrogate.pipelines.fastsim_calochallenge as challenge
    from surrogate.cli import main

    calls = []
    monkeypatch.setattr(challenge, "validate_calochallenge_files", lambda *args, **kwargs: calls.append(kwargs))
    xml = Path(__file__).resolve().parents[1] / "datasets" / "calochallenge" / "binning_dataset_1_photons.xml"
    assert main(["--no-progress", "validate", "ref.h5", "gen.h5", "--out", str(tmp_path), "--geometry", str(xml)]) == 0
    assert calls[0]["geometry"].n_voxels == 368 and calls[0]["threshold_mev"] is None
    assert calls[0]["classifier_protocol"] == "fast"


def test_clear_errors(tmp_path, gflash_files, tiny_calo_gan_config):
    config = tiny_calo_gan_config(tmp_path, *gflash_files, extra=GENERATE)
    config.write_text(config.read_text().replace("max_steps", "max_stepz"))
    proc = _cli("train", config, check=False)
    assert proc.returncode == 2 and "max_stepz" in proc.stderr and "calo.toml" in proc.stderr

    proc = _cli("generate", tmp_path / "nothing", "--n", 5, "--out", tmp_path / "x.h5", check=False)
    assert proc.returncode == 2 and "nothing" in proc.stderr
    proc = _cli("generate", tmp_path, "--n", 5, "--energy", "50:10", "--out", tmp_path / "x.h5", check=False)
    assert proc.returncode == 2 and "EMIN <= EMAX" in proc.stderr
    assert not (tmp_path / "x.h5").exists()

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    proc = _cli("validate", bad, gflash_files[1], "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2 and "bad.h5" in proc.stderr


@pytest.mark.slow  # two CLI processes: about 10-20 s; the same refusal in-process: tests/pipelines/test_generate_calochallenge.py
def test_generate_calochallenge_format_refuses_a_calogan_model(tmp_path):
    """``--format calochallenge`` needs a model of the binning file's geometry: a CaloGAN model is
    refused in one line (status 2, no file); ``--energies-from`` alone takes a file's energies."""
    from surrogate.data.binning import read_binning_xml
    from surrogate.models.calo_gan import CaloGANGenerator
    from surrogate.simulators.gflash_calochallenge import simulate_calochallenge_to_file
    from surrogate.train.checkpoint import checkpoint_path, save_checkpoint

    xml = Path(__file__).resolve().parents[1] / "datasets" / "calochallenge" / "binning_dataset_1_photons.xml"
    reference = simulate_calochallenge_to_file(tmp_path / "ref.h5", 12, geometry=read_binning_xml(xml),
                                               calorimeter="atlas_barrel", energy_distribution="powers-of-two",
                                               energy_range_gev=(0.256, 4194.304), progress=False)
    kwargs = dict(latent_dim=4, channels=2, attention_hidden=4, response_hidden=4)
    config = {"run": {"pipeline": "calo_gan"}, "model": {"generator": kwargs},
              "generate": {"energy_min_gev": 0.2, "energy_max_gev": 5000.0}}
    save_checkpoint(checkpoint_path(tmp_path / "run", 0), modules={"generator": CaloGANGenerator(**kwargs)},
                    config=config, step=0)
    proc = _cli("generate", tmp_path / "run", "--format", "calochallenge", "--geometry", xml, "--energies-from",
                reference, "--out", tmp_path / "x.h5", check=False)
    assert proc.returncode == 2 and not (tmp_path / "x.h5").exists()
    assert "generates showers in geometry 'CaloGAN' (3 layers, 504 voxels), not in 'binning_dataset_1_photons'" in proc.stderr
    proc = _cli("generate", tmp_path / "run", "--energies-from", reference, "--out", tmp_path / "y.h5")
    assert f"showers at the energies of {reference}" in proc.stdout
    assert read_calogan(tmp_path / "y.h5")["energy"].shape == (12, 1)


def test_run_dispatches_the_npe_pipeline_with_paths_relative_to_the_file(tmp_path):
    """`surrogate run` on an NPE file: output_dir and reference_root resolve against the file's
    folder, the report lands there and its path is printed."""
    sbibm = Path(__file__).resolve().parents[1] / "datasets" / "sbibm"
    config = tmp_path / "npe.toml"
    config.write_text(f"""
[run]
pipeline = "npe"
output_dir = "out"
[data]
task = "two_moons"
num_simulations = 300
observations = [1]
reference_root = "{os.path.relpath(sbibm, tmp_path)}"
[model]
hidden_features = 8
num_transforms = 1
[train]
max_epochs = 1
[validate]
num_samples = 200
pair_plots = false
coverage_observations = 0
""")
    proc = _cli("run", config, cwd=Path(__file__).resolve().parent)
    report = tmp_path / "out" / "report.json"
    assert str(report) in proc.stdout
    assert 0.5 <= json.loads(report.read_text())["c2st_mean"] <= 1.0


def test_sample_writes_posterior_samples_in_sbibm_csv_format(tmp_path, capsys):
    """`surrogate sample RUN_DIR --x observation.csv` on a small two_moons run: sbibm's header and
    --n rows inside the prior's box; a CSV of the wrong width and a folder without a posterior
    are one-line errors with status 2 (those two in-process: `main` is the same code)."""
    from surrogate.cli import main
    from surrogate.config import load_pipeline
    from surrogate.pipelines.npe import train_posterior

    config = tmp_path / "npe.toml"
    config.write_text('[run]\npipeline = "npe"\noutput_dir = "run"\n[data]\ntask = "two_moons"\nnum_simulations = 300\n'
                      "[model]\nhidden_features = 8\nnum_transforms = 1\n[train]\nmax_epochs = 1\n")
    train_posterior(load_pipeline(config), progress=False)
    observation = Path(__file__).resolve().parents[1] / "datasets" / "sbibm" / "two_moons" / "num_observation_1"
    out = tmp_path / "samples.csv"
    proc = _cli("sample", tmp_path / "run", "--x", observation / "observation.csv", "--n", 250, "--out", out,
                "--seed", 4)
    assert f"wrote 250 posterior samples to {out}" in proc.stdout
    lines = out.read_text().splitlines()
    assert lines[0] == "parameter_1,parameter_2" and len(lines) == 251
    assert (np.abs(np.loadtxt(out, delimiter=",", skiprows=1)) <= 1).all()

    wide = tmp_path / "wide.csv"
    wide.write_text("data_1,data_2,data_3\n0.1,0.2,0.3\n")
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "run"), "--x", str(wide), "--out", str(tmp_path / "no.csv")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "wide.csv: 3 values" in err and "data of shape (2,)" in err
    assert main(["sample", str(tmp_path), "--x", str(wide), "--out", str(tmp_path / "no.csv")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert not (tmp_path / "no.csv").exists()

"""The shower families in a CaloChallenge geometry (``[data] geometry``): a tiny DS1-photon run
of the calo_flow family through ``surrogate run`` (train on a streamed challenge-layout file,
generate at the reference file's incident energies, validate with the challenge's features), a
checkpoint that rebuilds its geometry without the binning file, ``surrogate generate --format
calochallenge`` on it, the same for the calo_gan family, and the CaloGAN-layout pipelines'
stored configuration unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surrogate.config import ConfigError, load_pipeline
from surrogate.data.binning import read_binning_xml
from surrogate.data.calo import read_calochallenge
from surrogate.pipelines.calo_flow import load_flow
from surrogate.pipelines.calo_gan import load_generator
from surrogate.pipelines.showers import geometry_from_config, geometry_to_config
from surrogate.simulators.gflash_calochallenge import simulate_calochallenge_to_file
from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BINNING = ROOT / "datasets" / "calochallenge" / "binning_dataset_1_photons.xml"
THRESHOLD_MEV = 1.0  # the challenge's evaluation threshold for dataset 1
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "surrogate", "--threads", "1", "--no-progress", *args],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)


def _simulate(path: Path, n: int, seed: int, geometry) -> Path:
    return simulate_calochallenge_to_file(path, n, geometry=geometry, calorimeter="atlas_barrel",
                                          energy_distribution="powers-of-two", energy_range_gev=(0.256, 4194.304),
                                          seed=seed, threshold_mev=THRESHOLD_MEV, progress=False)


def _config(folder: Path, train: Path, reference: Path, binning: Path, extra: str = "") -> Path:
    path = folder / "ds1.toml"
    path.write_text(f"""
[run]
pipeline = "calo_flow"
output_dir = "run"
seed = 5
device = "cpu"
threads = 1
[data]
train_file = "{train}"
reference_file = "{reference}"
geometry = "{binning.name}"
[model]
hidden_features = 8
num_transforms = 1
num_bins = 4
energy_hidden_features = 8
energy_num_transforms = 1
noise_mev = 0.5
[train]
batch_size = 32
max_steps = 4
warmup_steps = 1
checkpoint_every = 2
log_every = 2
block_size = 64
[generate]
n_events = 1000
batch_size = 100
[validate]
threshold_mev = {THRESHOLD_MEV}
energy_calibration_showers = 0
{extra}
""")
    return path


def _ds1_files(folder: Path, n_train: int, n_reference: int, seed: int):
    """A private copy of the DS1-photon binning file, its geometry, and training and reference
    files simulated in it (seeds ``seed`` and ``seed + 1``)."""
    binning = folder / BINNING.name
    shutil.copy(BINNING, binning)
    geometry = read_binning_xml(binning)
    return (binning, geometry, _simulate(folder / "train.h5", n_train, seed, geometry),
            _simulate(folder / "reference.h5", n_reference, seed + 1, geometry))


@pytest.fixture(scope="module")
def ds1_run(tmp_path_factory):
    """The tiny run through ``surrogate run``, with a private copy of the binning file."""
    folder = tmp_path_factory.mktemp("ds1_flow")
    binning, geometry, train, reference = _ds1_files(folder, 300, 200, 11)
    path = _config(folder, train, reference, binning)
    proc = _cli("run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path, geometry, binning, reference


@pytest.mark.slow  # the tiny run: about 25 s at one thread
def test_run_trains_generates_and_validates_in_the_challenge_geometry(ds1_run):
    path, geometry, _, reference = ds1_run
    out = path.parent / "run"
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["settings"]["dataset"] == "1-photons"
    assert report["settings"]["readout_threshold_mev"] == THRESHOLD_MEV
    for level in ("low_level", "high_level"):
        assert 0.0 <= report["classifier"][level]["auc"] <= 1.0, report["classifier"]
    generated, expected = read_calochallenge(out / "generated.h5"), read_calochallenge(reference)
    assert generated["showers"].shape == (200, 368)  # n_events >= the reference's: all its energies, in order
    np.testing.assert_array_equal(generated["incident_energies"], expected["incident_energies"])
    cells = generated["showers"]
    assert np.all((cells == 0) | (cells >= THRESHOLD_MEV))


@pytest.mark.slow  # the tiny run: about 25 s at one thread
def test_checkpoint_rebuilds_the_geometry_without_the_binning_file(ds1_run, tmp_path):
    path, geometry, binning, _ = ds1_run
    out = path.parent / "run"
    ckpt = load_checkpoint(latest_checkpoint(out / "train"))
    assert ckpt["step"] == 4
    stored = ckpt["config"]["geometry"]
    assert stored == geometry_to_config(geometry) and stored["name"] == "binning_dataset_1_photons"
    assert ckpt["config"]["data"]["geometry"] == str(binning)
    moved = tmp_path / "elsewhere"
    shutil.copytree(out / "train", moved)
    binning.rename(binning.with_suffix(".gone"))
    try:
        flow = load_flow(moved)
    finally:
        binning.with_suffix(".gone").rename(binning)
    assert flow.geometry.same_voxels(geometry) and flow.geometry.n_voxels == 368


def test_stored_geometry_round_trips_as_plain_data():
    geometry = read_binning_xml(BINNING)
    stored = geometry_to_config(geometry)
    assert json.loads(json.dumps(stored)) == stored  # plain data: survives JSON and torch.save
    rebuilt = geometry_from_config(stored)
    assert rebuilt.same_voxels(geometry) and rebuilt.name == geometry.name and rebuilt.n_voxels == 368
    from surrogate.geometry import CALOGAN

    assert geometry_to_config(CALOGAN) == "CaloGAN" and geometry_from_config("CaloGAN") is CALOGAN
    with pytest.raises(ValueError, match=r"checkpoint x: config geometry must be a name or"):
        geometry_from_config({"name": "g"}, where="checkpoint x")
    with pytest.raises(ValueError, match=r"checkpoint x: unknown geometry 'nope'"):
        geometry_from_config("nope", where="checkpoint x")


def _generate_both_layouts(train_dir: Path, binning: Path, reference: Path, folder: Path) -> Path:
    """``surrogate generate --format calochallenge`` from a DS1 run: a file the challenge's check
    accepts (returned); a CaloGAN-layout file is refused, naming the geometry, none written."""
    out = folder / "challenge.h5"
    proc = _cli("generate", str(train_dir), "--format", "calochallenge", "--geometry", str(binning),
                "--energies-from", str(reference), "--batch-size", "64", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_generate_calochallenge import challenge_file_check
    finally:
        sys.path.pop(0)
    assert challenge_file_check(out, "1-photons") == read_calochallenge(reference)["showers"].shape[0]
    proc = _cli("generate", str(train_dir), "--n", "10", "--out", str(folder / "calogan.h5"))
    assert proc.returncode == 2 and "generates showers in geometry 'binning_dataset_1_photons'" in proc.stderr
    assert not (folder / "calogan.h5").exists()  # a DS1 model writes no CaloGAN-layout file
    return out


@pytest.mark.slow  # the tiny run: about 25 s at one thread
def test_generate_cli_accepts_the_checkpoint_in_its_geometry(ds1_run, tmp_path):
    path, _, binning, reference = ds1_run
    _generate_both_layouts(path.parent / "run" / "train", binning, reference, tmp_path)


def test_challenge_geometry_needs_the_calibration_off_and_a_matching_file(tmp_path):
    binning = BINNING
    other = ROOT / "datasets" / "calochallenge" / "binning_dataset_2.xml"
    path = _config(tmp_path, tmp_path / "t.h5", tmp_path / "r.h5", binning)
    path.write_text(path.read_text().replace(f'geometry = "{binning.name}"', f'geometry = "{binning}"')
                    .replace("energy_calibration_showers = 0", "energy_calibration_showers = 5"))
    with pytest.raises(ConfigError,
                       match=r"\[validate\] energy_calibration_showers = 5: .* set 0 with \[data\] geometry"):
        load_pipeline(path)
    geometry = read_binning_xml(binning)
    train = _simulate(tmp_path / "t.h5", 20, 1, geometry)
    path.write_text(path.read_text().replace("energy_calibration_showers = 5", "energy_calibration_showers = 0")
                    .replace(f'geometry = "{binning}"', f'geometry = "{other}"'))
    from surrogate.pipelines.showers import data_files

    with pytest.raises(ValueError, match=r"t.h5: 'showers' has 368 voxels per event; \[data\] geometry .* has 6480"):
        data_files(load_pipeline(path), progress=False)
    assert train.is_file()
    recipes = ROOT / "datasets"
    text = path.read_text().replace(f'train_file = "{train}"',
                                    f'train_recipe = "{recipes}/calochallenge_ds1_photons_gflash.toml"')
    path.write_text(text.replace(f'reference_file = "{tmp_path / "r.h5"}"',
                                 f'reference_recipe = "{recipes}/calochallenge_ds1_photons_gflash_reference.toml"'))
    with pytest.raises(ValueError, match=r"\[data\] train_recipe .*: simulates geometry "
                                         r".*binning_dataset_1_photons.xml, not \[data\] geometry .*dataset_2.xml"):
        data_files(load_pipeline(path), progress=False)  # refused before simulating


def test_calogan_pipelines_store_what_they_did(tmp_path):
    for name in ("calo_gan.toml", "calo_flow.toml", "calo_flow_quality.toml"):
        cfg = load_pipeline(ROOT / "pipelines" / name)
        stored = cfg.to_dict()
        assert sorted(stored["data"]) == ["reference_file", "reference_recipe", "train_file", "train_recipe"], name
        assert cfg.data.geometry is None


def _gan_config(folder: Path, train: Path, reference: Path, binning: Path) -> Path:
    """The tiny DS1 file of the flow, for the calo_gan family (small networks, 4 critic updates)."""
    path = _config(folder, train, reference, binning)
    text = path.read_text().replace('pipeline = "calo_flow"', 'pipeline = "calo_gan"')
    text = text.replace("energy_calibration_showers = 0\n", "")
    model = text[text.index("[model]"):text.index("[train]")]
    path.write_text(text.replace(model, "[model.generator]\nlatent_dim = 8\nchannels = 2\nattention_hidden = 8\n"
                                        "[model.critic]\nchannels = [2]\nhidden = 8\n")
                    .replace("[train]", "[train]\nn_critic = 2"))
    return path


def test_gan_trains_in_the_challenge_geometry_and_generates_its_files(tmp_path):
    """The calo_gan family on challenge-layout DS1 files: the networks are built from the binning,
    the checkpoint stores the geometry (rebuilt without the binning file), and ``surrogate
    generate --format calochallenge`` writes a file the challenge's check accepts, at the
    reference's incident energies; a CaloGAN-layout file is refused."""
    from surrogate.pipelines.calo_gan import train

    binning, geometry, train_file, reference = _ds1_files(tmp_path, 200, 60, 21)
    path = _gan_config(tmp_path, train_file, reference, binning)
    cfg = load_pipeline(path)
    assert cfg.data.geometry == binning
    result = train(cfg, progress=False)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["step"] == 4 and ckpt["config"]["geometry"] == geometry_to_config(geometry)
    binning.rename(binning.with_suffix(".gone"))
    try:
        generator = load_generator(tmp_path / "run" / "train")
    finally:
        binning.with_suffix(".gone").rename(binning)
    assert generator.geometry.same_voxels(geometry) and generator.latent_dim == 8
    out = _generate_both_layouts(tmp_path / "run" / "train", binning, reference, tmp_path)
    generated, expected = read_calochallenge(out), read_calochallenge(reference)
    assert generated["showers"].shape == (60, 368)
    np.testing.assert_array_equal(generated["incident_energies"], expected["incident_energies"])


@pytest.mark.slow  # a tiny run through `surrogate run`: about 20 s at one thread
def test_gan_run_validates_with_the_challenge_features(tmp_path):
    binning, _, train_file, reference = _ds1_files(tmp_path, 300, 200, 31)
    path = _gan_config(tmp_path, train_file, reference, binning)
    proc = _cli("run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert report["settings"]["dataset"] == "1-photons"
    for level in ("low_level", "high_level"):
        assert 0.5 <= report["classifier"][level]["auc"] <= 1.0, report["classifier"]  # 4 steps: far from the data
    assert read_calochallenge(tmp_path / "run" / "generated.h5")["showers"].shape == (200, 368)


@pytest.mark.slow  # the tiny run: about 25 s at one thread
def test_infer_energy_reads_challenge_files_in_the_run_geometry(ds1_run, tmp_path):
    """surrogate infer-energy on a CaloChallenge-layout file: one posterior per shower, the file's
    incident energies copied in GeV; a file of another voxel count is refused by name."""
    import h5py

    path, _, _, reference = ds1_run
    out = tmp_path / "post.h5"
    proc = _cli("infer-energy", str(path.parent / "run"), str(reference), "--out", str(out), "--n-grid", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = read_calochallenge(reference)["incident_energies"][:, 0] / 1000.0
    with h5py.File(out) as f:
        assert f["mean"].shape == (200,) and np.isfinite(f["mean"][...]).all()
        np.testing.assert_allclose(f["energy"][...], expected, rtol=1e-6)
        assert f["energy"].attrs["unit"] == "GeV"
    other = tmp_path / "ds2.h5"
    with h5py.File(other, "w") as f:
        f["incident_energies"] = np.full((3, 1), 1000.0, np.float32)
        f["showers"] = np.zeros((3, 6480), np.float32)
    proc = _cli("infer-energy", str(path.parent / "run"), str(other), "--out", str(tmp_path / "x.h5"))
    assert proc.returncode == 2 and "'showers' has 6480 voxels per event; the model has geometry" in proc.stderr

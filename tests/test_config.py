"""One loader for every pipeline file: every file in the repository loads; bad values are refused
with the file, section, key, expectation and value named; renamed keys still work with a
warning; a family registered from outside runs through the CLI without touching it."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from surrogate.config import (
    ConfigDeprecationWarning,
    ConfigError,
    PipelineConfig,
    TrainConfig,
    load_pipeline,
    load_simulate_recipe,
    read_toml,
    setting,
)
from surrogate.pipelines import Family, family_names, get_family, register_family

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.toml")), ids=lambda p: p.name)
def test_pipeline_files_load_without_warnings(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_pipeline(path)
    assert isinstance(cfg, get_family(cfg.run.pipeline).config)
    assert cfg.run.output_dir.is_absolute()
    json.dumps(cfg.to_dict())  # plain data for checkpoints and reports
    for name in ("train_recipe", "reference_recipe"):
        recipe = getattr(getattr(cfg, "data", None), name, None)
        assert recipe is None or Path(recipe).is_file()


@pytest.mark.parametrize("path", sorted((REPO / "datasets").glob("*.toml")), ids=lambda p: p.name)
def test_dataset_recipes_parse(path):
    table = read_toml(path)["simulate"]
    if table.get("simulator") == "galsim_cosmos":
        assert table["n"] > 0
    else:
        assert load_simulate_recipe(path).n_events > 0


def test_challenge_recipes_name_their_binning_file_relative_to_the_recipe(tmp_path):
    recipe = load_simulate_recipe(REPO / "datasets" / "calochallenge_ds1_photons_gflash.toml")
    assert recipe.geometry == REPO / "datasets" / "calochallenge" / "binning_dataset_1_photons.xml"
    assert recipe.geometry.is_file() and recipe.calorimeter == "atlas_barrel"
    assert recipe.energy_distribution == "powers-of-two" and recipe.threshold_mev == 1.0
    assert load_simulate_recipe(REPO / "datasets" / "calogan_gflash_small.toml").geometry is None
    bad = tmp_path / "r.toml"
    bad.write_text('[simulate]\nenergy_distribution = "log-uniform"\n')
    with pytest.raises(ConfigError, match="need a geometry"):
        load_simulate_recipe(bad)
    bad.write_text('[simulate]\ngeometry = "b.xml"\n')
    with pytest.raises(ConfigError, match="needs a calorimeter"):
        load_simulate_recipe(bad)


BASE = '[run]\npipeline = "calo_gan"\noutput_dir = "out"\n[data]\ntrain_file = "a.h5"\nreference_file = "b.h5"\n'


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("extra, message", [
    ('[train]\nlr_schedule = "linear"\n', r"bad.toml \[train\] lr_schedule: expected one of 'constant', 'cosine', got 'linear'"),
    ("[train]\nfinal_lr_fraction = 2.0\n", r"bad.toml \[train\] final_lr_fraction: must be <= 1, got 2.0"),
    ('[train]\nbatch_size = "32"\n', r"bad.toml \[train\] batch_size: expected an integer, got '32'"),
    ("[train]\nbatch_size = 0\n", r"\[train\] batch_size: must be >= 1, got 0"),
    ("[train]\nlearning_rate = true\n", r"\[train\] learning_rate: expected a number, got True"),
    ("[train]\nlr = 1e-3\n", r"\[train\]: unknown key\(s\) \['lr'\]; allowed: \[.*'learning_rate'"),
    ("[trian]\n", r"bad.toml: unknown section\(s\) \['trian'\]"),
    ('[model.generator]\nlatent_dim = "eight"\n', r"\[model\] generator latent_dim: expected an integer, got 'eight'"),
    ("[model.generator]\nwidth = 3\n", r"\[model\] generator: unknown argument\(s\) \['width'\] for CaloGANGenerator"),
    ("[validate]\nenergy_bins_gev = [[10.0, 1.0]]\n", r"\[validate\]: energy_bins_gev: each bin"),
    ('[generate]\nenergy_min_gev = "1"\n', r"\[generate\] energy_min_gev: expected a number"),
])
def test_bad_values_name_file_section_key_and_value(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_write(tmp_path, BASE + extra))


def test_missing_and_unknown_family_and_sections(tmp_path):
    with pytest.raises(ConfigError, match=r"missing section \[run\]"):
        load_pipeline(_write(tmp_path, '[data]\ntrain_file = "a.h5"\n'))
    with pytest.warns(ConfigDeprecationWarning, match='no pipeline; assuming pipeline = "calo_gan"'):
        assert load_pipeline(_write(tmp_path, BASE.replace('pipeline = "calo_gan"\n', ""))).run.pipeline == "calo_gan"
    with pytest.raises(ConfigError, match=r"\[run\] pipeline: unknown model family 'calo_gam'; known: \[.*'calo_gan'"):
        load_pipeline(_write(tmp_path, '[run]\npipeline = "calo_gam"\n'))
    with pytest.raises(ConfigError, match=r"missing section \[data\]"):
        load_pipeline(_write(tmp_path, '[run]\npipeline = "calo_gan"\n'))
    with pytest.raises(ConfigError, match="give exactly one of train_file and train_recipe"):
        load_pipeline(_write(tmp_path, '[run]\npipeline = "calo_gan"\n[data]\nreference_file = "b.h5"\n'))
    with pytest.raises(ConfigError, match="is a directory"):
        load_pipeline(tmp_path)


def test_relative_paths_are_relative_to_the_file(tmp_path):
    cfg = load_pipeline(_write(tmp_path, BASE))
    assert cfg.run.output_dir == tmp_path.resolve() / "out"
    assert cfg.data.train_file == tmp_path.resolve() / "a.h5"


def test_renamed_keys_work_with_a_warning_naming_the_new_key(tmp_path):
    path = _write(tmp_path, BASE + "[train]\ngenerator_lr = 2e-3\ncritic_lr = 3e-3\n")
    with pytest.warns(ConfigDeprecationWarning) as caught:
        cfg = load_pipeline(path)
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        "[train] generator_lr is deprecated, use [train] learning_rate",
        "[train] critic_lr is deprecated, use [train] critic_learning_rate"]
    assert (cfg.train.learning_rate, cfg.train.critic_learning_rate) == (2e-3, 3e-3)
    path = _write(tmp_path, BASE + "[train]\ngenerator_lr = 2e-3\nlearning_rate = 1e-3\n")
    with pytest.warns(ConfigDeprecationWarning), pytest.raises(ConfigError, match="keep only"):
        load_pipeline(path)


def test_train_length_in_steps_or_epochs():
    assert TrainConfig(max_steps=100, max_epochs=None).total_steps() == 100
    assert TrainConfig(max_steps=100, max_epochs=3).total_steps(20) == 60
    assert TrainConfig(max_steps=None, max_epochs=3).total_steps(20) == 60
    with pytest.raises(ValueError, match="set max_steps or max_epochs"):
        TrainConfig(max_steps=None, max_epochs=None)


@dataclass(frozen=True)
class _EchoData:
    message: str = "hello"
    repeat: int = setting(1, ge=1)


@dataclass(frozen=True)
class _EchoConfig(PipelineConfig):
    data: _EchoData = field(default_factory=_EchoData)
    train: TrainConfig = field(default_factory=TrainConfig)


def _echo_run(cfg: _EchoConfig, *, resume: bool | str = True, progress: bool = True) -> Path:
    cfg.run.output_dir.mkdir(parents=True, exist_ok=True)
    report = cfg.run.output_dir / "report.json"
    report.write_text(json.dumps({"echo": [cfg.data.message] * cfg.data.repeat}))
    return report


def test_a_family_registered_outside_the_package_runs_through_the_cli(tmp_path, capsys):
    from surrogate.cli import main

    register_family(Family(name="echo", config=_EchoConfig, train=lambda cfg, **kw: None, run=_echo_run))
    assert "echo" in family_names()
    path = tmp_path / "echo.toml"
    path.write_text('[run]\npipeline = "echo"\noutput_dir = "out"\n[data]\nmessage = "hi"\nrepeat = 2\n')
    assert main(["--no-progress", "run", str(path)]) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == {"echo": ["hi", "hi"]}
    path.write_text('[run]\npipeline = "echo"\n[data]\nrepeat = 0\n')
    assert main(["--no-progress", "run", str(path)]) == 2
    assert "echo.toml [data] repeat: must be >= 1, got 0" in capsys.readouterr().err
    assert dataclasses.is_dataclass(get_family("echo").config)

"""Every pipeline file and dataset recipe in the repository parses with its loader; bad values
are refused with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from surrogate.config import load_calo_pipeline, load_simulate_recipe, read_toml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.toml")), ids=lambda p: p.name)
def test_pipeline_files_parse(path):
    kind = read_toml(path)["run"]["pipeline"]
    if kind == "calo_gan":
        cfg = load_calo_pipeline(path)
        for recipe in (cfg.data.train_recipe, cfg.data.reference_recipe):
            assert recipe is None or Path(recipe).is_file()
    elif kind == "galaxy_vae":
        from surrogate.pipelines.galaxy import _sections

        _sections(read_toml(path))
    else:
        from surrogate.pipelines.posterior import _merge_config

        assert kind == "npe"
        _merge_config(read_toml(path))


@pytest.mark.parametrize("path", sorted((REPO / "datasets").glob("*.toml")), ids=lambda p: p.name)
def test_dataset_recipes_parse(path):
    table = read_toml(path)["simulate"]
    if table.get("simulator") == "galsim_cosmos":
        assert table["n"] > 0
    else:
        assert load_simulate_recipe(path).n_events > 0


def test_calo_train_settings_are_checked(tmp_path):
    config = tmp_path / "bad.toml"
    base = '[run]\noutput_dir = "out"\n[data]\ntrain_file = "a.h5"\nreference_file = "b.h5"\n'
    config.write_text(base + '[train]\nlr_schedule = "linear"\n')
    with pytest.raises(ValueError, match=r"bad.toml \[train\].*lr_schedule must be 'constant' or 'cosine'"):
        load_calo_pipeline(config)
    config.write_text(base + "[train]\nfinal_lr_fraction = 2.0\n")
    with pytest.raises(ValueError, match="final_lr_fraction must be in"):
        load_calo_pipeline(config)
    config.write_text(base + "[train]\nlearning_rate = 1e-3\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_calo_pipeline(config)

"""The galaxy_vae family: its pipeline files, the schema's checks and renames, and the pipeline
end to end through the one loader and the family record."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import warnings
from pathlib import Path

import pytest

from surrogate.config import ConfigDeprecationWarning, ConfigError, load_pipeline, read_toml
from surrogate.pipelines import get_family
from surrogate.train import load_checkpoint
from surrogate.pipelines.galaxy_vae import (
    FAMILY,
    SIMULATION_OPTIONS,
    GalaxyConfig,
    GalaxyDataConfig,
    GalaxyTrainResult,
    load_galaxy_vae,
)

REPO = Path(__file__).resolve().parents[2]
GALAXY_FILES = [p for p in sorted((REPO / "pipelines").glob("*.toml"))
                if read_toml(p)["run"]["pipeline"] == "galaxy_vae"]

# pipelines/galaxy_vae.toml as it was written before the one loader (issue 10): old names
OLD_FILE = """
[run]
pipeline = "galaxy_vae"
output_dir = "out"
seed = 0
threads = 1
device = "cpu"

[simulate]
n_train = 6000
n_heldout = 1000
seed = 1
stamp_size = 32
pixel_scale = 0.15
psf_size = 25
hst_psf_fraction = 1.0
psf_kinds = ["moffat"]
fwhm_range = [0.5, 0.9]
moffat_beta_range = [2.5, 4.5]
snr_range = [20.0, 100.0]
size_jitter = 0.2
magnitude_jitter = [-0.25, 2.75]
shear_max = 0.1
knot_fraction = 0.5
knot_number_range = [10, 60]
knot_flux_range = [0.1, 0.5]
knot_sigma = 0.05

[unseen_psf]
n = 32
psf_kinds = ["kolmogorov"]
fwhm_range = [0.9, 1.1]
hst_psf_fraction = 0.0

[model]
latent_dim = 16
channels = [16, 32, 64]
hidden_features = 128
flow_hidden_features = 64
flow_transforms = 4

[train]
batch_size = 64
max_steps = 3000
lr = 1e-3
final_lr_fraction = 0.1
beta = 1.0
max_grad_norm = 0.0
log_every = 50
checkpoint_every = 1000

[prior]
batch_size = 256
max_steps = 2000
lr = 1e-3
latents = "mean"

[validate]
grid = 8
map_steps = 300
map_lr = 0.05
n_map_heldout = 32
"""


def _write(tmp_path: Path, text: str, name: str = "galaxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _sections(cfg: GalaxyConfig) -> dict:
    data = cfg.to_dict()
    data.pop("source")
    data["run"].pop("output_dir")
    return data


def test_the_family_is_registered():
    assert get_family("galaxy_vae") is FAMILY
    assert FAMILY.config is GalaxyConfig and FAMILY.generate is None


@pytest.mark.parametrize("path", GALAXY_FILES, ids=lambda p: p.name)
def test_pipeline_files_load_without_warnings(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_pipeline(path)
    assert isinstance(cfg, GalaxyConfig)
    assert cfg.train.lr_schedule == "cosine" and cfg.train.max_grad_norm is None
    assert cfg.model["channels"] == (16, 32, 64)
    json.dumps(cfg.to_dict())


def test_old_names_load_with_a_warning_and_the_same_values(tmp_path):
    with pytest.warns(ConfigDeprecationWarning) as record:
        old = load_pipeline(_write(tmp_path, OLD_FILE))
    messages = "\n".join(str(w.message) for w in record)
    for old_name, new_name in (("[simulate]", "[data]"), ("[train] lr", "[train] learning_rate"),
                               ("[prior] lr", "[prior] learning_rate"),
                               ("[validate] map_lr", "[validate] map_learning_rate")):
        assert f"{old_name} is deprecated, use {new_name}" in messages
    assert "galaxy.toml: [train] max_grad_norm = 0.0 is deprecated: leave max_grad_norm out for no clipping" in messages
    assert old.train.max_grad_norm is None and old.train.learning_rate == 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = load_pipeline(REPO / "pipelines" / "galaxy_vae.toml")
    assert _sections(old) == _sections(new)  # the rewrite moved no number


@pytest.mark.parametrize("extra, message", [
    ("[train]\nsteps = 3\n", r"galaxy.toml \[train\]: unknown key\(s\) \['steps'\]"),
    ("[trainer]\n", r"galaxy.toml: unknown section\(s\) \['trainer'\]"),
    ('[train]\nbatch_size = "32"\n', r"galaxy.toml \[train\] batch_size: expected an integer, got '32'"),
    ("[data]\nn_train = 0\n", r"galaxy.toml \[data\] n_train: must be >= 1, got 0"),
    ('[data]\npsf_kinds = ["airy"]\n', r"galaxy.toml \[data\] psf_kinds: expected an array of one of 'moffat'"),
    ("[data]\npsf_size = 24\n", r"galaxy.toml \[data\]: psf_size must be odd"),
    ("[data]\nfwhm_range = [0.9, 0.5]\n", r"\[data\]: fwhm_range must be \[low, high\]"),
    ('[model]\nlatent_dim = "eight"\n', r"galaxy.toml \[model\] latent_dim: expected an integer, got 'eight'"),
    ("[model]\nstamp_size = 64\n", r"\[model\]: unknown argument\(s\) \['stamp_size'\] for GalaxyVAE"),
    ("[model]\nchannels = [4, 4, 4, 4, 4, 4]\n", r"stamp_size 32 must be a multiple of 2\*\*len\(\[model\] channels\)"),
    ("[unseen_psf]\nstamp_size = 64\n", r"\[unseen_psf\] stamp_size 64 must equal \[data\] stamp_size 32"),
    ("[train]\npatience = 3\n", r"\[train\]: patience: the VAE stage has no validation set"),
    ('[train]\nlr_schedule = "linear"\n', r"\[train\] lr_schedule: expected one of 'constant', 'cosine'"),
    ('[prior]\nlatents = "mode"\n', r"\[prior\] latents: expected one of 'mean', 'sample', got 'mode'"),
])
def test_bad_values_name_file_section_and_key(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_write(tmp_path, '[run]\npipeline = "galaxy_vae"\n' + extra))


def test_defaults_and_partial_tables(tmp_path):
    cfg = load_pipeline(_write(tmp_path, '[run]\npipeline = "galaxy_vae"\n[model]\nlatent_dim = 8\n'
                                         '[data]\ncatalog_dir = "catalog"\n'))
    assert cfg.model == {"latent_dim": 8, "channels": (16, 32, 64), "hidden_features": 128,
                         "flow_hidden_features": 64, "flow_transforms": 4}
    assert cfg.data.catalog_dir == tmp_path.resolve() / "catalog"  # relative to the file
    assert cfg.unseen_psf.overrides() == {"psf_kinds": ("kolmogorov",), "fwhm_range": (0.9, 1.1),
                                          "hst_psf_fraction": 0.0}


def test_data_defaults_are_the_simulators():
    from surrogate.simulators.galaxies import simulate_galaxies

    signature = inspect.signature(simulate_galaxies).parameters
    fields = {f.name: f.default for f in dataclasses.fields(GalaxyDataConfig)}
    for name in SIMULATION_OPTIONS:
        default = signature[name].default
        expected = tuple(default) if isinstance(default, (list, tuple)) else default
        if name == "psf_kinds":
            assert fields[name] == ("moffat",)  # Kolmogorov is kept for the unseen-PSF check
        else:
            assert fields[name] == expected, name


SMALL_RUN = """
[run]
pipeline = "galaxy_vae"
output_dir = "run"
device = "cpu"

[data]
n_train = {n_train}
n_heldout = {n_heldout}
seed = 11

[unseen_psf]
n = {n_unseen}

[model]
{model}

[train]
max_steps = {vae_steps}
log_every = {log_every}
checkpoint_every = {vae_steps}

[prior]
max_steps = {prior_steps}

[validate]
map_steps = {map_steps}
n_map_heldout = {n_unseen}
"""


def test_small_run_end_to_end_and_resume(tmp_path):
    """Seconds: a tiny model on a few GalSim stamps through load_pipeline + FAMILY.run; a second
    run reuses the data and resumes the finished training without another step."""
    pytest.importorskip("galsim")
    text = SMALL_RUN.format(n_train=96, n_heldout=24, n_unseen=4, vae_steps=6, prior_steps=4, map_steps=3,
                            log_every=2, model="latent_dim = 4\nchannels = [4, 8]\nhidden_features = 16\n"
                                                "flow_hidden_features = 8\nflow_transforms = 2")
    cfg = load_pipeline(_write(tmp_path, text))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report_path = FAMILY.run(cfg, progress=False)
    assert report_path == tmp_path / "run" / "report.json"
    report = json.loads(report_path.read_text())
    # A 6-step model makes odd galaxies: NaN statistics are counted and announced, consistently.
    nan_total = sum(n for kind in report["nan_statistics"].values() for sample in kind.values()
                    for n in sample.values())
    announced = [str(w.message) for w in caught if "NaN morphology" in str(w.message)]
    assert len(announced) == (1 if nan_total else 0)
    assert not nan_total or f"{nan_total} NaN morphology statistic value(s)" in announced[0]
    for name in report["files"]:
        assert (tmp_path / "run" / name).is_file(), name
    assert report["train"]["steps"] == 6 and report["prior"]["steps"] == 4
    assert report["data"]["n_train"] == 96 and report["model"]["stamp_size"] == 32
    assert report["config"]["train"]["learning_rate"] == 1e-3
    assert len(report["forward_model"]["unseen_psf"]["chi2_per_pixel"]) == 4
    assert set(report["timing"]) >= {"simulate_s", "train_vae_s", "train_prior_s", "sample_s", "total_s"}
    data_times = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "data").iterdir()}
    result = FAMILY.train(cfg, resume=True, progress=False)
    assert isinstance(result, GalaxyTrainResult) and result.steps == 10
    assert result.vae.steps == 6 and result.prior.steps == 4 and result.checkpoint == tmp_path / "run" / "model.pt"
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "data").iterdir()} == data_times
    model = load_galaxy_vae(tmp_path / "run", device="cpu")
    assert model.sample(2, magnitude=21.0, half_light_radius=0.4).shape == (2, 1, 32, 32)
    assert not model.training
    stored = load_checkpoint(result.checkpoint)["config"]
    assert stored["run"]["pipeline"] == "galaxy_vae" and stored["model"] == report["model"]
    # magnitude = zero_point - 2.5 log10(flux) of the COSMOS training stamps (surrogate fit's estimates)
    assert stored["pixel_scale"] == 0.15 and 25.5 < stored["zero_point"] < 26.5


def test_flux_zero_point_inverts_pogson():
    """Stamps made with m = 25.9 - 2.5 log10(F) give the zero point 25.9 back (to 1e-9 mag);
    stamps without flux do not count."""
    import numpy as np

    from surrogate.pipelines.galaxy_vae_training import flux_zero_point

    flux = np.array([3.0, 10.0, 50.0, 0.0])
    profile = np.zeros((4, 8, 8))
    profile[:, 4, 4] = flux
    magnitude = np.where(flux > 0, 25.9 - 2.5 * np.log10(np.maximum(flux, 1e-30)), 99.0)
    assert flux_zero_point({"profile": profile, "magnitude": magnitude}) == pytest.approx(25.9, abs=1e-9)
    with pytest.raises(ValueError, match="no training stamp has a positive flux"):
        flux_zero_point({"profile": np.zeros((2, 4, 4)), "magnitude": np.ones(2)})


@pytest.mark.slow
def test_pipeline_end_to_end_and_unseen_psf_chi2(tmp_path):
    """A small run of the whole pipeline (about 2-4 minutes on one CPU core): the report and its
    pictures exist, and the forward-model fit of held-out galaxies seen through Kolmogorov PSFs
    (the model trained on Moffat and HST PSFs only) gives chi^2 per pixel near 1."""
    pytest.importorskip("galsim")
    text = SMALL_RUN.format(n_train=2000, n_heldout=300, n_unseen=16, vae_steps=1200, prior_steps=600, map_steps=200,
                            log_every=100, model="")
    cfg = load_pipeline(_write(tmp_path, text))
    report = json.loads(FAMILY.run(cfg, progress=False).read_text())
    for name in report["files"]:
        assert (tmp_path / "run" / name).is_file(), name
    chi2 = report["forward_model"]["unseen_psf"]
    # Noise alone gives 1 - 16/1024 with a spread of 0.044 per stamp; a short training leaves
    # some structure in the residuals of the brightest galaxies.
    assert 0.85 < chi2["median"] < 1.3, chi2
    assert chi2["flux_relative_error"]["median"] == pytest.approx(0.0, abs=0.1)
    assert all(0.0 <= v <= 1.0 for v in report["ks"].values())
    model = load_galaxy_vae(tmp_path / "run" / "model.pt")
    assert model.sample(2, magnitude=21.0, half_light_radius=0.4).shape == (2, 1, 32, 32)
    assert math.isfinite(report["train"]["final_loss_nats_per_pixel"])


def _stamps(rng, n: int, noise_sigma: float = 0.05) -> dict:
    """n Gaussian galaxies of different sizes, 32 x 32 pixels at 0.1 arcsec, noisy and noiseless."""
    galsim = pytest.importorskip("galsim")
    import numpy as np

    profile = np.stack([galsim.Gaussian(sigma=0.2 + 0.02 * i).withFlux(50.0).drawImage(nx=32, ny=32, scale=0.1).array
                        for i in range(n)]).astype(np.float64)
    return {"profile": profile, "observed": profile + rng.normal(0.0, noise_sigma, profile.shape),
            "noise_variance": np.full(n, noise_sigma**2)}


def test_validate_counts_and_announces_nan_statistics(tmp_path, rng):
    """Morphology statistics that are NaN (here: empty stamps, where HSM fails and neither the
    half-light radius, Gini nor M20 exists) are left out of the KS distances, counted per
    statistic, image kind and sample in the report, and announced by one warning that names
    their number; without them the counts are all 0 and nothing is announced."""
    import numpy as np

    from surrogate.metrics.morphology import morphology_statistics
    from surrogate.pipelines.galaxy_vae_validate import validate

    reference, generated = _stamps(rng, 12), _stamps(rng, 12)
    (tmp_path / "clean").mkdir()
    (tmp_path / "nan").mkdir()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clean = validate(reference, generated, tmp_path / "clean", pixel_scale=0.1, grid=4)
    assert not [w for w in record if "NaN" in str(w.message)]  # no NaN: no warning
    counts = clean["nan_statistics"]
    assert set(counts) == {"observed", "profile"}
    assert all(set(v) == {"heldout", "generated"} for v in counts.values())
    assert all(n == 0 for kind in counts.values() for sample in kind.values() for n in sample.values())
    assert set(counts["observed"]["heldout"]) == {"sigma", "g1", "g2", "g", "flux", "half_light_radius",
                                                  "concentration", "gini", "m20"}
    means = clean["psf_free_means"]
    assert set(means["heldout"]) == {"g", "sigma", "half_light_radius", "concentration", "gini", "m20"}
    assert means["heldout"]["sigma"] == pytest.approx(np.nanmean(
        morphology_statistics(reference["profile"], pixel_scale=0.1)["sigma"]))
    assert means["anchors"]["mean_g"] == {"cosmos": 0.2481, "vae": 0.2578}

    generated["observed"][0] = 0.0  # one empty observed stamp, two empty profiles
    generated["profile"][:2] = 0.0
    with pytest.warns(UserWarning, match=r"24 NaN morphology statistic value\(s\) in 12 stamps") as record:
        report = validate(reference, generated, tmp_path / "nan", pixel_scale=0.1, grid=4)
    message = str(record[0].message)
    assert ("observed generated: sigma 1, g1 1, g2 1, g 1, half_light_radius 1, concentration 1, gini 1, m20 1"
            in message)
    assert "profile generated: sigma 2, g1 2, g2 2, g 2, half_light_radius 2, concentration 2, gini 2, m20 2" in message
    nan = report["nan_statistics"]
    expected_observed = {"sigma": 1, "g1": 1, "g2": 1, "g": 1, "flux": 0, "half_light_radius": 1, "concentration": 1,
                         "gini": 1, "m20": 1}
    assert nan["observed"]["generated"] == expected_observed
    assert nan["profile"]["generated"] == {k: 2 * v for k, v in expected_observed.items()}
    assert sum(nan["observed"]["heldout"].values()) == sum(nan["profile"]["heldout"].values()) == 0
    assert report["ks_details"]["m20"]["n_generated"] == 11 and report["ks_details"]["m20"]["n_reference"] == 12
    assert report["hsm_failures"] == {"heldout": 0, "generated": 1}
    json.dumps(report)  # plain integers, ready for report.json

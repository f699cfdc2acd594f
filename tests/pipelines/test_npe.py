"""The NPE family: training on simulations (input checks, early stopping, schedules, batches
across ranks), the analytic gaussian_linear posterior, the pipeline file's schema (errors, renamed
keys) and the pipeline run through ``load_pipeline`` and ``FAMILY``."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import typing
import warnings
from pathlib import Path

import pytest
import torch

from surrogate.config import ConfigDeprecationWarning, ConfigError, RunConfig, load_pipeline, read_toml
from surrogate.losses import npe_loss
from surrogate.models.npe import build_npe_flow
from surrogate.pipelines import get_family
from surrogate.pipelines.npe import (
    FAMILY,
    NPEConfig,
    NPEDataConfig,
    NPEModelConfig,
    NPETrainConfig,
    NPEValidateConfig,
    load_posterior,
    train,
)
from surrogate.pipelines.npe_sources import DEFAULT_NUM_SIMULATIONS
from surrogate.pipelines.npe_training import (
    FLOW_DEFAULT_KEYS,
    NPE_DEFAULTS,
    check_simulations,
    epoch_batches,
    train_npe,
)
from surrogate.simulators.sbi_simulators import gaussian_linear_posterior
from surrogate.simulators.sbi_tasks import TASK_NAMES, get_task, simulate_dataset

REPO = Path(__file__).resolve().parents[2]
LOCAL_SBIBM = REPO / "datasets" / "sbibm"
SMALL_FLOW = {"hidden_features": 16, "num_transforms": 2, "num_bins": 4}


# ---------------------------------------------------------------------------------------------
# training on simulations


def test_check_simulations_lengths_and_nan():
    theta, x = torch.randn(10, 2), torch.randn(10, 3)
    with pytest.raises(ValueError, match="same number of simulations, got 10 and 9"):
        check_simulations(theta, x[:9])
    with pytest.raises(ValueError, match=r"theta must have shape \(N, D\)"):
        check_simulations(theta[:, 0], x)
    x[2, 1] = float("nan")
    theta[5, 0] = float("inf")
    kept_theta, kept_x, dropped = check_simulations(theta, x)
    assert dropped == 2 and kept_theta.shape == (8, 2) and torch.isfinite(kept_x).all()
    with pytest.raises(ValueError, match="2 of 10 simulations contain NaN"):
        check_simulations(theta, x, drop_invalid=False)
    with pytest.raises(ValueError, match="all 10 simulations"):
        check_simulations(theta, torch.full((10, 3), float("nan")))


def test_epoch_batches_order_and_ranks():
    one = epoch_batches(10, 3, seed=4)
    assert len(one) == 4 and sorted(i for b in one for i in b) == list(range(10))
    first = list(one)
    one.sampler.set_epoch(1)
    assert list(one) != first
    one.sampler.set_epoch(0)
    assert list(one) == first  # the order depends only on (seed, epoch)
    ranks = [epoch_batches(10, 2, seed=4, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in ranks] == [2, 2]  # the incomplete global batch is dropped
    wide = list(epoch_batches(10, 4, seed=4))
    for k, (a, b) in enumerate(zip(*ranks)):
        assert sorted(a + b) == sorted(wide[k])  # two ranks of 2 = one rank of 4
    with pytest.raises(ValueError, match="fewer than one global batch"):
        epoch_batches(3, 2, rank=0, world_size=2)


def test_train_npe_drops_nan_and_reports(seed):
    task = get_task("two_moons")
    theta, x = simulate_dataset(task, 300, seed=1)
    x[:7, 0] = float("nan")
    result = train_npe(theta, x, prior=task.prior, max_epochs=1, progress=False, flow_kwargs=SMALL_FLOW)
    assert result.num_dropped == 7
    assert result.num_train + result.num_validation == 293
    with pytest.raises(ValueError, match="contain NaN"):
        train_npe(theta, x, prior=task.prior, drop_invalid=False, progress=False)
    with pytest.raises(ValueError, match="prior event shape"):
        train_npe(theta[:, :1], x, prior=task.prior, progress=False)
    with pytest.raises(ValueError, match="set max_epochs or max_steps"):
        train_npe(theta, x, prior=task.prior, max_epochs=None, progress=False)


def test_constant_feature_in_x_trains(seed):
    task = get_task("two_moons")
    theta, x = simulate_dataset(task, 300, seed=2)
    x = torch.cat([x, torch.full((300, 1), 3.0)], dim=1)  # a constant feature
    result = train_npe(theta, x, prior=task.prior, max_epochs=2, progress=False, flow_kwargs=SMALL_FLOW)
    assert math.isfinite(result.best_validation_loss)
    assert torch.isfinite(result.posterior.log_prob(theta[:5], x=x[0])).all()


def test_early_stopping_restores_best(seed):
    task = get_task("two_moons")
    theta, x = simulate_dataset(task, 400, seed=3)
    result = train_npe(theta, x, prior=task.prior, max_epochs=30, patience=1, learning_rate=5e-2,
                       progress=False, flow_kwargs=SMALL_FLOW)
    validations = [row["validation"] for row in result.history if "validation" in row]
    assert result.fit.stopped_early and len(validations) < 30
    assert validations[-1] > result.best_validation_loss == min(validations)
    # the returned flow has the best weights, not the last ones
    idx = result.validation_index
    with torch.no_grad():
        loss = float(npe_loss(result.posterior.flow, {"theta": theta[idx], "x": x[idx]}))
    assert loss == pytest.approx(result.best_validation_loss, rel=1e-5)


def test_cosine_schedule_and_step_limit(seed):
    """The rate of step k is lr (1 + cos(pi k / T)) / 2 over T = min(max_steps, epochs x batches)
    steps (:func:`surrogate.train.steps.make_lr_scheduler`, ``"cosine"``), and max_steps ends training."""
    task = get_task("two_moons")
    theta, x = simulate_dataset(task, 200, seed=4)
    result = train_npe(theta, x, prior=task.prior, max_epochs=50, max_steps=10, patience=None, batch_size=60,
                       lr_schedule="cosine", log_every=1, progress=False, flow_kwargs=SMALL_FLOW)
    rates = [row["lr"] for row in result.history if "lr" in row]
    assert result.fit.steps == 10 and len(rates) == 10
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)]
    assert rates == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_gaussian_linear_recovers_analytic_posterior():
    """NPE (MAF, 10^4 simulations) on gaussian_linear against the exact posterior N(x/2, 0.05 I):
    posterior mean within 0.075 (a third of the posterior sd 0.224) of x/2 in every dimension
    and the covariance within 0.025 of 0.05 I entrywise, for three observations.

    At 10^4 simulations the amortization error of NPE, not the 20,000 samples (mean error
    0.0016), sets the scale: we measured 0.03-0.05 in the mean and 0.01-0.02 in the covariance
    for MAF and NSF with constant or cosine learning rates (sbibm's NPE C2ST of 0.55 at 10^4
    reflects offsets of this size)."""
    task = get_task("gaussian_linear")
    theta, x = simulate_dataset(task, 10_000, seed=0)
    result = train_npe(theta, x, prior=task.prior, kind="maf", progress=False, seed=0,
                       flow_kwargs={"hidden_features": 50, "num_transforms": 3})
    x_obs = simulate_dataset(task, 3, seed=99)[1]
    samples = result.posterior.sample((20_000,), x=x_obs)  # (S, 3, 10)
    for b in range(3):
        exact = gaussian_linear_posterior(x_obs[b])
        mean, cov = samples[:, b].mean(0), torch.cov(samples[:, b].T)
        assert (mean - exact.mean).abs().max() < 0.075
        assert (cov - exact.covariance_matrix).abs().max() < 0.025


# ---------------------------------------------------------------------------------------------
# the pipeline file


NPE_FILES = [p for p in sorted((REPO / "pipelines").glob("*.toml")) if read_toml(p)["run"]["pipeline"] == "npe"]


@pytest.mark.parametrize("path", NPE_FILES, ids=lambda p: p.name)
def test_pipeline_files_load_without_warnings(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_pipeline(path)
    assert isinstance(cfg, NPEConfig) and get_family("npe") is FAMILY


def test_two_moons_file_states_the_defaults():
    """The file restates the schema's defaults, so a key left out does not change the numbers
    (its task and the number of simulations a task gets by default are stated too)."""
    cfg = load_pipeline(REPO / "pipelines" / "npe_two_moons.toml")
    assert (cfg.data, cfg.model, cfg.train, cfg.validate) == (
        NPEDataConfig(task="two_moons", num_simulations=DEFAULT_NUM_SIMULATIONS), NPEModelConfig(),
        NPETrainConfig(), NPEValidateConfig())
    task_type = typing.get_type_hints(NPEDataConfig)["task"]
    assert typing.get_args(typing.get_args(task_type)[0]) == TASK_NAMES


def test_one_set_of_defaults_for_train_npe_and_pipeline_files():
    """train_npe's keyword defaults, the flow arguments it fills in and the pipeline schema's
    defaults are all NPE_DEFAULTS."""
    params = inspect.signature(train_npe).parameters
    model, train_cfg, validate_cfg = NPEModelConfig(), NPETrainConfig(), NPEValidateConfig()
    for key, value in NPE_DEFAULTS.items():
        if key in FLOW_DEFAULT_KEYS:
            assert key not in params and getattr(model, key) == value, key
        else:
            assert params[key].default == value, key
            holder = next(c for c in (model, train_cfg, validate_cfg) if hasattr(c, key))
            assert getattr(holder, key) == value, key
    assert (NPE_DEFAULTS["hidden_features"], NPE_DEFAULTS["lr_schedule"], NPE_DEFAULTS["max_epochs"],
            NPE_DEFAULTS["patience"]) == (64, "cosine", 150, 30)  # the measured pipeline settings


OLD_FILE = """
[run]
pipeline = "npe"
[task]
name = "slcp"
num_simulations = 321
observations = [2]
[flow]
kind = "maf"
hidden_features = 12
linear = "reverse"
[embedding]
kind = "mlp"
out_features = 7
[training]
batch_size = 64
patience = 3
z_score_theta = false
z_score_x = "gaussianize"
[sampling]
num_samples = 99
[evaluation]
c2st = false
"""


def test_old_names_load_with_deprecation_warnings(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(OLD_FILE)
    with pytest.warns(ConfigDeprecationWarning) as caught:
        cfg = load_pipeline(path)
    messages = "\n".join(str(w.message) for w in caught)
    for text in ("[task] name is deprecated, use [data] task", "[flow] is deprecated, use [model]",
                 "[training] z_score_x is deprecated, use [model] z_score_x", "[training] is deprecated, use [train]",
                 "[sampling] is deprecated", "[evaluation] is deprecated", "[embedding] is deprecated"):
        assert text in messages
    assert (cfg.data.task, cfg.data.num_simulations, cfg.data.observations) == ("slcp", 321, (2,))
    assert (cfg.model.kind, cfg.model.hidden_features, cfg.model.linear) == ("maf", 12, "reverse")
    assert (cfg.model.z_score_theta, cfg.model.z_score_x) == (False, "gaussianize")
    assert cfg.model.embedding == {"kind": "mlp", "out_features": 7}
    assert (cfg.train.batch_size, cfg.train.patience) == (64, 3)
    assert (cfg.validate.num_samples, cfg.validate.c2st) == (99, False)


def test_config_errors_name_file_section_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[run]\npipeline = "npe"\n[train]\nepochs = 3\n')
    with pytest.raises(ConfigError, match=r"bad.toml \[train\]: unknown key\(s\) \['epochs'\]"):
        load_pipeline(path)
    path.write_text('[run]\npipeline = "npe"\n[train]\nbatch_size = "32"\n')
    with pytest.raises(ConfigError, match=r"bad.toml \[train\] batch_size: expected an integer, got '32'"):
        load_pipeline(path)
    path.write_text('[run]\npipeline = "npe"\n[model]\nkind = "realnvp"\n')
    with pytest.raises(ConfigError, match=r"\[model\] kind: expected one of 'nsf', 'maf', 'maf_rqs'"):
        load_pipeline(path)
    path.write_text('[run]\npipeline = "npe"\n[data]\nobservations = [0, 11]\n')
    with pytest.raises(ConfigError, match=r"\[data\]: observations: sbibm numbers them 1 to 10, got \[0, 11\]"):
        load_pipeline(path)
    path.write_text('[run]\npipeline = "npe"\n[train]\nvalidation_fraction = 1.0\n')
    with pytest.raises(ConfigError, match=r"\[train\]: validation_fraction must be < 1"):
        load_pipeline(path)
    path.write_text('[run]\npipeline = "npe"\n[task]\nname = "two_moons"\n[data]\ntask = "slcp"\n')
    with pytest.raises(ConfigError, match="keep only"), pytest.warns(ConfigDeprecationWarning):
        load_pipeline(path)


# ---------------------------------------------------------------------------------------------
# the pipeline


def _write_small(tmp_path: Path, **model) -> Path:
    path = tmp_path / "npe.toml"
    flow = "\n".join(f"{k} = {v}" for k, v in {"hidden_features": 16, "num_transforms": 2, "num_bins": 4, **model}.items())
    path.write_text(f"""
[run]
pipeline = "npe"
output_dir = "out"
seed = 0
[data]
task = "two_moons"
num_simulations = 500
observations = [1]
reference_root = "{os.path.relpath(LOCAL_SBIBM, tmp_path)}"
[model]
{flow}
[train]
max_epochs = 2
[validate]
num_samples = 500
coverage_observations = 20
coverage_samples = 50
""")
    return path


def test_pipeline_run_smoke(tmp_path, capsys):
    cfg = load_pipeline(_write_small(tmp_path))
    out = tmp_path / "out"
    assert cfg.run.output_dir == out and cfg.data.reference_root.resolve() == LOCAL_SBIBM.resolve()
    path = FAMILY.run(cfg, progress=False)
    assert path == out / "report.json"
    report = json.loads(path.read_text())
    assert 0.5 <= report["c2st_mean"] <= 1.0
    assert report["observations"][0]["acceptance_rate"] > 0
    assert report["num_train"] + report["num_validation"] == 500 and report["num_dropped"] == 0
    assert len(report["coverage"]["coverage"]) == 99
    assert report["config"]["model"]["hidden_features"] == 16
    for name in ("pairs_obs1.png", "coverage.png"):
        assert (out / name).stat().st_size > 1000
    assert report["files"] == ["pairs_obs1.png", "coverage.png"]
    assert (out / "train" / "log.csv").is_file() and Path(report["checkpoint"]).is_file()

    # posterior.pt holds the trained flow (the final checkpoint's); training again reuses it
    posterior = load_posterior(out)
    theta, x = simulate_dataset("two_moons", 5, seed=7)
    expected = load_posterior(report["checkpoint"]).log_prob(theta, x=x[0])
    assert torch.allclose(posterior.log_prob(theta, x=x[0]), expected)
    log = (out / "train" / "log.csv").read_text()
    capsys.readouterr()
    again = FAMILY.train(cfg, progress=False)
    assert "not training again" in capsys.readouterr().out
    assert (out / "train" / "log.csv").read_text() == log
    assert again.best_validation == report["best_validation_loss"] and str(again.checkpoint) == report["checkpoint"]


def test_ensemble_pipeline_saves_every_member_and_reuses_them(tmp_path, capsys):
    """[model] ensemble = 2: two flows trained with seeds 0 and 1 on the same simulations, saved
    together in posterior.pt; the loaded posterior is their equal-weight mixture (its log_prob is
    the log of the members' mean density); member 0 is the plain run's posterior; a larger
    ensemble trains only the new member; sequential methods refuse it."""
    from surrogate.models.npe import EnsemblePosterior
    from surrogate.train.checkpoint import find_checkpoint

    cfg = load_pipeline(_write_small(tmp_path, ensemble=2))
    out = tmp_path / "out"
    report = json.loads(FAMILY.run(cfg, progress=False).read_text())
    assert report["config"]["model"]["ensemble"] == 2 and 0.5 <= report["c2st_mean"] <= 1.0
    assert report["coverage"] is not None
    posterior = load_posterior(out)
    assert isinstance(posterior, EnsemblePosterior) and len(posterior.members) == 2
    members = [load_posterior(find_checkpoint(out / "train" / f"member_{k}")) for k in (0, 1)]
    theta, x = simulate_dataset("two_moons", 6, seed=7)
    logs = torch.stack([m.log_prob(theta, x=x[0]) for m in members])
    assert not torch.allclose(logs[0], logs[1])  # different seeds, different flows
    torch.testing.assert_close(posterior.log_prob(theta, x=x[0]), torch.logsumexp(logs, 0) - math.log(2))
    samples = posterior.sample((200,), x=x[0])
    assert samples.shape == (200, 2) and torch.isfinite(samples).all()
    # member 0 is what a plain run of the same file trains
    (tmp_path / "plain").mkdir()
    plain = load_pipeline(_write_small(tmp_path / "plain"))
    FAMILY.run(plain, progress=False)
    torch.testing.assert_close(load_posterior(tmp_path / "plain" / "out").log_prob(theta, x=x[0]), logs[0])
    # three members: 0 and 1 are resumed as finished (no training step, same weights), member 2 trains
    def training_rows(k: int) -> list[str]:  # the log's rows with a training loss
        return [row for row in (out / "train" / f"member_{k}" / "log.csv").read_text().splitlines()[1:]
                if row.split(",")[3]]

    rows_before = [training_rows(k) for k in (0, 1)]
    capsys.readouterr()
    FAMILY.train(load_pipeline(_write_small(tmp_path, ensemble=3)), progress=False)
    assert [training_rows(k) for k in (0, 1)] == rows_before and training_rows(2)
    larger = load_posterior(out)
    assert len(larger.members) == 3 and "ensemble member 3 of 3" in capsys.readouterr().out
    for k in (0, 1):
        torch.testing.assert_close(larger.members[k].log_prob(theta, x=x[0]), logs[k])
    (tmp_path / "sequential").mkdir()
    sequential = _write_small(tmp_path / "sequential", ensemble=2)
    sequential.write_text(sequential.read_text() + '[inference]\nmethod = "snpe_c"\n')
    with pytest.raises(ConfigError, match=r"ensemble = 2 is for \[inference\] method = 'npe'"):
        load_pipeline(sequential)


def test_train_stage_refuses_other_settings_and_retrains_without_resume(tmp_path):
    def small(**model) -> NPEConfig:
        cfg = load_pipeline(_write_small(tmp_path, **model))
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_epochs=1))

    first = train(small(), progress=False)
    assert first.steps == 2 and first.checkpoint.is_file()  # 450 training pairs in batches of 256
    # another architecture in the same folder: resuming its checkpoints is refused, naming the change
    with pytest.raises(ValueError, match=r"\[model\] hidden_features: 16 -> 24"):
        train(small(hidden_features=24), progress=False)
    # without resume it trains afresh; the earlier checkpoints are kept aside and posterior.pt replaced
    assert train(small(hidden_features=24), resume=False, progress=False).steps == 2
    assert list((tmp_path / "out" / "train").glob("checkpoints.replaced-*/step_*.pt"))
    theta, x = simulate_dataset("two_moons", 10, seed=0)
    wider = build_npe_flow(theta, x, hidden_features=24, num_transforms=2, num_bins=4)
    stored = load_posterior(tmp_path / "out").flow
    assert sum(p.numel() for p in stored.parameters()) == sum(p.numel() for p in wider.parameters())


def test_load_posterior_refuses_other_checkpoints(tmp_path, seed):
    task = get_task("two_moons")
    theta, x = simulate_dataset(task, 100, seed=0)
    result = train_npe(theta, x, prior=task.prior, max_epochs=1, progress=False, flow_kwargs=SMALL_FLOW,
                       out_dir=tmp_path / "low")  # the low-level API stores no pipeline configuration
    with pytest.raises(ValueError, match="not a checkpoint of an NPE pipeline run"):
        load_posterior(result.fit.checkpoint)
    with pytest.raises(FileNotFoundError):
        load_posterior(tmp_path)


def test_config_built_in_python(tmp_path):
    cfg = NPEConfig(source=None, run=RunConfig(pipeline="npe", output_dir=tmp_path),
                    data=NPEDataConfig(task="two_moons", num_simulations=200), model=NPEModelConfig(**SMALL_FLOW),
                    train=NPETrainConfig(max_epochs=1))
    assert cfg.to_dict()["data"]["observations"] == list(range(1, 11))
    assert train(cfg, progress=False).steps == 1

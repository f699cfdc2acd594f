"""Sequential NPE (SNPE-C's atomic loss, TSNPE's truncated prior), balanced NPE's loss and the
coverage numbers of the report."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.distributions import MultivariateNormal

from surrogate.config import ConfigError, load_pipeline
from surrogate.losses import atomic_npe_loss, balanced_npe_loss, npe_loss
from surrogate.metrics.coverage import expected_coverage
from surrogate.pipelines.npe import FAMILY, load_posterior
from surrogate.pipelines.npe_sequential import TruncatedPrior, run_sequential
from surrogate.pipelines.npe_training import train_npe
from surrogate.simulators.sbi_simulators import gaussian_linear_posterior
from surrogate.simulators.sbi_tasks import get_task, simulate_dataset


class GaussianFlow(nn.Module):
    """``q(theta | x) = N(a x, s^2 I)``: a stand-in for a conditional flow."""

    def __init__(self, a: float, s: float):
        super().__init__()
        self.a, self.s = a, s

    def log_prob(self, theta, context):
        return torch.distributions.Normal(self.a * context, self.s).log_prob(theta).sum(-1)


PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))


def test_atomic_loss_matches_the_formula_when_the_atoms_are_the_whole_batch(seed):
    theta, x = torch.randn(5, 2), torch.randn(5, 2)
    flow = GaussianFlow(0.7, 0.6)
    loss = atomic_npe_loss(flow, {"theta": theta, "x": x}, prior=PRIOR, num_atoms=5)
    terms = []
    for i in range(5):
        ratios = [math.exp(float(flow.log_prob(theta[j:j + 1], x[i:i + 1]) - PRIOR.log_prob(theta[j]))) for j in range(5)]
        terms.append(-math.log(ratios[i] / sum(ratios)))
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)


def test_atomic_loss_is_log_num_atoms_for_an_uninformative_posterior(seed):
    # q(theta | x) = p(theta): every atom has ratio 1, the loss is log K whichever atoms are drawn
    flow = GaussianFlow(0.0, 1.0)
    batch = {"theta": torch.randn(64, 2), "x": torch.randn(64, 2)}
    for k in (2, 7, 64):
        assert float(atomic_npe_loss(flow, batch, prior=PRIOR, num_atoms=k)) == pytest.approx(math.log(k), abs=1e-5)
    with pytest.raises(ValueError, match="num_atoms"):
        atomic_npe_loss(flow, batch, prior=PRIOR, num_atoms=1)


def test_balanced_loss_penalty_zero_when_balanced_positive_otherwise(seed):
    # x ~ N(theta, 1), theta ~ N(0, I): the exact posterior is N(x/2, 1/2)
    theta = torch.randn(20_000, 2)
    batch = {"theta": theta, "x": theta + torch.randn(20_000, 2)}
    uninformative = GaussianFlow(0.0, 1.0)  # d = 1/2 everywhere: exactly balanced
    assert float(balanced_npe_loss(uninformative, batch, prior=PRIOR)) == pytest.approx(
        float(npe_loss(uninformative, batch)), abs=1e-5)
    exact = GaussianFlow(0.5, 0.5 ** 0.5)  # balanced in expectation (Delaunoy et al. 2022)
    assert float(balanced_npe_loss(exact, batch, prior=PRIOR, balance=1.0) - npe_loss(exact, batch)) < 1e-4
    overconfident = GaussianFlow(0.5, 0.1)
    penalty = float(balanced_npe_loss(overconfident, batch, prior=PRIOR, balance=1.0) - npe_loss(overconfident, batch))
    assert penalty > 0.01


class ExactGaussianPosterior:
    """``N(m, s^2 I)`` whatever ``x``, with the posterior interface."""

    def __init__(self, m, s):
        self.q = MultivariateNormal(torch.as_tensor(m), s ** 2 * torch.eye(len(m)))

    def sample(self, shape, *, x):
        return self.q.sample(shape)

    def log_prob(self, theta, *, x):
        return self.q.log_prob(theta)


def test_truncated_prior_keeps_only_the_hpd_region(seed):
    posterior = ExactGaussianPosterior([1.0, -0.5], 0.5)
    truncated = TruncatedPrior(posterior, PRIOR, torch.zeros(2), epsilon=0.05, num_samples=20_000)
    theta, acceptance = truncated.sample(5000)
    assert theta.shape == (5000, 2) and bool(truncated.contains(theta).all())
    # the region holds 1 - epsilon of the posterior's mass (tolerance 0.01 at 20000 samples)
    fresh = posterior.sample((20_000,), x=None)
    assert float(truncated.contains(fresh).float().mean()) == pytest.approx(0.95, abs=0.01)
    # it is the ball |theta - m| <= s * sqrt(chi2_2(0.95)); its prior mass is a noncentral chi2
    radius2 = 0.25 * stats.chi2.ppf(0.95, 2)
    assert float(((theta - torch.tensor([1.0, -0.5])) ** 2).sum(1).max()) <= radius2 * 1.05
    assert acceptance == pytest.approx(stats.ncx2.cdf(radius2, 2, 1.25), abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["snpe_c", "tsnpe"])
def test_two_rounds_on_gaussian_linear_find_the_posterior_mean(method):
    task = get_task("gaussian_linear")
    torch.manual_seed(3)
    x_o = task.simulate(task.prior.sample((1,)))[0]
    result = run_sequential(task.simulate, task.prior, x_o, method=method, rounds=2, simulations_per_round=1000,
                            seed=0, max_epochs=60, progress=False, kind="maf",
                            flow_kwargs={"hidden_features": 32, "num_transforms": 3})
    samples = result.posterior.sample((4000,), x=x_o)
    exact = gaussian_linear_posterior(x_o)
    # posterior sd 0.22 per dimension; the mean within 0.1 (0.45 sd) in every dimension
    assert float((samples.mean(0) - exact.mean).abs().max()) < 0.1
    assert [r["round"] for r in result.rounds] == [1, 2] and result.rounds[1]["num_simulations"] == 2000


def test_later_rounds_continue_the_previous_flow(seed):
    """Round 2 goes on training a copy of round 1's flow: it keeps round 1's z-scoring of x (from
    the prior simulations), and round 1's posterior keeps its weights; with
    ``retrain_from_scratch`` round 2's flow is new, z-scored on both rounds' simulations."""
    task = get_task("gaussian_linear")
    x_o = task.simulate(task.prior.sample((1,)))[0]
    kwargs = dict(method="tsnpe", rounds=2, simulations_per_round=300, seed=0, max_epochs=2, progress=False,
                  kind="maf", flow_kwargs={"hidden_features": 8, "num_transforms": 1})
    continued = run_sequential(task.simulate, task.prior, x_o, **kwargs)
    scratch = run_sequential(task.simulate, task.prior, x_o, retrain_from_scratch=True, **kwargs)

    def x_mean(result):
        state = result.posterior.flow.state_dict()
        (key,) = [k for k in state if k.endswith("mean") and "embedding" in k]
        return state[key]

    first, second = continued.results
    scratch_first = scratch.results[0].posterior.flow.state_dict()
    for key, value in first.posterior.flow.state_dict().items():
        assert torch.equal(value, scratch_first[key])  # round 1 alike in both, and not changed by round 2
    assert torch.equal(x_mean(first), x_mean(second))
    assert not torch.equal(x_mean(scratch.results[0]), x_mean(scratch.results[1]))
    changed = [k for k, v in second.posterior.flow.state_dict().items()
               if not torch.equal(v, first.posterior.flow.state_dict()[k])]
    assert changed  # round 2 trained the copy
    with pytest.raises(ValueError, match="either a flow to continue .* or an embedding_net"):
        train_npe(continued.theta, continued.x, prior=task.prior, flow=second.posterior.flow,
                  embedding_net=torch.nn.Identity(), max_epochs=1, progress=False)
    # a simulation held out in round 1 stays held out in round 2, and 10 % of each round is
    held = [set(r.validation_index.tolist()) for r in continued.results]
    assert held[0] <= held[1] and len(held[0]) == 30 and len(held[1]) == 60
    assert held[1] - held[0] <= set(range(300, 600))


def test_validation_mask_chooses_the_held_out_simulations(seed):
    """``train_npe(validation_mask=...)`` validates on exactly the masked simulations (indices
    among the kept ones when a NaN simulation is dropped) and refuses a mask of the wrong length
    or an empty one."""
    task = get_task("gaussian_linear")
    theta, x = simulate_dataset(task, 200, seed=0)
    x[5] = float("nan")
    mask = torch.zeros(200, dtype=torch.bool)
    mask[[3, 10, 199]] = True
    kwargs = dict(prior=task.prior, max_epochs=1, progress=False, kind="maf",
                  flow_kwargs={"hidden_features": 8, "num_transforms": 1})
    result = train_npe(theta, x, validation_mask=mask, **kwargs)
    assert result.validation_index.tolist() == [3, 9, 198] and result.num_train == 196 and result.num_dropped == 1
    with pytest.raises(ValueError, match=r"validation_mask must have shape \(200,\)"):
        train_npe(theta, x, validation_mask=mask[:-1], **kwargs)
    with pytest.raises(ValueError, match="validation_mask holds none"):
        train_npe(theta, x, validation_mask=torch.zeros(200, dtype=torch.bool), **kwargs)


def test_coverage_curve_is_monotone_and_reports_the_three_levels(seed):
    class Exact:  # x ~ N(theta, 1), theta ~ N(0, 1): the posterior is N(x/2, 1/2)
        def sample(self, shape, *, x):
            return torch.distributions.Normal(x / 2, 0.5 ** 0.5).sample(shape)

        def log_prob(self, theta, *, x):
            return torch.distributions.Normal(x / 2, 0.5 ** 0.5).log_prob(theta).sum(-1)

    theta = torch.randn(400, 1)
    result = expected_coverage(Exact(), theta, theta + torch.randn(400, 1), num_samples=200)
    assert np.all(np.diff(result.coverage) >= 0)
    summary = result.to_dict()["coverage_at"]
    assert set(summary) == {"0.5", "0.8", "0.95"}
    # calibrated: within 3 binomial sd of the level at 400 observations
    for level, value in summary.items():
        assert value == pytest.approx(float(level), abs=3 * math.sqrt(float(level) * (1 - float(level)) / 400))


REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, inference: str) -> Path:
    path = tmp_path / "npe.toml"
    path.write_text(f"""
[run]
pipeline = "npe"
output_dir = "out"
seed = 0
[data]
task = "two_moons"
observations = [1]
reference_root = "{os.path.relpath(REPO / 'datasets' / 'sbibm', tmp_path)}"
[model]
hidden_features = 16
num_transforms = 2
num_bins = 4
[train]
max_epochs = 2
[validate]
num_samples = 500
coverage_observations = 20
coverage_samples = 50
[inference]
{inference}
""")
    return path


@pytest.mark.slow  # about 50 s per method on one thread (C2ST and coverage after every round)
@pytest.mark.parametrize("method", ["snpe_c", "tsnpe"])
def test_pipeline_reports_every_round(tmp_path, method):
    cfg = load_pipeline(_write(tmp_path, f'method = "{method}"\nrounds = 2\nsimulations_per_round = 300'))
    report = json.loads(FAMILY.run(cfg, progress=False).read_text())
    rounds = report["inference"]["rounds"]
    assert report["inference"]["method"] == method and [r["round"] for r in rounds] == [1, 2]
    assert [r["num_simulations"] for r in rounds] == [300, 600]
    for r in rounds:
        assert 0.5 <= r["c2st"] <= 1.0 and set(r["coverage_at"]) == {"0.5", "0.8", "0.95"}
    assert set(report["coverage"]["coverage_at"]) == {"0.5", "0.8", "0.95"}
    assert load_posterior(tmp_path / "out").sample((3,), x=torch.zeros(2)).shape == (3, 2)


def test_sequential_config_errors(tmp_path):
    cfg = load_pipeline(_write(tmp_path, ""))
    assert cfg.inference.method == "npe"
    with pytest.raises(ConfigError, match="observation"):
        load_pipeline(_write(tmp_path, 'observation = "x.csv"'))
    with pytest.raises(ConfigError, match="method"):
        load_pipeline(_write(tmp_path, 'method = "snpe"'))
    with pytest.raises(ConfigError, match="num_atoms"):
        load_pipeline(_write(tmp_path, 'method = "snpe_c"\nnum_atoms = 1'))


def test_balance_option_trains_with_the_balanced_loss(tmp_path):
    from surrogate.pipelines.npe import _objective

    plain = load_pipeline(_write(tmp_path, ""))
    assert plain.train.balance == 0 and _objective(plain.train, None) == {}
    path = _write(tmp_path, "")
    path.write_text(path.read_text().replace("max_epochs = 2", "max_epochs = 2\nbalance = 100.0"))
    balanced = load_pipeline(path)
    loss = _objective(balanced.train, PRIOR)["loss"]
    assert loss.func is balanced_npe_loss and loss.keywords["balance"] == 100.0
    path.write_text(path.read_text() + 'method = "tsnpe"\n')
    with pytest.raises(ConfigError, match="balance"):
        load_pipeline(path)


def test_user_simulator_runs_sequential_rounds_at_its_observation(tmp_path):
    (tmp_path / "sim_shift.py").write_text(
        "import numpy as np\n"
        "def simulate(theta):\n"
        "    return np.asarray(theta) + 0.1 * np.random.standard_normal(np.shape(theta))\n")
    (tmp_path / "x_o.csv").write_text("data_1,data_2\n0.2,-0.3\n")
    path = tmp_path / "npe.toml"
    path.write_text("""
[run]
pipeline = "npe"
output_dir = "out"
[simulator]
entry_point = "sim_shift:simulate"
[prior]
kind = "uniform"
low = [-1.0, -1.0]
high = [1.0, 1.0]
[model]
hidden_features = 8
num_transforms = 1
num_bins = 4
[train]
max_epochs = 1
[validate]
coverage_observations = 0
[inference]
method = "snpe_c"
rounds = 2
simulations_per_round = 200
num_atoms = 5
observation = "x_o.csv"
""")
    report = json.loads(FAMILY.run(load_pipeline(path), progress=False).read_text())
    rounds = report["inference"]["rounds"]
    assert [r["proposal"] for r in rounds] == ["prior", "posterior"] and "c2st" not in rounds[1]
    assert report["c2st_skipped"] and rounds[1]["num_simulations"] == 400
    path.write_text(path.read_text().replace('observation = "x_o.csv"\n', ""))
    with pytest.raises(ConfigError, match="observation is missing"):
        load_pipeline(path)

"""Priors from ``[prior]`` tables: moments and densities against exact values, supports, errors."""

from __future__ import annotations

import math

import pytest
import torch

from surrogate.simulators.priors import LogUniform, ProductPrior, prior_from_table, prior_names

PER_PARAMETER = {"parameters": [
    {"name": "a", "kind": "uniform", "low": -1.0, "high": 3.0},
    {"name": "b", "kind": "loguniform", "low": 0.01, "high": 1.0},
    {"kind": "normal", "loc": 2.0, "scale": 0.5},
    {"kind": "lognormal", "loc": -1.0, "scale": 0.3},
]}


def test_per_parameter_prior_moments_density_and_support(seed):
    """200,000 draws: means within 0.01 (relative 1 %) of the exact ones; log densities exact."""
    prior = prior_from_table(PER_PARAMETER)
    assert isinstance(prior, ProductPrior) and prior.event_shape == (4,)
    draws = prior.sample((200_000,))
    exact_mean = torch.tensor([1.0, 0.99 / math.log(100), 2.0, math.exp(-1.0 + 0.3**2 / 2)])
    assert torch.allclose(draws.mean(0), exact_mean, rtol=0.01)
    assert torch.allclose(prior.mean, exact_mean, rtol=1e-5)
    assert prior.support.check(draws).all()
    theta = torch.tensor([0.0, 0.1, 2.0, math.exp(-1.0)])
    expected = (-math.log(4.0) - math.log(0.1 * math.log(100)) + torch.distributions.Normal(2.0, 0.5).log_prob(
        torch.tensor(2.0)).item() + torch.distributions.LogNormal(-1.0, 0.3).log_prob(torch.tensor(math.exp(-1.0))).item())
    assert prior.log_prob(theta).item() == pytest.approx(expected, rel=1e-5)
    outside = torch.stack([theta, theta.clone(), theta.clone()])
    outside[0, 0], outside[1, 1], outside[2, 3] = 3.5, 2.0, -0.1  # beyond a bound, each
    assert prior.support.check(outside).tolist() == [False, False, False]
    assert prior.log_prob(outside).tolist() == [-math.inf] * 3
    assert prior_names(PER_PARAMETER) == ["a", "b", "theta_3", "theta_4"]


def test_joint_tables_and_correlated_normal(seed):
    box = prior_from_table({"kind": "uniform", "low": [0.0, -2.0], "high": [1.0, 2.0], "names": ["x", "y"]})
    assert box.log_prob(torch.tensor([0.5, 0.0])).item() == pytest.approx(-math.log(4.0))
    assert prior_names({"kind": "uniform", "low": [0.0, -2.0], "high": [1.0, 2.0], "names": ["x", "y"]}) == ["x", "y"]
    log_uniform = prior_from_table({"kind": "loguniform", "low": [1.0], "high": [100.0]})
    # log10 theta uniform on [0, 2]: P(theta < 10) = 1/2
    assert (log_uniform.sample((100_000,)) < 10).float().mean().item() == pytest.approx(0.5, abs=0.01)
    mvn = prior_from_table({"kind": "normal", "loc": [0.0, 1.0], "covariance": [[1.0, 0.5], [0.5, 2.0]]})
    draws = mvn.sample((100_000,))
    assert torch.allclose(torch.cov(draws.T), torch.tensor([[1.0, 0.5], [0.5, 2.0]]), atol=0.03)


@pytest.mark.parametrize("table, message", [
    ({"kind": "uniform", "low": [0.0], "high": [0.0]}, r"\[prior\] high: must be > low"),
    ({"kind": "loguniform", "low": [0.0], "high": [1.0]}, r"\[prior\] low: loguniform needs low > 0"),
    ({"kind": "normal", "loc": [0.0], "scale": [0.0]}, r"\[prior\] scale: must be > 0"),
    ({"kind": "normal", "loc": [0.0], "sigma": [1.0]}, r"\[prior\]: unknown key\(s\) \['sigma'\]"),
    ({"kind": "normal", "loc": [0.0, 0.0], "covariance": [[1.0, 2.0], [2.0, 1.0]]}, r"covariance: must be .*definite"),
    ({"kind": "uniform", "low": [0.0, "a"], "high": [1.0, 1.0]}, r"\[prior\] low: expected an array of finite numbers"),
    ({"low": [0.0]}, r"\[prior\]: set kind .* or \[\[prior.parameters\]\]"),
    ({"kind": "uniform", "parameters": []}, r"with parameters, every setting goes in \[\[prior.parameters\]\]"),
    ({"parameters": [{"kind": "uniform", "low": 0.0}]}, r"\[prior\] parameters\[0\] high: expected an array"),
    ({"kind": "uniform", "low": [0.0], "high": [1.0], "names": ["a", "b"]}, r"\[prior\] names: expected 1 strings"),
])
def test_prior_errors_name_the_key(table, message):
    with pytest.raises(ValueError, match=message):
        prior_from_table(table)


def test_building_blocks_refuse_bad_arguments():
    with pytest.raises(ValueError, match="0 < low < high"):
        LogUniform(torch.tensor(1.0), torch.tensor(0.5))
    with pytest.raises(ValueError, match="univariate"):
        ProductPrior([torch.distributions.Normal(torch.zeros(2), 1.0)])
    with pytest.raises(ValueError, match=r"theta must have shape \(\*, 1\)"):
        ProductPrior([torch.distributions.Normal(0.0, 1.0)]).log_prob(torch.zeros(3, 2))

"""The NPE model pieces: the flow builder (shapes, gradients, z-scoring, state round trip), the
posterior's rejection against the prior, its shapes and its refusal of bad input, and the loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from surrogate.losses import npe_loss
from surrogate.models.npe import Z_SCORE_X, LowAcceptanceError, NeuralPosterior, build_npe_flow
from surrogate.nn.embeddings import MLPEmbedding
from surrogate.simulators.sbi_tasks import get_task, simulate_dataset

SMALL_FLOW = {"hidden_features": 16, "num_transforms": 2, "num_bins": 4}


class WideGaussianFlow(nn.Module):
    """Stand-in for a flow: q(theta | x) = N(x_1 * 1 + shift, sigma^2 I), ignoring the rest of x."""

    def __init__(self, dim: int, sigma: float, shift: float = 0.0):
        super().__init__()
        self.dim, self.sigma, self.shift = dim, sigma, shift
        self.dummy = nn.Parameter(torch.zeros(()))

    def _dist(self, context):
        return torch.distributions.Normal(context[:, :1] + self.shift, self.sigma)

    def sample(self, n, context):
        loc = (context[:, :1] + self.shift).expand(-1, self.dim)
        return loc[:, None, :] + self.sigma * torch.randn(context.shape[0], n, self.dim)

    def log_prob(self, theta, context):
        return self._dist(context).log_prob(theta).sum(-1)


def box_prior(dim: int = 2):
    return torch.distributions.Independent(torch.distributions.Uniform(-torch.ones(dim), torch.ones(dim)), 1)


@pytest.fixture(scope="module")
def simulations():
    return simulate_dataset(get_task("two_moons"), 200, seed=0)


# ---------------------------------------------------------------------------------------------
# the flow


@pytest.mark.parametrize("kind", ["nsf", "maf", "maf_rqs"])
@pytest.mark.parametrize("z_score_x", Z_SCORE_X)
def test_flow_shapes_and_gradients(kind, z_score_x, simulations, seed):
    theta, x = simulations
    flow = build_npe_flow(theta, x, kind=kind, z_score_x=z_score_x, **SMALL_FLOW)
    assert flow.log_prob(theta[:5], context=x[:5]).shape == (5,)
    assert flow.sample(3, context=x[:4]).shape == (4, 3, 2)
    loss = npe_loss(flow, {"theta": theta[:32], "x": x[:32]})
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [name for name, p in flow.named_parameters() if p.grad is None]
    assert not missing


def test_flow_with_embedding_and_image_observations(seed):
    theta = torch.randn(50, 3)
    images = torch.randn(50, 1, 4, 4)
    flow = build_npe_flow(theta, images, kind="maf", z_score_x="structured", hidden_features=8, num_transforms=1)
    assert flow.log_prob(theta[:6], context=images[:6]).shape == (6,)
    embedding = MLPEmbedding(2, 5, hidden_features=(8,))
    theta2, x2 = torch.randn(40, 2), torch.randn(40, 2)
    flow = build_npe_flow(theta2, x2, embedding_net=embedding, hidden_features=8, num_transforms=1)
    assert flow.log_prob(theta2[:3], context=x2[:3]).shape == (3,)


def test_flow_refuses_bad_options(simulations):
    theta, x = simulations
    with pytest.raises(ValueError, match="z_score_x must be one of"):
        build_npe_flow(theta, x, z_score_x="robust")
    with pytest.raises(ValueError, match="gaussianize' needs vector observations"):
        build_npe_flow(theta[:20], torch.randn(20, 1, 3, 3), z_score_x="gaussianize")
    with pytest.raises(ValueError, match="out_features"):
        build_npe_flow(theta, x, embedding_net=nn.Tanh())


def test_constant_feature_in_x_is_harmless(simulations, seed):
    theta, x = simulations
    x = torch.cat([x, torch.full((x.shape[0], 1), 3.0)], dim=1)
    flow = build_npe_flow(theta, x, **SMALL_FLOW)
    assert torch.isfinite(flow.log_prob(theta[:5], context=x[:5])).all()


def test_flow_state_round_trip(simulations, tmp_path, seed):
    theta, x = simulations
    flow = build_npe_flow(theta, x, kind="nsf", **SMALL_FLOW).eval()
    torch.save(flow.state_dict(), tmp_path / "flow.pt")
    clone = build_npe_flow(theta[:10] * 0, x[:10] * 0 + 1, kind="nsf", **SMALL_FLOW)  # other statistics
    clone.load_state_dict(torch.load(tmp_path / "flow.pt", weights_only=True))
    clone.eval()
    assert torch.allclose(clone.log_prob(theta[:5], context=x[:5]), flow.log_prob(theta[:5], context=x[:5]))


# ---------------------------------------------------------------------------------------------
# rejection against the prior


def test_rejection_never_returns_samples_outside_the_prior(seed):
    posterior = NeuralPosterior(WideGaussianFlow(2, sigma=2.0), box_prior(2), (2,))
    x = torch.tensor([[0.0, 0.0], [0.8, 0.0], [-0.9, 5.0]])
    samples, acceptance = posterior.sample_with_acceptance((4000,), x=x)
    assert samples.shape == (4000, 3, 2)
    assert (samples.abs() <= 1).all()
    # P(|N(0, 2^2)| < 1)^2 = 0.1466 for the first observation
    p = (torch.distributions.Normal(0.0, 2.0).cdf(torch.tensor(1.0)) * 2 - 1) ** 2
    assert acceptance[0] == pytest.approx(float(p), abs=0.01)
    assert torch.equal(posterior.last_acceptance_rate, acceptance)
    # distribution inside the box is the truncated Gaussian: symmetric around 0 for obs 0
    assert samples[:, 0].mean(0).abs().max() < 0.05


def test_low_acceptance_raises_instead_of_hanging(seed):
    far = NeuralPosterior(WideGaussianFlow(2, sigma=0.1, shift=50.0), box_prior(2), (2,))
    with pytest.raises(LowAcceptanceError, match="outside the prior's support"):
        far.sample((100,), x=torch.zeros(2))
    # acceptance 0.15 with a required minimum of 0.5
    strict = NeuralPosterior(WideGaussianFlow(2, sigma=2.0), box_prior(2), (2,), min_acceptance=0.5)
    with pytest.raises(LowAcceptanceError, match="acceptance rate"):
        strict.sample((2000,), x=torch.zeros(2))
    # a hard bound on the proposals
    bounded = NeuralPosterior(WideGaussianFlow(2, sigma=2.0), box_prior(2), (2,), max_proposals=500)
    with pytest.raises(LowAcceptanceError, match="at most 500 proposals"):
        bounded.sample((1000,), x=torch.zeros(2))


def test_log_prob_is_minus_infinity_outside_support(seed):
    posterior = NeuralPosterior(WideGaussianFlow(2, sigma=1.0), box_prior(2), (2,))
    theta = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.2, -0.3]])
    logp = posterior.log_prob(theta, x=torch.zeros(2))
    assert logp.shape == (3,)
    assert logp[1] == -math.inf and torch.isfinite(logp[[0, 2]]).all()
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(theta[0]).sum()
    assert logp[0] == pytest.approx(float(expected))


# ---------------------------------------------------------------------------------------------
# shapes and bad input


@pytest.fixture(scope="module")
def posterior(simulations):
    theta, x = simulations
    with torch.random.fork_rng():
        torch.manual_seed(0)
        flow = build_npe_flow(theta, x, **SMALL_FLOW).eval()
    return NeuralPosterior(flow, get_task("two_moons").prior, (2,))


def test_sample_and_log_prob_shapes(posterior, simulations, seed):
    theta, x = simulations
    assert posterior.sample((7,), x=x[0]).shape == (7, 2)
    assert posterior.sample((3, 4), x=x[0]).shape == (3, 4, 2)
    batch = posterior.sample((5,), x=x[:4])
    assert batch.shape == (5, 4, 2)
    assert posterior.last_acceptance_rate.shape == (4,)
    assert posterior.log_prob(batch, x=x[:4]).shape == (5, 4)
    assert posterior.log_prob(theta[:9], x=x[0]).shape == (9,)
    # batched log_prob equals the per-observation one
    single = torch.stack([posterior.log_prob(batch[:, b], x=x[b]) for b in range(4)], dim=1)
    assert torch.allclose(posterior.log_prob(batch, x=x[:4]), single, atol=1e-5)


def test_bad_observation_and_theta_shapes(posterior):
    with pytest.raises(ValueError, match=r"x must have shape \(2,\) .* or \(B, 2\) .*got \(3,\)"):
        posterior.sample((5,), x=torch.zeros(3))
    with pytest.raises(ValueError, match=r"got \(2, 2, 2\)"):
        posterior.sample((5,), x=torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        posterior.sample((5,), x=torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="at least one sample"):
        posterior.sample((0,), x=torch.zeros(2))
    with pytest.raises(ValueError, match=r"theta must have shape \(\*, 2\)"):
        posterior.log_prob(torch.zeros(4, 3), x=torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(\*, 3, 2\)"):
        posterior.log_prob(torch.zeros(4, 2), x=torch.zeros(3, 2))


def test_posterior_refuses_bad_settings():
    flow = WideGaussianFlow(2, sigma=1.0)
    with pytest.raises(ValueError, match=r"min_acceptance must be in \(0, 1\]"):
        NeuralPosterior(flow, box_prior(2), (2,), min_acceptance=0.0)
    with pytest.raises(ValueError, match="event shape"):
        NeuralPosterior(flow, torch.distributions.Uniform(-torch.ones(2), torch.ones(2)), (2,))


def test_ensemble_posterior_is_the_equal_weight_mixture(seed):
    from surrogate.models.npe import EnsemblePosterior

    narrow = NeuralPosterior(WideGaussianFlow(2, sigma=0.1, shift=-0.5), box_prior(2), (2,))
    wide = NeuralPosterior(WideGaussianFlow(2, sigma=0.1, shift=0.5), box_prior(2), (2,))
    ensemble = EnsemblePosterior([narrow, wide])
    x, theta = torch.zeros(2), torch.rand(7, 2) * 2 - 1
    expected = torch.logsumexp(torch.stack([narrow.log_prob(theta, x=x), wide.log_prob(theta, x=x)]), 0) - math.log(2)
    assert torch.allclose(ensemble.log_prob(theta, x=x), expected)
    samples = ensemble.sample((4000,), x=x)  # half around -0.5, half around +0.5 (binomial sd 0.008)
    assert samples.shape == (4000, 2) and float((samples[:, 0] > 0).float().mean()) == pytest.approx(0.5, abs=0.03)
    assert ensemble.sample((5,), x=torch.zeros(3, 2)).shape == (5, 3, 2)
    with pytest.raises(ValueError, match="member 1"):
        EnsemblePosterior([narrow, NeuralPosterior(WideGaussianFlow(3, sigma=1.0), box_prior(3), (2,))])


def test_ensemble_posterior_truncates_the_mixture_not_each_member(seed):
    """Rejection of the mixture against the prior box [-1, 1]^2: a member with a quarter of its
    mass inside (N(1, 0.1^2) per axis) gets 0.25 / (1 + 0.25) = 0.2 of the samples, not half; a
    member with none inside gets none, and the mixture still samples (each member alone fails)."""
    from surrogate.models.npe import EnsemblePosterior, LowAcceptanceError

    inside = NeuralPosterior(WideGaussianFlow(2, sigma=0.1), box_prior(2), (2,))
    edge = NeuralPosterior(WideGaussianFlow(2, sigma=0.1, shift=1.0), box_prior(2), (2,))
    outside = NeuralPosterior(WideGaussianFlow(2, sigma=0.1, shift=3.0), box_prior(2), (2,))
    x = torch.zeros(2)
    samples, acceptance = EnsemblePosterior([inside, edge]).sample_with_acceptance((4000,), x=x)
    assert float((samples[:, 0] > 0.5).float().mean()) == pytest.approx(0.2, abs=0.03)  # binomial sd 0.006
    assert float(acceptance) == pytest.approx((1 + 0.25) / 2, abs=0.03)
    with pytest.raises(LowAcceptanceError):
        outside.sample((10,), x=x)
    samples, acceptance = EnsemblePosterior([inside, outside]).sample_with_acceptance((2000,), x=x)
    assert float(samples.abs().max()) < 1 and float(acceptance) == pytest.approx(0.5, abs=0.03)

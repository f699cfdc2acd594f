"""sbibm tasks: priors, simulators against their definitions and against the reference
posteriors, reference loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from surrogate.simulators.sbi_tasks import (
    TASK_NAMES,
    default_sbibm_root,
    gaussian_linear_posterior,
    get_task,
    load_reference,
    simulate_dataset,
)

LOCAL_SBIBM = Path(__file__).resolve().parents[2] / "datasets" / "sbibm"


@pytest.fixture
def sbibm_root() -> Path:
    return LOCAL_SBIBM


@pytest.mark.parametrize("name", TASK_NAMES)
def test_shapes_seeding_and_global_rng_untouched(name):
    task = get_task(name)
    state = torch.get_rng_state()
    theta, x = simulate_dataset(task, 64, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert theta.shape == (64, task.theta_dim) and x.shape == (64, task.x_dim)
    assert theta.dtype == x.dtype == torch.float32
    theta2, x2 = simulate_dataset(name, 64, seed=3)
    assert torch.equal(theta, theta2) and torch.equal(x, x2)
    assert not torch.equal(x, simulate_dataset(name, 64, seed=4)[1])
    assert task.prior.event_shape == (task.theta_dim,)
    assert torch.isfinite(task.prior.log_prob(theta)).all()


def test_two_moons_crescent_geometry():
    """x minus the rotated |theta| offset is a point at radius N(0.1, 0.01^2) and angle U(-pi/2, pi/2)
    around (0.25, 0)."""
    task = get_task("two_moons")
    theta = torch.tensor([[0.3, -0.6]]).repeat(20000, 1)
    x = task.simulate(theta, generator=torch.Generator().manual_seed(0))
    c, s = math.cos(-math.pi / 4), math.sin(-math.pi / 4)
    z0, z1 = c * 0.3 - s * -0.6, s * 0.3 + c * -0.6
    q = x - torch.tensor([-abs(z0) + 0.25, z1])
    radius, angle = q.norm(dim=1), torch.atan2(q[:, 1], q[:, 0])
    assert radius.mean() == pytest.approx(0.1, abs=5e-4)
    assert radius.std() == pytest.approx(0.01, abs=5e-4)
    assert angle.min() > -math.pi / 2 and angle.max() < math.pi / 2
    assert angle.mean() == pytest.approx(0.0, abs=0.03)  # uniform: mean 0, sd (pi/sqrt(12))/sqrt(N)


def test_slcp_moments():
    task = get_task("slcp")
    theta = torch.tensor([[0.5, -1.0, 1.5, -0.8, 0.7]])
    x = task.simulate(theta.repeat(50000, 1), generator=torch.Generator().manual_seed(0)).reshape(-1, 4, 2)
    s1, s2, rho = 1.5**2, 0.8**2, math.tanh(0.7)
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]]) + 1e-6 * torch.eye(2)
    for j in range(4):  # the four points are i.i.d. N(m, S)
        points = x[:, j]
        assert torch.allclose(points.mean(0), torch.tensor([0.5, -1.0]), atol=0.05)
        assert torch.allclose(torch.cov(points.T), cov, rtol=0.03, atol=0.01)
    assert torch.corrcoef(torch.stack([x[:, 0, 0], x[:, 1, 0]]))[0, 1].abs() < 0.02  # independent points


def test_gaussian_linear_noise_and_posterior():
    task = get_task("gaussian_linear")
    theta = torch.zeros(40000, 10)
    x = task.simulate(theta, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x.var(0), torch.full((10,), 0.1), rtol=0.03)
    assert torch.allclose(task.prior.covariance_matrix, 0.1 * torch.eye(10))
    post = gaussian_linear_posterior(torch.ones(3, 10))
    assert post.batch_shape == (3,)
    assert torch.allclose(post.mean, torch.full((3, 10), 0.5))
    assert torch.allclose(post.covariance_matrix[0], 0.05 * torch.eye(10))


def test_local_reference_copy_matches_simulator():
    """The copied two_moons observation 1: reference samples explain x_obs (every sample puts
    x_obs on the crescent of radius ~0.1)."""
    ref = load_reference("two_moons", 1, root=LOCAL_SBIBM)
    assert ref.samples.shape == (10000, 2) and ref.observation.shape == (2,) and ref.true_parameters.shape == (2,)
    c, s = math.cos(-math.pi / 4), math.sin(-math.pi / 4)
    th = ref.samples
    z0, z1 = c * th[:, 0] - s * th[:, 1], s * th[:, 0] + c * th[:, 1]
    q = ref.observation - torch.stack([-z0.abs(), z1], 1) - torch.tensor([0.25, 0.0])
    assert q.norm(dim=1).mean() == pytest.approx(0.1, abs=2e-3)
    assert q.norm(dim=1).std() == pytest.approx(0.01, abs=2e-3)


def test_shared_references_match_simulators(sbibm_root):
    for name in TASK_NAMES:
        task = get_task(name)
        for k in (1, 10):
            ref = load_reference(name, k, root=sbibm_root)
            assert ref.samples.shape == (10000, task.theta_dim) and ref.observation.shape == (task.x_dim,)
            assert torch.isfinite(task.prior.log_prob(ref.samples)).all()  # inside the prior
    ref = load_reference("gaussian_linear", 3, root=sbibm_root)
    assert torch.allclose(ref.samples.mean(0), ref.observation / 2, atol=0.01)  # N(x/2, 0.05 I)
    assert torch.allclose(ref.samples.var(0), torch.full((10,), 0.05), rtol=0.05)
    # slcp: the reference samples have a far higher likelihood of x_obs than prior samples
    ref = load_reference("slcp", 2, root=sbibm_root)

    def loglik(th):
        s1, s2, rho = th[:, 2] ** 2, th[:, 3] ** 2, torch.tanh(th[:, 4])
        cov = torch.stack([torch.stack([s1**2, rho * s1 * s2], -1), torch.stack([rho * s1 * s2, s2**2], -1)], -2)
        dist = torch.distributions.MultivariateNormal(th[:, :2], cov + 1e-6 * torch.eye(2))
        return sum(dist.log_prob(ref.observation.reshape(4, 2)[j]) for j in range(4))

    prior_samples = get_task("slcp").prior.sample((10000,))
    assert loglik(ref.samples).median() > loglik(prior_samples).median() + 50


def test_default_root_is_the_repositorys_copy():
    assert default_sbibm_root() == LOCAL_SBIBM.resolve()


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        get_task("lotka_volterra")
    with pytest.raises(ValueError, match=r"theta must have shape \(N, 5\)"):
        get_task("slcp").simulate(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"num_observation must be an integer in \[1, 10\], got 11"):
        load_reference("two_moons", 11, root=LOCAL_SBIBM)
    with pytest.raises(FileNotFoundError, match="root="):
        load_reference("two_moons", 1, root=tmp_path)
    with pytest.raises(ValueError, match="num_simulations"):
        simulate_dataset("two_moons", 0)

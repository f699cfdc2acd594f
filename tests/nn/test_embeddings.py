"""Embedding networks and z-scoring."""

from __future__ import annotations

import pytest
import torch

from surrogate.nn.embeddings import (
    CNNEmbedding,
    Conv1DEmbedding,
    DeepSetEmbedding,
    GRUEmbedding,
    MarginalGaussianize,
    MLPEmbedding,
    Standardize,
    quantile_knots,
    zscore_statistics,
)


def test_zscore_statistics_robust_to_constant_features(seed):
    data = torch.randn(500, 3) * torch.tensor([2.0, 1.0, 0.0]) + torch.tensor([1.0, -3.0, 7.0])
    mean, std = zscore_statistics(data)
    assert torch.allclose(mean, torch.tensor([1.0, -3.0, 7.0]), atol=0.25)
    assert std[2] == 1.0  # constant: only centred
    z = Standardize(mean, std)(data)
    assert torch.isfinite(z).all()
    assert torch.allclose(z[:, 2], torch.zeros(500))
    assert torch.allclose(z[:, :2].std(0), torch.ones(2), atol=1e-5)


def test_zscore_statistics_structured_and_errors():
    mean, std = zscore_statistics(torch.arange(12.0).reshape(3, 4), structured=True)
    assert mean.shape == () and std.shape == ()
    assert float(mean) == pytest.approx(5.5)
    with pytest.raises(ValueError, match="NaN"):
        zscore_statistics(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(ValueError, match="at least one sample"):
        zscore_statistics(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        Standardize(torch.zeros(2), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: MLPEmbedding(10, 4, hidden_features=(8, 8)), torch.randn(5, 10)),
        (lambda: CNNEmbedding(2, (12, 16), 4, channels=(4, 8)), torch.randn(5, 2, 12, 16)),
        (lambda: CNNEmbedding(2, (12, 16), 4, channels=(4, 8)), torch.randn(5, 2 * 12 * 16)),
        (lambda: Conv1DEmbedding(3, 20, 4, channels=(4, 8), kernel_size=3), torch.randn(5, 3, 20)),
        (lambda: Conv1DEmbedding(1, 20, 4, channels=(4,)), torch.randn(5, 20)),
        (lambda: GRUEmbedding(3, 15, 4, hidden_size=8, num_layers=2), torch.randn(5, 3, 15)),
        (lambda: GRUEmbedding(3, 15, 4, hidden_size=8), torch.randn(5, 45)),
        (lambda: DeepSetEmbedding(2, 4, hidden_features=(8, 6)), torch.randn(5, 11, 2)),
    ],
)
def test_embeddings_shapes_gradients_roundtrip(make, x, seed, tmp_path):
    net = make()
    out = net(x)
    assert out.shape == (5, 4)
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    torch.save(net.state_dict(), tmp_path / "net.pt")
    clone = make()
    clone.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    assert torch.allclose(clone(x), out)


def test_time_series_and_trial_embeddings_shapes_and_invariances(seed):
    """Batch dimensions pass through; the flattened series is the same series; a deep set does
    not depend on the order of the trials and takes any number of them; a GRU does depend on
    the order of the time steps."""
    series = torch.randn(2, 3, 2, 16)  # (*, C, L) with two batch dimensions
    for net in (Conv1DEmbedding(2, 16, 5, channels=(4,)), GRUEmbedding(2, 16, 5, hidden_size=6)):
        out = net(series)
        assert out.shape == (2, 3, 5)
        assert torch.allclose(net(series.reshape(2, 3, 32)), out)
    gru = GRUEmbedding(1, 16, 5, hidden_size=6)
    assert not torch.allclose(gru(series[0, :, :1]), gru(series[0, :, :1].flip(-1)))
    deepset = DeepSetEmbedding(3, 4, hidden_features=(8,))
    trials = torch.randn(6, 9, 3)
    assert torch.allclose(deepset(trials), deepset(trials[:, torch.randperm(9)]), atol=1e-6)
    assert deepset(trials[:, :2]).shape == (6, 4) and deepset(torch.randn(2, 6, 9, 3)).shape == (2, 6, 4)
    # repeating every trial leaves the mean-pooled summary unchanged
    assert torch.allclose(deepset(trials.repeat(1, 2, 1)), deepset(trials), atol=1e-6)


def test_embedding_errors():
    with pytest.raises(ValueError, match=r"\(\*, 10\)"):
        MLPEmbedding(10, 4)(torch.randn(5, 9))
    with pytest.raises(ValueError, match="too small"):
        CNNEmbedding(1, (3, 3), 4, channels=(4, 8))
    with pytest.raises(ValueError, match=r"\(\*, 1, 8, 8\)"):
        CNNEmbedding(1, (8, 8), 4)(torch.randn(5, 1, 8, 9))
    with pytest.raises(ValueError, match="too short for 2 pooling blocks"):
        Conv1DEmbedding(1, 3, 4, channels=(4, 8))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        Conv1DEmbedding(1, 8, 4, kernel_size=4)
    with pytest.raises(ValueError, match=r"GRUEmbedding: expected x of shape \(\*, 2, 10\) or \(\*, 20\)"):
        GRUEmbedding(2, 10, 4)(torch.randn(5, 10, 2))
    with pytest.raises(ValueError, match=r"expected x of shape \(\*, n, 3\)"):
        DeepSetEmbedding(3, 4)(torch.randn(5, 4))
    with pytest.raises(ValueError, match="at least one width"):
        DeepSetEmbedding(3, 4, hidden_features=())


def test_marginal_gaussianize(seed):
    heavy = torch.randn(20000, 1) ** 3  # heavy tails: z-scoring leaves them, gaussianizing removes them
    uniform = torch.rand(20000, 1)
    constant = torch.full((20000, 1), 2.0)
    data = torch.cat([heavy, uniform, constant], dim=1)
    g = MarginalGaussianize(quantile_knots(data))
    z = g(data)
    assert torch.allclose(z[:, :2].mean(0), torch.zeros(2), atol=0.03)
    assert torch.allclose(z[:, :2].std(0), torch.ones(2), atol=0.03)
    assert (z[:, 2] == 0).all()
    # standard normal quantiles: P(z < 1.645) = 0.95
    assert (z[:, 0] < 1.645).float().mean() == pytest.approx(0.95, abs=0.01)
    # monotone, also beyond the knots
    grid = torch.linspace(-50, 50, 2001)[:, None].repeat(1, 3)
    assert (g(grid).diff(dim=0) >= 0).all()
    assert g(torch.randn(4, 5, 3)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="non-decreasing"):
        MarginalGaussianize(torch.tensor([[1.0], [0.0]]))
    with pytest.raises(ValueError, match=r"\(\*, 3\)"):
        g(torch.zeros(2, 4))

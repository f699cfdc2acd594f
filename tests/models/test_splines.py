"""The rational-quadratic spline of :mod:`surrogate.models.splines` against nflows' own, and its
coupling transform against nflows' with the same weights (float64)."""

from __future__ import annotations

import pytest
import torch
from nflows import transforms as T
from nflows.nn.nets import ResidualNet
from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline
from nflows.utils import create_alternating_binary_mask

from surrogate.models.splines import RQSCouplingTransform, rational_quadratic_spline


def _parameters(shape, bins, generator):
    def draw(*extra):
        return 2.0 * torch.randn(*shape, *extra, generator=generator, dtype=torch.float64)

    return draw(bins), draw(bins), draw(bins - 1)


@pytest.mark.parametrize("inverse", [False, True])
def test_spline_matches_nflows_inside_and_in_the_tails(inverse):
    g = torch.Generator().manual_seed(0)
    inputs = 4.0 * torch.randn(64, 30, generator=g, dtype=torch.float64)  # about a third beyond |x| = 3
    widths, heights, derivatives = _parameters(inputs.shape, 8, g)
    expected = unconstrained_rational_quadratic_spline(inputs, widths, heights, derivatives.clone(), inverse=inverse,
                                                       tails="linear", tail_bound=3.0)
    found = rational_quadratic_spline(inputs, widths, heights, derivatives, inverse=inverse, tail_bound=3.0)
    assert ((inputs.abs() > 3.0).float().mean() > 0.3) and ((inputs.abs() < 3.0).float().mean() > 0.3)
    torch.testing.assert_close(found[0], expected[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(found[1], expected[1], rtol=0, atol=1e-9)


def test_spline_inverse_undoes_forward_and_logdets_cancel():
    g = torch.Generator().manual_seed(1)
    inputs = 2.0 * torch.randn(500, generator=g, dtype=torch.float64)
    widths, heights, derivatives = _parameters(inputs.shape, 6, g)
    y, forward = rational_quadratic_spline(inputs, widths, heights, derivatives, tail_bound=2.5)
    x, backward = rational_quadratic_spline(y, widths, heights, derivatives, inverse=True, tail_bound=2.5)
    torch.testing.assert_close(x, inputs, rtol=0, atol=1e-10)
    torch.testing.assert_close(forward + backward, torch.zeros_like(forward), rtol=0, atol=1e-10)


def test_spline_log_derivative_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    inputs = torch.linspace(-2.9, 2.9, 101, dtype=torch.float64)
    widths, heights, derivatives = _parameters(inputs.shape, 5, g)
    h = 1e-6
    up = rational_quadratic_spline(inputs + h, widths, heights, derivatives, tail_bound=3.0)[0]
    down = rational_quadratic_spline(inputs - h, widths, heights, derivatives, tail_bound=3.0)[0]
    _, logabsdet = rational_quadratic_spline(inputs, widths, heights, derivatives, tail_bound=3.0)
    # central differences are O(h) off where they straddle a knot (the second derivative jumps there)
    torch.testing.assert_close(logabsdet, torch.log((up - down) / (2 * h)), rtol=0, atol=1e-4)


def test_coupling_matches_nflows_with_the_same_weights():
    torch.manual_seed(3)

    def net(i, o):
        return ResidualNet(i, o, hidden_features=16, context_features=2, num_blocks=1)

    mask = create_alternating_binary_mask(6, even=True)
    ours = RQSCouplingTransform(mask, net, num_bins=4, tails="linear", tail_bound=2.0).double()
    theirs = T.PiecewiseRationalQuadraticCouplingTransform(mask, net, num_bins=4, tails="linear",
                                                           tail_bound=2.0).double()
    theirs.load_state_dict(ours.state_dict())  # checkpoints are interchangeable
    x, context = 1.5 * torch.randn(40, 6, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    for a, b in zip(ours(x, context), theirs(x, context)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for a, b in zip(ours.inverse(x, context), theirs.inverse(x, context)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_coupling_refuses_other_tails():
    with pytest.raises(ValueError, match="tails='linear' only"):
        RQSCouplingTransform(create_alternating_binary_mask(4), lambda i, o: ResidualNet(i, o, 8), tails=None)

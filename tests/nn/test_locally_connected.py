"""LocallyConnected2d against a naive loop, against conv2d with tied weights, and its gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from surrogate.nn.locally_connected import LocallyConnected2d

# (in_channels, out_channels, input_size, kernel_size, stride, padding)
CASES = [
    (1, 1, (4, 4), 1, 1, 0),
    (2, 3, (3, 96), 3, 1, 1),
    (3, 2, (12, 6), 3, 2, 1),
    (2, 4, (5, 7), (2, 3), (1, 2), (0, 1)),
    (1, 2, (12, 12), 5, 3, 2),
]


def naive(layer: LocallyConnected2d, x: torch.Tensor) -> torch.Tensor:
    """Explicit loops over output positions: y[b, o, i, j] = b[o, i, j] + sum W[i, j, o] * patch."""
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    ph, pw = layer.padding
    xp = F.pad(x, (pw, pw, ph, ph))
    ho, wo = layer.output_size
    y = torch.empty(x.shape[0], layer.out_channels, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]  # (B, C_in, kh, kw)
            y[:, :, i, j] = torch.einsum("bcpq,ocpq->bo", patch, layer.weight[i, j])
            if layer.bias is not None:
                y[:, :, i, j] += layer.bias[:, i, j]
    return y


@pytest.mark.parametrize("cin, cout, size, kernel, stride, padding", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_naive_loop(seed, cin, cout, size, kernel, stride, padding, bias):
    layer = LocallyConnected2d(cin, cout, size, kernel, stride=stride, padding=padding, bias=bias).double()
    x = torch.randn(5, cin, *size, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (5, cout, *layer.output_size)
    torch.testing.assert_close(y, naive(layer, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cin, cout, size, kernel, stride, padding", CASES)
def test_equals_conv2d_with_tied_weights(seed, cin, cout, size, kernel, stride, padding):
    layer = LocallyConnected2d(cin, cout, size, kernel, stride=stride, padding=padding)
    conv = torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
    with torch.no_grad():
        layer.weight.copy_(conv.weight.expand_as(layer.weight))
        layer.bias.copy_(conv.bias[:, None, None].expand_as(layer.bias))
    x = torch.randn(4, cin, *size)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_output_size_formula():
    layer = LocallyConnected2d(1, 1, (12, 6), 3, stride=2, padding=1)
    assert layer.output_size == (6, 3)  # floor((12 + 2 - 3) / 2) + 1, floor((6 + 2 - 3) / 2) + 1
    assert layer.weight.shape == (6, 3, 1, 1, 3, 3)


def test_positions_are_independent(seed):
    """Changing the weights of one output position changes only that position's output."""
    layer = LocallyConnected2d(2, 3, (6, 5), 3, padding=1)
    x = torch.randn(2, 2, 6, 5)
    before = layer(x).detach()
    with torch.no_grad():
        layer.weight[2, 4] += 1.0
    diff = (layer(x) - before).abs().sum(dim=(0, 1))
    assert diff[2, 4] > 0
    diff[2, 4] = 0
    assert torch.all(diff == 0)


def test_gradcheck_and_gradgradcheck(seed):
    layer = LocallyConnected2d(2, 2, (4, 5), 3, stride=(2, 1), padding=1).double()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x), (x, layer.weight, layer.bias))
    assert torch.autograd.gradgradcheck(lambda x, w: layer(x), (x, layer.weight))


def test_chained_layers_and_batch_one(seed):
    """A view output of one layer feeds the next; batch size 1 works."""
    a = LocallyConnected2d(1, 4, (3, 96), 3, padding=1)
    b = LocallyConnected2d(4, 1, (3, 96), 3, padding=1)
    x = torch.randn(1, 1, 3, 96)
    y = b(torch.relu(a(x)))
    torch.testing.assert_close(y, b(torch.relu(a(x)).contiguous()))
    assert y.shape == (1, 1, 3, 96)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_channels": 0}, "channels"),
        ({"kernel_size": 7}, "larger than the padded input"),
        ({"stride": 0}, "positive"),
        ({"padding": -1}, "non-negative"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"in_channels": 1, "out_channels": 1, "input_size": (3, 6), "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        LocallyConnected2d(**args)


def test_bad_input_shape():
    layer = LocallyConnected2d(2, 1, (3, 6), 3, padding=1)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 2, 3, 6\), got \(4, 2, 6, 3\)"):
        layer(torch.zeros(4, 2, 6, 3))

"""LocallyConnected2d against a naive loop, against conv2d with tied weights, and its gradients;
both implementations (explicit and implicit patches) against the implementation before the
implicit path, and the parameter layout that checkpoints rely on."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from surrogate.nn import locally_connected
from surrogate.nn.locally_connected import LocallyConnected2d

# (in_channels, out_channels, input_size, kernel_size, stride, padding)
CASES = [
    (1, 1, (4, 4), 1, 1, 0),
    (2, 3, (3, 96), 3, 1, 1),
    (3, 2, (12, 6), 3, 2, 1),
    (2, 4, (5, 7), (2, 3), (1, 2), (0, 1)),
    (1, 2, (12, 12), 5, 3, 2),
]
# Stride-1 cases for the implicit path: square, rectangular and 1 x 1 kernels, uneven padding.
STRIDE1_CASES = [
    (1, 1, (4, 4), 1, 1, 0),
    (2, 3, (3, 96), 3, 1, 1),
    (3, 1, (12, 6), 3, 1, 1),
    (2, 4, (5, 7), (2, 3), 1, (0, 1)),
    (2, 2, (4, 5), (3, 1), 1, (2, 0)),
    (1, 2, (12, 12), 5, 1, 2),
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


def index_select_reference(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding) -> torch.Tensor:
    """The layer's forward before the implicit path (commit e520b1b), frozen here, on raw tensors.

    weight (Ho, Wo, C_out, C_in, kh, kw), bias (C_out, Ho, Wo) or None, stride and padding pairs.
    """
    ho, wo, cout, cin, kh, kw = weight.shape
    (sh, sw), (ph, pw), batch = stride, padding, x.shape[0]
    rows = torch.arange(ho).view(-1, 1, 1, 1) * sh + torch.arange(kh).view(1, 1, -1, 1)
    cols = torch.arange(wo).view(1, -1, 1, 1) * sw + torch.arange(kw).view(1, 1, 1, -1)
    index = (rows * (x.shape[3] + 2 * pw) + cols).reshape(-1)
    padded = F.pad(x.permute(2, 3, 1, 0), (0, 0, 0, 0, pw, pw, ph, ph)).reshape(-1, cin * batch)
    patches = padded.index_select(0, index).reshape(ho * wo, kh * kw * cin, batch)
    w = weight.permute(0, 1, 2, 4, 5, 3).reshape(ho * wo, cout, kh * kw * cin)
    if bias is None:
        y = torch.bmm(w, patches)
    else:
        y = torch.baddbmm(bias.permute(1, 2, 0).reshape(ho * wo, cout, 1), w, patches)
    return y.view(ho, wo, cout, batch).permute(3, 2, 0, 1)


def reference(layer: LocallyConnected2d, x: torch.Tensor) -> torch.Tensor:
    return index_select_reference(x, layer.weight, layer.bias, layer.stride, layer.padding)


@pytest.mark.parametrize("cin, cout, size, kernel, stride, padding", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_naive_loop(seed, cin, cout, size, kernel, stride, padding, bias):
    layer = LocallyConnected2d(cin, cout, size, kernel, stride=stride, padding=padding, bias=bias).double()
    x = torch.randn(5, cin, *size, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (5, cout, *layer.output_size)
    torch.testing.assert_close(y, naive(layer, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cin, cout, size, kernel, stride, padding", STRIDE1_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_implicit_path_matches_naive_loop(seed, cin, cout, size, kernel, stride, padding, bias):
    layer = LocallyConnected2d(cin, cout, size, kernel, stride=stride, padding=padding, bias=bias).double()
    x = torch.randn(5, cin, *size, dtype=torch.float64)
    y = layer._forward_implicit(x)
    assert y.shape == (5, cout, *layer.output_size)
    torch.testing.assert_close(y, naive(layer, x), rtol=1e-12, atol=1e-12)


# The CaloGAN generator's layers (8 channels, 3 x 3, size-preserving) at the batch sizes of the
# throughput benchmark; batch 1 takes the explicit path, 128 and 1024 the implicit one.
@pytest.mark.parametrize("cout, size", [(8, (3, 96)), (1, (12, 12)), (8, (12, 6))])
@pytest.mark.parametrize("batch", [1, 128, 1024])
def test_float32_paths_match_reference(seed, cout, size, batch):
    """forward without autograd (either path), with autograd (explicit) and the frozen
    pre-change implementation agree to 1e-5 relative; the float64 naive loop is the truth."""
    layer = LocallyConnected2d(8, cout, size, 3, padding=1)
    x = torch.randn(batch, 8, *size)
    with torch.no_grad():
        assert layer._implicit_applies(x) == (batch > 1)
        fast = layer(x)
        old = reference(layer, x)
        exact = naive(copy.deepcopy(layer).double(), x.double()).float()
    graph = layer(x)  # parameters require grad: explicit path
    scale = exact.abs().max()
    for y in (fast, old, graph):
        torch.testing.assert_close(y, exact, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(fast, old, rtol=1e-5, atol=1e-6 * scale)
    torch.testing.assert_close(graph, old, rtol=0, atol=0)  # the explicit path is the old code


def test_implicit_path_chooser(seed):
    """The implicit path is taken only without autograd, with stride 1, on large inputs."""
    layer = LocallyConnected2d(8, 8, (3, 96), 3, padding=1)
    big, small = torch.zeros(128, 8, 3, 96), torch.zeros(1, 8, 3, 96)
    assert not layer._implicit_applies(big)  # parameters require grad
    with torch.no_grad():
        assert layer._implicit_applies(big)
        assert not layer._implicit_applies(small)
    with torch.inference_mode():
        assert layer._implicit_applies(big)
    layer.requires_grad_(False)
    assert layer._implicit_applies(big)
    assert not layer._implicit_applies(big.requires_grad_())
    strided = LocallyConnected2d(8, 8, (3, 96), 3, stride=2, padding=1)
    with torch.no_grad():
        assert not strided._implicit_applies(big)


def test_forward_dispatches_to_implicit_path(seed, monkeypatch):
    layer = LocallyConnected2d(8, 1, (12, 12), 3, padding=1)
    x = torch.randn(256, 8, 12, 12)
    calls = []
    implicit = LocallyConnected2d._forward_implicit
    monkeypatch.setattr(LocallyConnected2d, "_forward_implicit", lambda self, x: calls.append(1) or implicit(self, x))
    with torch.no_grad():
        y = layer(x)
    assert calls == [1]
    torch.testing.assert_close(y, reference(layer, x).detach(), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(locally_connected, "_IMPLICIT_MIN_PATCH_BYTES", 2**40)
    with torch.no_grad():
        layer(x)
    assert calls == [1]


@pytest.mark.parametrize("cin, cout, size, kernel, stride, padding", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_layout_and_old_checkpoints(seed, tmp_path, cin, cout, size, kernel, stride, padding, bias):
    """Parameters keep the layout of trained checkpoints: weight (Ho, Wo, C_out, C_in, kh, kw),
    bias (C_out, Ho, Wo), no persistent buffers; a checkpoint in that layout loads strictly and
    gives the pre-change implementation's output."""
    layer = LocallyConnected2d(cin, cout, size, kernel, stride=stride, padding=padding, bias=bias)
    (ho, wo), (kh, kw) = layer.output_size, layer.kernel_size
    shapes = {"weight": (ho, wo, cout, cin, kh, kw)} | ({"bias": (cout, ho, wo)} if bias else {})
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == shapes
    torch.save({k: torch.randn(s) for k, s in shapes.items()}, tmp_path / "old.pt")
    state = torch.load(tmp_path / "old.pt", weights_only=True)
    layer.load_state_dict(state, strict=True)
    x = torch.randn(300, cin, *size)
    expected = index_select_reference(x, state["weight"], state.get("bias"), layer.stride, layer.padding)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


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


def test_implicit_path_gradcheck_and_gradgradcheck(seed):
    """forward uses it only without autograd, but the implicit path is differentiable too."""
    layer = LocallyConnected2d(2, 3, (4, 5), (3, 2), padding=(1, 0)).double()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: layer._forward_implicit(x), (x, layer.weight, layer.bias))
    assert torch.autograd.gradgradcheck(lambda x, w: layer._forward_implicit(x), (x, layer.weight))


@pytest.mark.parametrize("implicit", [False, True])
def test_float32_gradients_match_reference(seed, implicit):
    """Gradients of x, weight and bias agree with the frozen pre-change implementation to 1e-5."""
    layer = LocallyConnected2d(8, 8, (3, 96), 3, padding=1)
    x = torch.randn(128, 8, 3, 96, requires_grad=True)
    g = torch.randn(128, 8, 3, 96)
    params = [x, layer.weight, layer.bias]
    y = layer._forward_implicit(x) if implicit else layer(x)
    grads = torch.autograd.grad((y * g).sum(), params)
    expected = torch.autograd.grad((reference(layer, x) * g).sum(), params)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max())


def test_chained_layers_and_batch_one(seed):
    """A view output of one layer feeds the next; batch size 1 works."""
    a = LocallyConnected2d(1, 4, (3, 96), 3, padding=1)
    b = LocallyConnected2d(4, 1, (3, 96), 3, padding=1)
    x = torch.randn(1, 1, 3, 96)
    y = b(torch.relu(a(x)))
    torch.testing.assert_close(y, b(torch.relu(a(x)).contiguous()))
    assert y.shape == (1, 1, 3, 96)
    x = torch.randn(64, 1, 3, 96)
    with torch.no_grad():  # implicit path for b: its input is a view of a's output
        assert b._implicit_applies(x.expand(-1, 4, -1, -1))
        y = b(torch.relu(a(x)))
        torch.testing.assert_close(y, b(torch.relu(a(x)).contiguous()))
        torch.testing.assert_close(y, reference(b, torch.relu(reference(a, x))), rtol=1e-5, atol=1e-6)


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


def test_circular_row_padding_keeps_the_grid_and_wraps_the_first_axis():
    """A periodic first axis: row ny - 1 sits before row 0; the wrapped layer keeps (ny, nx) at
    stride 1, and its output in row 0 depends on the input's last row."""
    from surrogate.nn.locally_connected import pad_rows_circular, wrapped_locally_connected

    x = torch.arange(2 * 1 * 4 * 3, dtype=torch.float32).view(2, 1, 4, 3)
    padded = pad_rows_circular(x, 1)
    assert padded.shape == (2, 1, 6, 3)
    assert torch.equal(padded[..., 0, :], x[..., 3, :]) and torch.equal(padded[..., 5, :], x[..., 0, :])
    assert pad_rows_circular(x, 0) is x
    layer = wrapped_locally_connected(1, 2, (4, 3), 3, 1)
    x = x.clone().requires_grad_(True)
    out = layer(pad_rows_circular(x, 1))
    assert out.shape == (2, 2, 4, 3)
    (grad,) = torch.autograd.grad(out[:, :, 0].sum(), x)
    assert bool(torch.any(grad[:, :, 3] != 0))
    with pytest.raises(ValueError, match=r"wrap must be in \[0, kernel_size // 2 = 1\], got 2"):
        wrapped_locally_connected(1, 2, (4, 3), 3, 2)

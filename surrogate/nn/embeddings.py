"""Embedding networks that summarise observations ``x`` into a context vector for a flow.

- :class:`Standardize`: fixed z-scoring ``(x - mean) / std`` whose statistics are buffers (saved
  with the model), robust to constant features.
- :class:`MLPEmbedding`: a multilayer perceptron for vector data ``(*, D)``.
- :class:`CNNEmbedding`: a small convolutional network for images ``(*, C, H, W)`` (or their
  flattened version ``(*, C*H*W)``).
- :class:`Conv1DEmbedding` and :class:`GRUEmbedding`: time series ``(*, C, L)`` (channels first,
  as images; or flattened ``(*, C*L)``), by 1-D convolutions or a gated recurrent unit.
- :class:`DeepSetEmbedding`: a permutation-invariant summary of i.i.d. trials ``(*, n, F)``
  (Zaheer et al. 2017, arXiv:1703.06114), for any number of trials ``n``.

Example:
    >>> import torch
    >>> net = CNNEmbedding(in_channels=1, image_size=(16, 16), out_features=8)
    >>> net(torch.randn(5, 1, 16, 16)).shape
    torch.Size([5, 8])
    >>> net(torch.randn(5, 256)).shape
    torch.Size([5, 8])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from surrogate.checks import check_float, check_int

__all__ = [
    "CNNEmbedding",
    "Conv1DEmbedding",
    "DeepSetEmbedding",
    "GRUEmbedding",
    "MLPEmbedding",
    "MarginalGaussianize",
    "Standardize",
    "quantile_knots",
    "zscore_statistics",
]


def zscore_statistics(
    data: Tensor, *, structured: bool = False, min_std: float = 1e-14
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation for z-scoring, robust to constant features.

    Arguments:
        data: samples ``(N, *event_shape)``, finite values, ``N >= 1``.
        structured: one mean and std over all features (images, time series) instead of one
            per feature.
        min_std: a standard deviation below ``min_std`` times the feature's scale
            (``max(1, |mean|)``) marks a constant feature; its std is set to 1, so it is only
            centred (it becomes 0) instead of being divided by zero.

    Returns:
        ``(mean, std)``, each of shape ``event_shape`` (or ``()`` if ``structured``).

    Raises:
        ValueError: empty ``data`` or non-finite values.
    """
    data = torch.as_tensor(data)
    if data.ndim < 1 or data.shape[0] < 1:
        raise ValueError(f"need at least one sample to z-score, got shape {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("cannot z-score data with NaN or infinite values")
    data = data.double()
    if structured:
        mean, std = data.mean(), (data.std() if data.numel() > 1 else torch.zeros(()))
    else:
        mean = data.mean(0)
        std = data.std(0) if data.shape[0] > 1 else torch.zeros_like(mean)
    constant = std <= min_std * torch.clamp(mean.abs(), min=1.0)
    std = torch.where(constant, torch.ones_like(std), std)
    return mean.float(), std.float()


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed statistics stored as buffers.

    Arguments:
        mean: ``event_shape`` or scalar tensor.
        std: same shape as ``mean``, all entries > 0 (see :func:`zscore_statistics`).

    Raises:
        ValueError: shapes differ or ``std`` has entries <= 0 or non-finite.
    """

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != std.shape:
            raise ValueError(f"mean and std must have the same shape, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool((std > 0).all() & torch.isfinite(std).all() & torch.isfinite(mean).all()):
            raise ValueError("std must be finite and > 0 and mean finite")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        """Arguments: x: ``(*, *event_shape)``. Returns: the z-scored ``x``, same shape."""
        return (x - self.mean) / self.std


def quantile_knots(data: Tensor, *, num_knots: int = 101, tail: float = 1e-3) -> Tensor:
    """Empirical quantiles of each feature at ``num_knots`` probability levels for
    :class:`MarginalGaussianize`.

    Arguments:
        data: samples ``(N, F)``, finite.
        num_knots: number of probability levels, equally spaced in ``[tail, 1 - tail]``.
        tail: probability left outside the outermost knots on each side.

    Returns:
        Knots ``(num_knots, F)``, non-decreasing along dim 0.

    Raises:
        ValueError: ``data`` not 2-D, empty or non-finite; ``num_knots < 2``; ``tail`` not in (0, 0.5).
    """
    data = torch.as_tensor(data)
    if data.ndim != 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape (N, F) with N >= 1, got {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("cannot compute quantiles of data with NaN or infinite values")
    num_knots = check_int("num_knots", num_knots, minimum=2)
    tail = check_float("tail", tail, minimum=0, maximum=0.5, exclusive_minimum=True, exclusive_maximum=True)
    levels = torch.linspace(tail, 1 - tail, num_knots, dtype=torch.float64)
    return torch.quantile(data.double(), levels, dim=0).float()


class MarginalGaussianize(nn.Module):
    """Maps each feature through its empirical CDF to a standard normal quantile,
    ``x -> Phi^{-1}(F(x))``: piecewise linear between the knots and, beyond the outermost knots,
    linear with the mean slope ``(z_K - z_1) / (x_K - x_1)``. A monotone preprocessing of the
    observations (the posterior ``p(theta | x)`` is unchanged by it) that tames heavy tails which
    z-scoring leaves in place. Constant features (all knots equal) are only centred; repeated
    knot values (discrete features) are spread by a relative 1e-6 so the map stays monotone.

    Arguments:
        knots: ``(K, F)`` non-decreasing quantiles at levels ``linspace(tail, 1 - tail, K)``
            (see :func:`quantile_knots`).
        tail: the ``tail`` used for the knots.

    Raises:
        ValueError: knots not 2-D with ``K >= 2``, non-finite or decreasing.
    """

    def __init__(self, knots: Tensor, *, tail: float = 1e-3):
        super().__init__()
        knots = torch.as_tensor(knots, dtype=torch.float64)
        if knots.ndim != 2 or knots.shape[0] < 2:
            raise ValueError(f"knots must have shape (K >= 2, F), got {tuple(knots.shape)}")
        if not bool(torch.isfinite(knots).all()) or bool((knots.diff(dim=0) < 0).any()):
            raise ValueError("knots must be finite and non-decreasing along dim 0")
        k = knots.shape[0]
        constant = knots[-1] == knots[0]
        scale = torch.clamp(knots.abs().amax(0), min=1.0)
        knots = knots + 1e-6 * scale * torch.arange(k, dtype=torch.float64)[:, None] / (k - 1)
        levels = torch.linspace(tail, 1 - tail, k, dtype=torch.float64)
        z = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0).icdf(levels)
        slope = (z[-1] - z[0]) / (knots[-1] - knots[0])
        self.register_buffer("knots", knots.t().contiguous().float())  # (F, K)
        self.register_buffer("levels", z.float())  # (K,)
        self.register_buffer("tail_slope", slope.float())  # (F,)
        self.register_buffer("constant", constant)  # (F,)

    def forward(self, x: Tensor) -> Tensor:
        """Arguments: x: ``(*, F)``. Returns: ``(*, F)``, approximately standard normal features."""
        features, k = self.knots.shape
        if x.shape[-1] != features:
            raise ValueError(f"expected x of shape (*, {features}), got {tuple(x.shape)}")
        flat = x.reshape(-1, features).t().contiguous()  # (F, N)
        right = torch.searchsorted(self.knots, flat).clamp(1, k - 1)  # segment [right - 1, right]
        x0, x1 = self.knots.gather(1, right - 1), self.knots.gather(1, right)
        z0, z1 = self.levels[right - 1], self.levels[right]
        inner = z0 + (z1 - z0) / (x1 - x0) * (flat - x0)
        low, high = self.knots[:, :1], self.knots[:, -1:]
        slope = self.tail_slope[:, None]
        out = torch.where(flat < low, self.levels[0] + slope * (flat - low), inner)
        out = torch.where(flat > high, self.levels[-1] + slope * (flat - high), out)
        out = torch.where(self.constant[:, None], flat - low, out)
        return out.t().reshape(x.shape)


def _mlp(in_features: int, hidden_features: Sequence[int], out_features: int, activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden_features:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MLPEmbedding(nn.Module):
    """Fully connected embedding ``(*, in_features) -> (*, out_features)``.

    Arguments:
        in_features: dimension of the (flattened) observation.
        out_features: dimension of the summary (the flow's ``context_features``).
        hidden_features: widths of the hidden layers.
        activation: activation module class, instantiated between layers.

    Raises:
        ValueError: non-positive sizes.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        hidden_features: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        in_features = check_int("in_features", in_features, minimum=1, where="MLPEmbedding")
        out_features = check_int("out_features", out_features, minimum=1, where="MLPEmbedding")
        hidden_features = tuple(
            check_int(f"hidden_features[{i}]", h, minimum=1, where="MLPEmbedding") for i, h in enumerate(hidden_features)
        )
        self.in_features, self.out_features = in_features, out_features
        self.net = _mlp(in_features, hidden_features, out_features, activation)

    def forward(self, x: Tensor) -> Tensor:
        """Arguments: x: ``(*, in_features)``. Returns: ``(*, out_features)``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected x of shape (*, {self.in_features}), got {tuple(x.shape)}")
        return self.net(x)


class CNNEmbedding(nn.Module):
    """Small convolutional embedding for images: conv blocks (3x3 conv, ReLU, 2x2 max-pool),
    then a fully connected head.

    Arguments:
        in_channels: ``C``.
        image_size: ``(H, W)`` in pixels.
        out_features: dimension of the summary.
        channels: output channels of the successive conv blocks; each block halves H and W
            (floor), so ``H`` and ``W`` must be at least ``2 ** len(channels)``.
        kernel_size: odd convolution kernel size ("same" padding).
        hidden_features: width of the hidden layer of the head.

    Raises:
        ValueError: image too small for the number of blocks, even kernel, non-positive sizes.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        out_features: int,
        *,
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 3,
        hidden_features: int = 64,
    ):
        super().__init__()
        height, width = (int(s) for s in image_size)
        where = "CNNEmbedding"
        in_channels = check_int("in_channels", in_channels, minimum=1, where=where)
        out_features = check_int("out_features", out_features, minimum=1, where=where)
        hidden_features = check_int("hidden_features", hidden_features, minimum=1, where=where)
        channels = tuple(check_int(f"channels[{i}]", c, minimum=1, where=where) for i, c in enumerate(channels))
        kernel_size = check_int("kernel_size", kernel_size, minimum=1, where=where)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if min(height, width) < 2 ** len(channels):
            raise ValueError(
                f"image_size {image_size} is too small for {len(channels)} pooling blocks "
                f"(needs >= {2 ** len(channels)} pixels per side)"
            )
        self.event_shape = (in_channels, height, width)
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            blocks += [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.head = _mlp(c_in * height * width, (hidden_features,), out_features, nn.ReLU)
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        """Arguments: x: ``(*, C, H, W)`` or flattened ``(*, C*H*W)``. Returns: ``(*, out_features)``."""
        c, h, w = self.event_shape
        if x.shape[-3:] == (c, h, w):
            batch = x.shape[:-3]
        elif x.shape[-1:] == (c * h * w,):
            batch = x.shape[:-1]
        else:
            raise ValueError(f"expected x of shape (*, {c}, {h}, {w}) or (*, {c * h * w}), got {tuple(x.shape)}")
        images = x.reshape(-1, c, h, w)
        out = self.head(self.features(images).flatten(1))
        return out.reshape(*batch, self.out_features)


def _series(x: Tensor, channels: int, length: int, where: str) -> tuple[Tensor, torch.Size]:
    """``x (*, C, L)`` or ``(*, C*L)`` as ``(B, C, L)`` and the batch shape ``*``."""
    if x.shape[-2:] == (channels, length):
        batch = x.shape[:-2]
    elif x.shape[-1:] == (channels * length,):
        batch = x.shape[:-1]
    else:
        raise ValueError(f"{where}: expected x of shape (*, {channels}, {length}) or (*, {channels * length}), "
                         f"got {tuple(x.shape)}")
    return x.reshape(-1, channels, length), batch


class Conv1DEmbedding(nn.Module):
    """1-D convolutional embedding for time series: conv blocks (convolution, ReLU, max-pool by
    2), then a fully connected head.

    Arguments:
        in_channels: ``C``, the quantities recorded at each time step.
        length: ``L``, the time steps.
        out_features: dimension of the summary.
        channels: output channels of the successive conv blocks; each block halves ``L``
            (floor), so ``L`` must be at least ``2 ** len(channels)``.
        kernel_size: odd kernel size ("same" padding).
        hidden_features: width of the hidden layer of the head.

    Raises:
        ValueError: series too short for the number of blocks, even kernel, non-positive sizes.

    Example:
        >>> net = Conv1DEmbedding(2, 40, 8)
        >>> net(torch.randn(5, 2, 40)).shape, net(torch.randn(5, 80)).shape
        (torch.Size([5, 8]), torch.Size([5, 8]))
    """

    def __init__(self, in_channels: int, length: int, out_features: int, *, channels: Sequence[int] = (16, 32),
                 kernel_size: int = 5, hidden_features: int = 64):
        super().__init__()
        where = "Conv1DEmbedding"
        self.in_channels = check_int("in_channels", in_channels, minimum=1, where=where)
        self.length = check_int("length", length, minimum=1, where=where)
        self.out_features = check_int("out_features", out_features, minimum=1, where=where)
        hidden_features = check_int("hidden_features", hidden_features, minimum=1, where=where)
        channels = tuple(check_int(f"channels[{i}]", c, minimum=1, where=where) for i, c in enumerate(channels))
        kernel_size = check_int("kernel_size", kernel_size, minimum=1, where=where)
        if kernel_size % 2 == 0:
            raise ValueError(f"{where}: kernel_size must be odd, got {kernel_size}")
        if length < 2 ** len(channels):
            raise ValueError(f"{where}: length {length} is too short for {len(channels)} pooling blocks "
                             f"(needs >= {2 ** len(channels)} time steps)")
        blocks: list[nn.Module] = []
        c_in, steps = self.in_channels, length
        for c_out in channels:
            blocks += [nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.ReLU(), nn.MaxPool1d(2)]
            c_in, steps = c_out, steps // 2
        self.features = nn.Sequential(*blocks)
        self.head = _mlp(c_in * steps, (hidden_features,), self.out_features, nn.ReLU)

    def forward(self, x: Tensor) -> Tensor:
        """Arguments: x: ``(*, C, L)`` or ``(*, C*L)``. Returns: ``(*, out_features)``."""
        series, batch = _series(x, self.in_channels, self.length, "Conv1DEmbedding")
        return self.head(self.features(series).flatten(1)).reshape(*batch, self.out_features)


class GRUEmbedding(nn.Module):
    """Recurrent embedding for time series: a GRU (Cho et al. 2014, arXiv:1406.1078) reads the
    steps in order; its last hidden state goes through a linear layer.

    Arguments:
        in_channels: ``C``, the quantities recorded at each time step.
        length: ``L``, the time steps (fixed, so that flattened series can be read).
        out_features: dimension of the summary.
        hidden_size: GRU state size.
        num_layers: stacked GRU layers.

    Raises:
        ValueError: non-positive sizes.

    Example:
        >>> net = GRUEmbedding(1, 30, 4, hidden_size=8)
        >>> net(torch.randn(3, 1, 30)).shape, net(torch.randn(2, 3, 30)).shape
        (torch.Size([3, 4]), torch.Size([2, 3, 4]))
    """

    def __init__(self, in_channels: int, length: int, out_features: int, *, hidden_size: int = 64,
                 num_layers: int = 1):
        super().__init__()
        where = "GRUEmbedding"
        self.in_channels = check_int("in_channels", in_channels, minimum=1, where=where)
        self.length = check_int("length", length, minimum=1, where=where)
        self.out_features = check_int("out_features", out_features, minimum=1, where=where)
        hidden_size = check_int("hidden_size", hidden_size, minimum=1, where=where)
        num_layers = check_int("num_layers", num_layers, minimum=1, where=where)
        self.gru = nn.GRU(self.in_channels, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Arguments: x: ``(*, C, L)`` or ``(*, C*L)``. Returns: ``(*, out_features)``."""
        series, batch = _series(x, self.in_channels, self.length, "GRUEmbedding")
        _, state = self.gru(series.transpose(1, 2))  # (layers, B, hidden)
        return self.head(state[-1]).reshape(*batch, self.out_features)


class DeepSetEmbedding(nn.Module):
    """Permutation-invariant embedding of i.i.d. trials: ``rho(mean_j phi(x_j))``, ``phi`` and
    ``rho`` fully connected (Zaheer et al. 2017, "Deep Sets", arXiv:1703.06114). The mean makes the
    summary independent of the order and of the number of trials.

    Arguments:
        in_features: ``F``, numbers per trial.
        out_features: dimension of the summary.
        hidden_features: widths of the hidden layers of ``phi`` (the last one is the pooled width)
            and of ``rho``'s hidden layer.
        activation: activation module class.

    Raises:
        ValueError: non-positive sizes, empty ``hidden_features``.

    Example:
        >>> net = DeepSetEmbedding(2, 4, hidden_features=(8, 8))
        >>> trials = torch.randn(3, 10, 2)
        >>> net(trials).shape
        torch.Size([3, 4])
        >>> bool(torch.allclose(net(trials), net(trials.flip(1)), atol=1e-6))
        True
    """

    def __init__(self, in_features: int, out_features: int, *, hidden_features: Sequence[int] = (64, 64),
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        where = "DeepSetEmbedding"
        self.in_features = check_int("in_features", in_features, minimum=1, where=where)
        self.out_features = check_int("out_features", out_features, minimum=1, where=where)
        hidden = tuple(check_int(f"hidden_features[{i}]", h, minimum=1, where=where)
                       for i, h in enumerate(hidden_features))
        if not hidden:
            raise ValueError(f"{where}: hidden_features needs at least one width")
        self.phi = nn.Sequential(_mlp(self.in_features, hidden[:-1], hidden[-1], activation), activation())
        self.rho = _mlp(hidden[-1], (hidden[-1],), self.out_features, activation)

    def forward(self, x: Tensor) -> Tensor:
        """Arguments: x: ``(*, n, F)``, ``n >= 1`` trials. Returns: ``(*, out_features)``."""
        if x.ndim < 2 or x.shape[-1] != self.in_features or x.shape[-2] < 1:
            raise ValueError(f"DeepSetEmbedding: expected x of shape (*, n, {self.in_features}) with n >= 1 trials, "
                             f"got {tuple(x.shape)}")
        return self.rho(self.phi(x).mean(-2))

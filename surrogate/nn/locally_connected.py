r"""Locally connected 2-D layer: a convolution whose weights are not shared across positions.

A locally connected layer slides a ``kernel_size`` window over the image like
:class:`torch.nn.Conv2d`, but every output position :math:`(i, j)` has its own filter bank
:math:`W_{ij}` and bias :math:`b_{ij}`:

.. math:: y_{o i j} = b_{o i j} + \sum_{c, p, q} W_{i j o c p q}\, x_{c,\, s i + p - P,\, s j + q - P}.

Calorimeter images are not translation invariant (the shower axis is at a fixed cell, the
energy density falls by orders of magnitude towards the edges), which is why CaloGAN
(Paganini, de Oliveira, Nachman, arXiv:1705.02355, 1712.10321) builds its generator and critic
from such layers.

The layer has two exact implementations of the same sum (same parameters, outputs equal to
float rounding):

* **Explicit patches** (im2col; always under autograd, and for small inputs or strides other
  than 1). One :meth:`torch.Tensor.index_select` on the padded input in a position-major,
  batch-last layout (``(H + 2P, W + 2P, C_in, B)``, so every gathered row is a contiguous run
  of ``C_in * B`` numbers) gathers the patches, and one batched matrix product
  (:func:`torch.baddbmm`, batch over output positions) contracts them with the per-position
  weights. This computes what ``unfold`` followed by
  ``einsum("bkl,lok->bol", patches, weight)`` computes, but on the CPU it is about five times
  faster in the forward pass and in the double backward pass of the WGAN gradient penalty
  (``unfold``/``fold`` and the transposing copies that ``einsum`` inserts dominate otherwise).
  Its backward is an ``index_add`` (atomic additions on CUDA); it is twice differentiable.
* **Implicit patches** (used without autograd, on the CPU, with stride 1, once the explicit
  patches would exceed ``_IMPLICIT_MIN_PATCH_BYTES``, 2 MiB). The patches are
  :math:`k_h k_w` copies of the input: at batch 1024 those of a (3, 96) layer with 8 channels
  and a 3 x 3 window take 85 MB. Such a tensor is too large for the allocator to keep, so
  every call maps fresh pages from the kernel (the 85 MB gather took 87 ms into fresh memory,
  4-7 ms into reused memory, on one thread), and it streams through main memory instead of
  cache: with it, 67 % of a CaloGAN generator's time went into the gather at batch 1024,
  which then ran at 28 % of its batch-128 rate per shower. The implicit path never builds
  them: with stride 1, the :math:`k_w` input cells under kernel row :math:`p` of output
  position :math:`(i, j)` are the consecutive rows :math:`(i + p) W_p + j, \dots, (i + p) W_p + j + k_w - 1` of the
  flattened padded input (:math:`W_p = W + 2 P_w`). Counting positions on the padded width,
  :math:`v = i W_p + j` (the :math:`W_p - W_{out}` extra columns get zero weights and are
  dropped), kernel row :math:`p` of every position is one row of a single overlapping view
  (:meth:`torch.Tensor.unfold`, no copy) shifted by :math:`p W_p`, so the layer is
  :math:`k_h` accumulating batched products with a :math:`k_w C_{in}` contraction, whose
  operands stay in cache. It is also differentiable, but its backward is slower than the
  explicit one, which keeps the patches for the weight gradient anyway.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from surrogate.checks import check_int

__all__ = ["LocallyConnected2d", "pad_rows_circular", "wrapped_locally_connected"]

# Above this size of the explicit patches, inference with stride 1 on the CPU takes the implicit
# path (see the module docstring). On a 2-core EPYC (1 MiB L2 per core, one thread) the
# implicit path was faster per layer from 1-5 MiB of patches on (the lower end with one output
# channel), and made the CaloGAN generator 1.3-1.5 times (batch 128) and 3.6-3.8 times (batch
# 1024) faster; below about 1 MiB its k_h products cost more than the explicit single one.
_IMPLICIT_MIN_PATCH_BYTES = 2 * 2**20


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"LocallyConnected2d: {name} must be an int or a pair of ints, got {value}")
    return value  # type: ignore[return-value]


class LocallyConnected2d(nn.Module):
    r"""2-D locally connected layer (unshared convolution).

    Arguments:
        in_channels: number of input channels :math:`C_{in}`.
        out_channels: number of output channels :math:`C_{out}`.
        input_size: spatial size :math:`(H, W)` of the input; the weights are allocated for
            exactly this size.
        kernel_size: window size :math:`(k_h, k_w)` (an int means a square window).
        stride: step between windows (int or pair).
        padding: zeros added on each side (int or pair); ``kernel_size // 2`` with stride 1
            keeps the size for odd kernels.
        bias: whether every output position and channel gets its own bias.

    The output size is :math:`H_{out} = \lfloor (H + 2 P_h - k_h) / s_h \rfloor + 1` (same for
    :math:`W`), available as :attr:`output_size`. The parameters are

    - ``weight``: :math:`(H_{out}, W_{out}, C_{out}, C_{in}, k_h, k_w)`,
    - ``bias``: :math:`(C_{out}, H_{out}, W_{out})` or ``None``,

    initialised like :class:`torch.nn.Conv2d` (uniform in :math:`\pm 1/\sqrt{C_{in} k_h k_w}`),
    so that with all positions' weights equal the layer *is* ``Conv2d`` with those weights.

    Raises:
        ValueError: non-positive sizes, or a kernel larger than the padded input.

    References:
        Paganini, de Oliveira, Nachman, arXiv:1705.02355 (locally connected layers for
        calorimeter images).

    Example:
        >>> layer = LocallyConnected2d(2, 4, (12, 6), 3, padding=1)
        >>> layer(torch.zeros(5, 2, 12, 6)).shape
        torch.Size([5, 4, 12, 6])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: tuple[int, int],
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
    ):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=1, where="LocallyConnected2d")
        self.out_channels = check_int("out_channels", out_channels, minimum=1, where="LocallyConnected2d")
        self.input_size = _pair(input_size, "input_size")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.input_size + self.kernel_size + self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"LocallyConnected2d: expected positive input_size, kernel_size, stride and "
                f"non-negative padding, got input_size={self.input_size}, kernel_size="
                f"{self.kernel_size}, stride={self.stride}, padding={self.padding}"
            )
        out = []
        for n, k, s, p in zip(self.input_size, self.kernel_size, self.stride, self.padding):
            if n + 2 * p < k:
                raise ValueError(
                    f"LocallyConnected2d: kernel_size {self.kernel_size} larger than the padded "
                    f"input {self.input_size} + 2 * {self.padding}"
                )
            out.append((n + 2 * p - k) // s + 1)
        self.output_size: tuple[int, int] = (out[0], out[1])
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(
            torch.empty(out[0], out[1], self.out_channels, self.in_channels, kh, kw)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, out[0], out[1]))
        else:
            self.register_parameter("bias", None)
        # Row of the padded (H + 2 P_h) x (W + 2 P_w) grid read by each output position
        # (i, j) and kernel offset (p, q): (s_h i + p) * (W + 2 P_w) + s_w j + q.
        rows = torch.arange(out[0]).view(-1, 1, 1, 1) * self.stride[0] + torch.arange(kh).view(1, 1, -1, 1)
        cols = torch.arange(out[1]).view(1, -1, 1, 1) * self.stride[1] + torch.arange(kw).view(1, 1, 1, -1)
        index = (rows * (self.input_size[1] + 2 * self.padding[1]) + cols).reshape(-1)
        self.register_buffer("_patch_index", index, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draws weights and biases uniformly in :math:`\\pm 1/\\sqrt{C_{in} k_h k_w}`."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Applies the layer.

        Arguments:
            x: input images, :math:`(B, C_{in}, H, W)`.

        Returns:
            The output images, :math:`(B, C_{out}, H_{out}, W_{out})`.

        Raises:
            ValueError: ``x`` does not have shape :math:`(B, C_{in}, H, W)`.

        Without autograd (under :func:`torch.no_grad` or :func:`torch.inference_mode`) large
        stride-1 inputs on the CPU take the faster implicit path (see the module docstring);
        the result is the same to float rounding.
        """
        expected = (self.in_channels, *self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"LocallyConnected2d: expected input of shape (B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {tuple(x.shape)}"
            )
        if self._implicit_applies(x):
            return self._forward_implicit(x)
        return self._forward_explicit(x)

    def _implicit_applies(self, x: Tensor) -> bool:
        """Whether :meth:`forward` takes the implicit path (see the module docstring)."""
        if self.stride != (1, 1) or x.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        ho, wo = self.output_size
        kh, kw = self.kernel_size
        patch_bytes = ho * wo * kh * kw * self.in_channels * x.shape[0] * x.element_size()
        return patch_bytes > _IMPLICIT_MIN_PATCH_BYTES

    def _forward_explicit(self, x: Tensor) -> Tensor:
        """Gathered patches and one batched product; any stride; used under autograd."""
        ho, wo = self.output_size
        kh, kw = self.kernel_size
        ph, pw = self.padding
        batch, cin, cout = x.shape[0], self.in_channels, self.out_channels
        # Position-major, batch-last layout (Hp, Wp, C_in, B), flattened to rows of C_in * B.
        padded = F.pad(x.permute(2, 3, 1, 0), (0, 0, 0, 0, pw, pw, ph, ph)).reshape(-1, cin * batch)
        # Patches (L, kh * kw * C_in, B): one contiguous row per (output position, kernel offset).
        patches = padded.index_select(0, self._patch_index).reshape(ho * wo, kh * kw * cin, batch)
        weight = self.weight.permute(0, 1, 2, 4, 5, 3).reshape(ho * wo, cout, kh * kw * cin)
        if self.bias is None:
            y = torch.bmm(weight, patches)  # (L, C_out, B)
        else:
            y = torch.baddbmm(self.bias.permute(1, 2, 0).reshape(ho * wo, cout, 1), weight, patches)
        # A (B, C_out, H_out, W_out) view of position-major memory: a following locally
        # connected layer reads it without a transposing copy.
        return y.view(ho, wo, cout, batch).permute(3, 2, 0, 1)

    def _forward_implicit(self, x: Tensor) -> Tensor:
        """Stride 1 only: k_h accumulating batched products on overlapping views of the input."""
        ho, wo = self.output_size
        kh, kw = self.kernel_size
        ph, pw = self.padding
        batch, cin, cout = x.shape[0], self.in_channels, self.out_channels
        wp = wo + kw - 1  # padded width W + 2 P_w
        lv = ho * wp  # positions v = i * wp + j, of which j < wo are real
        cb = cin * batch
        # (Hp + 1, Wp, C_in, B) flattened: the extra zero row keeps the windows of the last
        # (dropped) positions inside the tensor.
        flat = F.pad(x.permute(2, 3, 1, 0), (0, 0, 0, 0, pw, pw, ph, ph + 1)).reshape(-1)
        # windows[r]: the kw consecutive padded cells r, ..., r + kw - 1, as (kw * C_in * B).
        windows = flat.unfold(0, kw * cb, cb)
        # (kh, Ho, Wp, C_out, kw, C_in), zero on the extra columns -> (kh, lv, C_out, kw * C_in).
        weight = F.pad(self.weight.permute(4, 0, 1, 2, 5, 3), (0, 0, 0, 0, 0, 0, 0, wp - wo))
        weight = weight.reshape(kh, lv, cout, kw * cin)
        y = None
        for p in range(kh):
            patches = windows[p * wp:p * wp + lv].view(lv, kw * cin, batch)
            if y is not None:
                y.baddbmm_(weight[p], patches)
            elif self.bias is None:
                y = torch.bmm(weight[p], patches)  # (lv, C_out, B)
            else:
                bias = F.pad(self.bias.permute(1, 2, 0), (0, 0, 0, wp - wo)).reshape(lv, cout, 1)
                y = torch.baddbmm(bias, weight[p], patches)
        return y.view(ho, wp, cout, batch)[:, :wo].permute(3, 2, 0, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}"
        )


def wrapped_locally_connected(in_channels: int, out_channels: int, grid: tuple[int, int], kernel_size: int,
                              wrap: int, *, stride: int = 1) -> LocallyConnected2d:
    """A :class:`LocallyConnected2d` for a ``grid = (ny, nx)`` whose first axis is periodic (the
    angular bins of a polar calorimeter layer): its input arrives padded circularly by ``wrap``
    rows on each side (:func:`pad_rows_circular`), and the layer adds the rest of the
    ``kernel_size // 2`` padding as zeros. ``wrap = 0`` is an ordinary size-preserving layer
    (with ``stride=1``) with zero padding on both axes.

    Raises:
        ValueError: ``wrap`` outside ``[0, kernel_size // 2]``, or the layer's own errors.
    """
    pad = kernel_size // 2
    if not 0 <= wrap <= pad:
        raise ValueError(f"wrap must be in [0, kernel_size // 2 = {pad}], got {wrap}")
    return LocallyConnected2d(in_channels, out_channels, (grid[0] + 2 * wrap, grid[1]), kernel_size, stride=stride,
                              padding=(pad - wrap, pad))


def pad_rows_circular(x: Tensor, rows: int) -> Tensor:
    """Pads the first grid axis of ``x`` (B, C, ny, nx) circularly by ``rows`` (<= ny) on each
    side: the result is (B, C, ny + 2 rows, nx), row ``ny - 1`` before row 0 and row 0 after
    row ``ny - 1``; twice differentiable (a concatenation)."""
    if rows == 0:
        return x
    return torch.cat([x[..., -rows:, :], x, x[..., :rows, :]], dim=-2)

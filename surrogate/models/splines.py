"""Rational-quadratic spline coupling, computed without masked indexing or small-axis softmax.

:class:`RQSCouplingTransform` is nflows' :class:`~nflows.transforms.PiecewiseRationalQuadraticCouplingTransform`
with linear tails (same constructor, parameters and checkpoints; the same function to float
round-off, checked in ``tests/models/test_splines.py``), whose spline is evaluated by
:func:`rational_quadratic_spline` below instead of nflows' ``unconstrained_rational_quadratic_spline``.

Why: sampling the CaloFlow cell flow at batch 1024 on one CPU thread spent a third of its time in
``torch.softmax`` over the last axis of length ``K`` (the number of bins; torch's CPU kernel is
about 5x slower there than ``exp`` and a sum) and a fifth in the boolean-mask gathers and
scatters (``nonzero``, ``index``, ``index_put``) with which nflows separates the inputs inside the
spline interval from those in the linear tails. Here the softmax is written out, the tails are
selected with ``torch.where`` on clamped inputs, and the bin is found with
``torch.searchsorted`` (measured in ``benchmarks/calo_throughput.py``).

The spline (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows",
arXiv:1906.04032, section 3.1 and appendix A; after Gregory & Delbourgo 1982): on
``[-B, B]`` with ``K`` bins of widths ``w_k``, heights ``h_k`` (each at least ``min_bin_*`` of the
interval) and knot derivatives ``d_k > min_derivative`` (``d_0 = d_K = 1`` for linear tails), an
input ``x`` in bin ``k`` with ``xi = (x - x_k) / w_k`` and slope ``s_k = h_k / w_k`` maps to::

    y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]
    dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]^2

and the inverse solves the quadratic ``a xi^2 + b xi + c = 0`` for ``xi`` (appendix A, eqs.
29-32, the numerically stable root ``2c / (-b - sqrt(b^2 - 4ac))``). Outside ``[-B, B]`` the map
is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from nflows import transforms as T
from torch import Tensor

__all__ = ["RQSCouplingTransform", "rational_quadratic_spline"]


def _bins(unnormalized: Tensor, minimum: float, bound: float) -> tuple[Tensor, Tensor]:
    """Right edges ``(..., K)`` of the ``K`` bins of ``[-bound, bound]`` (the last exactly
    ``bound``) and their sizes ``(..., K)``, each at least ``minimum`` of the interval, from
    logits ``(..., K)``: a softmax written out (see the module documentation for why)."""
    k = unnormalized.shape[-1]
    e = torch.exp(unnormalized - unnormalized.amax(-1, keepdim=True))
    total = e.sum(-1, keepdim=True)
    sizes = (minimum + (1 - minimum * k) * e / total) * (2 * bound)
    edges = torch.cumsum(sizes, -1) - bound
    edges[..., -1] = bound
    return edges, sizes


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    *,
    inverse: bool = False,
    tail_bound: float = 1.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """The monotonic rational-quadratic spline on ``[-tail_bound, tail_bound]`` with linear
    (identity) tails, elementwise (module documentation; nflows' ``unconstrained_rational_quadratic_spline``
    with ``tails="linear"``).

    Arguments:
        inputs: ``(...)``.
        unnormalized_widths, unnormalized_heights: ``(..., K)`` logits of the bin sizes.
        unnormalized_derivatives: ``(..., K - 1)`` pre-softplus derivatives at the inner knots.
        inverse: evaluate the inverse map.
        tail_bound: ``B``, half-width of the spline interval.
        min_bin_width, min_bin_height, min_derivative: lower bounds (fractions of the interval
            for the bins).

    Returns:
        ``(outputs, logabsdet)``, both ``(...)``: the map and ``log|d outputs / d inputs|``.

    Raises:
        ValueError: ``min_bin_width`` or ``min_bin_height`` times ``K`` exceeds 1.
    """
    k = unnormalized_widths.shape[-1]
    if min_bin_width * k > 1.0 or min_bin_height * k > 1.0:
        raise ValueError(f"min_bin_width and min_bin_height times the {k} bins must be <= 1, "
                         f"got {min_bin_width}, {min_bin_height}")
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    x = inputs.clamp(-tail_bound, tail_bound)
    right_x, widths = _bins(unnormalized_widths, min_bin_width, tail_bound)
    right_y, heights = _bins(unnormalized_heights, min_bin_height, tail_bound)
    edges = right_y if inverse else right_x
    bins = torch.searchsorted(edges[..., :-1].contiguous(), x.unsqueeze(-1).contiguous(), right=True)

    def at(values: Tensor, index: Tensor = bins) -> Tensor:
        return values.gather(-1, index).squeeze(-1)

    w_k, h_k = at(widths), at(heights)
    x_k, y_k = at(right_x) - w_k, at(right_y) - h_k
    # knot derivatives: min_derivative + softplus of the inner knots' parameters, 1 at both ends
    # (the identity tails); only the two around each input's bin are computed
    first, last = bins.squeeze(-1) == 0, bins.squeeze(-1) == k - 1
    inner = unnormalized_derivatives
    d_k = torch.where(first, 1.0, min_derivative + F.softplus(at(inner, (bins - 1).clamp_min(0))))
    d_k1 = torch.where(last, 1.0, min_derivative + F.softplus(at(inner, bins.clamp_max(k - 2))))
    s_k = h_k / w_k
    curvature = d_k1 + d_k - 2 * s_k
    if inverse:
        dy = x - y_k
        a = dy * curvature + h_k * (s_k - d_k)
        b = h_k * d_k - dy * curvature
        c = -s_k * dy
        xi = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
        out = xi * w_k + x_k
    else:
        xi = (x - x_k) / w_k
    xi_1mxi = xi * (1 - xi)
    denominator = s_k + curvature * xi_1mxi
    if not inverse:
        out = y_k + h_k * (s_k * xi * xi + d_k * xi_1mxi) / denominator
    slope = s_k * s_k * (d_k1 * xi * xi + 2 * s_k * xi_1mxi + d_k * (1 - xi) ** 2)
    logabsdet = torch.log(slope) - 2 * torch.log(denominator)
    if inverse:
        logabsdet = -logabsdet
    return torch.where(inside, out, inputs), torch.where(inside, logabsdet, torch.zeros_like(logabsdet))


class RQSCouplingTransform(T.PiecewiseRationalQuadraticCouplingTransform):
    """nflows' rational-quadratic spline coupling with linear tails, its spline evaluated by
    :func:`rational_quadratic_spline` (module documentation). Arguments as nflows'; ``tails``
    must be ``"linear"`` (the only tails this project's flows use).

    Raises:
        ValueError: other ``tails``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tails != "linear":
            raise ValueError(f"RQSCouplingTransform supports tails='linear' only, got {self.tails!r}")

    def _piecewise_cdf(self, inputs: Tensor, transform_params: Tensor, inverse: bool = False):
        k = self.num_bins
        widths, heights = transform_params[..., :k], transform_params[..., k:2 * k]
        derivatives = transform_params[..., 2 * k:]
        # nflows scales the bin logits by 1/sqrt(hidden features) of the conditioner (initialisation)
        scale = getattr(self.transform_net, "hidden_features", None) or getattr(self.transform_net, "hidden_channels")
        widths, heights = widths / math.sqrt(scale), heights / math.sqrt(scale)
        return rational_quadratic_spline(inputs, widths, heights, derivatives, inverse=inverse,
                                         tail_bound=self.tail_bound, min_bin_width=self.min_bin_width,
                                         min_bin_height=self.min_bin_height, min_derivative=self.min_derivative)

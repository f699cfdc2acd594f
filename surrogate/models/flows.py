"""Conditional normalizing flows built from ``nflows`` 0.14 transforms that work on torch 2.

nflows 0.14 (the last release) predates torch 2: ``NaiveLinear.inverse`` calls ``torch.solve``
(removed, it raises), ``LULinear`` inverts with the deprecated ``torch.triangular_solve`` and the
QR/orthogonal transforms use the deprecated ``torch.qr``. The builders here only use transforms
whose forward *and* inverse pass run warning-free on torch 2.x (listed in
:data:`SUPPORTED_TRANSFORMS`, each tested for invertibility and for its log-determinant against
``torch.autograd.functional.jacobian`` in float64, see ``tests/models/test_flows.py``):

- :class:`nflows.transforms.MaskedAffineAutoregressiveTransform` (MAF),
- :class:`nflows.transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform`,
- :class:`surrogate.models.splines.RQSCouplingTransform` (NSF): nflows'
  ``PiecewiseRationalQuadraticCouplingTransform`` with its spline evaluated about twice as fast
  (same parameters and checkpoints),
- :class:`LULinear` below: nflows' LU-parametrised linear layer with its inverse rewritten on
  ``torch.linalg.solve_triangular``,
- fixed permutations (:class:`nflows.transforms.Permutation`, reverse or seeded random) and
  :class:`nflows.transforms.PointwiseAffineTransform` (z-scoring).

A flow models a density over ``features`` variables conditioned on a context vector; the builders
return :class:`nflows.flows.Flow`, whose ``log_prob(inputs, context)`` takes ``(B, features)`` and
``(B, *context_shape)`` and whose ``sample(n, context)`` returns ``(B, n, features)``.

References:
    Papamakarios, Pavlakou & Murray (2017), "Masked Autoregressive Flow for Density Estimation",
    arXiv:1705.07057.
    Durkan, Bekasov, Murray & Papamakarios (2019), "Neural Spline Flows", arXiv:1906.04032.
    Kingma & Dhariwal (2018), "Glow" (LU-decomposed invertible linear layers), arXiv:1807.03039.

Example:
    >>> import torch
    >>> flow = build_flow("nsf", features=2, context_features=3, hidden_features=16,
    ...                   num_transforms=2, seed=0)
    >>> flow.log_prob(torch.randn(5, 2), context=torch.randn(5, 3)).shape
    torch.Size([5])
    >>> flow.sample(7, context=torch.randn(4, 3)).shape
    torch.Size([4, 7, 2])
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from nflows import transforms as T
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.utils import create_alternating_binary_mask
from torch import Tensor, nn
from torch.nn import functional as F

from surrogate.checks import check_choice, check_int
from surrogate.models.splines import RQSCouplingTransform

__all__ = [
    "FLOW_KINDS",
    "LINEAR_KINDS",
    "LULinear",
    "SUPPORTED_TRANSFORMS",
    "build_flow",
    "build_maf",
    "build_nsf",
]

FLOW_KINDS = ("maf", "nsf", "maf_rqs")
"""Flow families of :func:`build_flow`: affine autoregressive (MAF), rational-quadratic spline
coupling (NSF) and rational-quadratic spline autoregressive (``maf_rqs``)."""

LINEAR_KINDS = ("lu", "random", "reverse", "none")
"""Mixing layer between two flow blocks: trainable :class:`LULinear`, a fixed seeded random
permutation, the reverse permutation, or nothing."""

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
}


class LULinear(T.LULinear):
    """nflows' LU-decomposed linear transform, inverted with ``torch.linalg.solve_triangular``.

    ``y = W x + b`` with ``W = L U``, ``L`` unit lower triangular and ``U`` upper triangular with a
    positive diagonal (softplus + ``eps``), so ``log|det W| = sum(log diag U)``. The forward pass
    and parameters are nflows' own (checkpoints are interchangeable); only ``inverse_no_cache``
    and ``weight_inverse`` are rewritten because nflows 0.14 uses ``torch.triangular_solve``,
    deprecated in torch 2 (a ``UserWarning`` on every call, to be removed).

    Arguments:
        features: dimension ``D`` of the inputs ``(B, D)``.
        identity_init: start at the identity map (otherwise small random entries).
        eps: lower bound of the diagonal of ``U``.

    References:
        Kingma & Dhariwal (2018), arXiv:1807.03039, section 3.2.
    """

    def __init__(self, features: int, *, identity_init: bool = True, eps: float = 1e-3):
        super().__init__(features, using_cache=False, identity_init=identity_init, eps=eps)

    def inverse_no_cache(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Solves ``L U x = y - b`` for ``x``; returns ``x`` (B, D) and ``-log|det W|`` (B,)."""
        lower, upper = self._create_lower_upper()
        rhs = (inputs - self.bias).transpose(0, 1)  # (D, B)
        tmp = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
        outputs = torch.linalg.solve_triangular(upper, tmp, upper=True).transpose(0, 1)
        logabsdet = -self.logabsdet() * inputs.new_ones(inputs.shape[0])
        return outputs, logabsdet

    def weight_inverse(self) -> Tensor:
        """``W^{-1}`` (D, D), via two triangular solves."""
        lower, upper = self._create_lower_upper()
        identity = torch.eye(self.features, dtype=lower.dtype, device=lower.device)
        lower_inverse = torch.linalg.solve_triangular(lower, identity, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, lower_inverse, upper=True)


SUPPORTED_TRANSFORMS = (
    T.MaskedAffineAutoregressiveTransform,
    T.MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    RQSCouplingTransform,
    LULinear,
    T.Permutation,
    T.PointwiseAffineTransform,
)
"""The transform classes the builders may use; each has an invertibility and log-determinant
test on torch 2 in ``tests/models/test_flows.py``. Not in this list on purpose: nflows'
``NaiveLinear`` (inverse calls the removed ``torch.solve``), its ``LULinear`` (deprecated
``torch.triangular_solve``), ``QRLinear``/``HouseholderSequence``-based layers (deprecated
``torch.qr`` / ``torch.triangular_solve``)."""


def _mixing_layer(kind: str, features: int, generator: torch.Generator) -> T.Transform | None:
    check_choice("linear", kind, LINEAR_KINDS)
    if kind == "lu":
        return LULinear(features, identity_init=True)
    if kind == "random":
        return T.Permutation(torch.randperm(features, generator=generator))
    if kind == "reverse":
        return T.Permutation(torch.arange(features - 1, -1, -1))
    return None


def _standardizing(loc: Tensor | None, scale: Tensor | None, features: int) -> T.Transform | None:
    """Forward map ``(inputs - loc) / scale`` as a PointwiseAffineTransform (Jacobian included)."""
    if loc is None and scale is None:
        return None
    loc = torch.zeros(features) if loc is None else torch.as_tensor(loc, dtype=torch.float32)
    scale = torch.ones(features) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
    if loc.shape != (features,) or scale.shape != (features,):
        raise ValueError(
            f"loc and scale must have shape ({features},), got {tuple(loc.shape)} and {tuple(scale.shape)}"
        )
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all() & torch.isfinite(loc).all()):
        raise ValueError(f"scale must be finite and > 0 and loc finite, got loc={loc}, scale={scale}")
    return T.PointwiseAffineTransform(shift=-loc / scale, scale=1.0 / scale)


def _check_common(features: int, context_features: int | None, hidden_features: int, num_transforms: int) -> None:
    check_int("features", features, minimum=1)
    check_int("context_features", context_features, minimum=1, optional=True)
    check_int("hidden_features", hidden_features, minimum=1)
    check_int("num_transforms", num_transforms, minimum=1)


def build_flow(
    kind: str,
    features: int,
    context_features: int | None,
    *,
    hidden_features: int = 50,
    num_transforms: int = 5,
    num_blocks: int = 2,
    num_bins: int = 10,
    tail_bound: float = 3.0,
    linear: str | None = None,
    activation: str = "relu",
    dropout_probability: float = 0.0,
    embedding_net: nn.Module | None = None,
    loc: Tensor | None = None,
    scale: Tensor | None = None,
    seed: int = 0,
) -> Flow:
    """Builds a conditional flow ``q(inputs | context)`` with a standard normal base.

    Arguments:
        kind: ``"maf"`` (masked affine autoregressive), ``"nsf"`` (rational-quadratic spline
            coupling) or ``"maf_rqs"`` (rational-quadratic spline autoregressive).
        features: dimension ``D`` of the modelled variable, inputs of shape ``(B, D)``.
        context_features: dimension of the (embedded) context vector, i.e. of the output of
            ``embedding_net``; ``None`` for an unconditional flow.
        hidden_features: width of the conditioner networks (MADE or residual net).
        num_transforms: number of flow blocks.
        num_blocks: residual blocks / hidden layers per conditioner.
        num_bins: spline bins (``nsf``, ``maf_rqs``).
        tail_bound: splines act on ``[-tail_bound, tail_bound]`` and are the identity (linear
            tails) outside; in z-scored units.
        linear: mixing layer after each block, one of :data:`LINEAR_KINDS`; default ``"lu"`` for
            ``nsf`` and ``"random"`` for the autoregressive kinds.
        activation: ``"relu"``, ``"tanh"``, ``"elu"``, ``"gelu"`` or ``"silu"``.
        dropout_probability: dropout in the conditioners.
        embedding_net: module mapping the raw context ``(B, *context_shape)`` to
            ``(B, context_features)``; identity if ``None``.
        loc, scale: optional ``(D,)`` tensors; when given, the first transform z-scores the
            inputs, ``(inputs - loc) / scale``, with its log-determinant ``-sum(log scale)``.
        seed: seeds the random permutations (parameter initialisation uses torch's global
            generator; seed it, or build inside ``torch.random.fork_rng``).

    Returns:
        An :class:`nflows.flows.Flow`.

    Raises:
        ValueError: unknown ``kind``/``linear``/``activation``, ``nsf`` with ``features < 2``
            (a coupling layer needs two groups of variables), non-positive sizes, bad ``loc``/``scale``.
    """
    check_choice("kind", kind, FLOW_KINDS)
    check_choice("activation", activation, tuple(_ACTIVATIONS))
    _check_common(features, context_features, hidden_features, num_transforms)
    if kind == "nsf" and features < 2:
        raise ValueError("kind='nsf' (coupling) needs features >= 2; use 'maf_rqs' or 'maf' for 1-D")
    act = _ACTIVATIONS[activation]
    if linear is None:
        linear = "lu" if kind == "nsf" else "random"
    if features == 1:
        linear = "none"
    generator = torch.Generator().manual_seed(seed)

    blocks: list[T.Transform] = []
    first = _standardizing(loc, scale, features)
    if first is not None:
        blocks.append(first)
    for i in range(num_transforms):
        blocks.append(_flow_block(
            kind, i, features, context_features, hidden_features=hidden_features, num_blocks=num_blocks,
            num_bins=num_bins, tail_bound=tail_bound, activation=act, dropout_probability=dropout_probability,
        ))
        mixing = _mixing_layer(linear, features, generator)
        if mixing is not None:
            blocks.append(mixing)
    return Flow(T.CompositeTransform(blocks), StandardNormal([features]), embedding_net=embedding_net)


def _flow_block(
    kind: str,
    index: int,
    features: int,
    context_features: int | None,
    *,
    hidden_features: int,
    num_blocks: int,
    num_bins: int,
    tail_bound: float,
    activation: Callable[[Tensor], Tensor],
    dropout_probability: float,
) -> T.Transform:
    """Block ``index`` of a flow of ``kind`` (arguments as :func:`build_flow`; ``activation`` is the function)."""
    made = dict(features=features, hidden_features=hidden_features, context_features=context_features,
                num_blocks=num_blocks, use_residual_blocks=True, random_mask=False, activation=activation,
                dropout_probability=dropout_probability, use_batch_norm=False)  # the autoregressive network
    if kind == "maf":
        block: T.Transform = T.MaskedAffineAutoregressiveTransform(**made)
    elif kind == "maf_rqs":
        block = T.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            num_bins=num_bins, tails="linear", tail_bound=tail_bound, **made)
    else:
        block = RQSCouplingTransform(
            mask=create_alternating_binary_mask(features, even=(index % 2 == 0)),
            transform_net_create_fn=partial(
                _residual_net,
                hidden_features=hidden_features,
                context_features=context_features,
                num_blocks=num_blocks,
                activation=activation,
                dropout_probability=dropout_probability,
            ),
            num_bins=num_bins,
            tails="linear",
            tail_bound=tail_bound,
        )
    return block


def _residual_net(in_features: int, out_features: int, **kwargs) -> ResidualNet:
    return ResidualNet(in_features, out_features, use_batch_norm=False, **kwargs)


def build_maf(features: int, context_features: int | None, **kwargs) -> Flow:
    """Masked autoregressive flow: ``build_flow("maf", ...)`` (see :func:`build_flow`)."""
    return build_flow("maf", features, context_features, **kwargs)


def build_nsf(features: int, context_features: int | None, *, autoregressive: bool = False, **kwargs) -> Flow:
    """Neural spline flow: rational-quadratic coupling (default, with :class:`LULinear` mixing)
    or, with ``autoregressive=True``, masked autoregressive splines (see :func:`build_flow`)."""
    return build_flow("maf_rqs" if autoregressive else "nsf", features, context_features, **kwargs)

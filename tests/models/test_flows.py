"""Flows on nflows 0.14 under torch 2: every transform the builders use is invertible and its
log-determinant matches autograd (float64); the builders give working, trainable flows."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from nflows import transforms as T
from nflows.nn.nets import ResidualNet
from nflows.utils import create_alternating_binary_mask
from torch.autograd.functional import jacobian

from surrogate.models.flows import FLOW_KINDS, SUPPORTED_TRANSFORMS, LULinear, build_flow
from surrogate.models.splines import RQSCouplingTransform

D, C = 4, 3  # features, context features


def _perturb(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Moves parameters away from the (near-)identity initialisation so the test is not trivial."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _transforms() -> dict[str, tuple[T.Transform, bool]]:
    """name -> (transform, conditional); one instance of every class in SUPPORTED_TRANSFORMS."""
    net = partial(ResidualNet, hidden_features=16, context_features=C, num_blocks=1)
    return {
        "maf": (T.MaskedAffineAutoregressiveTransform(D, 16, context_features=C, num_blocks=1), True),
        "maf_rqs": (
            T.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                D, 16, context_features=C, num_bins=5, tails="linear", tail_bound=3.0, num_blocks=1
            ),
            True,
        ),
        "rq_coupling": (
            RQSCouplingTransform(
                create_alternating_binary_mask(D, even=True), net, num_bins=5, tails="linear", tail_bound=3.0
            ),
            True,
        ),
        "lu": (LULinear(D, identity_init=False), False),
        "permutation": (T.Permutation(torch.tensor([2, 0, 3, 1])), False),
        "affine": (T.PointwiseAffineTransform(shift=torch.randn(D), scale=torch.rand(D) + 0.5), False),
    }


def test_every_supported_class_is_tested():
    tested = {type(t) for t, _ in _transforms().values()}
    for cls in SUPPORTED_TRANSFORMS:
        assert any(issubclass(t, cls) for t in tested), cls


@pytest.mark.parametrize("name", list(_transforms()))
def test_transform_inverse_and_logdet_against_autograd(name, seed):
    transform, conditional = _transforms()[name]
    _perturb(transform)
    transform = transform.double().eval()
    x = 2.0 * torch.randn(8, D, dtype=torch.float64)  # some points beyond the spline tail bound (3)
    x[0] = torch.tensor([3.5, -4.0, 0.1, 5.0], dtype=torch.float64)
    context = torch.randn(8, C, dtype=torch.float64) if conditional else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # deprecated torch calls would warn
        y, logdet = transform(x, context=context)
        x_back, logdet_inv = transform.inverse(y, context=context)
    assert torch.allclose(x_back, x, atol=1e-8), (x_back - x).abs().max()
    assert torch.allclose(logdet_inv, -logdet, atol=1e-8)
    for i in range(x.shape[0]):
        ctx = None if context is None else context[i : i + 1]
        jac = jacobian(lambda v: transform(v[None], context=ctx)[0][0], x[i])
        expected = torch.linalg.slogdet(jac).logabsdet
        assert torch.allclose(logdet[i], expected, atol=1e-8), (name, logdet[i], expected)


def test_nflows_linear_layers_are_broken_on_torch2():
    """Why LULinear is rewritten and NaiveLinear is not used: nflows 0.14's inverses call
    deprecated (triangular_solve) or removed (solve) torch functions."""
    y = torch.randn(3, D)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises((UserWarning, RuntimeError, AttributeError)):
            T.LULinear(D).inverse(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its initialisation calls the deprecated torch.qr
        naive = T.NaiveLinear(D)
    with pytest.raises((RuntimeError, AttributeError), match="torch.solve|solve"):
        naive.inverse(y)


def test_lu_linear_matches_nflows_forward_and_weight_inverse(seed):
    ours = LULinear(D, identity_init=False)
    theirs = T.LULinear(D, identity_init=False)
    theirs.load_state_dict(ours.state_dict())  # same parameters, same checkpoint layout
    x = torch.randn(5, D)
    assert torch.allclose(ours(x)[0], theirs(x)[0])
    assert torch.allclose(ours.weight_inverse() @ ours.weight(), torch.eye(D), atol=1e-5)


def _dims(kind):
    return [2, 3] if kind == "nsf" else [1, 3]


@pytest.mark.parametrize("kind", FLOW_KINDS)
@pytest.mark.parametrize("linear", ["lu", "random", "reverse"])
def test_built_flow(kind, linear, seed, tmp_path):
    for dim in _dims(kind):
        flow = build_flow(kind, dim, C, hidden_features=16, num_transforms=2, num_bins=4, linear=linear,
                          loc=torch.randn(dim), scale=torch.rand(dim) + 0.5, seed=3)
        theta, context = torch.randn(6, dim), torch.randn(6, C)
        logp = flow.log_prob(theta, context=context)
        assert logp.shape == (6,) and torch.isfinite(logp).all()
        assert flow.sample(5, context=context[:2]).shape == (2, 5, dim)
        # every parameter gets a gradient
        (-logp.mean()).backward()
        for name, p in flow.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # save / load round trip
        torch.save(flow.state_dict(), tmp_path / "flow.pt")
        clone = build_flow(kind, dim, C, hidden_features=16, num_transforms=2, num_bins=4, linear=linear,
                           loc=torch.zeros(dim), scale=torch.ones(dim), seed=3)
        clone.load_state_dict(torch.load(tmp_path / "flow.pt", weights_only=True))
        assert torch.allclose(clone.log_prob(theta, context=context), logp)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_whole_flow_density_matches_autograd(kind, seed):
    """The composite (z-scoring + blocks + mixing layers) density equals base density times
    |det J| computed by autograd, and sampling inverts the transform."""
    dim = 3
    flow = build_flow(kind, dim, C, hidden_features=16, num_transforms=3, num_bins=4,
                      loc=torch.randn(dim), scale=torch.rand(dim) + 0.5)
    _perturb(flow, 0.1)
    flow = flow.double().eval()
    x, ctx = torch.randn(4, dim, dtype=torch.float64), torch.randn(4, C, dtype=torch.float64)
    base = torch.distributions.Normal(0.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logp = flow.log_prob(x, context=ctx)
        noise = flow.transform_to_noise(x, context=ctx)
        back, _ = flow._transform.inverse(noise, context=flow._embedding_net(ctx))
    assert torch.allclose(back, x, atol=1e-7)
    for i in range(4):
        jac = jacobian(lambda v: flow.transform_to_noise(v[None], context=ctx[i : i + 1])[0], x[i])
        expected = base.log_prob(noise[i]).sum() + torch.linalg.slogdet(jac).logabsdet
        assert torch.allclose(logp[i], expected, atol=1e-7)


def test_build_flow_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        build_flow("glow", 2, 2)
    with pytest.raises(ValueError, match="features >= 2"):
        build_flow("nsf", 1, 2)
    with pytest.raises(ValueError, match="linear must be one of"):
        build_flow("maf", 2, 2, linear="householder")
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        build_flow("maf", 2, 2, loc=torch.zeros(2), scale=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        build_flow("maf", 2, 2, loc=torch.zeros(3), scale=torch.ones(3))


def test_random_permutation_is_seeded():
    a = build_flow("maf", 6, None, num_transforms=2, seed=1)
    b = build_flow("maf", 6, None, num_transforms=2, seed=1)
    perm = lambda f: [m._permutation.tolist() for m in f._transform._transforms if isinstance(m, T.Permutation)]
    assert perm(a) == perm(b)

"""Tests of :mod:`surrogate.models.calo_flow` and :func:`surrogate.losses.calo_flow_loss`.

The likelihood is checked two independent ways on toy geometries: exp(log_prob) integrated on a
grid over the cell space (two cells) and log_prob against log N(z) + log|det dz/dy| with the
Jacobian from autograd (seven cells, float64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from surrogate.geometry import CALOGAN, CaloGeometry, CaloLayer
from surrogate.losses import calo_flow_loss
from surrogate.models.calo_flow import CaloFlow

SMALL = dict(hidden_features=8, num_transforms=2, energy_hidden_features=8, energy_num_transforms=2)
TOY_BOUNDS = dict(tail_bound=4.0, energy_tail_bound=4.0)  # the splines act on the toys' bulk
E_TOY = 10.0  # GeV: the energy feature log10(E / 10 GeV) is 0


def _geometry(*shapes: tuple[int, int]) -> CaloGeometry:
    layers = tuple(CaloLayer(f"l{i}", shape, (1.0, 1.0), (float(i), float(i + 1))) for i, shape in enumerate(shapes))
    return CaloGeometry("toy", layers)


def _perturbed(model: CaloFlow, scale: float = 0.15, seed: int = 0) -> CaloFlow:
    """Adds seeded noise to every parameter, so that no flow is close to the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model.eval()


def _split(cells: torch.Tensor, geometry: CaloGeometry) -> dict[str, torch.Tensor]:
    """``(B, N)`` to ``{layer: (B, *shape)}``."""
    out, start = {}, 0
    for layer in geometry.layers:
        out[layer.name] = cells[:, start:start + layer.n_cells].reshape(-1, *layer.shape)
        start += layer.n_cells
    return out


def _fake_showers(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """CaloGAN-shaped showers: exponential deposits (MeV) in about a third of the cells, else 0."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in CALOGAN.layer_shapes.items():
        deposits = 50.0 * torch.empty((batch, *shape)).exponential_(generator=generator)
        out[name] = torch.where(torch.rand((batch, *shape), generator=generator) < 0.35, deposits, 0.0)
    out["energy"] = 1.0 + 99.0 * torch.rand((batch, 1), generator=generator)
    return out


def _grid_integral(model: CaloFlow, geometry: CaloGeometry, n: int = 500) -> float:
    """Integral of exp(log_prob) over the cells (0, inf)^2, on a grid in s = log(y1 + y2) and
    r = log(y1 / y2) (y1 = e^s sigmoid(r), y2 = e^s sigmoid(-r), |dy/d(s, r)| = e^{2s}
    sigmoid(r) sigmoid(-r)) over the box where a coarse grid finds the mass (density > 1e-12 of
    its maximum)."""

    def density(s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        grid_s, grid_r = (g.flatten() for g in torch.meshgrid(s, r, indexing="ij"))
        cells = torch.stack([torch.sigmoid(grid_r), torch.sigmoid(-grid_r)], dim=-1) * grid_s.exp()[:, None]
        log_jacobian = 2 * grid_s + torch.nn.functional.logsigmoid(grid_r) + torch.nn.functional.logsigmoid(-grid_r)
        energy = torch.full((cells.shape[0], 1), E_TOY, dtype=torch.float64)
        with torch.no_grad():
            log_p = model.log_prob(_split(cells, geometry), energy)
        return (log_p + log_jacobian).exp().reshape(len(s), len(r))

    coarse = torch.linspace(-30.0, 30.0, 241, dtype=torch.float64)
    dens = density(coarse, coarse)
    rows, cols = torch.nonzero(dens > 1e-12 * dens.max(), as_tuple=True)
    step = float(coarse[1] - coarse[0])
    box = [(float(coarse[idx.min()]) - 2 * step, float(coarse[idx.max()]) + 2 * step) for idx in (rows, cols)]
    s, r = (torch.linspace(low, high, n, dtype=torch.float64) for low, high in box)
    fine = density(s, r)
    assert float(fine[0].max() + fine[-1].max() + fine[:, 0].max() + fine[:, -1].max()) < 1e-9 * float(fine.max())
    return float(torch.trapezoid(torch.trapezoid(fine, r, dim=1), s))


# ----------------------------------------------------------------------------------- likelihood
@pytest.mark.parametrize("shapes", [((1, 2),), ((1, 1), (1, 1))], ids=["one_layer_2_cells", "two_layers_1_cell"])
def test_log_prob_integrates_to_one(shapes):
    """exp(log_prob) over the cell space (MeV^2) is 1 within 1e-3 (trapezoid rule, 400^2 points)."""
    geometry = _geometry(*shapes)
    model = _perturbed(CaloFlow(geometry, **SMALL, **TOY_BOUNDS).double())
    assert _grid_integral(model, geometry, n=400) == pytest.approx(1.0, abs=1e-3)


def test_squeezed_logit_loses_exactly_the_mass_outside_its_range():
    """With alpha > 0 the density integrates to 1 minus the base mass whose logits leave
    (logit alpha, logit(1 - alpha)) (estimated from 200k base draws; tolerance 3e-3)."""
    geometry, alpha = _geometry((1, 1), (1, 1)), 0.2
    model = _perturbed(CaloFlow(geometry, **SMALL, **TOY_BOUNDS, alpha=alpha).double())
    z = torch.randn((200_000, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    energy = torch.full((z.shape[0], 1), E_TOY, dtype=torch.float64)
    with torch.no_grad():
        features, _ = model.energy_flow.inverse(z, context=torch.log10(energy / 10.0))
    bound = math.log((1 - alpha) / alpha)
    lost = float((features[:, 1].abs() > bound).double().mean())
    assert lost > 0.05  # the check below is not vacuous
    assert _grid_integral(model, geometry, n=400) == pytest.approx(1.0 - lost, abs=3e-3)


@pytest.mark.parametrize("alpha,mixing", [(0.0, "random"), (1e-3, "lu")])
def test_log_prob_matches_autograd_change_of_variables(alpha, mixing):
    """log_prob = log N(z) + log|det dz/dy| with the Jacobian of the whole map y -> z from
    autograd (float64, 7 cells in layers of 1 x 3 and 2 x 2), and from_latent inverts to_latent."""
    geometry = _geometry((1, 3), (2, 2))
    model = _perturbed(CaloFlow(geometry, **SMALL, **TOY_BOUNDS, alpha=alpha, mixing=mixing).double())
    generator = torch.Generator().manual_seed(3)
    cells = torch.exp(3.0 * torch.randn((4, 7), generator=generator, dtype=torch.float64))  # 1e-6..1e6 MeV
    energy = torch.tensor([[E_TOY], [0.01], [1.0], [100.0]], dtype=torch.float64)
    with torch.no_grad():
        log_p = model.log_prob(_split(cells, geometry), energy)
        z, log_det = model.to_latent(_split(cells, geometry), energy)
    for i in range(cells.shape[0]):
        jacobian = torch.autograd.functional.jacobian(
            lambda y: model.to_latent(_split(y[None], geometry), energy[i:i + 1])[0][0], cells[i])
        expected = float(torch.linalg.slogdet(jacobian)[1])
        assert float(log_det[i]) == pytest.approx(expected, abs=1e-8, rel=1e-10)
        base = -0.5 * float(z[i].pow(2).sum()) - 3.5 * math.log(2 * math.pi)
        assert float(log_p[i]) == pytest.approx(base + expected, abs=1e-8, rel=1e-10)
    back = model.from_latent(z, energy)
    for name, layer in _split(cells, geometry).items():
        torch.testing.assert_close(back[name], layer, rtol=1e-9, atol=0.0)


# ------------------------------------------------------------------------------------- sampling
def test_sample_shapes_threshold_and_reproducibility():
    model = CaloFlow(**SMALL).eval()
    energy = torch.tensor([[1.0], [10.0], [50.0], [100.0]])
    state = torch.get_rng_state()
    first = model.sample(energy, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not used
    again = model.sample(energy, generator=torch.Generator().manual_seed(7))
    other = model.sample(energy, generator=torch.Generator().manual_seed(8))
    assert set(first) == set(CALOGAN.layer_names)
    for name, shape in CALOGAN.layer_shapes.items():
        cells = first[name]
        assert cells.shape == (4, *shape)
        assert bool(torch.isfinite(cells).all()) and bool((cells >= 0).all())
        assert bool(((cells == 0) | (cells >= model.threshold_mev)).all())
        assert torch.equal(cells, again[name])
        assert not torch.equal(cells, other[name])
    assert any(bool((first[name] == 0).any()) for name in first)  # the threshold did act


def test_dequantize_support():
    model = CaloFlow(**SMALL, threshold_mev=0.5, noise_mev=0.1)
    showers = _fake_showers(3)
    showers["layer_1"][:, 0, 0] = 0.3  # below the threshold: becomes empty
    out = model.dequantize(showers, generator=torch.Generator().manual_seed(0))
    assert set(out) == set(CALOGAN.layer_names)
    for name in CALOGAN.layer_names:
        x, y = showers[name], out[name]
        empty = x < 0.5
        assert bool((y > 0).all())
        assert bool((y[empty] <= 0.1).all())
        assert bool(((y[~empty] > x[~empty]) & (y[~empty] <= x[~empty] + 0.1 + 1e-6)).all())


def test_default_size():
    """The default model (CaloGAN geometry) has 3.28M parameters, flow I 44k of them."""
    model = CaloFlow()
    assert model.layer_names == CALOGAN.layer_names
    assert sum(p.numel() for p in model.parameters()) == 3_282_100
    assert sum(p.numel() for p in model.energy_flow.parameters()) == 43_694


# ---------------------------------------------------------------------------------- training
def test_loss_gives_every_parameter_a_gradient():
    model = CaloFlow(**SMALL, mixing="lu")
    batch = _fake_showers(16)
    loss = calo_flow_loss(model, batch, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and bool(torch.isfinite(loss))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0, name


def test_loss_is_mean_nll_of_dequantised_showers():
    model = CaloFlow(**SMALL)
    batch = _fake_showers(8)
    loss = calo_flow_loss(model, batch, generator=torch.Generator().manual_seed(5))
    showers = model.dequantize(batch, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss, -model(showers, batch["energy"]).mean())


def test_state_dict_round_trip():
    model = _perturbed(CaloFlow(**SMALL, seed=0), scale=0.05)
    copy = CaloFlow(**SMALL, seed=1).eval()  # other weights and permutations
    batch = _fake_showers(8)
    showers = model.dequantize(batch, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.equal(model.log_prob(showers, batch["energy"]), copy.log_prob(showers, batch["energy"]))
        copy.load_state_dict(model.state_dict())
        assert torch.equal(model.log_prob(showers, batch["energy"]), copy.log_prob(showers, batch["energy"]))
    energy = batch["energy"]
    first = model.sample(energy, generator=torch.Generator().manual_seed(2))
    second = copy.sample(energy, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_seed_fixes_the_initial_weights():
    a, b = CaloFlow(**SMALL, seed=3), CaloFlow(**SMALL, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "energy,match",
    [
        (torch.ones(4), r"shape \(B, 1\).*got \(4,\)"),
        (torch.ones(4, 2), r"shape \(B, 1\).*got \(4, 2\)"),
        (torch.tensor([[1.0], [0.0], [2.0], [3.0]]), "finite and > 0 GeV"),
        (torch.tensor([[1.0], [-5.0], [2.0], [3.0]]), "finite and > 0 GeV"),
        (torch.tensor([[1.0], [float("nan")], [2.0], [3.0]]), "finite and > 0 GeV"),
        (torch.tensor([[1.0], [float("inf")], [2.0], [3.0]]), "finite and > 0 GeV"),
    ],
)
def test_bad_energy(energy, match):
    model = CaloFlow(**SMALL)
    showers = model.dequantize(_fake_showers(4))
    with pytest.raises(ValueError, match=match):
        model.log_prob(showers, energy)
    with pytest.raises(ValueError, match=match):
        model.sample(energy)


def test_bad_showers():
    model = CaloFlow(**SMALL)
    batch = _fake_showers(4)
    energy = batch["energy"]
    good = model.dequantize(batch)
    with pytest.raises(ValueError, match="lack layer 'layer_2'"):
        model.log_prob({k: v for k, v in good.items() if k != "layer_2"}, energy)
    with pytest.raises(ValueError, match=r"showers\['layer_1'\] must have shape \(4, 12, 12\).*got \(4, 144\)"):
        model.log_prob({**good, "layer_1": good["layer_1"].reshape(4, 144)}, energy)
    with pytest.raises(ValueError, match=r"must have shape \(2, 3, 96\)"):
        model.log_prob(good, energy[:2])
    with pytest.raises(ValueError, match="> 0 MeV.*dequantize"):
        model.log_prob({k: batch[k] for k in CALOGAN.layer_names}, energy)  # raw showers have zeros
    nan = {**good, "layer_0": good["layer_0"].clone()}
    nan["layer_0"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        model.log_prob(nan, energy)
    with pytest.raises(ValueError, match=">= 0 MeV"):
        model.dequantize({**batch, "layer_2": -batch["layer_2"] - 1.0})
    with pytest.raises(ValueError, match=r"z must have shape \(4, 504\)"):
        model.from_latent(torch.zeros(4, 503), energy)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden_features=0), "hidden_features must be an integer >= 1"),
        (dict(num_bins=2.5), "num_bins must be an integer"),
        (dict(tail_bound=0.0), "tail_bound must be a finite number > 0"),
        (dict(alpha=0.5), r"alpha must be a finite number in \[0, 0.5\)"),
        (dict(alpha=-1e-6), "alpha"),
        (dict(noise_mev=0.02, threshold_mev=0.01), "noise_mev"),
        (dict(noise_mev=0.0), "noise_mev"),
        (dict(threshold_mev=-1.0), "threshold_mev"),
        (dict(mixing="affine"), "mixing must be one of"),
        (dict(geometry={"layer_0": (3, 96)}), "geometry must be a CaloGeometry"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CaloFlow(**kwargs)


# ----------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_fit_recovers_a_known_density():
    """Fit to cells with independent log-normal energies (one layer of 2 cells): the held-out
    NLL comes within 0.05 nats of the true entropy (measured: 0.004), and the samples' log-cell
    means and standard deviations within 0.05 of the truth (measured: 0.03; 1000 Adam steps with
    a cosine schedule, seeded; about 40 s on one core)."""
    geometry = _geometry((1, 2))
    model = CaloFlow(geometry, hidden_features=32, num_transforms=4, energy_hidden_features=32,
                     energy_num_transforms=4, tail_bound=8.0, energy_tail_bound=8.0, seed=0)
    mean, std = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.0])  # of log(y / MeV)

    def draw(n, generator):
        w = mean + std * torch.randn((n, 2), generator=generator)
        return w, {"l0": w.exp().reshape(n, 1, 2)}, torch.full((n, 1), 0.01)

    def true_log_prob(w):  # log-normal density in y: normal in w minus sum(w)
        return (torch.distributions.Normal(mean, std).log_prob(w) - w).sum(-1)

    generator = torch.Generator().manual_seed(0)
    steps = 1000
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(steps):
        _, showers, energy = draw(256, generator)
        loss = -model.log_prob(showers, energy).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    w, showers, energy = draw(20_000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        gap = float(-model.log_prob(showers, energy).mean() + true_log_prob(w).mean())
        samples = model.from_latent(torch.randn((20_000, 2), generator=torch.Generator().manual_seed(2)), energy)
    assert -0.02 < gap < 0.05, gap  # a KL divergence: >= 0 up to Monte-Carlo error
    logs = samples["l0"].reshape(-1, 2).log()
    np.testing.assert_allclose(logs.mean(0).numpy(), mean.numpy(), atol=0.05)
    np.testing.assert_allclose(logs.std(0).numpy(), std.numpy(), atol=0.05)

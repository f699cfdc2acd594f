"""CaloGAN generator and critic: shapes, non-negativity, gradients, save/load, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from surrogate.geometry import CALOGAN_LAYER_SHAPES, CALOGAN_LAYERS
from surrogate.losses import gradient_penalty, wgan_critic_loss, wgan_generator_loss
from surrogate.models.calo_gan import (
    CaloGANCritic,
    CaloGANGenerator,
    cells_from_log,
    cells_to_log,
    log_energy_feature,
)
from surrogate.nn.locally_connected import LocallyConnected2d

# Small and default configurations of both networks.
CONFIGS = [
    ({}, {}),
    (
        {"latent_dim": 8, "channels": 2, "kernel_size": 1, "attention_hidden": 0},
        {"channels": (2, 3), "kernel_size": 1, "hidden": 8, "feature_scale": 0.0},
    ),
    ({"latent_dim": 4, "channels": 3, "kernel_size": 5}, {"channels": (3, 2), "kernel_size": 5, "hidden": 16}),
]


def energies(batch: int) -> torch.Tensor:
    return torch.logspace(0, 2, batch).unsqueeze(1)  # 1 to 100 GeV


def fake_showers(batch: int) -> dict[str, torch.Tensor]:
    """Sparse non-negative showers in MeV."""
    out = {}
    for key in CALOGAN_LAYERS:
        x = torch.rand(batch, *CALOGAN_LAYER_SHAPES[key]) * 100.0
        out[key] = x * (torch.rand_like(x) < 0.3)
    return out


@pytest.mark.parametrize("g_kwargs, d_kwargs", CONFIGS)
@pytest.mark.parametrize("batch", [1, 7])
def test_shapes_and_non_negativity(seed, g_kwargs, d_kwargs, batch):
    g, d = CaloGANGenerator(**g_kwargs), CaloGANCritic(**d_kwargs)
    showers = g(torch.randn(batch, g.latent_dim), energies(batch))
    assert set(showers) == set(CALOGAN_LAYERS)
    for key in CALOGAN_LAYERS:
        assert showers[key].shape == (batch, *CALOGAN_LAYER_SHAPES[key])
        assert showers[key].dtype == torch.float32
        assert torch.all(showers[key] >= 0) and torch.all(torch.isfinite(showers[key]))
    assert d(showers, energies(batch)).shape == (batch,)


def test_untrained_generator_deposits_about_incident_energy(seed):
    """Without energy normalisation the log-space offset makes the untrained response O(1)."""
    g = CaloGANGenerator(response_hidden=0)
    e = torch.tensor([[1.0], [10.0], [100.0]]).repeat_interleave(200, 0)
    with torch.no_grad():
        showers = g(torch.randn(len(e), g.latent_dim), e)
    total = sum(showers[k].flatten(1).sum(1) for k in CALOGAN_LAYERS)
    response = (total / (1000 * e[:, 0])).view(3, 200).mean(1)
    assert torch.all(response > 0.2) and torch.all(response < 5), response


def test_energy_normalisation_fixes_total_energy(seed):
    """With the response head, E_tot = R(z, E) * E_inc exactly (R = 1 at initialisation)."""
    g = CaloGANGenerator()
    e = energies(16)
    z = torch.randn(16, g.latent_dim)
    with torch.no_grad():
        total = sum(v.flatten(1).sum(1) for v in g(z, e).values())
        torch.testing.assert_close(total, 1000 * e[:, 0], rtol=1e-4, atol=0)
        g.response[-1].bias.fill_(math.log(0.8))
        total = sum(v.flatten(1).sum(1) for v in g(z, e).values())
    torch.testing.assert_close(total, 800 * e[:, 0], rtol=1e-4, atol=0)


def test_relu_output_gives_exact_zeros(seed):
    """Cells are exactly zero where the pre-activation is negative (sparsity as in the data)."""
    g = CaloGANGenerator()
    with torch.no_grad():
        for key in CALOGAN_LAYERS:
            g.local2[key].bias.fill_(-100.0)
        showers = g(torch.randn(3, g.latent_dim), energies(3))
    assert all(torch.all(showers[k] == 0) for k in CALOGAN_LAYERS)


def test_attention_uses_previous_layers(seed):
    """layer_1 depends on layer_0's output through the attention; layer_0 does not depend on later layers."""
    g = CaloGANGenerator(latent_dim=4, channels=2, response_hidden=0)  # no normalisation across layers
    with torch.no_grad():
        for p in g.attention.parameters():
            p.normal_()
    z, e = torch.randn(2, 4), energies(2)
    base = g.forward_log(z, e)
    with torch.no_grad():
        g.local2["layer_0"].bias.add_(0.5)  # changes layer_0's output only ...
    changed = g.forward_log(z, e)
    assert not torch.equal(base["layer_0"], changed["layer_0"])
    assert not torch.equal(base["layer_1"], changed["layer_1"])  # ... which reaches layer_1
    with torch.no_grad():
        g.local2["layer_2"].bias.add_(0.5)
    assert torch.equal(changed["layer_0"], g.forward_log(z, e)["layer_0"])


@pytest.mark.parametrize("g_kwargs, d_kwargs", CONFIGS)
def test_every_parameter_gets_a_gradient(seed, g_kwargs, d_kwargs):
    g, d = CaloGANGenerator(**g_kwargs), CaloGANCritic(**d_kwargs)
    with torch.no_grad():  # attention and response heads start at zero: give them weights
        heads = list(g.attention.parameters()) + (list(g.response.parameters()) if g.response is not None else [])
        for p in heads:
            p.normal_(0.0, 0.1)
    e = energies(6)
    real = fake_showers(6)
    fake = g(torch.randn(6, g.latent_dim), e)
    loss_g = wgan_generator_loss(d(fake, e))
    loss_g.backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), f"generator parameter {name} has no gradient"
    # The critic's output bias cancels in L_D (a WGAN critic is defined up to a constant), so
    # the critic is checked on the sum of both losses (its gradients from L_G are kept).
    real_u, fake_u = d.preprocess(real, e), d.preprocess({k: v.detach() for k, v in fake.items()}, e)
    loss_d = wgan_critic_loss(d.score(real_u, e), d.score(fake_u, e)) + 10 * gradient_penalty(d.score, real_u, fake_u, e)
    loss_d.backward()
    for name, p in d.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), f"critic parameter {name} has no gradient"


@pytest.mark.parametrize("g_kwargs, d_kwargs", CONFIGS[:2])
def test_state_dict_round_trip(seed, tmp_path, g_kwargs, d_kwargs):
    g, d = CaloGANGenerator(**g_kwargs), CaloGANCritic(**d_kwargs)
    torch.save({"g": g.state_dict(), "d": d.state_dict()}, tmp_path / "nets.pt")
    torch.manual_seed(99)  # different initial weights
    g2, d2 = CaloGANGenerator(**g_kwargs), CaloGANCritic(**d_kwargs)
    state = torch.load(tmp_path / "nets.pt", weights_only=True)
    g2.load_state_dict(state["g"])
    d2.load_state_dict(state["d"])
    z, e = torch.randn(5, g.latent_dim), energies(5)
    with torch.no_grad():
        a, b = g(z, e), g2(z, e)
        for key in CALOGAN_LAYERS:
            assert torch.equal(a[key], b[key])
        assert torch.equal(d(a, e), d2(a, e))


@pytest.mark.parametrize("batch", [1, 128, 1024])
def test_generator_inference_matches_explicit_patches(seed, monkeypatch, batch):
    """Generation without autograd (implicit patches in the locally connected layers from batch
    128 on) gives the showers of the pre-change implementation (explicit patches everywhere,
    checked against the frozen original in tests/nn/test_locally_connected.py) for fixed
    weights and inputs."""
    g = CaloGANGenerator()
    with torch.no_grad():  # attention and response heads start at zero: give them weights
        for p in list(g.attention.parameters()) + list(g.response.parameters()):
            p.normal_(0.0, 0.1)
    z, e = torch.randn(batch, g.latent_dim), torch.rand(batch, 1) * 99 + 1
    with torch.no_grad():
        u, showers = g.forward_log(z, e), g(z, e)
        monkeypatch.setattr(LocallyConnected2d, "forward", LocallyConnected2d._forward_explicit)
        u_ref, showers_ref = g.forward_log(z, e), g(z, e)
    for key in CALOGAN_LAYERS:
        torch.testing.assert_close(u[key], u_ref[key], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(showers[key], showers_ref[key], rtol=1e-4, atol=1e-4)
    total, total_ref = (sum(s[k].flatten(1).sum(1) for k in CALOGAN_LAYERS) for s in (showers, showers_ref))
    torch.testing.assert_close(total, total_ref, rtol=1e-5, atol=0)


def test_log_transform_round_trip():
    cells = torch.tensor([0.0, 1e-3, 1.0, 5e4])
    u = cells_to_log(cells, 1.0)
    assert u[0] == 0
    torch.testing.assert_close(cells_from_log(u, 1.0), cells, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(log_energy_feature(torch.tensor([[1.0], [10.0], [100.0]])).flatten(), torch.tensor([-1.0, 0.0, 1.0]))


def test_physics_features_on_known_showers():
    """Layer fractions, response, |E_tot - E_inc| / E_inc and sparsity of a hand-made shower."""
    d = CaloGANCritic(sparsity_scale_mev=1e-3)
    showers = {k: torch.zeros(1, *CALOGAN_LAYER_SHAPES[k]) for k in CALOGAN_LAYERS}
    showers["layer_0"][0, 1, 40:43] = 1000.0  # 3 cells, 3 GeV
    showers["layer_1"][0, 5, 5] = 6000.0  # 6 GeV
    energy = torch.tensor([[10.0]])
    f = d.physics_features(d.preprocess(showers, energy), energy)[0]
    assert f.shape == (11,)
    torch.testing.assert_close(d.preprocess(showers, energy)["physics"][0], d.feature_scale * f)
    torch.testing.assert_close(f[:3], torch.tensor([0.3, 0.6, 0.0]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f[3:5], torch.tensor([0.9, 0.1]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f[5:8], torch.tensor([3 / 9, 6 / 9, 0.0]), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(f[8:11], torch.tensor([3 / 288, 1 / 144, 0.0]), rtol=1e-4, atol=1e-6)


def test_bad_input():
    g, d = CaloGANGenerator(latent_dim=4), CaloGANCritic()
    with pytest.raises(ValueError, match=r"z of shape \(B, 4\)"):
        g(torch.zeros(2, 5), energies(2))
    with pytest.raises(ValueError, match=r"energy of shape \(2, 1\)"):
        g(torch.zeros(2, 4), torch.ones(2))
    with pytest.raises(ValueError, match="must be > 0 GeV"):
        g(torch.zeros(2, 4), torch.zeros(2, 1))
    showers = fake_showers(2)
    showers["layer_2"] = torch.zeros(2, 6, 12)
    with pytest.raises(ValueError, match=r"'layer_2' must have shape \(2, 12, 6\), got \(2, 6, 12\)"):
        d(showers, energies(2))
    with pytest.raises(ValueError, match="missing key 'layer_1'"):
        d({"layer_0": torch.zeros(2, 3, 96)}, energies(2))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        CaloGANGenerator(kernel_size=2)


# ---------------------------------------------------------------------------------------------
# Other geometries: the CaloChallenge binnings' polar layers

BINNINGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "datasets" / "calochallenge"


@pytest.fixture(scope="module")
def ds1():
    from surrogate.data.binning import read_binning_xml

    return read_binning_xml(BINNINGS / "binning_dataset_1_photons.xml")  # 5 layers, 368 voxels


def challenge_showers(geometry, batch: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in geometry.layer_shapes.items():
        x = torch.rand(batch, *shape) * 100.0
        out[key] = x * (torch.rand_like(x) < 0.3)
    return out


def test_networks_take_their_layers_from_the_geometry(seed, ds1):
    """DS1 photons: one stream per layer of (n_alpha, n_r) voxels; E_tot = E_inc at initialisation
    with the offset log(E_inc / (E_0 N)) of N = 368 voxels; 3 L + 2 = 17 physics features."""
    g, d = CaloGANGenerator(ds1), CaloGANCritic(ds1)
    e = torch.tensor([[1.024], [65.536], [4194.304]])  # GeV, on DS1's ladder (1 GeV: E_inc / N > E_0 = 1 MeV)
    with torch.no_grad():
        showers = g(torch.randn(3, g.latent_dim), e)
    assert list(showers) == ["layer_0", "layer_1", "layer_2", "layer_3", "layer_12"]
    for key, shape in ds1.layer_shapes.items():
        assert showers[key].shape == (3, *shape) and torch.all(showers[key] >= 0)
    torch.testing.assert_close(ds1.flatten(showers).sum(1), 1000 * e[:, 0], rtol=1e-4, atol=0)
    assert d.n_physics_features == 17 and d.preprocess(showers, e)["physics"].shape == (3, 17)
    assert d(showers, e).shape == (3,)
    assert CaloGANCritic().n_physics_features == 11  # CaloGAN's three layers


def test_angular_axis_of_polar_layers_wraps_around(seed, ds1):
    """In a polar layer the first and last angular bins are neighbours: the critic's output in
    angular bin 0 depends on the input in the last bin; in CaloGAN's rectangular grids the first
    row does not see the last."""
    for geometry, key in ((ds1, "layer_1"), (None, "layer_1")):
        d = CaloGANCritic() if geometry is None else CaloGANCritic(geometry, channels=(4, 4))
        shape = d.geometry.layer_shapes[key]
        x = torch.rand(1, 1, *shape, requires_grad=True)
        out = d._stream(key, x)
        (grad,) = torch.autograd.grad(out[0, :, 0].sum(), x)  # output row 0 (angular bin 0)
        touches_last_row = bool(torch.any(grad[0, 0, -1] != 0))
        assert touches_last_row == (geometry is not None), (key, shape)
        assert out.shape[-2:] == d.streams[key][-2].output_size


def test_wgan_gp_step_in_a_challenge_geometry(seed, ds1):
    """One critic and one generator update (gradient penalty's double backward through the
    circular padding): finite losses, and every parameter of both networks gets a gradient."""
    from surrogate.train.steps import GANStep

    g, d = CaloGANGenerator(ds1, latent_dim=8, channels=2), CaloGANCritic(ds1, channels=(2, 2), hidden=8)
    with torch.no_grad():
        for p in list(g.attention.parameters()) + list(g.response.parameters()):
            p.normal_(0.0, 0.1)
    step = GANStep(g, d, torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters()), n_critic=1)
    batch = {**challenge_showers(ds1, 6), "energy": torch.tensor([[0.256], [1.024], [8.192], [65.536], [524.288],
                                                                  [4194.304]])}
    metrics = step(batch)
    assert all(math.isfinite(metrics[k]) for k in ("loss_critic", "loss_generator", "gradient_penalty"))
    output_bias = d.head[-1].bias  # cancels in L_D: a WGAN critic is defined up to a constant
    for net in (g, d):
        for name, p in net.named_parameters():
            if p is not output_bias:
                assert p.grad is not None and torch.any(p.grad != 0), f"{type(net).__name__} parameter {name}"


def test_geometry_errors(ds1):
    from surrogate.geometry import CaloGeometry, PolarLayer

    narrow = CaloGeometry("narrow", [PolarLayer("layer_0", (0.0, 1.0, 2.0), 2)])
    with pytest.raises(ValueError, match=r"kernel_size 7 wraps further than the 2 angular bins of layer 'layer_0'"):
        CaloGANCritic(narrow, kernel_size=7)
    CaloGANGenerator(narrow, kernel_size=5)  # two rows of padding on two angular bins: fine
    with pytest.raises(ValueError, match=r"geometry must be a CaloGeometry"):
        CaloGANGenerator("CaloGAN")
    with pytest.raises(ValueError, match=r"missing key 'layer_12'; expected the layers .* of 'binning_dataset_1_ph"):
        showers = challenge_showers(ds1, 2)
        del showers["layer_12"]
        CaloGANCritic(ds1)(showers, torch.ones(2, 1))

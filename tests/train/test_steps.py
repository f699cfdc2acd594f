"""Step functions: WGAN-GP losses, GANStep schedule and determinism, LikelihoodStep, a toy GAN fit."""

from __future__ import annotations

import io
import math

import pytest
import torch

from surrogate.data.calo import CALOGAN_LAYER_SHAPES, CALOGAN_LAYERS
from surrogate.losses import gradient_penalty, wgan_critic_loss, wgan_generator_loss
from surrogate.models.calo_gan import CaloGANCritic, CaloGANGenerator
from surrogate.train.steps import CosineLikelihoodStep, GANStep, LikelihoodStep, cosine_factor

SMALL_G = {"latent_dim": 4, "channels": 2, "attention_hidden": 4}
SMALL_D = {"channels": (2,), "hidden": 8}


def make_step(n_critic: int = 5, lr: float = 1e-4, **kwargs) -> GANStep:
    g, d = CaloGANGenerator(**SMALL_G), CaloGANCritic(**SMALL_D)
    return GANStep(
        g, d,
        torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.9)),
        torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.9)),
        n_critic=n_critic, **kwargs,
    )


def toy_batch(batch: int, response: float = 0.5) -> dict[str, torch.Tensor]:
    """Showers with a fixed shape whose total is ``response`` x the incident energy, with noise."""
    energy = 1.0 + 99.0 * torch.rand(batch, 1)
    out = {}
    weights = {"layer_0": 0.2, "layer_1": 0.7, "layer_2": 0.1}
    for key in CALOGAN_LAYERS:
        ny, nx = CALOGAN_LAYER_SHAPES[key]
        y = torch.arange(ny).view(-1, 1) - (ny - 1) / 2
        x = torch.arange(nx).view(1, -1) - (nx - 1) / 2
        shape = torch.exp(-(x**2 + y**2) / 4.0)
        shape = shape / shape.sum()
        scale = response * weights[key] * 1000.0 * energy * (1 + 0.05 * torch.randn(batch, 1))
        out[key] = (shape * scale.view(-1, 1, 1)).float()
    out["energy"] = energy
    return out


def response(generator: CaloGANGenerator, energy: torch.Tensor) -> float:
    with torch.no_grad():
        showers = generator(torch.randn(len(energy), generator.latent_dim), energy)
    total = sum(showers[k].flatten(1).sum(1) for k in CALOGAN_LAYERS)
    return float((total / (1000.0 * energy[:, 0])).mean())


# ----------------------------------------------------------------------------- losses


def test_wgan_losses():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -1.0, 1.0])
    assert wgan_critic_loss(real, fake) == pytest.approx(0.0 - 2.0)
    assert wgan_generator_loss(fake) == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        wgan_generator_loss(torch.zeros(2, 1))


@pytest.mark.parametrize("structure", ["tensor", "dict"])
def test_gradient_penalty_of_linear_critic_is_analytic(seed, structure):
    """D(x) = <w, x> + f(E) has gradient w everywhere: GP = (|w| - 1)^2 for any interpolate."""
    if structure == "tensor":
        w = torch.randn(3, 5)
        real, fake = torch.randn(8, 3, 5), torch.randn(8, 3, 5)

        def critic(x, energy):
            return (x * w).flatten(1).sum(1) + energy[:, 0] ** 2

        norm = w.norm()
    else:
        w = {"a": torch.randn(2, 4), "b": torch.randn(6)}
        real = {"a": torch.randn(8, 2, 4), "b": torch.randn(8, 6)}
        fake = {"a": torch.randn(8, 2, 4), "b": torch.randn(8, 6)}

        def critic(x, energy):
            return sum((x[k] * w[k]).flatten(1).sum(1) for k in w) + energy[:, 0] ** 2

        norm = torch.sqrt(w["a"].pow(2).sum() + w["b"].pow(2).sum())
    gp = gradient_penalty(critic, real, fake, torch.rand(8, 1))
    torch.testing.assert_close(gp, (norm - 1) ** 2, rtol=1e-5, atol=1e-6)


def test_gradient_penalty_of_quadratic_critic_at_given_alpha(seed):
    """D(x) = |x|^2 / 2 has gradient x_hat = alpha x + (1 - alpha) x~."""
    real, fake = torch.randn(6, 4), torch.randn(6, 4)
    alpha = torch.rand(6)
    gp = gradient_penalty(lambda x: 0.5 * x.pow(2).sum(1), real, fake, alpha=alpha)
    x_hat = alpha[:, None] * real + (1 - alpha[:, None]) * fake
    torch.testing.assert_close(gp, (x_hat.norm(dim=1) - 1).pow(2).mean())


def test_gradient_penalty_is_differentiable_in_critic_parameters(seed):
    lin = torch.nn.Linear(4, 1)
    gp = gradient_penalty(lambda x: lin(x)[:, 0], torch.randn(5, 4), torch.randn(5, 4))
    gp.backward()
    expected = 2 * (lin.weight.norm() - 1) * lin.weight / lin.weight.norm()  # d(|w| - 1)^2 / dw
    torch.testing.assert_close(lin.weight.grad, expected.detach())


def test_gradient_penalty_bad_input():
    with pytest.raises(ValueError, match="real has keys"):
        gradient_penalty(lambda x: x["a"].sum(1), {"a": torch.zeros(2, 3)}, {"b": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="shape"):
        gradient_penalty(lambda x: x.sum(1), torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        gradient_penalty(lambda x: x, torch.zeros(2, 3), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- GANStep


def test_gan_step_metrics_and_generator_schedule(seed):
    step = make_step(n_critic=3)
    assert set(step.modules) == {"generator", "critic"} and set(step.optimizers) == {"generator", "critic"}
    g_before = [p.detach().clone() for p in step.generator.parameters()]
    d_before = [p.detach().clone() for p in step.critic.parameters()]
    for call in range(1, 4):
        metrics = step(toy_batch(6))
        assert set(metrics) == {"loss_critic", "loss_generator", "gradient_penalty", "wasserstein"}
        assert all(isinstance(v, float) for v in metrics.values())
        g_changed = any(not torch.equal(a, p) for a, p in zip(g_before, step.generator.parameters()))
        assert g_changed == (call == 3), f"generator updated at call {call}"
        assert math.isnan(metrics["loss_generator"]) == (call < 3)
    assert any(not torch.equal(a, p) for a, p in zip(d_before, step.critic.parameters()))
    assert step.calls == 3


def test_gan_step_schedule_survives_optimizer_state_dict(seed):
    """The call counter lives in the critic optimizer's state, so a resumed run keeps the schedule."""
    step = make_step(n_critic=4)
    for _ in range(6):
        step(toy_batch(4))
    buffer = io.BytesIO()
    torch.save(step.critic_optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed = make_step(n_critic=4)
    resumed.critic_optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.calls == 6
    g_before = [p.detach().clone() for p in resumed.generator.parameters()]
    resumed(toy_batch(4))  # call 7: critic only
    assert all(torch.equal(a, p) for a, p in zip(g_before, resumed.generator.parameters()))
    resumed(toy_batch(4))  # call 8: generator too
    assert any(not torch.equal(a, p) for a, p in zip(g_before, resumed.generator.parameters()))


def test_gan_step_cosine_schedule_follows_the_call_count_and_resumes(seed):
    """Call k uses lr0 * cosine_factor(k - 1, total, m) for both networks; restored optimizer
    states (the base rates and the call count) continue the schedule."""
    step = make_step(n_critic=2, lr=1e-3, cosine_calls=4, cosine_min_factor=0.1)
    for _ in range(3):
        step(toy_batch(4))
    expected = 1e-3 * cosine_factor(2, 4, 0.1)
    assert step.generator_optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert step.critic_optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    resumed = make_step(n_critic=2, lr=1.0, cosine_calls=4, cosine_min_factor=0.1)  # other initial rates
    resumed.generator_optimizer.load_state_dict(step.generator_optimizer.state_dict())
    resumed.critic_optimizer.load_state_dict(step.critic_optimizer.state_dict())
    for _ in range(3):  # calls 4, 5, 6: the last two are past the end of the decay
        resumed(toy_batch(4))
    for opt in (resumed.generator_optimizer, resumed.critic_optimizer):
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert cosine_factor(0, 4, 0.1) == 1.0 and cosine_factor(2, 4, 0.1) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="cosine_calls"):
        make_step(cosine_calls=0)


def test_gan_step_is_deterministic():
    """Same torch seed -> identical weights after several critic and generator updates."""
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        step = make_step(n_critic=2)
        for _ in range(5):
            step(toy_batch(5))
        states.append({k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in step.modules.items()})
    for name in ("generator", "critic"):
        for key, tensor in states[0][name].items():
            assert torch.equal(tensor, states[1][name][key]), f"{name}.{key} differs"


def test_gan_step_bad_arguments():
    with pytest.raises(ValueError, match="n_critic"):
        make_step(n_critic=0)
    with pytest.raises(ValueError, match="energy"):
        make_step()({"layer_0": torch.zeros(2, 3, 96)})


def test_gan_step_training_moves_response_toward_data():
    """A few hundred WGAN-GP calls on toy showers with response 0.3 pull the generator's mean
    response (about 1 at initialisation) at least halfway towards 0.3."""
    torch.manual_seed(3)
    step = make_step(n_critic=2, lr=2e-3)
    probe = torch.linspace(5.0, 95.0, 256).unsqueeze(1)
    before = response(step.generator, probe)
    for _ in range(300):
        step(toy_batch(32, response=0.3))
    after = response(step.generator, probe)
    assert abs(after - 0.3) < 0.5 * abs(before - 0.3), (before, after)


# ----------------------------------------------------------------------------- LikelihoodStep


def test_likelihood_step_fits_linear_regression(seed):
    model = torch.nn.Linear(3, 1)
    true_w = torch.tensor([[1.0, -2.0, 0.5]])
    step = LikelihoodStep(model, torch.optim.Adam(model.parameters(), lr=0.05),
                          lambda m, b: (m(b["x"]) - b["y"]).pow(2).mean(), max_grad_norm=10.0)
    assert step.modules == {"model": model}
    first = None
    for _ in range(300):
        x = torch.randn(64, 3)
        metrics = step({"x": x, "y": x @ true_w.T + 0.3})
        first = metrics["loss"] if first is None else first
    assert set(metrics) == {"loss", "grad_norm"}
    assert metrics["loss"] < 1e-3 * first
    torch.testing.assert_close(model.weight.detach(), true_w, atol=0.02, rtol=0)


def test_likelihood_step_rejects_non_scalar_loss():
    model = torch.nn.Linear(2, 1)
    step = LikelihoodStep(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda m, b: m(b["x"]))
    with pytest.raises(ValueError, match="scalar"):
        step({"x": torch.zeros(3, 2)})


def test_cosine_step_schedule_survives_optimizer_state_round_trip():
    model = torch.nn.Linear(2, 1)
    loss_fn = lambda m, b: m(b["x"]).square().mean()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    step = CosineLikelihoodStep(model, optimizer, loss_fn, total_steps=4)
    batch = {"x": torch.ones(3, 2)}
    lrs = [step(batch)["lr"] for _ in range(2)]
    assert lrs == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4))])
    # a new step built on an optimizer restored from a checkpoint continues the schedule
    fresh = torch.optim.Adam(model.parameters(), lr=1.0)
    fresh.load_state_dict(optimizer.state_dict())
    resumed = CosineLikelihoodStep(model, fresh, loss_fn, total_steps=4)
    lrs = [resumed(batch)["lr"] for _ in range(3)]
    assert lrs == pytest.approx([0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0], abs=1e-12)


def _strip(state: dict, *keys: str) -> dict:
    """An optimizer state as an older checkpoint (or a constant-rate run) wrote it."""
    for group in state["param_groups"]:
        for key in keys:
            group.pop(key, None)
    return state


def test_cosine_steps_resume_optimizer_states_without_their_keys(seed):
    """A checkpoint whose optimizer groups lack the schedule's keys (written by a constant-rate
    step or an older version) resumes: the schedule restarts from the configured rates."""
    model = torch.nn.Linear(2, 1)
    loss_fn = lambda m, b: m(b["x"]).square().mean()
    old = torch.optim.Adam(model.parameters(), lr=0.5)
    LikelihoodStep(model, old, loss_fn)({"x": torch.ones(3, 2)})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5)
    step = CosineLikelihoodStep(model, optimizer, loss_fn, total_steps=2)
    optimizer.load_state_dict(_strip(old.state_dict(), "cosine_calls", "cosine_base_lr"))
    assert [step({"x": torch.ones(3, 2)})["lr"] for _ in range(3)] == pytest.approx([0.5, 0.25, 0.0])

    gan = make_step(n_critic=2, lr=1e-3, cosine_calls=4)
    for name, opt in gan.optimizers.items():
        opt.load_state_dict(_strip(opt.state_dict(), "gan_base_lr", "gan_calls", "gan_last_generator_loss"))
    metrics = gan(toy_batch(4))
    assert math.isnan(metrics["loss_generator"]) and gan.calls == 1
    assert gan.generator_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)

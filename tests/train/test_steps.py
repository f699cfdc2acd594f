"""Step functions: WGAN-GP losses, learning-rate schedules, GANStep schedule, state and determinism,
LikelihoodStep, a toy GAN fit."""

from __future__ import annotations

import io
import math

import pytest
import torch

from surrogate.losses import gradient_penalty, wgan_critic_loss, wgan_generator_loss
from surrogate.models.calo_gan import CaloGANCritic, CaloGANGenerator
from surrogate.train.steps import GANStep, LikelihoodStep, make_lr_scheduler

LAYER_SHAPES = {"layer_0": (3, 96), "layer_1": (12, 12), "layer_2": (12, 6)}  # the CaloGAN geometry
SMALL_G = {"latent_dim": 4, "channels": 2, "attention_hidden": 4}
SMALL_D = {"channels": (2,), "hidden": 8}


def make_step(n_critic: int = 5, lr: float = 1e-4, schedule: dict | None = None, **kwargs) -> GANStep:
    """A small GANStep; ``schedule`` = make_lr_scheduler arguments of the critic (over calls)
    and, with ``total_steps // n_critic``, of the generator (over generator updates)."""
    g, d = CaloGANGenerator(**SMALL_G), CaloGANCritic(**SMALL_D)
    g_opt = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.9))
    if schedule is not None:
        g_schedule = {**schedule, "total_steps": schedule["total_steps"] // n_critic}
        kwargs["generator_scheduler"] = make_lr_scheduler(g_opt, schedule="cosine", **g_schedule)
        kwargs["critic_scheduler"] = make_lr_scheduler(d_opt, schedule="cosine", **schedule)
    return GANStep(g, d, g_opt, d_opt, n_critic=n_critic, **kwargs)


def cosine(k: int, total: int, final: float, warmup: int = 0) -> float:
    """The closed-form factor of make_lr_scheduler's cosine schedule after k scheduler steps."""
    if k < warmup:
        return (k + 1) / (warmup + 1)
    t = min((k - warmup) / (total - warmup), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))


def round_trip(state: dict) -> dict:
    """``state`` through torch.save and a weights_only load, as a checkpoint stores it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def toy_batch(batch: int, response: float = 0.5) -> dict[str, torch.Tensor]:
    """Showers with a fixed shape whose total is ``response`` x the incident energy, with noise."""
    energy = 1.0 + 99.0 * torch.rand(batch, 1)
    out = {}
    weights = {"layer_0": 0.2, "layer_1": 0.7, "layer_2": 0.1}
    for key, (ny, nx) in LAYER_SHAPES.items():
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
    total = sum(showers[k].flatten(1).sum(1) for k in LAYER_SHAPES)
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


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("warmup", [0, 3])
def test_cosine_schedule_with_warmup_follows_the_closed_form(warmup):
    """Step k of the optimizer uses base * factor(k); after total_steps the rate stays final."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": 0.2}, {"params": [model.bias], "lr": 0.05}])
    scheduler = make_lr_scheduler(optimizer, schedule="cosine", total_steps=10, warmup_steps=warmup,
                                  final_lr_fraction=0.1)
    for k in range(14):
        for group, base in zip(optimizer.param_groups, (0.2, 0.05)):
            assert group["lr"] == pytest.approx(base * cosine(k, 10, 0.1, warmup), rel=1e-12)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)


def test_constant_schedule_with_warmup_rises_linearly_then_stays():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    scheduler = make_lr_scheduler(optimizer, warmup_steps=3)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


@pytest.mark.parametrize("kwargs, name", [
    ({"schedule": "linear"}, "schedule"),
    ({"schedule": "cosine"}, "total_steps"),
    ({"schedule": "cosine", "total_steps": 5, "warmup_steps": 5}, "total_steps"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"schedule": "cosine", "total_steps": 5, "final_lr_fraction": 1.5}, "final_lr_fraction"),
])
def test_lr_scheduler_bad_arguments_name_the_argument(kwargs, name):
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    with pytest.raises(ValueError, match=name):
        make_lr_scheduler(optimizer, **kwargs)


# ----------------------------------------------------------------------------- GANStep


def test_gan_step_metrics_and_generator_schedule(seed):
    step = make_step(n_critic=3)
    assert set(step.modules) == {"generator", "critic"}
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
    assert step.calls == 3 and step.last_generator_loss == metrics["loss_generator"]


def test_gan_step_state_dict_round_trip_keeps_the_schedule(seed):
    """The call counter, the last generator loss, optimizer and scheduler states survive a
    weights_only round trip, so a resumed run keeps the generator updates on the same calls."""
    step = make_step(n_critic=4, lr=1e-3, schedule={"total_steps": 16})
    for _ in range(6):
        step(toy_batch(4))
    state = round_trip(step.state_dict())
    assert set(state) == {"optimizers", "schedulers", "calls", "last_generator_loss"}
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"generator", "critic"}
    resumed = make_step(n_critic=4, lr=1.0, schedule={"total_steps": 16})  # other rates: the state wins
    resumed.modules["generator"].load_state_dict(step.generator.state_dict())
    resumed.modules["critic"].load_state_dict(step.critic.state_dict())
    resumed.load_state_dict(state)
    assert resumed.calls == 6 and resumed.last_generator_loss == step.last_generator_loss
    for name in ("generator_optimizer", "critic_optimizer"):
        assert getattr(resumed, name).param_groups[0]["lr"] == getattr(step, name).param_groups[0]["lr"]
    g_before = [p.detach().clone() for p in resumed.generator.parameters()]
    resumed(toy_batch(4))  # call 7: critic only
    assert all(torch.equal(a, p) for a, p in zip(g_before, resumed.generator.parameters()))
    resumed(toy_batch(4))  # call 8: generator too
    assert any(not torch.equal(a, p) for a, p in zip(g_before, resumed.generator.parameters()))


def test_gan_step_generator_scheduler_steps_only_on_generator_updates(seed):
    """The critic's rate follows the cosine over calls, the generator's over its updates
    (calls // n_critic); the metrics report the rates used by this call."""
    step = make_step(n_critic=2, lr=1e-3, schedule={"total_steps": 8, "final_lr_fraction": 0.1})
    for call in range(1, 10):
        metrics = step(toy_batch(4))
        updates_before = (call - 1) // 2
        assert metrics["lr_critic"] == pytest.approx(1e-3 * cosine(call - 1, 8, 0.1))
        assert metrics["lr_generator"] == pytest.approx(1e-3 * cosine(updates_before, 4, 0.1))
        assert step.critic_scheduler.last_epoch == call
        assert step.generator_scheduler.last_epoch == call // 2
    assert step.critic_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert step.generator_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_gan_step_refuses_a_state_with_other_schedulers(seed):
    state = make_step(n_critic=2).state_dict()
    with pytest.raises(ValueError, match="schedulers"):
        make_step(n_critic=2, schedule={"total_steps": 8}).load_state_dict(state)
    with pytest.raises(ValueError, match="calls"):
        make_step(n_critic=2).load_state_dict({k: v for k, v in state.items() if k != "calls"})


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
    with pytest.raises(ValueError, match="gradient_penalty"):
        make_step(gradient_penalty=-1.0)
    with pytest.raises(ValueError, match="energy"):
        make_step()({"layer_0": torch.zeros(2, 3, 96)})
    g, d = CaloGANGenerator(**SMALL_G), CaloGANCritic(**SMALL_D)
    g_opt, d_opt = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    with pytest.raises(ValueError, match="another optimizer"):
        GANStep(g, d, g_opt, d_opt, generator_scheduler=make_lr_scheduler(d_opt))


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


def test_likelihood_step_rejects_non_scalar_loss_and_foreign_scheduler():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = LikelihoodStep(model, optimizer, lambda m, b: m(b["x"]))
    with pytest.raises(ValueError, match="scalar"):
        step({"x": torch.zeros(3, 2)})
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="another optimizer"):
        LikelihoodStep(model, optimizer, lambda m, b: m(b["x"]).sum(), scheduler=make_lr_scheduler(other))


def _cosine_step(model: torch.nn.Module, lr: float = 1.0) -> LikelihoodStep:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return LikelihoodStep(model, optimizer, lambda m, b: m(b["x"]).square().mean(),
                          scheduler=make_lr_scheduler(optimizer, schedule="cosine", total_steps=4))


def test_likelihood_step_cosine_schedule_survives_state_dict_round_trip():
    """The rates of the former per-step cosine decay; a new step loading the state continues them."""
    model = torch.nn.Linear(2, 1)
    step = _cosine_step(model)
    batch = {"x": torch.ones(3, 2)}
    lrs = [step(batch)["lr"] for _ in range(2)]
    assert lrs == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4))])
    state = round_trip(step.state_dict())
    assert set(state) == {"optimizers", "schedulers"} and set(state["schedulers"]) == {"model"}
    resumed = _cosine_step(model, lr=0.3)  # another configured rate: the saved base rate wins
    resumed.load_state_dict(state)
    lrs = [resumed(batch)["lr"] for _ in range(3)]
    assert lrs == pytest.approx([0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0], abs=1e-12)
    assert int(resumed.optimizer.state_dict()["state"][0]["step"]) == 5  # Adam's moments came along


def test_likelihood_step_state_round_trip_without_scheduler_and_mismatch(seed):
    model = torch.nn.Linear(2, 1)
    loss_fn = lambda m, b: m(b["x"]).square().mean()
    step = LikelihoodStep(model, torch.optim.Adam(model.parameters(), lr=0.1), loss_fn)
    step({"x": torch.randn(3, 2)})
    state = round_trip(step.state_dict())
    assert state["schedulers"] == {}
    fresh = LikelihoodStep(model, torch.optim.Adam(model.parameters(), lr=0.5), loss_fn)
    fresh.load_state_dict(state)
    assert fresh.optimizer.param_groups[0]["lr"] == 0.1 and fresh.optimizer.state_dict()["state"][0]["step"] == 1
    with pytest.raises(ValueError, match="schedulers"):
        _cosine_step(model).load_state_dict(state)

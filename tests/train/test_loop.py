"""The training loop: exact resume, logging, checkpoints, early stopping."""

from __future__ import annotations

import csv
import os
import signal

import numpy as np
import pytest
import torch

from surrogate.train import (
    GANStep,
    LikelihoodStep,
    TrainingInterrupted,
    distributed,
    fit,
    latest_checkpoint,
    load_checkpoint,
    make_lr_scheduler,
)
from surrogate.train.checkpoint import save_checkpoint


class EpochDataset(torch.utils.data.IterableDataset):
    """Noisy linear data whose order depends only on (seed, epoch), like the project's datasets."""

    def __init__(self, n=30, seed=0, names=("x", "y")):
        g = np.random.default_rng(99)
        self.names = names
        self.x = g.normal(size=(n, 3)).astype(np.float32)
        self.y = (self.x @ np.array([1.0, -2.0, 0.5], dtype=np.float32) + 0.3)[:, None]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x)

    def __iter__(self):
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.x))
        for i in order:
            yield dict(zip(self.names, (torch.from_numpy(self.x[i]), torch.from_numpy(self.y[i]))))


class NoisyStep:
    """Regression with input noise drawn from torch's global RNG (so RNG restore matters) and a
    cosine learning-rate schedule with warm-up (so the step's state matters): a user's own step."""

    def __init__(self, crash_at=None, init_seed=0):
        torch.manual_seed(init_seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.modules = {"model": self.model}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.scheduler = make_lr_scheduler(self.optimizer, schedule="cosine", total_steps=30, warmup_steps=3)
        self.calls, self.crash_at = 0, crash_at

    def __call__(self, batch):
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        x = batch["x"] + 0.1 * torch.randn_like(batch["x"])
        loss = torch.nn.functional.mse_loss(self.model(x), batch["y"])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item()}

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _loader(names=("x", "y")):
    return torch.utils.data.DataLoader(EpochDataset(names=names), batch_size=4)  # 8 batches per epoch


def _weights(step):
    return [p.detach().clone() for module in step.modules.values() for p in module.parameters()]


class ToyGenerator(torch.nn.Module):
    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 3)

    def forward(self, z, energy):
        return {"x": self.net(torch.cat([z, energy], 1))}


class ToyCritic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, showers, energy):
        return self.net(torch.cat([showers["x"], energy], 1))[:, 0]


def _library_step(kind, init_seed=0):
    """A LikelihoodStep or a GANStep (noise, two schedulers, a call counter) on the toy data."""
    torch.manual_seed(init_seed)
    if kind == "likelihood":
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        noisy_loss = lambda m, b: (m(b["x"] + 0.1 * torch.randn_like(b["x"])) - b["y"]).square().mean()  # noqa: E731
        return LikelihoodStep(model, opt, noisy_loss,
                              scheduler=make_lr_scheduler(opt, schedule="cosine", total_steps=30, warmup_steps=3),
                              max_grad_norm=1.0)
    g, d = ToyGenerator(), ToyCritic()
    g_opt, d_opt = torch.optim.Adam(g.parameters(), lr=1e-2), torch.optim.Adam(d.parameters(), lr=1e-2)
    return GANStep(g, d, g_opt, d_opt, n_critic=3, gradient_penalty=1.0,
                   generator_scheduler=make_lr_scheduler(g_opt, schedule="cosine", total_steps=10),
                   critic_scheduler=make_lr_scheduler(d_opt, schedule="cosine", total_steps=30, warmup_steps=2))


class Crashing:
    """A step that raises at its ``crash_at``-th call."""

    def __init__(self, step, crash_at):
        self.step, self.crash_at, self.calls = step, crash_at, 0
        self.modules, self.state_dict, self.load_state_dict = step.modules, step.state_dict, step.load_state_dict

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        return self.step(batch)


def test_resume_after_crash_gives_same_weights_as_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    reference = NoisyStep()
    fit(reference, _loader(), max_steps=23, seed=5, progress=False)

    crashing = NoisyStep(crash_at=14)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashing, _loader(), max_steps=23, out_dir=tmp_path, checkpoint_every=5, seed=5, progress=False)
    assert latest_checkpoint(tmp_path).name == "step_00000010.pt"

    resumed = NoisyStep(init_seed=7)  # another initialisation: resume must overwrite it
    torch.manual_seed(12345)  # whatever the global state is, resume restores the checkpointed one
    result = fit(resumed, _loader(), max_steps=23, out_dir=tmp_path, checkpoint_every=5, seed=5, resume=True, progress=False)
    assert result.steps == 23 and resumed.calls == 13
    for a, b in zip(_weights(reference), _weights(resumed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    with open(tmp_path / "log.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [10, 20, 23]  # rows written after the crashed run's checkpoint were dropped


@pytest.mark.parametrize("kind", ["likelihood", "gan"])
def test_library_steps_resume_bit_identically(tmp_path, kind):
    """The step's state (optimizers, schedulers, GANStep's call counter) goes through the
    checkpoint: crash, resume, and end with the weights and state of an uninterrupted run."""
    names = ("x", "y") if kind == "likelihood" else ("x", "energy")
    reference = _library_step(kind)
    fit(reference, _loader(names), max_steps=23, seed=5, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(Crashing(_library_step(kind), 14), _loader(names), max_steps=23, out_dir=tmp_path, checkpoint_every=5,
            seed=5, progress=False)
    resumed = _library_step(kind, init_seed=7)
    fit(resumed, _loader(names), max_steps=23, out_dir=tmp_path, checkpoint_every=5, seed=5, resume=True,
        progress=False)
    for a, b in zip(_weights(reference), _weights(resumed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    state, expected = resumed.state_dict(), reference.state_dict()
    assert state["schedulers"] == expected["schedulers"]
    if kind == "gan":
        assert state["calls"] == 23 and state["last_generator_loss"] == expected["last_generator_loss"]


def test_checkpoint_holds_everything_needed_and_is_pruned(tmp_path):
    step = NoisyStep()
    fit(step, _loader(), max_steps=20, out_dir=tmp_path, checkpoint_every=2, keep_checkpoints=2,
        config={"lr": 0.01, "name": "toy"}, seed=1, progress=False)
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert files == ["step_00000018.pt", "step_00000020.pt"]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "step_00000020.pt")
    assert ckpt["step"] == 20 and ckpt["config"] == {"lr": 0.01, "name": "toy"}
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (2, 4)
    assert set(ckpt["modules"]) == {"model"} and set(ckpt["step_state"]) == {"optimizer", "scheduler"}
    assert ckpt["step_state"]["scheduler"]["last_epoch"] == 20
    assert ckpt["rng"]["torch"].dtype == torch.uint8 and ckpt["format"] == 2
    assert not list((tmp_path / "checkpoints").glob("*.tmp*"))


def test_early_stopping_restores_best_weights():
    step = NoisyStep()
    values = iter([3.0, 1.0, 2.0, 2.5, 0.5])
    snapshots = []

    def validation():
        snapshots.append(_weights(step))
        return next(values)

    result = fit(step, _loader(), max_steps=1000, validation=validation, validate_every=4, patience=2, progress=False)
    assert result.stopped_early and result.steps == 16 and result.best_validation == 1.0
    for a, b in zip(_weights(step), snapshots[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_steps"):
        fit(NoisyStep(), _loader(), max_steps=-1, progress=False)
    with pytest.raises(ValueError, match="out_dir"):
        fit(NoisyStep(), _loader(), max_steps=1, resume=True, progress=False)
    with pytest.raises(ValueError, match="log_every"):
        fit(NoisyStep(), _loader(), max_steps=1, log_every=0, progress=False)
    empty = torch.utils.data.DataLoader(EpochDataset(n=3), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="no batch"):
        fit(NoisyStep(), empty, max_steps=1, progress=False)
    step = NoisyStep()  # a checkpoint of the format without step states: its weights load, it does not resume
    save_checkpoint(tmp_path / "checkpoints" / "step_00000004.pt", modules=step.modules, config={}, step=4)
    old = load_checkpoint(tmp_path / "checkpoints" / "step_00000004.pt")
    old["format"] = 1
    torch.save(old, tmp_path / "checkpoints" / "step_00000004.pt")
    with pytest.raises(ValueError, match="format 1"):
        fit(step, _loader(), max_steps=8, out_dir=tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_writes_a_checkpoint_and_resume_matches_uninterrupted_run(tmp_path, signum):
    """What a Slurm job sees before its time limit or a preemption: the step in progress
    finishes, a checkpoint is written, TrainingInterrupted (exit status 75 in the CLI) is raised,
    and running again ends with the weights of an uninterrupted run."""
    reference = NoisyStep()
    fit(reference, _loader(), max_steps=23, seed=5, progress=False)

    class SignalledStep(NoisyStep):
        def __call__(self, batch):
            if self.calls == 12:  # the signal arrives during step 13
                os.kill(os.getpid(), signum)
            return super().__call__(batch)

    previous = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted, match=signal.Signals(signum).name) as info:
        fit(SignalledStep(), _loader(), max_steps=23, out_dir=tmp_path, checkpoint_every=100, seed=5, progress=False)
    assert signal.getsignal(signum) is previous  # the handler is restored
    assert info.value.step == 13 and info.value.checkpoint == latest_checkpoint(tmp_path)  # one process: at once
    assert load_checkpoint(info.value.checkpoint)["step"] == 13

    resumed = NoisyStep(init_seed=7)
    result = fit(resumed, _loader(), max_steps=23, out_dir=tmp_path, seed=5, resume=True, progress=False)
    assert result.steps == 23 and resumed.calls == 10
    for a, b in zip(_weights(reference), _weights(resumed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_log_csv_keeps_the_validation_column(tmp_path):
    """Validation values arrive after the first metric row; log.csv widens its header for them."""
    step = NoisyStep()
    fit(step, _loader(), max_steps=8, out_dir=tmp_path, log_every=2, validation=lambda: 0.25,
        validate_every=4, seed=0, progress=False)
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"step", "epoch", "loss", "seconds", "validation"} <= set(rows[0])
    assert [(int(r["step"]), float(r["validation"])) for r in rows if r["validation"]] == [(4, 0.25), (8, 0.25)]
    assert all(r["loss"] for r in rows if not r["validation"])


def test_set_epoch_reaches_dataset_sampler_and_batch_sampler():
    class Recorder(list):
        def set_epoch(self, epoch):
            self.append(epoch)

    class Batches(Recorder):
        def __iter__(self):
            return iter([[0, 1], [2, 3]])

        def __len__(self):
            return 2

    class Data(torch.utils.data.Dataset):
        epochs = Recorder()

        def set_epoch(self, epoch):
            self.epochs.set_epoch(epoch)

        def __getitem__(self, i):
            return {"x": torch.zeros(3), "y": torch.zeros(1)}

        def __len__(self):
            return 4

    batch_sampler = Batches()
    loader = torch.utils.data.DataLoader(Data(), batch_sampler=batch_sampler)
    fit(NoisyStep(), loader, max_steps=5, progress=False)
    assert batch_sampler == [0, 1, 2] and Data.epochs == [0, 1, 2]


def test_ranks_agree_on_stop_signals_only_at_logging_and_checkpoint_steps(monkeypatch):
    """With several ranks the loop communicates at logging, validation and checkpoint steps only
    (here a fake two-rank context whose collectives are counted): a signal on another rank is
    seen at the next such step, and every rank stops there."""
    calls = []
    monkeypatch.setattr(distributed, "context", lambda: distributed.DistributedContext(rank=0, world_size=2))
    monkeypatch.setattr(distributed, "all_reduce_mean", lambda values: calls.append(("mean",)) or dict(values))

    def any_rank(flag):
        calls.append(("any",))
        return len(calls) > 4  # "another rank" got a signal before the third agreement

    monkeypatch.setattr(distributed, "any_rank", any_rank)
    with pytest.raises(TrainingInterrupted, match="another rank") as info:
        fit(NoisyStep(), _loader(), max_steps=100, log_every=5, progress=False)
    assert [c[0] for c in calls] == ["mean", "any", "mean", "any", "mean", "any"]
    assert info.value.step == 15

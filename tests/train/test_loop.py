"""The training loop: exact resume, logging, checkpoints, early stopping."""

from __future__ import annotations

import csv
import os
import signal

import numpy as np
import pytest
import torch

from surrogate.train import fit, latest_checkpoint, load_checkpoint
from surrogate.train.loop import TrainingInterrupted


class EpochDataset(torch.utils.data.IterableDataset):
    """Noisy linear data whose order depends only on (seed, epoch), like the project's datasets."""

    def __init__(self, n=30, seed=0):
        g = np.random.default_rng(99)
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
            yield {"x": torch.from_numpy(self.x[i]), "y": torch.from_numpy(self.y[i])}


class NoisyStep:
    """Regression with input noise drawn from torch's global RNG (so RNG restore matters)."""

    def __init__(self, crash_at=None, init_seed=0):
        torch.manual_seed(init_seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.modules = {"model": self.model}
        self.optimizers = {"model": torch.optim.Adam(self.model.parameters(), lr=1e-2)}
        self.calls, self.crash_at = 0, crash_at

    def __call__(self, batch):
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        x = batch["x"] + 0.1 * torch.randn_like(batch["x"])
        loss = torch.nn.functional.mse_loss(self.model(x), batch["y"])
        self.optimizers["model"].zero_grad()
        loss.backward()
        self.optimizers["model"].step()
        return {"loss": loss.item()}


def _loader():
    return torch.utils.data.DataLoader(EpochDataset(), batch_size=4)  # 8 batches per epoch


def _weights(step):
    return [p.detach().clone() for p in step.model.parameters()]


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


def test_checkpoint_holds_everything_needed_and_is_pruned(tmp_path):
    step = NoisyStep()
    fit(step, _loader(), max_steps=20, out_dir=tmp_path, checkpoint_every=2, keep_checkpoints=2,
        config={"lr": 0.01, "name": "toy"}, seed=1, progress=False)
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert files == ["step_00000018.pt", "step_00000020.pt"]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "step_00000020.pt")
    assert ckpt["step"] == 20 and ckpt["config"] == {"lr": 0.01, "name": "toy"}
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (2, 4)
    assert set(ckpt["modules"]) == set(ckpt["optimizers"]) == {"model"}
    assert ckpt["rng"]["torch"].dtype == torch.uint8
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


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_steps"):
        fit(NoisyStep(), _loader(), max_steps=-1, progress=False)
    with pytest.raises(ValueError, match="out_dir"):
        fit(NoisyStep(), _loader(), max_steps=1, resume=True, progress=False)
    empty = torch.utils.data.DataLoader(EpochDataset(n=3), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="no batch"):
        fit(NoisyStep(), empty, max_steps=1, progress=False)


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
    assert info.value.step == 13 and info.value.checkpoint == latest_checkpoint(tmp_path)
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

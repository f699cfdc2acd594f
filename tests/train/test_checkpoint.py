"""Checkpoints hold weights and the step's state as plain data, never unpickle code, refuse to
write objects, and reject damaged files with the file's name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surrogate.train import LikelihoodStep, make_lr_scheduler
from surrogate.train.checkpoint import checkpoint_config, latest_checkpoint, load_checkpoint, save_checkpoint


class Payload:
    def __reduce__(self):  # what a malicious pickle would do on load
        return (print, ("pwned",))


def _save(path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    step = LikelihoodStep(model, opt, lambda m, b: m(b["x"]).sum(), scheduler=make_lr_scheduler(opt, warmup_steps=2))
    step({"x": torch.ones(1, 2)})
    path = save_checkpoint(path, modules=step.modules, step_state=step.state_dict(), config={"a": 1}, step=3)
    return path, model


def test_round_trip(tmp_path):
    path, model = _save(tmp_path / "c.pt")
    ckpt = load_checkpoint(path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ckpt["modules"]["model"][k], v, rtol=0, atol=0)
    assert ckpt["step"] == 3 and ckpt["config"] == {"a": 1} and ckpt["format"] == 2
    assert set(ckpt["step_state"]) == {"optimizers", "schedulers"}
    assert ckpt["step_state"]["schedulers"]["model"]["last_epoch"] == 1
    assert checkpoint_config(path) == {"a": 1}  # the configuration alone, tensors memory-mapped


def test_checkpoint_config_refuses_what_load_checkpoint_refuses(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_config(tmp_path / "none.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pt is not a checkpoint: not a zip archive"):
        checkpoint_config(tmp_path / "text.pt")


def test_weights_only_checkpoint_has_an_empty_step_state(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", modules={"m": torch.nn.Linear(2, 1)}, config=None, step=0)
    assert load_checkpoint(path)["step_state"] == {}


def test_refuses_to_write_objects_that_would_not_load(tmp_path):
    with pytest.raises(ValueError, match=r"step_state\['sampler'\] is a Payload"):
        save_checkpoint(tmp_path / "c.pt", modules={}, config={}, step=0, step_state={"sampler": Payload()})
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(tmp_path / "c.pt", modules={}, config={"out": tmp_path}, step=0)
    with pytest.raises(ValueError, match=r"extra\['loss'\] is a float64"):  # a float subclass that would not load
        save_checkpoint(tmp_path / "c.pt", modules={}, config={}, step=0, extra={"loss": np.float64(0.5)})
    assert not list(tmp_path.iterdir())


def test_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"modules": Payload(), "optimizers": {}, "config": {}, "step": 0}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)


def test_truncated_and_missing(tmp_path):
    path, _ = _save(tmp_path / "c.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a surrogate checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_latest_ignores_temporary_files(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000009.pt.tmp").write_bytes(b"partial")
    _save(tmp_path / "checkpoints" / "step_00000002.pt")
    _save(tmp_path / "checkpoints" / "step_00000010.pt")
    assert latest_checkpoint(tmp_path).name == "step_00000010.pt"

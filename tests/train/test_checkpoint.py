"""Checkpoints never unpickle code and reject damaged files with the file's name."""

from __future__ import annotations

import pytest
import torch

from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


class Payload:
    def __reduce__(self):  # what a malicious pickle would do on load
        return (print, ("pwned",))


def _save(path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return save_checkpoint(path, modules={"m": model}, optimizers={"m": opt}, config={"a": 1}, step=3), model


def test_round_trip(tmp_path):
    path, model = _save(tmp_path / "c.pt")
    ckpt = load_checkpoint(path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ckpt["modules"]["m"][k], v, rtol=0, atol=0)
    assert ckpt["step"] == 3 and ckpt["config"] == {"a": 1}


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

"""Checkpoints that resume: written atomically, read without unpickling.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists and dicts::

    {"format": 1, "modules": {name: state_dict}, "optimizers": {name: state_dict},
     "config": dict, "step": int, "epoch": int, "batch_in_epoch": int,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}, "extra": dict}

It is read back with ``torch.load(..., weights_only=True)``, which refuses arbitrary Python
objects, so a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from surrogate.data.hdf5 import atomic_output

__all__ = [
    "CHECKPOINT_FORMAT",
    "checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"^step_(\d{8,})\.pt$")
_REQUIRED = ("modules", "optimizers", "config", "step")


def rng_state() -> dict[str, Any]:
    """Returns the state of torch's global CPU and CUDA random number generators."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restores the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    """The file name of the checkpoint after ``step`` optimisation steps in ``out_dir``."""
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}.pt"


def save_checkpoint(
    path: str | os.PathLike,
    *,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    config: Mapping[str, Any] | None,
    step: int,
    epoch: int = 0,
    batch_in_epoch: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a checkpoint atomically (temporary file, then rename).

    Arguments:
        path: destination file.
        modules: networks to save by name; a ``DistributedDataParallel`` wrapper is unwrapped.
        optimizers: optimizers by name.
        config: the experiment configuration (plain TOML-like values), stored so that a
            checkpoint alone can rebuild its model (``surrogate generate CHECKPOINT``).
        step: optimisation steps done.
        epoch, batch_in_epoch: position in the data stream, for an exact resume.
        extra: other plain values to keep.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "modules": {k: getattr(m, "module", m).state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "config": dict(config or {}),
        "step": int(step),
        "epoch": int(epoch),
        "batch_in_epoch": int(batch_in_epoch),
        "rng": rng_state(),
        "extra": dict(extra or {}),
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` without unpickling code.

    Arguments:
        path: checkpoint file.
        map_location: where tensors go (``torch.load``'s argument).

    Returns:
        The checkpoint dictionary (see the module docstring).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint (truncated, not a torch file, holds
            Python objects other than plain data, or lacks a required entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        raise ValueError(f"{path} is not a surrogate checkpoint: expected entries {_REQUIRED}")
    return ckpt


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``out_dir/checkpoints``, or ``None``.

    Only complete files can be found: writers rename a finished temporary file into place.
    """
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None

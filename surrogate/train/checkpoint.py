"""Checkpoints that resume: written atomically, read without unpickling.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists and dicts::

    {"format": 2, "modules": {name: state_dict}, "step_state": dict, "config": dict,
     "step": int, "epoch": int, "batch_in_epoch": int,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}, "extra": dict}

``modules`` holds the networks' weights (all that :func:`load_checkpoint` needs to rebuild a
trained model from ``config``); ``step_state`` is the step's ``state_dict()`` (optimizer and
learning-rate scheduler states, counters: see :mod:`surrogate.train.steps`), empty for a
checkpoint of weights only. Format 1 (before step states) had ``"optimizers": {name:
state_dict}`` instead of ``step_state``; such files still load (their weights can be used) but
:func:`surrogate.train.fit` cannot resume from them.

It is read back with ``torch.load(..., weights_only=True)``, which refuses arbitrary Python
objects, so a checkpoint from an untrusted source cannot run code; :func:`save_checkpoint`
refuses to write anything else.
"""

from __future__ import annotations

import collections
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from surrogate.data.hdf5 import atomic_output

__all__ = [
    "CHECKPOINT_FORMAT",
    "checkpoint_config",
    "checkpoint_path",
    "config_changes",
    "find_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "RESUME_NEUTRAL",
]

RESUME_NEUTRAL = (
    "run.threads", "run.device", "run.output_dir",
    "train.max_steps", "train.max_epochs", "train.checkpoint_every", "train.log_every", "train.keep_checkpoints",
    "generate", "validate",
)
"""Settings (``section.key``, or a whole section) of a pipeline configuration that a resumed run
may change without altering the training trajectory: how long it runs, how often it writes, on
how many threads, and the stages after training. Every other change (seed, model, data, batch
size, learning rate, ...) is refused by :func:`surrogate.train.fit` unless ``resume="anyway"``.
(A cosine schedule's shape follows ``max_steps``: such a change is allowed and reported.)"""

CHECKPOINT_FORMAT = 2
_NAME = re.compile(r"^step_(\d{8,})\.pt$")
_REQUIRED = ("modules", "config", "step")
# what torch.load(weights_only=True) reads back: these exact types (numpy scalars, float
# subclasses, are refused on load), tensors, and these containers
_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_TORCH = (torch.Tensor, torch.dtype, torch.device)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, torch.Size)


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


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def _check_plain(value: Any, where: str) -> None:
    """Raises ``ValueError`` unless ``value`` is plain data that ``weights_only`` loading reads."""
    if type(value) in _CONTAINERS:
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            if type(key) not in (str, int):
                raise ValueError(f"checkpoint entry {where} has a key of type {type(key).__name__}; "
                                 "keys must be str or int")
            _check_plain(item, f"{where}[{key!r}]")
    elif type(value) not in _SCALARS and not isinstance(value, _TORCH):
        raise ValueError(f"checkpoint entry {where} is a {type(value).__name__}: only dicts, lists, tuples, "
                         "tensors, numbers and strings can be saved (and loaded with weights_only=True)")


def save_checkpoint(
    path: str | os.PathLike,
    *,
    modules: Mapping[str, torch.nn.Module],
    config: Mapping[str, Any] | None,
    step: int,
    step_state: Mapping[str, Any] | None = None,
    epoch: int = 0,
    batch_in_epoch: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a checkpoint atomically (temporary file, then rename).

    Arguments:
        path: destination file.
        modules: networks to save by name; a ``DistributedDataParallel`` wrapper is unwrapped.
        config: the experiment configuration (plain TOML-like values), stored so that a
            checkpoint alone can rebuild its model (``surrogate generate CHECKPOINT``).
        step: optimisation steps done.
        step_state: the training step's ``state_dict()`` (optimizer and scheduler states,
            counters); ``None`` for a checkpoint of weights only.
        epoch, batch_in_epoch: position in the data stream, for an exact resume.
        extra: other plain values to keep.

    Returns:
        The path written.

    Raises:
        ValueError: ``step_state``, ``config`` or ``extra`` holds something other than plain
            data (dicts, lists, tuples, tensors, numbers, strings), which could not be loaded
            with ``weights_only=True``.
    """
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "modules": {k: _unwrap(m).state_dict() for k, m in modules.items()},
        "step_state": dict(step_state or {}),
        "config": dict(config or {}),
        "step": int(step),
        "epoch": int(epoch),
        "batch_in_epoch": int(batch_in_epoch),
        "rng": rng_state(),
        "extra": dict(extra or {}),
    }
    for key in ("step_state", "config", "extra"):
        _check_plain(payload[key], key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` without unpickling code.

    Arguments:
        path: checkpoint file.
        map_location: where tensors go (``torch.load``'s argument).
        mmap: memory-map the file, so tensors are read only when used (``torch.load``'s argument).

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
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a checkpoint: not a zip archive written by torch.save (truncated, or "
                         "another kind of file)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        raise ValueError(f"{path} is not a surrogate checkpoint: expected entries {_REQUIRED}")
    return ckpt


def checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The configuration stored in a checkpoint file, read without loading its tensors (for the
    family, geometry or energy range of a run before, or instead of, loading its weights).

    Raises:
        FileNotFoundError, ValueError: as :func:`load_checkpoint`.
    """
    return dict(load_checkpoint(path, mmap=True)["config"] or {})


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``out_dir/checkpoints``, or ``None``.

    Only complete files can be found: writers rename a finished temporary file into place.
    """
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the latest checkpoint of a run folder (``path/checkpoints``,
    else ``path/train/checkpoints``, the training stage of a pipeline's ``output_dir``).

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder holds no checkpoint.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"checkpoint or run folder {path} does not exist")
    found = latest_checkpoint(path) or latest_checkpoint(path / "train")
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {path}/checkpoints or {path}/train/checkpoints")
    return found


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def config_changes(stored: Mapping[str, Any], current: Mapping[str, Any],
                   neutral: tuple[str, ...] = RESUME_NEUTRAL) -> tuple[list[str], list[str]]:
    """What changed between the configuration stored in a checkpoint and the current one.

    Arguments:
        stored, current: nested plain configurations (``PipelineConfig.to_dict()``).
        neutral: settings whose change leaves the training trajectory alone
            (:data:`RESUME_NEUTRAL`).

    Returns:
        ``(trajectory, neutral)``: each a sorted list of ``"[section] key: old -> new"`` lines.
    """
    old, new = _flatten(stored), _flatten(current)
    changed, harmless = [], []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, "(unset)"), new.get(name, "(unset)")
        if a == b:
            continue
        section, _, key = name.partition(".")
        line = f"[{section}] {key}: {a!r} -> {b!r}"
        (harmless if name in neutral or section in neutral else changed).append(line)
    return changed, harmless

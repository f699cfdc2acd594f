"""A user's own simulator, named by an entry point ``"module:function"`` in a pipeline file.

The function takes a batch of parameters and returns a batch of data::

    def simulate(theta):            # theta: (N, D) numpy array (float64)
        ...
        return x                    # (N, ...) numpy array or torch tensor; a failed
                                    # simulation is a row of NaN (dropped and counted)

It may also take a keyword ``seed`` (an integer, different for every batch). Either way numpy's
and torch's global generators are seeded for each call (and restored afterwards), so a run is
reproducible from ``[run] seed``. The module is imported from the pipeline file's folder first,
then from ``sys.path``.

Example:
    >>> import numpy as np
    >>> def noisy(theta):
    ...     return theta + np.random.normal(size=theta.shape)
    >>> x = run_simulator(noisy, torch.zeros(5, 2), seed=0, batch_size=2)
    >>> x.shape, x.dtype
    (torch.Size([5, 2]), torch.float32)
    >>> bool(torch.equal(x, run_simulator(noisy, torch.zeros(5, 2), seed=0, batch_size=2)))
    True
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from surrogate.checks import check_int

__all__ = ["load_simulator", "run_simulator"]


def load_simulator(entry_point: str, *, folder: str | os.PathLike | None = None,
                   where: str = "[simulator] entry_point") -> Callable[..., Any]:
    """The function named by ``entry_point``.

    Arguments:
        entry_point: ``"module:function"`` (``module`` may be dotted, ``function`` may be
            ``object.attribute``).
        folder: searched before ``sys.path`` while the module is imported (the pipeline file's
            folder); ``None``: ``sys.path`` only.
        where: how errors name the setting.

    Returns:
        The callable.

    Raises:
        ValueError: not of the form ``module:function``, the module cannot be imported (naming
            where it was looked for and the import error), no such function, or not callable.
    """
    module_name, sep, attribute = str(entry_point).partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{where}: expected \"module:function\", got {entry_point!r}")
    added = folder is not None and str(Path(folder).resolve()) not in sys.path
    if added:
        sys.path.insert(0, str(Path(folder).resolve()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        places = (f"{Path(folder).resolve()} and " if folder is not None else "") + "sys.path"
        raise ValueError(f"{where} {entry_point!r}: cannot import module {module_name!r} (looked in {places}): "
                         f"{exc}") from exc
    finally:
        if added:
            sys.path.remove(str(Path(folder).resolve()))
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{where} {entry_point!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
                             f"has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{where} {entry_point!r}: {attribute} is not a function (type {type(target).__name__})")
    return target


def _takes_seed(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _batch_seed(seed: int, batch: int) -> int:
    """A 32-bit seed for batch ``batch`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def run_simulator(simulator: Callable[..., Any], theta: Tensor, *, seed: int, batch_size: int = 1000,
                  name: str | None = None) -> Tensor:
    """Simulates ``x`` for every row of ``theta``, ``batch_size`` rows per call.

    Each call gets its own seed (from ``seed`` and the batch number): numpy's and torch's global
    generators are seeded with it for the call and restored afterwards, and it is passed as
    ``seed=`` when the function takes that keyword.

    Arguments:
        simulator: ``f(theta (n, D) numpy float64[, seed=int]) -> x (n, ...)``, numpy or torch.
        theta: parameters ``(N, D)``.
        seed: the run's seed.
        batch_size: rows per call.
        name: how errors name the simulator (default: its ``__qualname__``).

    Returns:
        ``x`` of shape ``(N, ...)``, float32, with NaN rows where simulations failed.

    Raises:
        ValueError: a call returns something that is not an array, of the wrong length, or of
            another shape than the first batch.
        Exception: whatever the simulator raises, with the batch named in a note.
    """
    theta = torch.as_tensor(theta, dtype=torch.float32)
    if theta.ndim != 2:
        raise ValueError(f"theta must have shape (N, D), got {tuple(theta.shape)}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    name = name or getattr(simulator, "__qualname__", repr(simulator))
    takes_seed = _takes_seed(simulator)
    outputs: list[Tensor] = []
    event_shape: tuple[int, ...] | None = None
    for k, start in enumerate(range(0, theta.shape[0], batch_size)):
        batch = theta[start:start + batch_size].double().numpy()
        batch_seed = _batch_seed(seed, k)
        np_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(batch_seed)
                np.random.seed(batch_seed)
                out = simulator(batch, seed=batch_seed) if takes_seed else simulator(batch)
        except Exception as exc:
            exc.add_note(f"in simulator {name} on rows {start} to {start + len(batch) - 1}")
            raise
        finally:
            np.random.set_state(np_state)
        try:
            x = torch.as_tensor(np.asarray(out.detach().cpu() if isinstance(out, Tensor) else out, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"simulator {name} returned {type(out).__name__}, expected an array (n, ...) of "
                             f"numbers: {exc}") from exc
        if x.ndim < 1 or x.shape[0] != len(batch):
            raise ValueError(f"simulator {name} returned shape {tuple(x.shape)} for {len(batch)} parameter rows; "
                             f"expected ({len(batch)}, ...)")
        x = x.reshape(len(batch), -1) if x.ndim == 1 else x  # one number per simulation: (n, 1)
        if event_shape is None:
            event_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != event_shape:
            raise ValueError(f"simulator {name} returned data of shape {tuple(x.shape[1:])} per simulation on rows "
                             f"{start}+, but {event_shape} before")
        outputs.append(x)
    return torch.cat(outputs)

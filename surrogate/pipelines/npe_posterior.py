"""A trained NPE posterior as a file: the flow built from a pipeline's ``[model]`` section and
the data's shape (with its embedding net, :data:`~surrogate.pipelines.npe_config.EMBEDDINGS`),
``posterior.pt`` read back into a :class:`~surrogate.models.npe.NeuralPosterior` without the
simulator or the training data (:func:`load_posterior`), and posterior samples of one observation
written in sbibm's CSV layout (:func:`sample`, ``surrogate sample``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from surrogate.config import build_section
from surrogate.config_types import import_object
from surrogate.models.npe import EnsemblePosterior, NeuralPosterior, build_npe_flow
from surrogate.pipelines import npe_sources as sources
from surrogate.pipelines.npe_config import (
    EMBEDDINGS,
    NPEModelConfig,
    embedding_kwargs,
)
from surrogate.simulators.sbi_tasks import get_task
from surrogate.train.checkpoint import load_checkpoint

__all__ = [
    "build_embedding",
    "flow_arguments",
    "load_posterior",
    "sample",
]


def _reshaped(net: nn.Module, *layers: nn.Module) -> nn.Module:
    """``net`` after ``layers`` (reshapes), keeping its ``out_features``."""
    if not layers:
        return net
    wrapped = nn.Sequential(*layers, net)
    wrapped.out_features = net.out_features
    return wrapped


def build_embedding(embedding: Mapping[str, Any], x_shape: Sequence[int]) -> nn.Module | None:
    """The ``[model.embedding]`` network for observations of shape ``x_shape`` (``None``: none),
    with the shape arguments of its class (:data:`EMBEDDINGS`) filled in.

    Raises:
        ValueError: an invalid table, or data whose shape the kind does not take (naming both).
    """
    kind, kwargs = embedding_kwargs(embedding)
    if kind == "none":
        return None
    x_shape = tuple(int(s) for s in x_shape)
    cls = import_object(EMBEDDINGS[kind][0])
    rank = len(x_shape)
    expected = {"cnn": "images (H, W) or (C, H, W)", "conv1d": "time series (L,) or (C, L)",
                "gru": "time series (L,) or (C, L)", "deepset": "trials (n,) or (n, F)"}
    if kind == "mlp":
        net = cls(int(np.prod(x_shape)), **kwargs)
        return _reshaped(net, nn.Flatten(1)) if rank > 1 else net
    if kind == "cnn" and rank in (2, 3):
        net = cls(x_shape[0] if rank == 3 else 1, (x_shape[-2], x_shape[-1]), **kwargs)
        return _reshaped(net, nn.Flatten(1)) if rank == 2 else net
    if kind in ("conv1d", "gru") and rank in (1, 2):
        return cls(*((1, *x_shape) if rank == 1 else x_shape), **kwargs)  # (B, L) is the flattened (B, 1*L)
    if kind == "deepset" and rank in (1, 2):
        net = cls(1 if rank == 1 else x_shape[1], **kwargs)
        return _reshaped(net, nn.Unflatten(1, (x_shape[0], 1))) if rank == 1 else net
    raise ValueError(f"[model.embedding] kind = {kind!r} takes {expected[kind]} per simulation, but the data have "
                     f"shape {x_shape}")


def flow_arguments(model: NPEModelConfig, x_shape: Sequence[int], seed: int) -> dict[str, Any]:
    """The model's keyword arguments of :func:`~surrogate.pipelines.npe_training.train_npe`
    (``kind``, ``embedding_net``, z-scoring, ``flow_kwargs``); the embedding is initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the embedding's initial weights follow the seed
        embedding_net = build_embedding(model.embedding, x_shape)
    return {"kind": model.kind, "embedding_net": embedding_net,
            "z_score_theta": model.z_score_theta, "z_score_x": model.z_score_x,
            "flow_kwargs": {"hidden_features": model.hidden_features, "num_transforms": model.num_transforms,
                            "num_blocks": model.num_blocks, "num_bins": model.num_bins,
                            "tail_bound": model.tail_bound, "linear": model.linear, "activation": model.activation,
                            "dropout_probability": model.dropout_probability}}


def _stored_shapes(config: Mapping[str, Any], path: Path) -> tuple[int, tuple[int, ...]]:
    """``(theta_dim, x_shape)`` recorded with the weights (a task's, for files of older releases)."""
    shapes = config.get("shapes")
    if shapes:
        return int(shapes["theta_dim"]), tuple(int(s) for s in shapes["x_shape"])
    task = (config.get("data") or {}).get("task")
    if task is None:
        raise ValueError(f"{path} records no data shape (config 'shapes'); load the run's posterior.pt")
    spec = get_task(task)
    return spec.theta_dim, (spec.x_dim,)


def load_posterior(path: str | os.PathLike, *, min_acceptance: float | None = None,
                   device: str | torch.device = "cpu") -> NeuralPosterior:
    """Rebuilds a trained posterior from ``posterior.pt`` (or a training checkpoint) alone: the
    flow from the stored ``[model]`` table, data shape and weights (z-scoring statistics
    included), the prior from the stored task or ``[prior]`` table. The simulator and the
    training data are not needed.

    Arguments:
        path: a run's ``output_dir`` (its ``posterior.pt``), a ``posterior.pt`` or a checkpoint file.
        min_acceptance: for rejection against the prior (default: the stored ``[validate]``
            value).
        device: where the flow goes.

    Returns:
        A :class:`~surrogate.models.npe.NeuralPosterior` (an
        :class:`~surrogate.models.npe.EnsemblePosterior` of them for ``[model] ensemble > 1``):
        ``sample((n,), x=x_o)``, ``log_prob(theta, x=x_o)``; ``x_o`` of another shape than the
        training data's is refused with a ``ValueError`` naming both shapes.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint of an NPE run, or its weights do not fit the
            flow its configuration describes.
    """
    path = Path(path)
    path = path / "posterior.pt" if path.is_dir() else path
    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    if "model" not in ckpt["modules"] or config.get("run", {}).get("pipeline") != "npe":
        raise ValueError(f"{path} is not a checkpoint of an NPE pipeline run")
    model = build_section(NPEModelConfig, config["model"], f"{path} config [model]")
    theta_dim, x_shape = _stored_shapes(config, path)
    prior = sources.stored_prior(config, where=f"{path} config [prior]")
    if tuple(prior.event_shape) != (theta_dim,):
        raise ValueError(f"{path}: the stored prior has event shape {tuple(prior.event_shape)}, the flow "
                         f"{theta_dim} parameters")
    seed = int(config["run"]["seed"])
    minimum = min_acceptance if min_acceptance is not None else config["validate"]["min_acceptance"]
    extra = ckpt.get("extra") or {}
    x_range = (torch.tensor(extra["x_min"]), torch.tensor(extra["x_max"])) if "x_min" in extra else None
    names = ["model", *sorted((k for k in ckpt["modules"] if k.startswith("model_")), key=lambda k: int(k[6:]))]
    members = []
    for name in names:
        with torch.random.fork_rng(devices=[]):
            arguments = flow_arguments(model, x_shape, seed)
            # shapes only: the stored weights and buffers replace these
            flow = build_npe_flow(torch.zeros(2, theta_dim), torch.zeros(2, *x_shape),
                                  **{k: v for k, v in arguments.items() if k != "flow_kwargs"},
                                  **arguments["flow_kwargs"], seed=seed)
        try:
            flow.load_state_dict(ckpt["modules"][name])
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()
            which = "the stored weights" if len(names) == 1 else f"the stored weights of member {name!r}"
            raise ValueError(f"{path}: {which} do not fit a flow for {theta_dim} parameters and "
                             f"data of shape {x_shape} ({detail[1].strip() if len(detail) > 1 else detail[0]})") from exc
        members.append(NeuralPosterior(flow.to(device).eval(), prior, x_shape, min_acceptance=minimum, x_range=x_range))
    return members[0] if len(members) == 1 else EnsemblePosterior(members)


def sample(run_dir: str | os.PathLike, observation: str | os.PathLike, out: str | os.PathLike, *,
           n: int = 10_000, seed: int = 0, device: str = "cpu") -> Path:
    """``surrogate sample RUN_DIR --x obs.csv --n N --out samples.csv``: ``n`` posterior samples of
    one observation, written as a CSV in sbibm's format (header ``parameter_1,...``), atomically.

    Arguments:
        run_dir: a run's ``output_dir`` or its ``posterior.pt`` (:func:`load_posterior`).
        observation: a CSV with a header row and one data row (sbibm's ``observation.csv``:
            ``data_1,data_2,...``), the data flattened in C order.
        out: the CSV to write.
        n: samples (rejection against the prior's support).
        seed: seeds the sampling (torch's global generator is restored afterwards).
        device: where the flow runs.

    Returns:
        The path written.

    Raises:
        ValueError: not one data row, or a number of values that does not match the training
            data's shape (naming the file and both sizes).
        LowAcceptanceError: the posterior puts almost no mass inside the prior's support.
    """
    from surrogate.data.sbibm_csv import read_csv, write_csv

    posterior = load_posterior(run_dir, device=device)
    values = read_csv(observation)
    size = math.prod(posterior.x_shape)
    if values.shape[0] != 1:
        raise ValueError(f"{observation}: {values.shape[0]} data rows; give one observation (one row below the header)")
    if values.shape[1] != size:
        raise ValueError(f"{observation}: {values.shape[1]} values, but the posterior in {run_dir} was trained on "
                         f"data of shape {posterior.x_shape} ({size} values, columns data_1 to data_{size})")
    x_o = torch.from_numpy(values[0]).reshape(posterior.x_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = posterior.sample((n,), x=x_o)
    return write_csv(out, samples, prefix="parameter")

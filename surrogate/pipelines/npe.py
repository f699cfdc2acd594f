"""The NPE family: simulate an sbibm task -> train a neural posterior -> sample and validate.

The pipeline file (``pipelines/npe_two_moons.toml``) is read into :class:`NPEConfig` by
:func:`surrogate.config.load_pipeline`; each stage is a public function taking the typed
configuration or explicit arguments, and the CLI (``surrogate train|run FILE``) dispatches
through :data:`FAMILY`. Sections of the file (every key optional; the defaults are the values
of ``pipelines/npe_two_moons.toml``)::

    [run]              pipeline = "npe", output_dir, seed, device, threads
    [data]             task, num_simulations, observations, reference_root
    [model]            kind and arguments of the flow (surrogate.models.flows.build_flow),
                       z_score_theta, z_score_x
    [model.embedding]  kind ("none" | "mlp"), out_features, hidden_features
    [train]            the shared knobs (surrogate.config.TrainConfig) and weight_decay,
                       validation_fraction, drop_invalid
    [validate]         num_samples, min_acceptance, c2st, pair_plots, coverage_observations,
                       coverage_samples

Files written to ``[run] output_dir``: ``train/`` (checkpoints, ``log.csv``), ``posterior.pt``
(the trained flow and its configuration, :func:`load_posterior`), ``report.json``,
``pairs_obs<k>.png`` and ``coverage.png``. The files of the previous release (sections
``[task]``, ``[flow]``, ``[embedding]``, ``[training]``, ``[sampling]``, ``[evaluation]``) still
load, with a :class:`~surrogate.config.ConfigDeprecationWarning` per renamed key
(:attr:`NPEConfig.RENAMED`).

References:
    Papamakarios & Murray (2016), arXiv:1605.06376; Greenberg, Nonnenmacher & Macke (2019),
    arXiv:1905.07488; Lueckmann et al. (2021), sbibm, arXiv:2101.04653 (tasks, reference
    posteriors, C2ST); Hermans et al. (2022), arXiv:2110.06581 (expected coverage).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from surrogate.config import PipelineConfig, TrainConfig, build_section, setting
from surrogate.models.npe import NeuralPosterior, build_npe_flow
from surrogate.pipelines import Family
from surrogate.pipelines.npe_training import NPEResult, train_npe
from surrogate.pipelines.npe_validate import coverage, evaluate
from surrogate.simulators.sbi_tasks import ReferencePosterior, SBITask, get_task, load_reference, simulate_dataset
from surrogate.train import distributed
from surrogate.train.checkpoint import load_checkpoint, save_checkpoint
from surrogate.train.loop import FitResult

__all__ = [
    "FAMILY",
    "NPEConfig",
    "NPEDataConfig",
    "NPEEmbeddingConfig",
    "NPEModelConfig",
    "NPETrainConfig",
    "NPEValidateConfig",
    "build_embedding",
    "coverage",
    "evaluate",
    "load_posterior",
    "load_references",
    "run",
    "simulate",
    "train",
    "train_posterior",
    "validate",
]


# --------------------------------------------------------------------------------------------
# The pipeline file


@dataclass(frozen=True)
class NPEDataConfig:
    """``[data]``: the sbibm task, its simulations and the observations to validate on.

    Attributes:
        task: one of :data:`surrogate.simulators.sbi_tasks.TASK_NAMES` (``"two_moons"``,
            ``"slcp"``, ``"gaussian_linear"``, ``"gaussian_mixture"``, ``"bernoulli_glm"``,
            ``"sir"``).
        num_simulations: ``(theta, x)`` pairs drawn from the prior and simulator (seed
            ``[run] seed``), a validation share included.
        observations: sbibm observation numbers (1 to 10) to sample and score by C2ST.
        reference_root: folder holding ``<task>/num_observation_<k>/`` (relative to the
            pipeline file); ``None``: the repository's ``datasets/sbibm``.
    """

    task: Literal["two_moons", "slcp", "gaussian_linear", "gaussian_mixture", "bernoulli_glm",
                  "sir"] = "two_moons"
    num_simulations: int = setting(10_000, ge=1)
    observations: tuple[int, ...] = tuple(range(1, 11))
    reference_root: Path | None = None

    def __post_init__(self):
        bad = [k for k in self.observations if not 1 <= k <= 10]
        if bad:
            raise ValueError(f"observations: sbibm numbers them 1 to 10, got {bad}")


@dataclass(frozen=True)
class NPEEmbeddingConfig:
    """``[model.embedding]``: the summary network of ``x``.

    Attributes:
        kind: ``"none"`` (the flow sees the z-scored ``x``) or ``"mlp"``
            (:class:`surrogate.nn.embeddings.MLPEmbedding`).
        out_features: summary dimension (``"mlp"``).
        hidden_features: hidden layer widths (``"mlp"``).
    """

    kind: Literal["none", "mlp"] = "none"
    out_features: int = setting(32, ge=1)
    hidden_features: tuple[int, ...] = (64, 64)


@dataclass(frozen=True)
class NPEModelConfig:
    """``[model]``: the conditional flow ``q(theta | x)`` (:func:`surrogate.models.npe.build_npe_flow`).

    Attributes:
        kind: ``"nsf"`` (spline coupling with LU mixing), ``"maf_rqs"`` (spline
            autoregressive) or ``"maf"`` (affine autoregressive).
        hidden_features, num_transforms, num_blocks, num_bins, tail_bound, linear, activation,
            dropout_probability: arguments of :func:`surrogate.models.flows.build_flow`
            (``tail_bound`` in z-scored units; ``linear`` ``None``: the kind's default).
        z_score_theta: z-score ``theta`` with the training simulations' statistics.
        z_score_x: ``"independent"``, ``"structured"``, ``"gaussianize"`` or ``"none"``.
        embedding: the ``[model.embedding]`` sub-table.
    """

    kind: Literal["nsf", "maf", "maf_rqs"] = "nsf"
    hidden_features: int = setting(64, ge=1)
    num_transforms: int = setting(5, ge=1)
    num_blocks: int = setting(2, ge=1)
    num_bins: int = setting(10, ge=1)
    tail_bound: float = setting(3.0, gt=0)
    linear: Literal["lu", "random", "reverse", "none"] | None = None
    activation: Literal["relu", "tanh", "elu", "gelu", "silu"] = "relu"
    dropout_probability: float = setting(0.0, ge=0, le=1)
    z_score_theta: bool = True
    z_score_x: Literal["independent", "structured", "gaussianize", "none"] = "independent"
    embedding: NPEEmbeddingConfig = field(default_factory=NPEEmbeddingConfig)


@dataclass(frozen=True)
class NPETrainConfig(TrainConfig):
    """``[train]``: the shared knobs (:class:`surrogate.config.TrainConfig`, with NPE's defaults:
    AdamW, 256 simulations per step, at most 150 epochs with cosine decay, early stopping after
    30 epochs without a better validation loss, clipping at 5) and NPE's own.

    Attributes:
        weight_decay: AdamW weight decay.
        validation_fraction: share of the simulations held out for early stopping, in (0, 1).
        drop_invalid: drop (and count) simulations with NaN/inf; ``false`` refuses them.
    """

    batch_size: int = setting(256, ge=1)
    max_steps: int | None = setting(None, ge=1)
    max_epochs: int | None = setting(150, ge=1)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    patience: int | None = setting(30, ge=1)
    max_grad_norm: float | None = setting(5.0, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    validation_fraction: float = setting(0.1, gt=0)
    drop_invalid: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be < 1, got {self.validation_fraction}")


@dataclass(frozen=True)
class NPEValidateConfig:
    """``[validate]``: sampling and the checks against the reference posteriors.

    Attributes:
        num_samples: posterior samples per observation, also the C2ST sample size (sbibm: 10000).
        min_acceptance: :class:`~surrogate.models.npe.LowAcceptanceError` below this fraction of
            proposals inside the prior's support.
        c2st: score each observation's samples against the reference ones (0.5 is perfect).
        pair_plots: write ``pairs_obs<k>.png``.
        coverage_observations: fresh simulations for expected coverage and SBC (0: none).
        coverage_samples: posterior samples per coverage simulation.
    """

    num_samples: int = setting(10_000, ge=1)
    min_acceptance: float = setting(1e-3, gt=0, le=1)
    c2st: bool = True
    pair_plots: bool = True
    coverage_observations: int = setting(200, ge=0)
    coverage_samples: int = setting(1000, ge=1)


@dataclass(frozen=True)
class NPEConfig(PipelineConfig):
    """A whole NPE pipeline file (see the module documentation)."""

    data: NPEDataConfig = field(default_factory=NPEDataConfig)
    model: NPEModelConfig = field(default_factory=NPEModelConfig)
    train: NPETrainConfig = field(default_factory=NPETrainConfig)
    validate: NPEValidateConfig = field(default_factory=NPEValidateConfig)

    RENAMED = {
        "task.name": "data.task",
        "task": "data",
        "training.z_score_theta": "model.z_score_theta",
        "training.z_score_x": "model.z_score_x",
        "flow": "model",
        "embedding": "model.embedding",
        "training": "train",
        "sampling": "validate",
        "evaluation": "validate",
    }


# --------------------------------------------------------------------------------------------
# Stages


def simulate(cfg: NPEConfig) -> tuple[Tensor, Tensor]:
    """``[data] num_simulations`` pairs ``(theta (N, D), x (N, x_dim))`` of the task, seeded by
    ``[run] seed`` (the same on every rank; torch's global generator is untouched)."""
    return simulate_dataset(cfg.data.task, cfg.data.num_simulations, seed=cfg.run.seed)


def load_references(cfg: NPEConfig) -> list[ReferencePosterior]:
    """The sbibm reference posteriors of ``[data] observations``.

    Raises:
        FileNotFoundError: a reference file is missing (naming it).
    """
    return [load_reference(cfg.data.task, k, root=cfg.data.reference_root) for k in cfg.data.observations]


def build_embedding(embedding: NPEEmbeddingConfig, x_dim: int) -> nn.Module | None:
    """The ``[model.embedding]`` network for observations of ``x_dim`` features (``None``: none)."""
    from surrogate.nn.embeddings import MLPEmbedding

    if embedding.kind == "none":
        return None
    return MLPEmbedding(x_dim, embedding.out_features, hidden_features=embedding.hidden_features)


def _flow_arguments(model: NPEModelConfig, task: SBITask, seed: int) -> dict[str, Any]:
    """The model's keyword arguments of :func:`~surrogate.pipelines.npe_training.train_npe`
    (``kind``, ``embedding_net``, z-scoring, ``flow_kwargs``); the embedding is initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the embedding's initial weights follow the seed
        embedding_net = build_embedding(model.embedding, task.x_dim)
    return {"kind": model.kind, "embedding_net": embedding_net,
            "z_score_theta": model.z_score_theta, "z_score_x": model.z_score_x,
            "flow_kwargs": {"hidden_features": model.hidden_features, "num_transforms": model.num_transforms,
                            "num_blocks": model.num_blocks, "num_bins": model.num_bins,
                            "tail_bound": model.tail_bound, "linear": model.linear, "activation": model.activation,
                            "dropout_probability": model.dropout_probability}}


def _training_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes the trained weights, from ``cfg.to_dict()`` (or a checkpoint's copy of it; a
    checkpoint of something else gives entries that match no pipeline file)."""
    data, run, train = (config.get(section) or {} for section in ("data", "run", "train"))
    skip = ("checkpoint_every", "log_every", "num_workers")
    return {"task": data.get("task"), "num_simulations": data.get("num_simulations"), "seed": run.get("seed"),
            "model": config.get("model"), "train": {k: v for k, v in train.items() if k not in skip}}


def load_posterior(path: str | os.PathLike, *, min_acceptance: float | None = None,
                   device: str | torch.device = "cpu") -> NeuralPosterior:
    """Rebuilds a trained posterior from ``posterior.pt`` (or a training checkpoint).

    Arguments:
        path: a ``posterior.pt`` or checkpoint file, or a run's ``output_dir``.
        min_acceptance: for rejection against the prior (default: the stored ``[validate]``
            value).
        device: where the flow goes.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint of an NPE run.
    """
    path = Path(path)
    path = path / "posterior.pt" if path.is_dir() else path
    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    if "model" not in ckpt["modules"] or config.get("run", {}).get("pipeline") != "npe":
        raise ValueError(f"{path} is not a checkpoint of an NPE pipeline run")
    model = build_section(NPEModelConfig, config["model"], f"{path} config [model]")
    task = get_task(config["data"]["task"])
    theta, x = simulate_dataset(task, 64, seed=0)  # shapes only: the stored buffers replace the statistics
    seed = int(config["run"]["seed"])
    with torch.random.fork_rng(devices=[]):
        arguments = _flow_arguments(model, task, seed)
        flow = build_npe_flow(theta, x, **{k: v for k, v in arguments.items() if k != "flow_kwargs"},
                              **arguments["flow_kwargs"], seed=seed)
    flow.load_state_dict(ckpt["modules"]["model"])
    minimum = min_acceptance if min_acceptance is not None else config["validate"]["min_acceptance"]
    extra = ckpt.get("extra") or {}
    x_range = (torch.tensor(extra["x_min"]), torch.tensor(extra["x_max"])) if "x_min" in extra else None
    return NeuralPosterior(flow.to(device).eval(), task.prior, (task.x_dim,), min_acceptance=minimum,
                           x_range=x_range)


def _trained(cfg: NPEConfig) -> NPEResult | None:
    """The result of a finished training with the same settings (``posterior.pt``), if any."""
    path = cfg.run.output_dir / "posterior.pt"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    if _training_settings(ckpt["config"]) != _training_settings(cfg.to_dict()):
        return None
    s = ckpt["extra"]
    fit_result = FitResult(steps=int(ckpt["step"]), best_validation=s["best_validation_loss"],
                           stopped_early=s["stopped_early"], checkpoint=s["checkpoint"] and Path(s["checkpoint"]))
    return NPEResult(
        posterior=load_posterior(path, min_acceptance=cfg.validate.min_acceptance,
                                 device=distributed.resolve_device(cfg.run.device)),
        fit=fit_result, num_train=s["num_train"], num_validation=s["num_validation"], num_dropped=s["num_dropped"],
        epochs=s["epochs"], train_seconds=s["train_seconds"], train_cpu_seconds=s["train_cpu_seconds"],
        best_validation_loss=s["best_validation_loss"])


def train_posterior(cfg: NPEConfig, *, resume: bool | str = True, progress: bool = True) -> NPEResult:
    """Simulates and trains the posterior of ``cfg`` (:func:`~surrogate.pipelines.npe_training.train_npe`),
    writing checkpoints and ``log.csv`` to ``output_dir/train`` and the trained flow to
    ``output_dir/posterior.pt``.

    With ``resume``, a ``posterior.pt`` trained with the same ``[data]`` task and size,
    ``[model]``, ``[train]`` and seed is loaded instead of training again, and an interrupted
    run continues from its last checkpoint (:func:`surrogate.train.fit`: a change of settings
    that alters training is refused unless ``resume="anyway"``). Under several ranks every rank simulates the same data
    and trains its share of each batch; rank 0 writes ``posterior.pt`` while the others wait.

    Returns:
        An :class:`~surrogate.pipelines.npe_training.NPEResult`.

    Raises:
        ValueError: simulations or settings that :func:`~surrogate.pipelines.npe_training.train_npe`
            refuses.
        surrogate.train.loop.TrainingInterrupted: a stop signal arrived (a checkpoint was written;
            call again to resume).
    """
    main = distributed.context().is_main
    if resume and (found := _trained(cfg)) is not None:
        if main:
            print(f"[train] {cfg.run.output_dir / 'posterior.pt'} has these settings: not training again "
                  "(surrogate train --no-resume retrains)")
        return found
    theta, x = simulate(cfg)
    task, m, t = get_task(cfg.data.task), cfg.model, cfg.train
    result = train_npe(
        theta, x, prior=task.prior, **_flow_arguments(m, task, cfg.run.seed), batch_size=t.batch_size,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        validation_fraction=t.validation_fraction, patience=t.patience, max_epochs=t.max_epochs,
        max_steps=t.max_steps, lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps,
        final_lr_fraction=t.final_lr_fraction, drop_invalid=t.drop_invalid,
        min_acceptance=cfg.validate.min_acceptance, seed=cfg.run.seed, out_dir=cfg.run.output_dir / "train",
        resume=resume, checkpoint_every=t.checkpoint_every, log_every=t.log_every, num_workers=t.num_workers,
        config=cfg.to_dict(), progress=progress, device=cfg.run.device,
    )
    # the data range of the simulations (failed ones aside): observations far outside it warn
    finite = x[torch.isfinite(x).reshape(len(x), -1).all(1)]
    result.posterior.x_range = (finite.amin(0), finite.amax(0))
    with distributed.main_rank_first():
        if main:
            save_checkpoint(cfg.run.output_dir / "posterior.pt", modules={"model": result.posterior.flow},
                            config=cfg.to_dict(), step=result.fit.steps,
                            extra={**_summary(result), "x_min": result.posterior.x_range[0].flatten().tolist(),
                                   "x_max": result.posterior.x_range[1].flatten().tolist()})
    return result


def _summary(result: NPEResult) -> dict[str, Any]:
    """What training did, as plain data (stored in ``posterior.pt``, copied into the report)."""
    return {"num_dropped": result.num_dropped, "num_train": result.num_train, "num_validation": result.num_validation,
            "epochs": result.epochs, "train_seconds": result.train_seconds,
            "train_cpu_seconds": result.train_cpu_seconds, "best_validation_loss": result.best_validation_loss,
            "stopped_early": bool(result.fit.stopped_early),
            "checkpoint": str(result.fit.checkpoint) if result.fit.checkpoint is not None else None}


def train(cfg: NPEConfig, *, resume: bool | str = True, progress: bool = True) -> FitResult:
    """``surrogate train FILE``: :func:`train_posterior`, returning what the training loop did."""
    return train_posterior(cfg, resume=resume, progress=progress).fit


def validate(cfg: NPEConfig, posterior: NeuralPosterior,
             references: Sequence[ReferencePosterior] | None = None) -> dict[str, Any]:
    """Samples and scores every ``[data] observations`` (:func:`evaluate`) and the calibration
    (:func:`coverage`), writing the PNGs to ``output_dir``; seeded by ``[run] seed`` (torch's
    global generator is restored afterwards).

    Arguments:
        cfg: the pipeline configuration.
        posterior: the trained posterior.
        references: the reference posteriors (default: :func:`load_references`).

    Returns:
        ``{"c2st_mean", "observations": [per observation], "coverage": dict or None,
        "files": [PNG names]}``.

    Raises:
        FileNotFoundError: reference files missing.
        LowAcceptanceError: see :meth:`~surrogate.models.npe.NeuralPosterior.sample`.
    """
    out, v, seed = cfg.run.output_dir, cfg.validate, cfg.run.seed
    references = load_references(cfg) if references is None else references
    out.mkdir(parents=True, exist_ok=True)
    entries, files, calibration = [], [], None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        for ref in references:
            name = f"pairs_obs{ref.num_observation}.png" if v.pair_plots else None
            entries.append(evaluate(posterior, ref, num_samples=v.num_samples, c2st=v.c2st,
                                    pair_plot=name and out / name))
            files += [name] if name else []
        if v.coverage_observations > 0:
            calibration = coverage(posterior, cfg.data.task, num_observations=v.coverage_observations,
                                   num_samples=v.coverage_samples, seed=seed + 3, plot=out / "coverage.png").to_dict()
            files.append("coverage.png")
    c2sts = [e["c2st"] for e in entries if "c2st" in e]
    return {"c2st_mean": float(np.mean(c2sts)) if c2sts else None, "observations": entries,
            "coverage": calibration, "files": files}


def run(cfg: NPEConfig, *, resume: bool | str = True, progress: bool = True) -> Path:
    """``surrogate run FILE``: simulate -> train -> validate -> ``report.json``.

    Training resumes an interrupted run and reuses a finished one with the same settings
    (:func:`train_posterior`). The reference files are read first, so a missing one fails
    before training. Under several
    ranks all ranks train and rank 0 alone validates and writes the report while the others wait.

    Returns:
        The path of ``output_dir/report.json``: task, simulations kept and dropped, training
        summary, mean C2ST, per-observation acceptance rates and C2ST, coverage, checkpoint,
        files and the configuration.

    Raises:
        FileNotFoundError: the sbibm reference files are missing.
        LowAcceptanceError: the posterior puts almost no mass inside the prior's support.
    """
    from surrogate.metrics.report import write_report

    references = load_references(cfg)
    result = train_posterior(cfg, resume=resume, progress=progress)
    path = cfg.run.output_dir / "report.json"
    with distributed.main_rank_first():
        if distributed.context().is_main:
            summary = _summary(result)
            checkpoint = summary.pop("checkpoint")
            checks = validate(cfg, result.posterior, references)
            files = checks.pop("files")
            report = {"task": cfg.data.task, "num_simulations": cfg.data.num_simulations, **summary, **checks,
                      "checkpoint": checkpoint, "files": files, "config": cfg.to_dict()}
            write_report(path, report)
    return path


FAMILY = Family(name="npe", config=NPEConfig, train=train, run=run, generate=None)

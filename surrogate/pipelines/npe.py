"""The NPE family: simulations -> train a neural posterior -> save it -> sample and validate.

The pipeline file (``pipelines/npe_two_moons.toml``, ``pipelines/npe_user_simulator.toml``) is
read into :class:`NPEConfig` (defined in :mod:`surrogate.pipelines.npe_config`, with the
embedding registry) by :func:`surrogate.config.load_pipeline`; saved posteriors are built, read
and sampled by :mod:`surrogate.pipelines.npe_posterior`; each stage is a public
function taking the typed configuration or explicit arguments, and the CLI (``surrogate
train|run FILE``, ``surrogate sample RUN_DIR``) dispatches through :data:`FAMILY`. Sections of
the file (every key optional unless marked; the model and training defaults are
:data:`~surrogate.pipelines.npe_training.NPE_DEFAULTS`, also :func:`train_npe`'s)::

    [run]              pipeline = "npe", output_dir, seed, device, threads
    [data]             what to train on, one of: task (an sbibm task) | file (HDF5 pairs, with
                       [prior]); or a [simulator] section (with [prior]); and num_simulations,
                       observations, reference_root (tasks), references (simulator or file)
    [simulator]        entry_point = "module:function" (required), batch_size
    [prior]            the prior of a simulator or file (surrogate.simulators.priors)
    [model]            kind and arguments of the flow (surrogate.models.flows.build_flow),
                       z_score_theta, z_score_x
    [model.embedding]  kind ("none" | "mlp" | "cnn" | "conv1d" | "gru" | "deepset") and the
                       keyword arguments of its class (EMBEDDINGS)
    [train]            the shared knobs (surrogate.config.TrainConfig) and weight_decay,
                       validation_fraction, drop_invalid, balance (balanced NPE)
    [validate]         num_samples, min_acceptance, c2st, pair_plots, coverage_observations,
                       coverage_samples
    [inference]        method ("npe" | "snpe_c" | "tsnpe"), rounds, simulations_per_round,
                       num_atoms (SNPE-C), epsilon (TSNPE), retrain_from_scratch, observation
                       (a simulator's x_o CSV); surrogate.pipelines.npe_sequential

Files written to ``[run] output_dir``: ``train/`` (checkpoints, ``log.csv``), ``posterior.pt``
(:func:`load_posterior`: the trained flow with its standardisation statistics, the whole
configuration with the ``[prior]`` table, the data shape and range), ``report.json``,
``pairs_obs<k>.png`` and ``coverage.png``. The files of an earlier release (sections ``[task]``,
``[flow]``, ``[embedding]``, ``[training]``, ``[sampling]``, ``[evaluation]``) still load, with a
:class:`~surrogate.config.ConfigDeprecationWarning` per renamed key (:attr:`NPEConfig.RENAMED`).

Example (a saved posterior):

.. code-block:: python

    posterior = load_posterior("runs/npe_two_moons")       # the run's output_dir
    samples = posterior.sample((10_000,), x=x_o)           # (10000, D)
    log_q = posterior.log_prob(samples, x=x_o)             # (10000,)

References:
    Papamakarios & Murray (2016), arXiv:1605.06376; Greenberg, Nonnenmacher & Macke (2019),
    arXiv:1905.07488; Lueckmann et al. (2021), sbibm, arXiv:2101.04653 (tasks, reference
    posteriors, C2ST); Hermans et al. (2022), arXiv:2110.06581 (expected coverage).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from surrogate.models.npe import EnsemblePosterior, NeuralPosterior
from surrogate.pipelines import Family
from surrogate.pipelines import npe_sources as sources
from surrogate.pipelines.npe_config import (
    EMBEDDINGS,
    NPEConfig,
    NPEDataConfig,
    NPEInferenceConfig,
    NPEModelConfig,
    NPESimulatorConfig,
    NPETrainConfig,
    NPEValidateConfig,
)
from surrogate.pipelines.npe_training import NPEResult, train_npe
from surrogate.pipelines.npe_validate import coverage, evaluate
from surrogate.simulators.sbi_tasks import ReferencePosterior, get_task
from surrogate.train import distributed
from surrogate.train.checkpoint import load_checkpoint, save_checkpoint
from surrogate.train.loop import FitResult
from surrogate.pipelines.npe_posterior import flow_arguments, build_embedding, load_posterior, sample

__all__ = [
    "EMBEDDINGS",
    "FAMILY",
    "NPEConfig",
    "NPEDataConfig",
    "NPEInferenceConfig",
    "NPEModelConfig",
    "NPESimulatorConfig",
    "NPETrainConfig",
    "NPEValidateConfig",
    "build_embedding",
    "coverage",
    "evaluate",
    "load_posterior",
    "load_references",
    "run",
    "sample",
    "simulate",
    "train",
    "train_posterior",
    "train_sequential",
    "validate",
]

# --------------------------------------------------------------------------------------------
# Stages


def simulate(cfg: NPEConfig) -> tuple[Tensor, Tensor]:
    """The training pairs ``(theta (N, D), x (N, *x_shape))`` of the pipeline's source
    (:func:`surrogate.pipelines.npe_sources.training_pairs`), seeded by ``[run] seed`` (the same on
    every rank; torch's global generator is untouched); failed simulations are NaN rows."""
    return sources.training_pairs(cfg)


def load_references(cfg: NPEConfig) -> list[ReferencePosterior] | None:
    """The reference posteriors of ``[data] observations`` (``None``: the simulator or file has
    none), :func:`surrogate.pipelines.npe_sources.references`.

    Raises:
        FileNotFoundError: a reference file is missing (naming it).
    """
    return sources.references(cfg)


def _training_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes the trained weights, from ``cfg.to_dict()`` (or a checkpoint's copy of it; a
    checkpoint of something else gives entries that match no pipeline file)."""
    data, run, train = (config.get(section) or {} for section in ("data", "run", "train"))
    skip = ("checkpoint_every", "log_every", "num_workers")
    return {"task": data.get("task"), "file": data.get("file"), "num_simulations": data.get("num_simulations"),
            "simulator": config.get("simulator"), "prior": config.get("prior"), "seed": run.get("seed"),
            "model": config.get("model"), "train": {k: v for k, v in train.items() if k not in skip and not (k == "balance" and v == 0)},
            **({"inference": config["inference"]} if (config.get("inference") or {}).get("method", "npe") != "npe"
               else {})}


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
    """Simulates (or reads) the training pairs and trains the posterior of ``cfg``
    (:func:`~surrogate.pipelines.npe_training.train_npe`), writing checkpoints and ``log.csv`` to
    ``output_dir/train`` and the posterior to ``output_dir/posterior.pt`` (:func:`load_posterior`).

    With ``resume``, a ``posterior.pt`` trained with the same source (task, simulator, file,
    prior, number of simulations), ``[model]``, ``[train]`` and seed is loaded instead of
    training again, and an interrupted run continues from its last checkpoint
    (:func:`surrogate.train.fit`: a change of settings that alters training is refused unless
    ``resume="anyway"``). Under several ranks every rank simulates the same data and trains its
    share of each batch; rank 0 writes ``posterior.pt`` while the others wait.

    Returns:
        An :class:`~surrogate.pipelines.npe_training.NPEResult`.

    Raises:
        ValueError: simulations or settings that :func:`~surrogate.pipelines.npe_training.train_npe`
            refuses; a simulator or file that does not fit the configuration.
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
    x_shape = tuple(int(s) for s in x.shape[1:])
    prior = sources.stored_prior(cfg.to_dict())
    config = {**cfg.to_dict(), "shapes": {"theta_dim": int(theta.shape[1]), "x_shape": list(x_shape)}}
    m, t, K = cfg.model, cfg.train, cfg.model.ensemble
    members = []
    for k in range(K):
        seed = cfg.run.seed + k
        if K > 1 and main:
            print(f"[train] ensemble member {k + 1} of {K} (seed {seed})")
        # a member's checkpoints do not record K, so that a larger ensemble reuses the trained members
        member_config = config if K == 1 else {**config, "model": {**config["model"], "ensemble": 1}, "member": k}
        members.append(train_npe(
            theta, x, prior=prior, **flow_arguments(m, x_shape, seed), batch_size=t.batch_size,
            learning_rate=t.learning_rate, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
            validation_fraction=t.validation_fraction, patience=t.patience, max_epochs=t.max_epochs,
            max_steps=t.max_steps, lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps,
            final_lr_fraction=t.final_lr_fraction, drop_invalid=t.drop_invalid,
            min_acceptance=cfg.validate.min_acceptance, seed=seed,
            out_dir=cfg.run.output_dir / ("train" if K == 1 else f"train/member_{k}"),
            resume=resume, checkpoint_every=t.checkpoint_every, log_every=t.log_every, num_workers=t.num_workers,
            config=member_config, progress=progress, device=cfg.run.device, **_objective(t, prior),
        ))
    result = members[0] if K == 1 else _ensemble_result(members)
    _save_posterior(cfg, result, x, config, members)
    return result


def _ensemble_result(members: Sequence[NPEResult]) -> NPEResult:
    """The mixture of the members as one result: member 0's data split sizes, summed times and
    epochs, the mean of the best validation losses, the last member's loop result."""
    first = members[0]
    return dataclasses.replace(
        first, posterior=EnsemblePosterior([r.posterior for r in members]), fit=members[-1].fit,
        epochs=sum(r.epochs for r in members), train_seconds=sum(r.train_seconds for r in members),
        train_cpu_seconds=sum(r.train_cpu_seconds for r in members),
        best_validation_loss=(float(np.mean([r.best_validation_loss for r in members]))
                              if all(r.best_validation_loss is not None for r in members) else None))


def _objective(train_cfg: NPETrainConfig, prior) -> dict[str, Any]:
    """``{"loss": balanced NPE}`` with ``[train] balance > 0``; ``{}`` (plain NPE) otherwise."""
    if train_cfg.balance == 0:
        return {}
    import functools

    from surrogate.losses import balanced_npe_loss

    return {"loss": functools.partial(balanced_npe_loss, prior=prior, balance=train_cfg.balance)}


def _save_posterior(cfg: NPEConfig, result: NPEResult, x: Tensor, config: Mapping[str, Any],
                    members: Sequence[NPEResult]) -> None:
    """Writes ``output_dir/posterior.pt`` (rank 0), with the range of the simulations ``x``: the
    flow as module ``model``, an ensemble's further members as ``model_1``, ``model_2``, ..."""
    main = distributed.context().is_main
    # the data range of the simulations (failed ones aside): observations far outside it warn
    finite = x[torch.isfinite(x).reshape(len(x), -1).all(1)]
    x_range = (finite.amin(0), finite.amax(0))
    for member in members:
        member.posterior.x_range = x_range
    modules = {("model" if k == 0 else f"model_{k}"): r.posterior.flow for k, r in enumerate(members)}
    extra = {**_summary(result), "x_min": x_range[0].flatten().tolist(), "x_max": x_range[1].flatten().tolist()}
    if len(members) > 1:
        extra["members"] = [_summary(r) for r in members]
    with distributed.main_rank_first():
        if main:
            save_checkpoint(cfg.run.output_dir / "posterior.pt", modules=modules, config=config,
                            step=sum(r.fit.steps for r in members), extra=extra)


def _simulator(cfg: NPEConfig):
    """``theta (n, D) -> x (n, *x_shape)`` of the task or ``[simulator]``, drawing its seeds from
    torch's global generator."""
    if cfg.data.task is not None:
        task = get_task(cfg.data.task)
        return task.simulate
    from surrogate.simulators.user import load_simulator, run_simulator

    folder = cfg.source.parent if cfg.source is not None else None
    simulator = load_simulator(cfg.simulator.entry_point, folder=folder, where="[simulator] entry_point")

    def simulate(theta: Tensor) -> Tensor:
        seed = int(torch.randint(0, 2**31 - 1, ()))
        return run_simulator(simulator, theta, seed=seed, batch_size=cfg.simulator.batch_size,
                             name=cfg.simulator.entry_point)

    return simulate


def train_sequential(cfg: NPEConfig, references: Sequence[ReferencePosterior] | None = None, *,
                     progress: bool = True) -> tuple[NPEResult, list[dict[str, Any]]]:
    """``[inference] method = "snpe_c" | "tsnpe"``: rounds of simulations at ``x_o``
    (:func:`surrogate.pipelines.npe_sequential.run_sequential`) with the ``[model]`` and
    ``[train]`` settings, C2ST against ``x_o``'s reference (when there is one) and coverage on
    held-out prior simulations after each round; the last round's posterior is written to
    ``output_dir/posterior.pt`` (checkpoints of round ``r`` under ``train/round_<r>``). Always
    trains from the start (no resume).

    Returns:
        ``(the last round's NPEResult, one dict per round)``.

    Raises:
        ValueError: see :func:`~surrogate.pipelines.npe_sequential.run_sequential`.
        FileNotFoundError: a missing reference or observation file.
    """
    from surrogate.data.sbibm_csv import read_csv
    from surrogate.metrics.c2st import c2st
    from surrogate.pipelines.npe_sequential import run_sequential

    inf, m, t, v = cfg.inference, cfg.model, cfg.train, cfg.validate
    prior = sources.stored_prior(cfg.to_dict())
    if cfg.data.task is not None:
        references = load_references(cfg) if references is None else references
        reference, x_o = references[0], references[0].observation
    else:
        reference = references[0] if references else None
        x_o = torch.from_numpy(read_csv(inf.observation)[0]).float()
    per_round = inf.simulations_per_round or max(1, (cfg.data.num_simulations or sources.DEFAULT_NUM_SIMULATIONS)
                                                 // inf.rounds)
    held_out = sources.held_out_pairs(cfg, v.coverage_observations) if v.coverage_observations else None

    def after_round(r: int, posterior: NeuralPosterior) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.run.seed + 2)
            if reference is not None and v.c2st:
                samples = posterior.sample((v.num_samples,), x=x_o)
                n = min(len(reference.samples), len(samples))
                entry["c2st"] = c2st(reference.samples[:n], samples[:n].cpu())
            if held_out is not None:
                entry["coverage_at"] = coverage(posterior, held_out[0], held_out[1],
                                                num_samples=v.coverage_samples).to_dict()["coverage_at"]
        if progress:
            print(f"[{inf.method}] round {r}: " + ", ".join(f"{k} {val}" for k, val in entry.items()))
        return entry

    simulate = _simulator(cfg)
    config = cfg.to_dict()
    if cfg.data.task is not None:
        x_shape = (get_task(cfg.data.task).x_dim,)
    else:  # the embedding net needs the data's shape before round 1: one simulation shows it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.run.seed)
            x_shape = tuple(torch.as_tensor(simulate(prior.sample((1,)).float())).shape[1:])
    result = run_sequential(
        simulate, prior, x_o, method=inf.method, rounds=inf.rounds, simulations_per_round=per_round,
        num_atoms=inf.num_atoms, epsilon=inf.epsilon, retrain_from_scratch=inf.retrain_from_scratch,
        seed=cfg.run.seed, callback=after_round,
        **flow_arguments(m, x_shape, cfg.run.seed), batch_size=t.batch_size, learning_rate=t.learning_rate,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, validation_fraction=t.validation_fraction,
        patience=t.patience, max_epochs=t.max_epochs, max_steps=t.max_steps, lr_schedule=t.lr_schedule,
        warmup_steps=t.warmup_steps, final_lr_fraction=t.final_lr_fraction, drop_invalid=t.drop_invalid,
        min_acceptance=v.min_acceptance, out_dir=cfg.run.output_dir / "train",
        checkpoint_every=t.checkpoint_every, log_every=t.log_every, num_workers=t.num_workers,
        config={**config, "shapes": {"theta_dim": int(prior.event_shape[0]), "x_shape": list(x_shape)}},
        progress=progress, device=cfg.run.device,
    )
    last = result.results[-1]
    _save_posterior(cfg, last, result.x, {**config, "shapes": {"theta_dim": int(prior.event_shape[0]),
                                                                "x_shape": list(x_shape)}}, [last])
    return last, result.rounds


def _summary(result: NPEResult) -> dict[str, Any]:
    """What training did, as plain data (stored in ``posterior.pt``, copied into the report)."""
    return {"num_dropped": result.num_dropped, "num_train": result.num_train, "num_validation": result.num_validation,
            "epochs": result.epochs, "train_seconds": result.train_seconds,
            "train_cpu_seconds": result.train_cpu_seconds, "best_validation_loss": result.best_validation_loss,
            "stopped_early": bool(result.fit.stopped_early),
            "checkpoint": str(result.fit.checkpoint) if result.fit.checkpoint is not None else None}


def train(cfg: NPEConfig, *, resume: bool | str = True, progress: bool = True) -> FitResult:
    """``surrogate train FILE``: :func:`train_posterior` (or :func:`train_sequential` for a
    sequential ``[inference] method``), returning what the (last) training loop did."""
    if cfg.inference.method != "npe":
        return train_sequential(cfg, progress=progress)[0].fit
    return train_posterior(cfg, resume=resume, progress=progress).fit


def validate(cfg: NPEConfig, posterior: NeuralPosterior,
             references: Sequence[ReferencePosterior] | None = None) -> dict[str, Any]:
    """Samples and scores every ``[data] observations`` against its reference posterior
    (:func:`evaluate`) and measures the calibration on held-out simulations (:func:`coverage`),
    writing the PNGs to ``output_dir``; seeded by ``[run] seed`` (torch's global generator is
    restored afterwards). Without reference posteriors C2ST is skipped, coverage still computed.

    Arguments:
        cfg: the pipeline configuration.
        posterior: the trained posterior.
        references: the reference posteriors (default: :func:`load_references`).

    Returns:
        ``{"c2st_mean", "c2st_skipped" (why, or None), "observations": [per observation],
        "coverage": dict or None, "coverage_dropped", "files": [PNG names]}``.

    Raises:
        FileNotFoundError: reference files missing.
        LowAcceptanceError: see :meth:`~surrogate.models.npe.NeuralPosterior.sample`.
    """
    out, v, seed = cfg.run.output_dir, cfg.validate, cfg.run.seed
    references = load_references(cfg) if references is None else references
    labels = sources.parameter_labels(cfg)
    out.mkdir(parents=True, exist_ok=True)
    entries, files, calibration, dropped = [], [], None, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        for ref in references or []:
            name = f"pairs_obs{ref.num_observation}.png" if v.pair_plots else None
            entries.append(evaluate(posterior, ref, num_samples=v.num_samples, c2st=v.c2st,
                                    pair_plot=name and out / name, labels=labels))
            files += [name] if name else []
        if v.coverage_observations > 0:
            theta, x, dropped = sources.held_out_pairs(cfg, v.coverage_observations)
            calibration = coverage(posterior, theta, x, num_samples=v.coverage_samples, plot=out / "coverage.png",
                                   labels=labels, title=f"{sources.describe(cfg)['name']}: calibration").to_dict()
            files.append("coverage.png")
    skipped = None
    if not references:
        skipped = "no reference posterior ([data] references is not set)"
    elif not v.c2st:
        skipped = "[validate] c2st = false"
    c2sts = [e["c2st"] for e in entries if "c2st" in e]
    return {"c2st_mean": float(np.mean(c2sts)) if c2sts else None, "c2st_skipped": skipped, "observations": entries,
            "coverage": calibration, "coverage_dropped": dropped, "files": files}


def run(cfg: NPEConfig, *, resume: bool | str = True, progress: bool = True) -> Path:
    """``surrogate run FILE``: simulate -> train -> save -> validate -> ``report.json``.

    Training resumes an interrupted run and reuses a finished one with the same settings
    (:func:`train_posterior`). The reference files are read first, so a missing one fails
    before training; a simulator or file without references runs with C2ST skipped (the report
    says so). Under several ranks all ranks train and rank 0 alone validates and writes the report
    while the others wait.

    Returns:
        The path of ``output_dir/report.json``: source, simulations kept and dropped, training
        summary, mean C2ST (or why it was skipped), per-observation acceptance rates and C2ST,
        coverage (with ``coverage_at`` 50/80/95 %), checkpoint, files and the configuration;
        for a sequential method also ``inference``: the method and one entry per round (C2ST
        at ``x_o`` where a reference exists, ``coverage_at``, simulations, times).

    Raises:
        FileNotFoundError: reference files are missing.
        LowAcceptanceError: the posterior puts almost no mass inside the prior's support.
    """
    from surrogate.metrics.report import write_report

    references = load_references(cfg)
    rounds = None
    if cfg.inference.method != "npe":
        result, rounds = train_sequential(cfg, references, progress=progress)
    else:
        result = train_posterior(cfg, resume=resume, progress=progress)
    path = cfg.run.output_dir / "report.json"
    with distributed.main_rank_first():
        if distributed.context().is_main:
            summary = _summary(result)
            checkpoint = summary.pop("checkpoint")
            checks = validate(cfg, result.posterior, references)
            if checks["c2st_skipped"]:
                print(f"[validate] C2ST skipped: {checks['c2st_skipped']}")
            files = checks.pop("files")
            report = {"task": cfg.data.task, "source": sources.describe(cfg),
                      "num_simulations": summary["num_train"] + summary["num_validation"] + summary["num_dropped"],
                      **summary, **checks, "checkpoint": checkpoint, "files": files, "config": cfg.to_dict()}
            if rounds is not None:
                report["inference"] = {"method": cfg.inference.method, "rounds": rounds}
            write_report(path, report)
    return path


FAMILY = Family(name="npe", config=NPEConfig, train=train, run=run, generate=None, sample=sample)

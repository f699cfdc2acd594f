"""The NPE family's pipeline file: the sections of ``[run] pipeline = "npe"`` as typed
configuration (:class:`NPEConfig`, read by :func:`surrogate.config.load_pipeline`) and the
registry of embedding nets that ``[model.embedding]`` chooses from. The sections are described
in :mod:`surrogate.pipelines.npe`, which uses them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from surrogate.config import PipelineConfig, TrainConfig, check_kwargs, setting
from surrogate.config_types import import_object
from surrogate.pipelines.npe_training import NPE_DEFAULTS
from surrogate.simulators.priors import prior_from_table

__all__ = [
    "EMBEDDINGS",
    "EMBEDDING_OUT_FEATURES",
    "embedding_kwargs",
    "NPEConfig",
    "NPEDataConfig",
    "NPEInferenceConfig",
    "NPEModelConfig",
    "NPESimulatorConfig",
    "NPETrainConfig",
    "NPEValidateConfig",
]

_D = NPE_DEFAULTS

# --------------------------------------------------------------------------------------------
# The pipeline file


@dataclass(frozen=True)
class NPEDataConfig:
    """``[data]``: what the posterior is trained on, and the observations to validate on.

    Attributes:
        task: a built-in sbibm task, one of :data:`surrogate.simulators.sbi_tasks.TASK_NAMES`
            (its prior and simulator; no ``[prior]``).
        file: an HDF5 file of pairs ``theta`` ``(N, D)``, ``x`` ``(N, ...)``
            (:mod:`surrogate.data.pairs`; relative to the pipeline file), drawn from ``[prior]``.
        num_simulations: simulations trained on, a validation share included. ``None``:
            :data:`~surrogate.pipelines.npe_sources.DEFAULT_NUM_SIMULATIONS` (10000) from a task or
            simulator; every row of a file but the ``[validate] coverage_observations`` held out
            after them (with a number, the first ``num_simulations`` rows are read, and only those:
            the pairs are held in memory as float32).
        observations: observation numbers (1 to 10, sbibm's numbering) to sample and score by
            C2ST against their reference posteriors.
        reference_root: for a task: the folder holding ``<task>/num_observation_<k>/``
            (relative to the pipeline file); ``None``: the repository's ``datasets/sbibm``.
        references: for a simulator or file: a folder in sbibm's layout
            (``num_observation_<k>/observation.csv``, ``true_parameters.csv``,
            ``reference_posterior_samples.csv.bz2``); ``None``: no reference, C2ST is skipped.
    """

    task: Literal["two_moons", "slcp", "gaussian_linear", "gaussian_mixture", "bernoulli_glm",
                  "sir"] | None = None
    file: Path | None = None
    num_simulations: int | None = setting(None, ge=1)
    observations: tuple[int, ...] = tuple(range(1, 11))
    reference_root: Path | None = None
    references: Path | None = None

    def __post_init__(self):
        bad = [k for k in self.observations if not 1 <= k <= 10]
        if bad:
            raise ValueError(f"observations: sbibm numbers them 1 to 10, got {bad}")


@dataclass(frozen=True)
class NPESimulatorConfig:
    """``[simulator]``: the user's simulator (:mod:`surrogate.simulators.user`).

    Attributes:
        entry_point: ``"module:function"``; the module is imported from the pipeline file's folder,
            else from ``sys.path``. The function maps parameters ``(n, D)`` (numpy) to data
            ``(n, ...)`` (numpy or torch), a failed simulation as a row of NaN.
        batch_size: parameter rows per call.
    """

    entry_point: str
    batch_size: int = setting(1000, ge=1)

    def __post_init__(self):
        module, sep, function = self.entry_point.partition(":")
        if not (sep and module and function):
            raise ValueError(f"entry_point: expected \"module:function\", got {self.entry_point!r}")


EMBEDDINGS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "mlp": ("surrogate.nn.embeddings:MLPEmbedding", ("in_features", "activation")),
    "cnn": ("surrogate.nn.embeddings:CNNEmbedding", ("in_channels", "image_size")),
    "conv1d": ("surrogate.nn.embeddings:Conv1DEmbedding", ("in_channels", "length")),
    "gru": ("surrogate.nn.embeddings:GRUEmbedding", ("in_channels", "length")),
    "deepset": ("surrogate.nn.embeddings:DeepSetEmbedding", ("in_features", "activation")),
}
"""``[model.embedding] kind`` -> (class, arguments the pipeline fills in from the data's shape):
``mlp`` any data (flattened), ``cnn`` images ``(H, W)`` or ``(C, H, W)``, ``conv1d`` and ``gru``
time series ``(L,)`` or ``(C, L)``, ``deepset`` i.i.d. trials ``(n,)`` or ``(n, F)``. The other keys of
the table are the class's keyword arguments (``out_features`` defaults to 32)."""

EMBEDDING_OUT_FEATURES = 32
"""``out_features`` of an embedding whose table leaves it out."""


def embedding_kwargs(table: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(kind, keyword arguments)`` of a ``[model.embedding]`` table, checked against the class.

    Raises:
        ValueError: unknown kind, or arguments the class does not take (naming them).
    """
    table = dict(table)
    kind = table.pop("kind", "none")
    if kind == "none":
        if table:
            raise ValueError(f"[model.embedding] {sorted(table)}: set only with a kind other than 'none'")
        return kind, {}
    if kind not in EMBEDDINGS:
        raise ValueError(f"[model.embedding] kind: expected one of 'none', {', '.join(map(repr, EMBEDDINGS))}, "
                         f"got {kind!r}")
    spec, filled = EMBEDDINGS[kind]
    table.setdefault("out_features", EMBEDDING_OUT_FEATURES)
    return kind, check_kwargs(import_object(spec), table, f"[model.embedding] (kind {kind!r})", exclude=filled)


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
        embedding: the ``[model.embedding]`` table: ``kind`` (:data:`EMBEDDINGS` or ``"none"``,
            the flow sees the z-scored, flattened ``x``) and the keyword arguments of its class.
        ensemble: ``K`` >= 1 posteriors trained on the same simulations with seeds ``seed``,
            ``seed + 1``, ... (initialisation, validation split, batch order); with ``K > 1`` the
            posterior is their equal-weight mixture
            (:class:`~surrogate.models.npe.EnsemblePosterior`). With ``[train] balance`` the
            members are balanced NPEs: by measured coverage the most conservative option
            (``benchmarks/npe_sequential_calibration.py``, six sbibm tasks at 10^3 simulations:
            95 % region 0.910-0.997 against 0.853-0.960 plain; the README's table). Plain NPE
            (``[inference] method = "npe"``) only.
    """

    kind: Literal["nsf", "maf", "maf_rqs"] = _D["kind"]
    hidden_features: int = setting(_D["hidden_features"], ge=1)
    num_transforms: int = setting(_D["num_transforms"], ge=1)
    num_blocks: int = setting(_D["num_blocks"], ge=1)
    num_bins: int = setting(_D["num_bins"], ge=1)
    tail_bound: float = setting(_D["tail_bound"], gt=0)
    linear: Literal["lu", "random", "reverse", "none"] | None = None
    activation: Literal["relu", "tanh", "elu", "gelu", "silu"] = "relu"
    dropout_probability: float = setting(0.0, ge=0, le=1)
    z_score_theta: bool = _D["z_score_theta"]
    z_score_x: Literal["independent", "structured", "gaussianize", "none"] = _D["z_score_x"]
    embedding: Mapping[str, Any] = field(default_factory=lambda: {"kind": "none"})
    ensemble: int = setting(1, ge=1)

    def __post_init__(self):
        embedding_kwargs(self.embedding)


@dataclass(frozen=True)
class NPETrainConfig(TrainConfig):
    """``[train]``: the shared knobs (:class:`surrogate.config.TrainConfig`, with NPE's defaults,
    :data:`~surrogate.pipelines.npe_training.NPE_DEFAULTS`: AdamW, 256 simulations per step, at
    most 150 epochs with cosine decay, early stopping after 30 epochs without a better validation
    loss, clipping at 5) and NPE's own.

    Attributes:
        weight_decay: AdamW weight decay.
        validation_fraction: share of the simulations held out for early stopping, in (0, 1).
        drop_invalid: drop (and count) simulations with NaN/inf; ``false`` refuses them.
        balance: balanced NPE's lambda (:func:`surrogate.losses.balanced_npe_loss`, Delaunoy et
            al. 2022, arXiv:2208.13624; 100 in the paper); 0 trains plain NPE. Only with
            ``[inference] method = "npe"``.
    """

    batch_size: int = setting(_D["batch_size"], ge=1)
    learning_rate: float = setting(_D["learning_rate"], gt=0)
    max_steps: int | None = setting(None, ge=1)
    max_epochs: int | None = setting(_D["max_epochs"], ge=1)
    lr_schedule: Literal["constant", "cosine"] = _D["lr_schedule"]
    patience: int | None = setting(_D["patience"], ge=1)
    max_grad_norm: float | None = setting(_D["max_grad_norm"], gt=0)
    weight_decay: float = setting(_D["weight_decay"], ge=0)
    validation_fraction: float = setting(_D["validation_fraction"], gt=0)
    drop_invalid: bool = _D["drop_invalid"]
    balance: float = setting(0.0, ge=0)

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
        coverage_observations: held-out simulations for expected coverage and SBC (0: none);
            with ``[data] file``, rows of the file not trained on.
        coverage_samples: posterior samples per coverage simulation.
    """

    num_samples: int = setting(10_000, ge=1)
    min_acceptance: float = setting(_D["min_acceptance"], gt=0, le=1)
    c2st: bool = True
    pair_plots: bool = True
    coverage_observations: int = setting(200, ge=0)
    coverage_samples: int = setting(1000, ge=1)


@dataclass(frozen=True)
class NPEInferenceConfig:
    """``[inference]``: amortised or sequential (:mod:`surrogate.pipelines.npe_sequential`).

    Attributes:
        method: ``"npe"`` (one round on prior simulations, amortised), ``"snpe_c"`` (SNPE-C with
            atomic proposals, Greenberg et al. 2019, arXiv:1905.07488) or ``"tsnpe"`` (truncated
            sequential NPE, Deistler et al. 2022, arXiv:2210.04815). The sequential methods
            target one observation ``x_o``: the first of ``[data] observations`` for a task,
            ``observation`` for a simulator; ``[data] file`` is refused (nothing to simulate).
        rounds: rounds of a sequential method (``>= 1``; round 1 is plain NPE).
        simulations_per_round: simulations per round; ``None``: ``[data] num_simulations``
            (default 10000) split evenly over the rounds.
        num_atoms: SNPE-C's atoms per simulation (``>= 2``).
        epsilon: TSNPE's posterior mass left outside the truncation region, in (0, 1).
        retrain_from_scratch: train a new flow every round instead of continuing the previous
            round's (``sbi``'s option of the same name; both default to continuing).
        observation: for a simulator: a CSV of ``x_o`` (sbibm's ``observation.csv`` layout;
            relative to the pipeline file).
    """

    method: Literal["npe", "snpe_c", "tsnpe"] = "npe"
    rounds: int = setting(2, ge=1)
    simulations_per_round: int | None = setting(None, ge=1)
    num_atoms: int = setting(10, ge=2)
    epsilon: float = setting(1e-4, gt=0, le=0.5)
    retrain_from_scratch: bool = False
    observation: Path | None = None


@dataclass(frozen=True)
class NPEConfig(PipelineConfig):
    """A whole NPE pipeline file (see the module documentation).

    Raises:
        ValueError: not exactly one source (``[data] task``, ``[data] file``, ``[simulator]``), a
            ``[prior]`` missing for a simulator or file or given with a task, an invalid
            ``[prior]`` table, or reference settings of the other kind of source.
    """

    data: NPEDataConfig = field(default_factory=NPEDataConfig)
    simulator: NPESimulatorConfig | None = None
    prior: Mapping[str, Any] | None = None
    model: NPEModelConfig = field(default_factory=NPEModelConfig)
    train: NPETrainConfig = field(default_factory=NPETrainConfig)
    validate: NPEValidateConfig = field(default_factory=NPEValidateConfig)
    inference: NPEInferenceConfig = field(default_factory=NPEInferenceConfig)

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

    def __post_init__(self):
        given = [name for name, value in (("[data] task", self.data.task), ("[data] file", self.data.file),
                                          ("[simulator]", self.simulator)) if value is not None]
        if len(given) != 1:
            raise ValueError("set what to train on with exactly one of [data] task (an sbibm task), [data] file "
                             "(HDF5 pairs theta, x) or [simulator] entry_point (your simulator); got "
                             + (" and ".join(given) if given else "none"))
        self._check_inference()
        if self.data.task is not None:
            if self.prior is not None:
                raise ValueError(f"[prior]: the task {self.data.task!r} has its own prior; a [prior] table goes with "
                                 "[simulator] or [data] file")
            if self.data.references is not None:
                raise ValueError("[data] references is for a simulator or file; a task's references are under "
                                 "[data] reference_root")
            return
        if self.prior is None:
            raise ValueError(f"[prior] is missing: {given[0]} needs the prior its parameters are drawn from "
                             "(e.g. [prior] kind = \"uniform\", low = [...], high = [...])")
        prior = prior_from_table(self.prior)
        if self.model.kind == "nsf" and prior.event_shape[0] < 2:
            raise ValueError("[model] kind = 'nsf' (coupling) needs at least 2 parameters; [prior] has 1: use "
                             "kind = 'maf_rqs' (or 'maf')")
        if self.data.reference_root is not None:
            raise ValueError("[data] reference_root is for sbibm tasks; for a simulator or file set [data] "
                             "references (a folder in sbibm's layout)")

    def _check_inference(self):
        method, observation = self.inference.method, self.inference.observation
        if method != "npe" and self.train.balance > 0:
            raise ValueError(f"[train] balance = {self.train.balance} is for [inference] method = 'npe', got "
                             f"{method!r}")
        if method != "npe" and self.model.ensemble > 1:
            raise ValueError(f"[model] ensemble = {self.model.ensemble} is for [inference] method = 'npe', got "
                             f"{method!r}")
        if method == "npe":
            if observation is not None:
                raise ValueError("[inference] observation is for method = 'snpe_c' or 'tsnpe'")
            return
        if self.data.file is not None:
            raise ValueError(f"[inference] method = {method!r} simulates in rounds: it needs [data] task or "
                             "[simulator], not [data] file")
        if self.simulator is not None and observation is None:
            raise ValueError(f"[inference] observation is missing: method = {method!r} needs the CSV of the one "
                             "observation x_o it targets")
        if self.data.task is not None and observation is not None:
            raise ValueError("[inference] observation: a task's x_o is the first of [data] observations")

"""The ``galaxy_vae`` family: simulate -> train the VAE and its flow prior -> sample -> validate.

The pipeline file (``pipelines/galaxy_vae.toml``) is read into :class:`GalaxyConfig` by
:func:`surrogate.config.load_pipeline`; every stage is a public function, so a user can run any
of them from Python; the CLI only dispatches through :data:`FAMILY`::

    cfg = surrogate.config.load_pipeline("pipelines/galaxy_vae.toml")
    files = simulate(cfg)                 # GalSim stamps (reused when the settings match)
    result = train(cfg)                   # VAE, then the flow prior; writes model.pt
    model = load_galaxy_vae(cfg.run.output_dir / "model.pt")
    report = run(cfg)                     # all of it, plus sample / validate / fit_unseen_psf

Sections of the file (every key optional; the defaults are those of the dataclasses below)::

    [run]         pipeline = "galaxy_vae", output_dir, seed, device, threads
    [data]        n_train, n_heldout, seed, catalog_dir and the options of
                  surrogate.simulators.galaxies.simulate_galaxies (stamp_size, pixel_scale ...)
    [unseen_psf]  n, and simulate_galaxies options overriding [data]'s (another PSF family)
    [model]       GalaxyVAE(...) keyword arguments (stamp_size, input_scale, flux_scale,
                  context_loc and context_scale come from the training set)
    [train]       the VAE stage: the shared knobs of surrogate.config.TrainConfig and beta
    [prior]       the flow-prior stage: batch_size, max_steps, learning_rate, latents
    [validate]    grid, map_steps, map_learning_rate, n_map_heldout

What :func:`run` writes into ``[run] output_dir``::

    data/train.h5, data/heldout.h5, data/unseen_psf.h5   GalSim stamps
    vae/, prior/      checkpoints + log.csv of the two training stages (a rerun resumes)
    model.pt          the trained GalaxyVAE; its config holds the file's sections, with
                      config["model"] = all the constructor arguments (load_galaxy_vae),
                      config["pixel_scale"] (arcsec/pixel) and config["zero_point"] (AB mag of
                      1 count, flux_zero_point; used by surrogate fit)
    report.json       KS distances, chi^2 of the forward-model fits, timings, settings
    morphology.png, morphology_psf_free.png, stamps.png, stamps_psf_free.png, deconvolution.png

``report.json`` keys: ``ks`` (statistic -> KS distance, observed stamps), ``ks_details``,
``ks_psf_free``, ``psf_free_means`` (mean |g|, sizes, concentration, Gini and M20 of the
PSF-free profiles, GalSim and VAE, beside Lanusse et al.'s figures), ``hsm_failures``,
``nan_statistics`` (number of NaN values of each statistic,
left out of the KS distances, per image kind and sample),
``reconstruction_chi2_per_pixel_heldout``, ``forward_model`` (``unseen_psf``: chi^2 per pixel
summary and values, relative flux error of the deconvolved profile, the PSF settings;
``heldout``), ``train``, ``prior``, ``timing`` (seconds per stage), ``data``, ``model``,
``config``, ``files``.

References:
    Lanusse et al. (2021), arXiv:2008.03833 (the model, its validation and the forward model).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, NamedTuple

import torch

from surrogate.config import PipelineConfig, TrainConfig, check_kwargs, setting
from surrogate.models.galaxy_vae import GalaxyVAE
from surrogate.pipelines import Family
from surrogate.pipelines.galaxy_vae_training import (GalaxyTrainResult, flux_zero_point, model_arguments, train_prior,
                                                     train_vae)
from surrogate.pipelines.galaxy_vae_validate import fit_unseen_psf, reconstruction_chi2, sample, summary, validate

__all__ = [
    "FAMILY",
    "GalaxyConfig",
    "GalaxyDataConfig",
    "GalaxyFiles",
    "GalaxyPriorConfig",
    "GalaxyTrainConfig",
    "GalaxyTrainResult",
    "GalaxyValidateConfig",
    "UnseenPSFConfig",
    "fit_unseen_psf",
    "load_galaxy_vae",
    "run",
    "sample",
    "simulate",
    "train",
    "validate",
]

PSFKind = Literal["moffat", "kolmogorov", "gaussian"]

SIMULATION_OPTIONS = ("stamp_size", "pixel_scale", "psf_size", "oversampling", "hst_psf_fraction", "psf_kinds",
                      "fwhm_range", "moffat_beta_range", "psf_shear_max", "size_jitter", "magnitude_jitter",
                      "snr_range", "noise_sigma", "galaxy_indices", "shear_max", "knot_fraction", "knot_number_range",
                      "knot_flux_range", "knot_sigma")
"""Keyword arguments of :func:`surrogate.simulators.galaxies.simulate_galaxies` set in ``[data]``."""

MODEL_DEFAULTS: Mapping[str, Any] = {"latent_dim": 16, "channels": (16, 32, 64), "hidden_features": 128,
                                     "flow_hidden_features": 64, "flow_transforms": 4}
"""``[model]`` arguments a file leaves out (the others take GalaxyVAE's defaults)."""

DATA_DERIVED = ("stamp_size", "input_scale", "flux_scale", "context_loc", "context_scale")
"""GalaxyVAE arguments computed from the training set (a file may not set them)."""


# --------------------------------------------------------------------------------------------
# The pipeline file


@dataclass(frozen=True)
class GalaxyDataConfig:
    """``[data]``: the training and held-out GalSim sets (seeds ``seed`` and ``seed + 1``).

    Attributes:
        n_train, n_heldout: stamps to train on and to validate with.
        seed: seed of the training set; the held-out set uses ``seed + 1``, the unseen-PSF set
            ``seed + 2``.
        catalog_dir: folder of the COSMOS example catalogue (relative to the pipeline file;
            ``None``: ``datasets/cosmos_example`` of the checkout).
        stamp_size ... galaxy_indices: the options of
            :func:`~surrogate.simulators.galaxies.simulate_galaxies` (pixels, arcsec per pixel,
            odd PSF side in pixels, sub-pixels per side, share of HST PSFs, ground-based PSF
            families, FWHM range in arcsec, Moffat beta range, largest PSF shear, size and
            magnitude jitter (a number or a (lo, hi) pair of mag), per-stamp SNR range, fixed
            noise in counts instead of the SNR, catalogue galaxies to draw from, extra
            intrinsic shear, star-forming knots: share of disk galaxies with knots, number
            range, share of the disk's flux, sigma in arcsec); the defaults are the simulator's except
            ``psf_kinds`` (Moffat only: Kolmogorov is kept for the unseen-PSF check).
    """

    n_train: int = setting(6000, ge=1)
    n_heldout: int = setting(1000, ge=1)
    seed: int = setting(1, ge=0)
    catalog_dir: Path | None = None
    stamp_size: int = setting(32, ge=1)
    pixel_scale: float = setting(0.15, gt=0)
    psf_size: int = setting(25, ge=1)
    oversampling: int = setting(4, ge=1)
    hst_psf_fraction: float = setting(0.25, ge=0, le=1)
    psf_kinds: tuple[PSFKind, ...] = ("moffat",)
    fwhm_range: tuple[float, float] = (0.5, 0.9)
    moffat_beta_range: tuple[float, float] = (2.5, 4.5)
    psf_shear_max: float = setting(0.05, ge=0, le=1)
    size_jitter: float = setting(0.1, ge=0)
    magnitude_jitter: float | tuple[float, float] = 0.25
    snr_range: tuple[float, float] | None = (20.0, 100.0)
    noise_sigma: float | None = setting(None, gt=0)
    galaxy_indices: tuple[int, ...] | None = None
    shear_max: float = setting(0.0, ge=0)
    knot_fraction: float = setting(0.0, ge=0, le=1)
    knot_number_range: tuple[int, int] = (10, 60)
    knot_flux_range: tuple[float, float] = (0.1, 0.5)
    knot_sigma: float = setting(0.05, gt=0)

    def __post_init__(self):
        from surrogate.simulators.galaxy_variations import VARIATION_OPTIONS, check_variations

        check_variations(**{k: getattr(self, k) for k in VARIATION_OPTIONS})
        if self.psf_size % 2 == 0 or self.psf_size > self.stamp_size:
            raise ValueError(f"psf_size must be odd and <= stamp_size ({self.stamp_size}), got {self.psf_size}")
        for name in ("fwhm_range", "moffat_beta_range", "snr_range"):
            low_high = getattr(self, name)
            if low_high is not None and not 0 < low_high[0] <= low_high[1]:
                raise ValueError(f"{name} must be [low, high] with 0 < low <= high, got {list(low_high)}")
        if not self.psf_kinds:
            raise ValueError("psf_kinds must name at least one PSF family")

    def simulation_options(self) -> dict[str, Any]:
        """The :func:`~surrogate.simulators.galaxies.simulate_galaxies` keyword arguments."""
        return {k: getattr(self, k) for k in SIMULATION_OPTIONS}


@dataclass(frozen=True)
class UnseenPSFConfig:
    """``[unseen_psf]``: the forward-model check's stamps (seed ``[data] seed + 2``), observed
    through PSFs the model never saw in training. ``n`` stamps; every other key is a
    :func:`~surrogate.simulators.galaxies.simulate_galaxies` option overriding ``[data]``'s
    (``None``: ``[data]``'s value); by default Kolmogorov PSFs of 0.9-1.1 arcsec FWHM."""

    n: int = setting(32, ge=1)
    psf_kinds: tuple[PSFKind, ...] | None = ("kolmogorov",)
    fwhm_range: tuple[float, float] | None = (0.9, 1.1)
    hst_psf_fraction: float | None = setting(0.0, ge=0, le=1)
    stamp_size: int | None = setting(None, ge=1)
    pixel_scale: float | None = setting(None, gt=0)
    psf_size: int | None = setting(None, ge=1)
    oversampling: int | None = setting(None, ge=1)
    moffat_beta_range: tuple[float, float] | None = None
    psf_shear_max: float | None = setting(None, ge=0, le=1)
    size_jitter: float | None = setting(None, ge=0)
    magnitude_jitter: float | tuple[float, float] | None = None
    snr_range: tuple[float, float] | None = None
    noise_sigma: float | None = setting(None, gt=0)
    galaxy_indices: tuple[int, ...] | None = None
    shear_max: float | None = setting(None, ge=0)
    knot_fraction: float | None = setting(None, ge=0, le=1)
    knot_number_range: tuple[int, int] | None = None
    knot_flux_range: tuple[float, float] | None = None
    knot_sigma: float | None = setting(None, gt=0)

    def overrides(self) -> dict[str, Any]:
        """The options set here (not ``None``)."""
        return {k: getattr(self, k) for k in SIMULATION_OPTIONS if getattr(self, k) is not None}


@dataclass(frozen=True)
class GalaxyTrainConfig(TrainConfig):
    """``[train]``: the VAE stage (:class:`~surrogate.train.steps.LikelihoodStep` on
    :func:`~surrogate.losses.galaxy_vae_loss`, Adam): the shared knobs of
    :class:`~surrogate.config.TrainConfig` (no ``patience``: this stage has no validation
    set), by default a cosine decay to ``final_lr_fraction`` of the rate, plus

    Attributes:
        beta: weight of the KL term of the ELBO.
    """

    batch_size: int = setting(64, ge=1)
    max_steps: int | None = setting(3000, ge=1)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    final_lr_fraction: float = setting(0.1, ge=0, le=1)
    checkpoint_every: int = setting(1000, ge=1)
    beta: float = setting(1.0, ge=0)

    def __post_init__(self):
        super().__post_init__()
        if self.patience is not None:
            raise ValueError("patience: the VAE stage has no validation set (leave patience out)")


@dataclass(frozen=True)
class GalaxyPriorConfig:
    """``[prior]``: the flow-prior stage, maximum likelihood of the encoded training latents
    (:func:`~surrogate.losses.flow_prior_loss`, Adam at a constant rate).

    Attributes:
        batch_size: latents per step and rank (at most the training set's share of a rank).
        max_steps: optimizer steps.
        learning_rate: Adam's rate.
        latents: ``"mean"`` or ``"sample"`` (one draw) of ``q(z|x)`` per training stamp.
    """

    batch_size: int = setting(256, ge=1)
    max_steps: int = setting(2000, ge=1)
    learning_rate: float = setting(1e-3, gt=0)
    latents: Literal["mean", "sample"] = "mean"


@dataclass(frozen=True)
class GalaxyValidateConfig:
    """``[validate]``.

    Attributes:
        grid: stamps per row of ``stamps.png``.
        map_steps: Adam iterations of each MAP fit (:func:`~surrogate.pipelines.forward.fit_map`).
        map_learning_rate: Adam's rate of the MAP fits.
        n_map_heldout: also MAP-fit up to this many held-out stamps (training PSF families).
    """

    grid: int = setting(8, ge=1)
    map_steps: int = setting(300, ge=0)
    map_learning_rate: float = setting(0.05, gt=0)
    n_map_heldout: int = setting(32, ge=1)


@dataclass(frozen=True)
class GalaxyConfig(PipelineConfig):
    """A whole ``galaxy_vae`` pipeline file (sections in the module documentation).

    ``model`` holds :class:`~surrogate.models.galaxy_vae.GalaxyVAE` keyword arguments; those a
    file leaves out take :data:`MODEL_DEFAULTS`, then the constructor's defaults.
    """

    data: GalaxyDataConfig = field(default_factory=GalaxyDataConfig)
    unseen_psf: UnseenPSFConfig = field(default_factory=UnseenPSFConfig)
    model: Mapping[str, Any] = setting(defaults=MODEL_DEFAULTS, kwargs_of="surrogate.models.galaxy_vae:GalaxyVAE",
                                       exclude=DATA_DERIVED)
    train: GalaxyTrainConfig = field(default_factory=GalaxyTrainConfig)
    prior: GalaxyPriorConfig = field(default_factory=GalaxyPriorConfig)
    validate: GalaxyValidateConfig = field(default_factory=GalaxyValidateConfig)
    RENAMED = {"simulate": "data", "train.lr": "train.learning_rate", "prior.lr": "prior.learning_rate",
               "validate.map_lr": "validate.map_learning_rate"}
    RETIRED_VALUES = {"train.max_grad_norm": (0, "leave max_grad_norm out for no clipping")}

    def __post_init__(self):
        factor = 2 ** len(self.model["channels"])
        if self.data.stamp_size % factor:
            raise ValueError(f"[data] stamp_size {self.data.stamp_size} must be a multiple of 2**len([model] "
                             f"channels) = {factor}")
        if self.unseen_psf.stamp_size not in (None, self.data.stamp_size):
            raise ValueError(f"[unseen_psf] stamp_size {self.unseen_psf.stamp_size} must equal [data] stamp_size "
                             f"{self.data.stamp_size} (the model's)")


# --------------------------------------------------------------------------------------------
# Stages


class GalaxyFiles(NamedTuple):
    """The three GalSim sets of a run (:func:`simulate`)."""

    train: Path
    heldout: Path
    unseen_psf: Path


def _simulate(path: Path, n: int, seed: int, options: Mapping[str, Any], catalog, progress: bool) -> Path:
    """Simulates ``path`` unless a file with the same settings exists; ``catalog()`` loads the catalogue."""
    from surrogate.data.galaxy import galaxy_file_info
    from surrogate.simulators.galaxies import simulate_galaxies_to_file

    if path.is_file():
        try:
            sim = galaxy_file_info(path).simulation
            if sim.get("n") == n and sim.get("seed") == seed and all(
                    sim.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in options.items()):
                return path
        except ValueError:
            pass
    return simulate_galaxies_to_file(path, n, catalog=catalog(), seed=seed, progress=progress, **options)


def simulate(cfg: GalaxyConfig, *, progress: bool = True) -> GalaxyFiles:
    """Simulates (or reuses, when a file's recorded settings match) the training, held-out and
    unseen-PSF sets into ``output_dir/data``.

    With several ranks, rank 0 simulates while the others wait, then they find the files in
    place (:func:`~surrogate.train.distributed.main_rank_first`).

    Raises:
        FileNotFoundError: the COSMOS catalogue files are missing.
        ImportError: GalSim is not installed (``pip install 'physics-surrogate[galaxy]'``).
    """
    from surrogate.simulators.cosmos import load_cosmos_catalog
    from surrogate.train import distributed

    folder = cfg.run.output_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    options = data.simulation_options()
    unseen = {**options, **cfg.unseen_psf.overrides()}
    catalog = functools.cache(functools.partial(load_cosmos_catalog, data.catalog_dir))
    progress = progress and distributed.context().is_main
    with distributed.main_rank_first():
        return GalaxyFiles(
            train=_simulate(folder / "train.h5", data.n_train, data.seed, options, catalog, progress),
            heldout=_simulate(folder / "heldout.h5", data.n_heldout, data.seed + 1, options, catalog, progress),
            unseen_psf=_simulate(folder / "unseen_psf.h5", cfg.unseen_psf.n, data.seed + 2, unseen, catalog, progress),
        )


def train(cfg: GalaxyConfig, *, resume: bool | str = True, progress: bool = True) -> GalaxyTrainResult:
    """Trains the VAE, then its flow prior, and writes ``output_dir/model.pt`` (``surrogate train``).

    Simulates the data first if needed (:func:`simulate`). Stage checkpoints go to
    ``output_dir/vae`` and ``output_dir/prior``; with ``resume`` a killed run continues from the
    last one. Across ranks each rank trains on its share of every epoch (``batch_size`` is per
    rank) and :class:`~surrogate.train.steps.LikelihoodStep` averages the gradients.

    Arguments:
        cfg: the pipeline configuration.
        resume: continue from the latest checkpoints if there are any (``True``, ``False`` or
            ``"anyway"``, as :func:`surrogate.train.fit`).
        progress: show progress bars.

    Returns:
        A :class:`GalaxyTrainResult` (its ``checkpoint`` is ``model.pt``).
    """
    from surrogate.data.galaxy import galaxy_file_info, read_galaxies
    from surrogate.train import distributed, save_checkpoint

    files = simulate(cfg, progress=progress)
    ctx = distributed.context()
    out, seed = cfg.run.output_dir, cfg.run.seed
    info = galaxy_file_info(files.train)
    stamps = read_galaxies(files.train, keys=("noise_variance", "profile", "magnitude", "half_light_radius"))
    kwargs = model_arguments(cfg.model, stamps, info.stamp_size)
    # the file's sections, [model] with the data-derived arguments (what load_galaxy_vae needs)
    config = {**cfg.to_dict(), "model": kwargs, "pixel_scale": info.pixel_scale}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same initial weights on every rank
        model = GalaxyVAE(**kwargs).to(distributed.resolve_device(cfg.run.device))
    progress = progress and ctx.is_main
    t0 = time.perf_counter()
    vae = train_vae(model, files.train, cfg.train, out_dir=out / "vae", seed=seed, config=config, resume=resume,
                    progress=progress)
    t1 = time.perf_counter()
    prior = train_prior(model, files.train, cfg.prior, out_dir=out / "prior", seed=seed, config=config,
                        resume=resume, progress=progress)
    t2 = time.perf_counter()
    path = out / "model.pt"
    with distributed.main_rank_first():
        if ctx.is_main:
            # the magnitude zero point of the training fluxes (surrogate fit's magnitude estimates);
            # in model.pt only, so that the stage checkpoints' resume checks are unchanged
            config = {**config, "zero_point": flux_zero_point(stamps)}
            save_checkpoint(path, modules={"model": model.eval()}, config=config, step=vae.steps + prior.steps)
    return GalaxyTrainResult(steps=vae.steps + prior.steps, history=vae.history, checkpoint=path, vae=vae, prior=prior,
                             model_arguments=kwargs, seconds={"train_vae_s": t1 - t0, "train_prior_s": t2 - t1})


def load_galaxy_vae(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> GalaxyVAE:
    """Rebuilds the trained :class:`GalaxyVAE` from ``model.pt`` (or a stage checkpoint).

    Arguments:
        path: a checkpoint whose ``config["model"]`` holds the constructor arguments, or a run
            folder (its ``model.pt``).
        device: where the model goes.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: an unreadable checkpoint, or one without GalaxyVAE arguments and weights.
    """
    from surrogate.train import load_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    ckpt = load_checkpoint(path)
    kwargs = ckpt["config"].get("model")
    if not isinstance(kwargs, Mapping) or "model" not in ckpt["modules"]:
        raise ValueError(f"{path}: not a galaxy_vae checkpoint (config['model'] of GalaxyVAE arguments and a "
                         f"'model' module expected; modules: {sorted(ckpt['modules'])})")
    model = GalaxyVAE(**check_kwargs(GalaxyVAE, kwargs, f"{path} config [model]"))
    model.load_state_dict(ckpt["modules"]["model"])
    return model.to(device).eval()


def _last(history: list[dict], key: str) -> float | None:
    return next((float(row[key]) for row in reversed(history) if key in row), None)


def run(cfg: GalaxyConfig, *, resume: bool | str = True, progress: bool = True) -> Path:
    """simulate -> train (resuming) -> sample -> validate -> fit_unseen_psf; writes the report.

    Across ranks: rank 0 simulates while the others wait, all ranks train, and rank 0 samples,
    validates and writes the report while the others wait.

    Returns:
        The path of ``report.json`` (keys in the module documentation).
    """
    from surrogate.data.galaxy import galaxy_file_info, read_galaxies
    from surrogate.metrics.report import write_report
    from surrogate.train import distributed

    out, t_start = cfg.run.output_dir, time.perf_counter()
    files = simulate(cfg, progress=progress)
    timing = {"simulate_s": time.perf_counter() - t_start}
    trained = train(cfg, resume=resume, progress=progress)
    timing.update(trained.seconds)
    path = out / "report.json"
    with distributed.main_rank_first():
        if not distributed.context().is_main:
            return path
        model = load_galaxy_vae(trained.checkpoint, device=distributed.resolve_device(cfg.run.device))
        held, unseen = read_galaxies(files.heldout), read_galaxies(files.unseen_psf)
        info = galaxy_file_info(files.train)
        t0 = time.perf_counter()
        generated = sample(model, held, seed=cfg.run.seed + 2)
        t1 = time.perf_counter()
        morphology = validate(held, generated, out, pixel_scale=info.pixel_scale, grid=cfg.validate.grid)
        t2 = time.perf_counter()
        v = cfg.validate
        forward = fit_unseen_psf(model, unseen, heldout={k: a[:v.n_map_heldout] for k, a in held.items()}, out_dir=out,
                                 steps=v.map_steps, learning_rate=v.map_learning_rate)
        forward["unseen_psf"]["psf"] = cfg.to_dict()["unseen_psf"]
        timing.update(sample_s=t1 - t0, morphology_s=t2 - t1, forward_model_s=time.perf_counter() - t2)
        timing["total_s"] = time.perf_counter() - t_start
        report = {
            "pipeline": "galaxy_vae",
            "config": cfg.to_dict(),
            "model": trained.model_arguments,
            "data": {"train": files.train, "heldout": files.heldout, "unseen_psf": files.unseen_psf,
                     "n_train": info.n, "n_heldout": len(held["observed"]), "n_unseen_psf": len(unseen["observed"]),
                     "stamp_size": info.stamp_size, "psf_size": info.psf_size, "pixel_scale_arcsec": info.pixel_scale},
            "train": {"steps": trained.vae.steps, "final_loss_nats_per_pixel": _last(trained.vae.history, "loss"),
                      "checkpoint": trained.vae.checkpoint},
            "prior": {"steps": trained.prior.steps, "final_nll_nats": _last(trained.prior.history, "loss")},
            **morphology,
            "reconstruction_chi2_per_pixel_heldout": summary(reconstruction_chi2(model, held)),
            "forward_model": forward,
            "timing": timing,
            "files": ["model.pt", "morphology.png", "morphology_psf_free.png", "stamps.png", "stamps_psf_free.png",
                      "deconvolution.png"],
        }
        return write_report(path, report)


FAMILY = Family(name="galaxy_vae", config=GalaxyConfig, train=train, run=run, generate=None)

"""The galaxy pipeline: simulate -> train the VAE -> train the flow prior -> sample -> validate.

:func:`run_galaxy_pipeline` takes the parsed TOML of ``pipelines/galaxy_vae.toml`` (the CLI's
``surrogate run``) and writes into ``out_dir``::

    data/train.h5, data/heldout.h5, data/unseen_psf.h5   GalSim stamps (reused when the settings match)
    vae/      checkpoints + log.csv of the VAE stage  (a rerun resumes)
    prior/    checkpoints + log.csv of the flow-prior stage
    model.pt  the trained GalaxyVAE (surrogate checkpoint; config["model"] = its constructor
              arguments; load with load_galaxy_vae)
    report.json               KS distances, chi^2 of the forward-model fits, timings, settings
    morphology.png            histograms of the statistics, held-out GalSim vs VAE (observed stamps)
    morphology_psf_free.png   the same for the PSF-free profiles (GalSim truth vs VAE samples)
    stamps.png, stamps_psf_free.png   GalSim (top) vs VAE (bottom), same conditions per column
    deconvolution.png         MAP fits under the unseen PSFs: observed, model, residual, G(z), truth

``report.json`` keys: ``ks`` (statistic -> KS distance, observed stamps), ``ks_details`` (with
p-values and sample sizes), ``ks_psf_free``, ``hsm_failures``,
``reconstruction_chi2_per_pixel_heldout`` (encoder mean, no fit), ``forward_model`` (``unseen_psf``:
chi^2 per pixel summary and values, relative flux error of the deconvolved profile; ``heldout``),
``train``, ``prior``, ``timing`` (seconds per stage), ``data``, ``model``, ``config``, ``files``.

Validation (Lanusse et al. 2021, arXiv:2008.03833, section 5): for every held-out GalSim stamp
the VAE samples a galaxy with the same magnitude and half-light radius, convolves it with the
same PSF and adds noise of the same variance; the morphology statistics of the two sets
(:mod:`surrogate.metrics.morphology`) are compared with KS distances. The PSF-free profiles are
compared too (generated vs GalSim's noiseless truth). The forward-model check fits
(:func:`surrogate.pipelines.forward.fit_map`) held-out galaxies observed through PSFs of a family
the model never saw in training (``[unseen_psf]``) and reports the chi-squared per pixel.

TOML schema (every key optional; defaults in brackets)::

    [run]
    pipeline = "galaxy_vae"       # how the CLI picks this pipeline
    output_dir = "runs/galaxy_vae"  # read by the CLI, which passes it as out_dir
    seed = 0                      # model initialisation, training noise, sampling
    threads = 1                   # read by the CLI: torch.set_num_threads
    device = "cpu"                # "cpu", "cuda" or "auto"

    [simulate]                    # the training and held-out GalSim sets
    n_train = 6000                # stamps to train on
    n_heldout = 1000              # held-out stamps for validation
    seed = 1                      # training set seed; held-out seed + 1, unseen-PSF set seed + 2
    catalog_dir = "..."           # [datasets/cosmos_example of the checkout]; relative paths from base_dir
    # and any option of surrogate.simulators.galaxies.simulate_galaxies:
    stamp_size = 32               # pixels
    pixel_scale = 0.15            # arcsec / pixel
    psf_size = 25                 # odd, pixels
    hst_psf_fraction = 0.25       # share of stamps observed through the catalogue's HST PSFs
    psf_kinds = ["moffat"]        # ground-based PSF families of the training/held-out sets
    fwhm_range = [0.5, 0.9]       # arcsec
    snr_range = [20, 100]         # per-stamp signal-to-noise ratio
    # oversampling, moffat_beta_range, psf_shear_max, size_jitter, magnitude_jitter, noise_sigma, galaxy_indices

    [unseen_psf]                  # forward-model check under PSFs never seen in training
    n = 32                        # stamps fitted
    psf_kinds = ["kolmogorov"]    # any simulate_galaxies option overriding [simulate]
    fwhm_range = [0.9, 1.1]
    hst_psf_fraction = 0.0

    [model]                       # GalaxyVAE constructor arguments
    latent_dim = 16
    channels = [16, 32, 64]
    hidden_features = 128
    flow_hidden_features = 64
    flow_transforms = 4
    # input_scale, flux_scale, context_loc, context_scale: [from the training set]

    [train]                       # VAE stage (surrogate.train.fit + LikelihoodStep)
    batch_size = 64
    max_steps = 3000
    lr = 1e-3                     # Adam; decays by cosine to lr * final_lr_fraction
    final_lr_fraction = 0.1
    beta = 1.0                    # KL weight
    max_grad_norm = 0.0           # 0: no clipping
    log_every = 50
    checkpoint_every = 1000

    [prior]                       # flow-prior stage on the encoded latents
    batch_size = 256
    max_steps = 2000
    lr = 1e-3
    latents = "mean"              # "mean" or "sample" of q(z|x)

    [validate]
    grid = 8                      # stamps per row of stamps.png
    map_steps = 300               # Adam iterations of the MAP fit
    map_lr = 0.05
    n_map_heldout = 32            # also MAP-fit this many held-out stamps (training PSF families)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from surrogate.data.galaxy import GalaxyStampDataset, galaxy_file_info, read_galaxies
from surrogate.data.hdf5 import atomic_output
from surrogate.models.galaxy_vae import GalaxyVAE, encode_dataset, flow_prior_loss, galaxy_vae_loss

__all__ = ["GALAXY_PIPELINE_DEFAULTS", "load_galaxy_vae", "run_galaxy_pipeline"]

GALAXY_PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {"pipeline": "galaxy_vae", "output_dir": "runs/galaxy_vae", "seed": 0, "threads": 1, "device": "cpu"},
    "simulate": {"n_train": 6000, "n_heldout": 1000, "seed": 1, "catalog_dir": None, "psf_kinds": ["moffat"]},
    "unseen_psf": {"n": 32, "psf_kinds": ["kolmogorov"], "fwhm_range": [0.9, 1.1], "hst_psf_fraction": 0.0},
    "model": {"latent_dim": 16, "channels": [16, 32, 64], "hidden_features": 128, "flow_hidden_features": 64,
              "flow_transforms": 4},
    "train": {"batch_size": 64, "max_steps": 3000, "lr": 1e-3, "final_lr_fraction": 0.1, "beta": 1.0,
              "max_grad_norm": 0.0, "log_every": 50, "checkpoint_every": 1000},
    "prior": {"batch_size": 256, "max_steps": 2000, "lr": 1e-3, "latents": "mean"},
    "validate": {"grid": 8, "map_steps": 300, "map_lr": 0.05, "n_map_heldout": 32},
}
"""Sections and default values of the pipeline TOML (see the module documentation)."""

_SIMULATION_OPTIONS = ("stamp_size", "pixel_scale", "psf_size", "oversampling", "hst_psf_fraction", "psf_kinds",
                       "fwhm_range", "moffat_beta_range", "psf_shear_max", "size_jitter", "magnitude_jitter",
                       "snr_range", "noise_sigma", "galaxy_indices")
_MODEL_KEYS = ("stamp_size", "latent_dim", "channels", "hidden_features", "input_scale", "flux_scale", "context_loc",
               "context_scale", "flow_hidden_features", "flow_transforms", "flow_seed")


def _sections(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Merges ``config`` over the defaults; unknown sections or keys raise ValueError."""
    unknown = sorted(set(config) - set(GALAXY_PIPELINE_DEFAULTS))
    if unknown:
        raise ValueError(f"galaxy pipeline: unknown section(s) {unknown}; allowed: {sorted(GALAXY_PIPELINE_DEFAULTS)}")
    allowed = {
        "run": set(GALAXY_PIPELINE_DEFAULTS["run"]),
        "simulate": {"n_train", "n_heldout", "seed", "catalog_dir", *_SIMULATION_OPTIONS},
        "unseen_psf": {"n", *_SIMULATION_OPTIONS},
        "model": set(_MODEL_KEYS) - {"stamp_size"},
        "train": set(GALAXY_PIPELINE_DEFAULTS["train"]),
        "prior": set(GALAXY_PIPELINE_DEFAULTS["prior"]),
        "validate": set(GALAXY_PIPELINE_DEFAULTS["validate"]),
    }
    out = {}
    for name, defaults in GALAXY_PIPELINE_DEFAULTS.items():
        table = config.get(name, {})
        if not isinstance(table, Mapping):
            raise ValueError(f"galaxy pipeline: [{name}] must be a table, got {type(table).__name__}")
        bad = sorted(set(table) - allowed[name])
        if bad:
            raise ValueError(f"galaxy pipeline: [{name}] unknown key(s) {bad}; allowed: {sorted(allowed[name])}")
        out[name] = {**defaults, **table}
    if out["run"]["pipeline"] != "galaxy_vae":
        raise ValueError(f"galaxy pipeline: [run].pipeline must be 'galaxy_vae', got {out['run']['pipeline']!r}")
    if out["prior"]["latents"] not in ("mean", "sample"):
        raise ValueError(f"galaxy pipeline: [prior].latents must be 'mean' or 'sample', got {out['prior']['latents']!r}")
    for section, key in (("simulate", "n_train"), ("simulate", "n_heldout"), ("unseen_psf", "n"), ("train", "max_steps"),
                         ("train", "batch_size"), ("prior", "max_steps"), ("prior", "batch_size")):
        value = out[section][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"galaxy pipeline: [{section}].{key} must be an integer >= 1, got {value!r}")
    return out


def _simulate(path: Path, n: int, seed: int, options: dict, catalog_dir, progress: bool, catalog_box: list) -> Path:
    """Simulates ``path`` unless a file with the same settings exists."""
    from surrogate.simulators.galaxies import load_cosmos_catalog, simulate_galaxies_to_file

    if path.is_file():
        try:
            sim = galaxy_file_info(path).simulation
            same = sim.get("n") == n and sim.get("seed") == seed and all(
                sim.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in options.items())
            if same:
                return path
        except ValueError:
            pass
    if not catalog_box:
        catalog_box.append(load_cosmos_catalog(catalog_dir))
    return simulate_galaxies_to_file(path, n, catalog=catalog_box[0], seed=seed, progress=progress, **options)


def load_galaxy_vae(path: str | os.PathLike, *, map_location: Any = "cpu") -> GalaxyVAE:
    """Rebuilds the trained :class:`GalaxyVAE` from the pipeline's ``model.pt`` (or any stage checkpoint).

    Arguments:
        path: a checkpoint whose ``config["model"]`` holds the constructor arguments.
        map_location: ``torch.load``'s argument.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError, ValueError: missing or unreadable checkpoint, or one without a model config.
    """
    from surrogate.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, map_location=map_location)
    kwargs = ckpt["config"].get("model")
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{path}: checkpoint config has no 'model' table of GalaxyVAE arguments")
    model = GalaxyVAE(**kwargs)
    model.load_state_dict(ckpt["modules"]["model"])
    return model.eval()


def _model_kwargs(cfg: dict, train: dict[str, np.ndarray], stamp_size: int) -> dict[str, Any]:
    kwargs = {k: v for k, v in cfg["model"].items()}
    kwargs["stamp_size"] = stamp_size
    kwargs.setdefault("input_scale", float(np.median(np.sqrt(train["noise_variance"]))))
    kwargs.setdefault("flux_scale", float(np.median(train["profile"].sum(axis=(1, 2)))))
    log_r = np.log(train["half_light_radius"].astype(np.float64))
    mag = train["magnitude"].astype(np.float64)
    kwargs.setdefault("context_loc", [float(mag.mean()), float(log_r.mean())])
    kwargs.setdefault("context_scale", [float(mag.std() + 1e-6), float(log_r.std() + 1e-6)])
    kwargs["channels"] = list(kwargs["channels"])
    return kwargs


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "median": float(np.median(values)), "p10": float(np.quantile(values, 0.1)),
            "p90": float(np.quantile(values, 0.9)), "n": int(values.size)}


def _plot_deconvolution(path: Path, rows: list[tuple[str, np.ndarray]], chi2: np.ndarray, n: int = 6) -> None:
    """Columns = fitted stamps; rows = (label, (N, S, S) images); a row labelled 'residual' is in sigma."""
    from matplotlib.figure import Figure

    from surrogate.metrics.plots import save_figure

    n = min(n, len(chi2))
    figure = Figure(figsize=(1.5 * n, 1.5 * len(rows)), layout="constrained")
    for i in range(n):
        for r, (label, images) in enumerate(rows):
            axis = figure.add_subplot(len(rows), n, r * n + i + 1)
            if label.startswith("residual"):
                axis.imshow(images[i], origin="lower", cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest")
            else:
                axis.imshow(images[i], origin="lower", cmap="magma", interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_ylabel(label, fontsize=7)
            if r == 0:
                axis.set_title(f"chi2/pix {chi2[i]:.2f}", fontsize=7)
    save_figure(figure, path)


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.floating, np.integer)):
            return clean(value.item())
        if isinstance(value, Path):
            return str(value)
        return value

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(clean(payload), indent=2, sort_keys=False) + "\n")


def run_galaxy_pipeline(config: Mapping[str, Any], out_dir: str | os.PathLike, *, progress: bool = True,
                        base_dir: str | os.PathLike | None = None) -> Path:
    """Runs simulate -> train VAE -> train flow prior -> sample -> validate; writes the report.

    Arguments:
        config: the parsed pipeline TOML (schema in the module documentation; missing keys take
            :data:`GALAXY_PIPELINE_DEFAULTS`).
        out_dir: folder for data, checkpoints, the model, PNGs and ``report.json`` (created).
        progress: show progress bars.
        base_dir: folder against which a relative ``[simulate].catalog_dir`` is resolved (the
            TOML file's folder); ``None``: the current working directory.

    Returns:
        The path of ``report.json``.

    Raises:
        ValueError: unknown sections or keys, bad values (naming the section and key).
        FileNotFoundError: the COSMOS catalogue files are missing.
    """
    from surrogate.metrics.morphology import (
        ks_distances,
        morphology_statistics,
        plot_morphology_histograms,
        plot_stamp_grid,
    )
    from surrogate.pipelines.forward import fit_map
    from surrogate.train import fit, save_checkpoint
    from surrogate.train.steps import CosineLikelihoodStep, LikelihoodStep

    from torch.utils.data import DistributedSampler

    from surrogate.train import distributed

    cfg = _sections(config)
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    ctx = distributed.context()
    device = distributed.resolve_device(cfg["run"]["device"])
    progress = progress and ctx.is_main
    seed = int(cfg["run"]["seed"])
    timing: dict[str, float] = {}
    t_start = time.perf_counter()

    # 1. Simulate (or reuse) the training, held-out and unseen-PSF sets.
    t0 = time.perf_counter()
    sim = cfg["simulate"]
    options = {k: sim[k] for k in _SIMULATION_OPTIONS if k in sim}
    catalog_dir = sim["catalog_dir"]
    if catalog_dir is not None and base_dir is not None and not Path(catalog_dir).is_absolute():
        catalog_dir = Path(base_dir) / catalog_dir
    unseen_options = {**options, **{k: v for k, v in cfg["unseen_psf"].items() if k != "n"}}
    box: list = []
    sim_seed = int(sim["seed"])
    for turn in ("main", "others") if ctx.distributed else ("main",):
        # with several ranks, rank 0 simulates and the others then find the files in place
        if (turn == "main") == ctx.is_main:
            train_file = _simulate(out / "data" / "train.h5", sim["n_train"], sim_seed, options, catalog_dir, progress, box)
            heldout_file = _simulate(out / "data" / "heldout.h5", sim["n_heldout"], sim_seed + 1, options, catalog_dir,
                                     progress, box)
            unseen_file = _simulate(out / "data" / "unseen_psf.h5", cfg["unseen_psf"]["n"], sim_seed + 2,
                                    unseen_options, catalog_dir, progress, box)
        if turn == "main":
            distributed.barrier()
    timing["simulate_s"] = time.perf_counter() - t0
    info = galaxy_file_info(train_file)

    # 2. Train the VAE (stage 1).
    t0 = time.perf_counter()
    train = read_galaxies(train_file)
    kwargs = _model_kwargs(cfg, train, info.stamp_size)
    run_config = {"model": kwargs, "pipeline": {k: dict(v) for k, v in cfg.items()}, "pixel_scale": info.pixel_scale}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GalaxyVAE(**kwargs).to(device)
    tr = cfg["train"]
    optimizer = torch.optim.Adam(model.vae_parameters(), lr=tr["lr"])
    beta = float(tr["beta"])
    clip = float(tr["max_grad_norm"]) or None
    step = CosineLikelihoodStep(model, optimizer, lambda m, b: galaxy_vae_loss(m, b, beta=beta), max_grad_norm=clip,
                                total_steps=tr["max_steps"], min_factor=tr["final_lr_fraction"])
    dataset = GalaxyStampDataset(train_file, keys=("observed", "psf", "noise_variance"), in_memory=True)
    # each rank its own share of every epoch's permutation; batch_size is per rank
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=tr["batch_size"], sampler=sampler, drop_last=True)
    vae_fit = fit(step, loader, max_steps=tr["max_steps"], out_dir=out / "vae", checkpoint_every=tr["checkpoint_every"],
                  config=run_config, resume=True, seed=seed, progress=progress, log_every=tr["log_every"])
    timing["train_vae_s"] = time.perf_counter() - t0

    # 3. Fit the flow prior to the encoded training latents (stage 2).
    t0 = time.perf_counter()
    full = GalaxyStampDataset(train_file, keys=("observed", "magnitude", "half_light_radius"), in_memory=True)
    with torch.random.fork_rng(devices=[]):  # the same latent draws on every rank (seed + 2 samples below)
        torch.manual_seed(seed + 3)
        latents = encode_dataset(model, DataLoader(full, batch_size=512), sample=cfg["prior"]["latents"] == "sample")
    pr = cfg["prior"]
    latent_set = _DictDataset(latents)
    prior_sampler = DistributedSampler(latent_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                       seed=seed + 1, drop_last=True)
    prior_loader = DataLoader(latent_set, batch_size=min(pr["batch_size"], len(latent_set) // ctx.world_size),
                              sampler=prior_sampler, drop_last=True)
    prior_step = LikelihoodStep(model, torch.optim.Adam(model.prior_parameters(), lr=pr["lr"]), flow_prior_loss)
    prior_fit = fit(prior_step, prior_loader, max_steps=pr["max_steps"], out_dir=out / "prior",
                    checkpoint_every=max(pr["max_steps"], 1), config=run_config, resume=True, seed=seed + 1,
                    progress=progress, log_every=max(1, pr["max_steps"] // 20))
    timing["train_prior_s"] = time.perf_counter() - t0
    model.eval()
    if not ctx.is_main:  # with several ranks, rank 0 samples, validates and writes the report
        distributed.barrier()
        return out / "report.json"
    save_checkpoint(out / "model.pt", modules={"model": model}, optimizers={}, config=run_config,
                    step=vae_fit.steps + prior_fit.steps)

    # 4. Sample one galaxy per held-out stamp (same magnitude, size, PSF, noise variance).
    t0 = time.perf_counter()
    held = read_galaxies(heldout_file)
    n = len(held["observed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        profiles = []
        for lo in range(0, n, 256):
            hi = min(n, lo + 256)
            profiles.append(model.sample(hi - lo, magnitude=torch.from_numpy(held["magnitude"][lo:hi]),
                                         half_light_radius=torch.from_numpy(held["half_light_radius"][lo:hi])).cpu())
        profile_gen = torch.cat(profiles)
        with torch.no_grad():
            clean = model.convolve(profile_gen, torch.from_numpy(held["psf"][:, None]))
        noise = torch.randn(clean.shape) * torch.from_numpy(held["noise_variance"]).sqrt().view(-1, 1, 1, 1)
        observed_gen = (clean + noise)[:, 0].numpy()
    profile_gen = profile_gen[:, 0].numpy()
    timing["sample_s"] = time.perf_counter() - t0

    # 5. Morphology statistics and KS distances.
    t0 = time.perf_counter()
    scale = info.pixel_scale
    stats_ref = morphology_statistics(held["observed"], pixel_scale=scale, noise_variance=held["noise_variance"])
    stats_gen = morphology_statistics(observed_gen, pixel_scale=scale, noise_variance=held["noise_variance"])
    ks = ks_distances(stats_ref, stats_gen)
    free_ref = morphology_statistics(held["profile"], pixel_scale=scale)
    free_gen = morphology_statistics(profile_gen, pixel_scale=scale)
    ks_free = ks_distances(free_ref, free_gen)
    plot_morphology_histograms(out / "morphology.png", stats_ref, stats_gen, ks=ks)
    plot_morphology_histograms(out / "morphology_psf_free.png", free_ref, free_gen, ks=ks_free)
    grid = int(cfg["validate"]["grid"])
    plot_stamp_grid(out / "stamps.png", held["observed"], observed_gen, n=grid, titles=("GalSim", "VAE"))
    plot_stamp_grid(out / "stamps_psf_free.png", held["profile"], profile_gen, n=grid, titles=("GalSim", "VAE"))
    timing["morphology_s"] = time.perf_counter() - t0

    # 6. Forward-model fits: unseen PSF family, and held-out stamps.
    t0 = time.perf_counter()
    va = cfg["validate"]

    def map_fit(stamps: dict[str, np.ndarray]):
        result = fit_map(model, torch.from_numpy(stamps["observed"][:, None]), torch.from_numpy(stamps["psf"][:, None]),
                         torch.from_numpy(stamps["noise_variance"]), magnitude=torch.from_numpy(stamps["magnitude"]),
                         half_light_radius=torch.from_numpy(stamps["half_light_radius"]), steps=va["map_steps"],
                         lr=va["map_lr"])
        return result

    unseen = read_galaxies(unseen_file)
    with torch.random.fork_rng(devices=[]):
        unseen_fit = map_fit(unseen)
        held_sub = {k: v[: va["n_map_heldout"]] for k, v in held.items()}
        held_fit = map_fit(held_sub)
    chi2_unseen = unseen_fit.chi2_per_pixel.cpu().numpy()
    chi2_held = held_fit.chi2_per_pixel.cpu().numpy()
    profile_fit = unseen_fit.profile.cpu().numpy()[:, 0]
    truth = unseen["profile"]
    flux_error = (profile_fit.sum(axis=(1, 2)) - truth.sum(axis=(1, 2))) / truth.sum(axis=(1, 2))
    residual = (unseen["observed"] - unseen_fit.model_image.cpu().numpy()[:, 0]) / np.sqrt(unseen["noise_variance"])[:, None, None]
    _plot_deconvolution(out / "deconvolution.png", [
        ("observed (unseen PSF)", unseen["observed"]), ("model PSF * G(z)", unseen_fit.model_image.cpu().numpy()[:, 0]),
        ("residual / sigma", residual), ("deconvolved G(z)", profile_fit), ("GalSim truth", truth)], chi2_unseen)
    timing["forward_model_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - t_start

    with torch.no_grad():
        x = torch.from_numpy(held["observed"][:, None]).to(device)
        recon = model.convolve(model.decode(model.encode(x).mean), torch.from_numpy(held["psf"][:, None]).to(device))
        chi2_recon = ((x - recon) ** 2).mean(dim=(1, 2, 3)).cpu().numpy() / held["noise_variance"]

    report = {
        "pipeline": "galaxy_vae",
        "config": cfg,
        "model": kwargs,
        "data": {"train": str(train_file), "heldout": str(heldout_file), "unseen_psf": str(unseen_file),
                 "n_train": len(train["observed"]), "n_heldout": n, "n_unseen_psf": len(unseen["observed"]),
                 "stamp_size": info.stamp_size, "psf_size": info.psf_size, "pixel_scale_arcsec": scale},
        "train": {"steps": vae_fit.steps, "final_loss_nats_per_pixel": _last(vae_fit.history, "loss"),
                  "checkpoint": vae_fit.checkpoint},
        "prior": {"steps": prior_fit.steps, "final_nll_nats": _last(prior_fit.history, "loss")},
        "ks": {k: v["ks"] for k, v in ks.items()},
        "ks_details": ks,
        "ks_psf_free": {k: v["ks"] for k, v in ks_free.items()},
        "hsm_failures": {"heldout": int((~stats_ref["hsm_ok"]).sum()), "generated": int((~stats_gen["hsm_ok"]).sum())},
        "reconstruction_chi2_per_pixel_heldout": _summary(chi2_recon),
        "forward_model": {
            "unseen_psf": {**_summary(chi2_unseen), "psf": cfg["unseen_psf"],
                           "flux_relative_error": _summary(flux_error), "chi2_per_pixel": chi2_unseen.tolist()},
            "heldout": _summary(chi2_held),
            "dof_note": "chi2 per pixel of a perfect model is about 1 - latent_dim / stamp_size**2",
        },
        "timing": timing,
        "files": ["model.pt", "morphology.png", "morphology_psf_free.png", "stamps.png", "stamps_psf_free.png",
                  "deconvolution.png"],
    }
    path = out / "report.json"
    _write_json(path, report)
    distributed.barrier()
    return path


def _last(history: list[dict], key: str) -> float | None:
    for row in reversed(history):
        if key in row:
            return float(row[key])
    return None


class _DictDataset(torch.utils.data.Dataset):
    """Rows of a dict of equal-length tensors."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = dict(tensors)
        self.n = len(next(iter(self.tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

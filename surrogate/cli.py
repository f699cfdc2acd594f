"""Command line: ``surrogate simulate|train|generate|validate|run|infer-energy|sample|fit``.

The only place that reads configuration files and changes torch's global settings (number of
threads, seeds). Every error ends the command with one line naming what is wrong (the file, key,
dataset, shape or value) and exit status 2, whatever its Python type; ``--debug`` shows the
traceback instead. Warnings are one line too (``surrogate: warning: ...``); with ``--strict`` an
:class:`~surrogate.checks.ExtrapolationWarning` (an incident energy, magnitude, size or data
outside the training range) is an error.

``train``, ``generate`` and ``run`` start :func:`surrogate.train.distributed.init_distributed`,
so the same command runs on one process or on many (``mpiexec -n 4 python -m mpi4py -m
surrogate run ...``, ``srun python -m mpi4py -m surrogate ...``, ``torchrun --nproc-per-node 4
-m surrogate run ...``). On SIGTERM or SIGUSR1 training writes a checkpoint and the command
exits with status 75; run it again to resume.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path

__all__ = ["main"]

EXIT_ERROR = 2
"""Exit status of every error (as argparse's usage errors)."""


def _energy_range(text: str) -> tuple[float, float]:
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"energy must be E or EMIN:EMAX in GeV, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(math.isfinite(p) for p in parts) or not 0 < parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(f"energy must be E or EMIN:EMAX with finite 0 < EMIN <= EMAX (GeV), "
                                         f"got {text!r}")
    return parts[0], parts[1]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _numbers(text: str) -> list[float]:
    """``"21.5"`` or ``"21.5,22,23.1"``: one value or one per stamp."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}")
    return values


def _indices(text: str) -> list[int]:
    """``"0,2,4"``: indices >= 0."""
    try:
        values = [int(p) for p in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated indices >= 0, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surrogate", description="Generative surrogates of physics simulators.")
    from surrogate import __version__

    p.add_argument("--version", action="version", version=f"surrogate {__version__}")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: the config's, else torch's)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (batch jobs)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--strict", action="store_true",
                   help="stop with an error, not a warning, on conditions outside the training range")
    p.add_argument("--start-timeout", type=_seconds, default=None, metavar="S",
                   help="seconds for all ranks to meet at the start of a distributed job (default 60)")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="S",
                   help="seconds a collective may wait for a rank during training (default 300)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="run a reference simulator from a dataset recipe (datasets/*.toml)")
    s.add_argument("recipe", type=Path)
    s.add_argument("--out", type=Path, default=None, help="output HDF5 (default: the recipe's output)")
    s.add_argument("--n", type=int, default=None, help="number of events (default: the recipe's)")
    s.add_argument("--seed", type=int, default=None)

    t = sub.add_parser("train", help="train the model of a pipeline file (resumes from its last checkpoint)")
    t.add_argument("config", type=Path)
    t.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    t.add_argument("--resume-anyway", action="store_true",
                   help="resume even if the configuration changed in a way that alters training (seed, model, data)")

    r = sub.add_parser("run", help="run a whole pipeline file (pipelines/*.toml)")
    r.add_argument("config", type=Path)
    r.add_argument("--resume-anyway", action="store_true",
                   help="resume even if the configuration changed in a way that alters training (seed, model, data)")

    _add_shower_commands(sub)
    _add_posterior_command(sub)
    _add_fit_command(sub)
    return p


def _add_shower_commands(sub) -> None:
    """``generate``, ``validate`` and ``infer-energy``: the calorimeter-shower commands."""
    g = sub.add_parser("generate", help="generate showers from a checkpoint into a CaloGAN- or CaloChallenge-layout "
                                        "HDF5 file")
    g.add_argument("checkpoint", type=Path, help="checkpoint file or run folder")
    g.add_argument("--n", type=_positive_int, default=None,
                   help="number of showers (required unless --energies-from gives them)")
    g.add_argument("--energy", type=_energy_range, default=(1.0, 100.0), help="incident energy E or EMIN:EMAX in GeV (uniform)")
    g.add_argument("--format", choices=("calogan", "calochallenge"), default="calogan",
                   help="file layout: calogan (layers, GeV) or calochallenge (incident_energies, showers; MeV)")
    g.add_argument("--geometry", type=Path, default=None, metavar="XML",
                   help="CaloChallenge binning file of the voxels (with --format calochallenge)")
    g.add_argument("--energies-from", type=Path, default=None, metavar="H5",
                   help="draw the incident energies from this shower file (all of them, in order, without --n)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--batch-size", type=_positive_int, default=1024)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")

    v = sub.add_parser("validate", help="compare generated with reference showers: observables, plots, classifier AUC")
    v.add_argument("reference", type=Path)
    v.add_argument("generated", type=Path)
    v.add_argument("--out", type=Path, required=True, help="report folder")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--threshold-mev", type=float, default=None,
                   help="readout threshold in MeV for both files: cells below it are empty (default 0.01; with "
                        "--geometry the challenge evaluation's: 1 for dataset 1, 0.01515 for datasets 2 and 3)")
    v.add_argument("--geometry", type=Path, default=None, metavar="XML",
                   help="compare CaloChallenge-layout files in this binning file's geometry, as the challenge's "
                        "evaluation does (its high-level features, separation powers, classifier AUCs)")
    v.add_argument("--classifier", choices=["fast", "calochallenge"], default="fast",
                   help="classifier test: fast (seconds) or the CaloChallenge 2022 protocol (a 3x2048 DNN, "
                        "50 epochs: about 15 CPU minutes per feature set at 10k vs 10k showers)")

    e = sub.add_parser("infer-energy", help="incident-energy posteriors of showers from a calo_flow run's likelihood")
    e.add_argument("run_dir", type=Path, help="calo_flow run folder or checkpoint")
    e.add_argument("showers", type=Path,
                   help="HDF5 file in the CaloGAN layout, or the CaloChallenge layout of the run's geometry")
    e.add_argument("--out", type=Path, required=True, help="output HDF5 (mean, median, q16, q84, map, flag; GeV)")
    e.add_argument("--prior", choices=("uniform", "log-uniform"), default="uniform",
                   help="prior over the training energy range (default: uniform)")
    e.add_argument("--n-grid", type=_positive_int, default=64, help="grid energies per pass (default: 64)")



def _add_posterior_command(sub) -> None:
    """``sample``: posterior samples from a saved NPE run."""
    smp = sub.add_parser("sample", help="posterior samples of one observation from a trained NPE run (sbibm CSV)")
    smp.add_argument("run_dir", type=Path, help="the run's output_dir (its posterior.pt) or a posterior.pt file")
    smp.add_argument("--x", type=Path, required=True,
                     help="observation CSV: a header row (data_1,...) and one data row, as sbibm's observation.csv")
    smp.add_argument("--n", type=_positive_int, default=10_000, help="number of samples (default 10000)")
    smp.add_argument("--out", type=Path, required=True, help="CSV to write (header parameter_1,parameter_2,...)")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--device", default="cpu")



def _add_fit_command(sub) -> None:
    """``fit``: MAP fits of real galaxy stamps with a galaxy_vae run."""
    fi = sub.add_parser("fit", help="MAP-fit real galaxy stamps with a galaxy_vae run (any pixel scale, own PSF, "
                                    "correlated noise)")
    fi.add_argument("run_dir", type=Path, help="galaxy_vae run folder (its model.pt) or checkpoint")
    fi.add_argument("stamps", type=Path, help="a GalSim RealGalaxyCatalog FITS table, or FITS stamps (one per image "
                                              "HDU, or a cube)")
    fi.add_argument("--out", type=Path, required=True, help="output folder: fit.h5, fit_NN.png, summary.json")
    fi.add_argument("--indices", type=_indices, default=None, help="which stamps or catalogue rows, e.g. 0,2 (default all)")
    fi.add_argument("--psf", type=Path, default=None, help="plain stamps: FITS PSF image(s), one for all or one per stamp")
    fi.add_argument("--pixel-scale", type=float, default=None, help="plain stamps: arcsec/pixel")
    fi.add_argument("--psf-pixel-scale", type=float, default=None, help="plain stamps: arcsec/pixel of the PSF "
                                                                        "images (default --pixel-scale)")
    fi.add_argument("--noise-variance", type=_numbers, default=None,
                    help="plain stamps: pixel noise variance in counts^2, one value or one per stamp")
    fi.add_argument("--noise-correlation", type=Path, default=None,
                    help="plain stamps: FITS noise correlation function image (zero lag at the centre); default white")
    fi.add_argument("--magnitude", type=_numbers, default=None,
                    help="the prior's magnitudes in the model's AB system, one or one per stamp (default: estimated "
                         "from each stamp with the model's zero point)")
    fi.add_argument("--half-light-radius", type=_numbers, default=None,
                    help="the prior's PSF-free half-light radii in arcsec, one or one per stamp (default: estimated)")
    fi.add_argument("--catalog-magnitude", action="store_true",
                    help="use the catalogue's MAG as the prior's magnitude (only if it is in the model's band and system)")
    fi.add_argument("--white-noise", action="store_true",
                    help="white-noise likelihood of the stamps' pixel variance, ignoring correlations (for comparison)")
    fi.add_argument("--fixed-centre", action="store_true",
                    help="keep each galaxy at its light centroid instead of fitting its sub-pixel centre")
    fi.add_argument("--steps", type=_positive_int, default=1000, help="Adam iterations of the MAP fit (default 1000)")
    fi.add_argument("--learning-rate", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    fi.add_argument("--seed", type=int, default=0, help="seed of the noise padding and noise-power estimate")
    fi.add_argument("--device", default="cpu")


def _load(path: Path, threads: int | None):
    """The pipeline file's configuration and family; applies ``[run] threads`` unless
    ``--threads`` was given."""
    import torch

    from surrogate.config import load_pipeline
    from surrogate.pipelines import get_family

    cfg = load_pipeline(path)
    if threads is None and cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    return cfg, get_family(cfg.run.pipeline)


def _stored_family(checkpoint: Path):
    """The family that wrote a checkpoint (from the configuration stored in it)."""
    from surrogate.pipelines import get_family
    from surrogate.train.checkpoint import checkpoint_config, find_checkpoint

    path = find_checkpoint(checkpoint)
    name = checkpoint_config(path).get("run", {}).get("pipeline")
    if not isinstance(name, str):
        raise ValueError(f"checkpoint {path} does not record its model family ([run] pipeline)")
    return get_family(name, where=f"checkpoint {path}")


def _run(args: argparse.Namespace) -> int:
    import torch

    from surrogate.train import distributed

    progress = not args.no_progress
    if args.command in ("train", "generate", "run"):
        # Slurm's SIGUSR1 ahead of the time limit stops training with a checkpoint (fit installs
        # its handler there); outside training it must not kill a job that generates or validates.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        timeouts = {k: v for k, v in (("timeout_s", args.timeout), ("start_timeout_s", args.start_timeout)) if v}
        distributed.init_distributed(**timeouts)
    main_rank = distributed.context().is_main
    progress = progress and main_rank
    say = print if main_rank else (lambda *a, **k: None)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if args.command == "simulate":
        from surrogate.pipelines.recipes import simulate_recipe

        path, what = simulate_recipe(args.recipe, output=args.out, n=args.n, seed=args.seed, progress=progress)
        say(f"wrote {what} to {path}")
    elif args.command == "generate":
        family = _stored_family(args.checkpoint)
        if family.generate is None:
            raise ValueError(f"{args.checkpoint}: the {family.name!r} family does not generate events")
        showers = {}
        if args.format != "calogan" or args.geometry is not None or args.energies_from is not None:
            from surrogate.data.binning import read_binning_xml

            geometry = None if args.geometry is None else read_binning_xml(args.geometry)
            showers = {"layout": args.format, "geometry": geometry, "energies_from": args.energies_from}
        elif args.n is None:
            raise ValueError("generate: give --n (the number of showers) or --energies-from")
        path = family.generate(args.checkpoint, args.out, args.n, energy_range_gev=args.energy,
                               batch_size=args.batch_size, seed=args.seed, device=args.device, progress=progress,
                               **showers)
        count = f"{args.n} events" if args.n is not None else f"showers at the energies of {args.energies_from}"
        say(f"wrote {count} to {path}")
    elif args.command == "sample":
        posterior_file = args.run_dir / "posterior.pt"
        family = _stored_family(posterior_file if posterior_file.is_file() else args.run_dir)
        if family.sample is None:
            raise ValueError(f"{args.run_dir}: the {family.name!r} family does not estimate posteriors")
        path = family.sample(args.run_dir, args.x, args.out, n=args.n, seed=args.seed, device=args.device)
        say(f"wrote {args.n} posterior samples to {path}")
    elif args.command == "validate" and args.geometry is not None:
        from surrogate.data.binning import read_binning_xml
        from surrogate.pipelines.fastsim_calochallenge import validate_calochallenge_files

        validate_calochallenge_files(args.reference, args.generated, args.out, geometry=read_binning_xml(args.geometry),
                                     threshold_mev=args.threshold_mev, seed=args.seed,
                                     classifier_protocol=args.classifier, progress=progress)
        say(f"report: {args.out / 'report.json'}")
    elif args.command == "validate":
        from surrogate.pipelines.fastsim import validate_calo

        threshold = {} if args.threshold_mev is None else {"threshold_mev": args.threshold_mev}
        validate_calo(args.reference, args.generated, args.out, seed=args.seed, progress=progress,
                      classifier_protocol=args.classifier, **threshold)
        say(f"report: {args.out / 'report.json'}")
    elif args.command == "infer-energy":
        from surrogate.pipelines.energy_inference import infer_energy

        path = infer_energy(args.run_dir, args.showers, args.out, prior=args.prior, n_grid=args.n_grid,
                            progress=progress)
        say(f"wrote energy posteriors to {path}")
    elif args.command == "fit":
        from surrogate.data.real_galaxies import read_real_stamps
        from surrogate.pipelines.fit_stamps import fit_run

        stamps = read_real_stamps(args.stamps, indices=args.indices, psf=args.psf, pixel_scale=args.pixel_scale,
                                  psf_pixel_scale=args.psf_pixel_scale, noise_variance=args.noise_variance,
                                  noise_correlation=args.noise_correlation)
        magnitude = args.magnitude
        if args.catalog_magnitude:
            if magnitude is not None or any(s.magnitude is None for s in stamps):
                raise ValueError(f"--catalog-magnitude: {args.stamps} has no MAG for every stamp, or --magnitude "
                                 "was given too")
            magnitude = [s.magnitude for s in stamps]
        one = (lambda v: v[0] if v is not None and len(v) == 1 else v)
        result = fit_run(args.run_dir, stamps, args.out, magnitude=one(magnitude),
                         half_light_radius=one(args.half_light_radius), white_noise=args.white_noise,
                         steps=args.steps, learning_rate=args.learning_rate, seed=args.seed, device=args.device,
                         fit_offset=not args.fixed_centre)
        summary = result.summary()
        say(f"fitted {len(stamps)} stamp(s), {result.noise_model} noise: median chi2 per pixel "
            f"{summary['median_chi2_per_pixel_galaxy']:.2f} over the galaxies' pixels, "
            f"{summary['median_chi2_per_pixel_stamp']:.2f} over the stamps; wrote {args.out / 'fit.h5'}")
    elif args.command == "train":
        cfg, family = _load(args.config, args.threads)
        resume = False if args.no_resume else ("anyway" if args.resume_anyway else True)
        result = family.train(cfg, resume=resume, progress=progress)
        say(f"trained {result.steps} steps; checkpoint: {result.checkpoint}")
    else:
        cfg, family = _load(args.config, args.threads)
        say(f"report: {family.run(cfg, resume='anyway' if args.resume_anyway else True, progress=progress)}")
    return 0


def _one_line(exc: BaseException) -> str:
    """The error as one line: its message (OS errors with their file name), else its type."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) or not isinstance(exc, (ValueError, OSError, RuntimeError, Warning)):
        text = f"{type(exc).__name__}: {text}"  # a bare KeyError message is just the key
    return " ".join(text.split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"surrogate: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``surrogate`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if not args.debug:
        # torch's C++ layer logs rendezvous retries and timeouts as many lines of its own; the
        # error raised from them is reported below in one
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    from surrogate.checks import ExtrapolationWarning
    from surrogate.train.distributed import shutdown
    from surrogate.train.loop import TrainingInterrupted

    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _show_warning
        if args.strict:
            warnings.simplefilter("error", ExtrapolationWarning)
        try:
            return _run(args)
        except TrainingInterrupted as exc:
            print(f"surrogate: {exc}", file=sys.stderr)
            return TrainingInterrupted.exit_status
        except KeyboardInterrupt:
            print("surrogate: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # every user-facing error: one line, status 2
            if args.debug:
                traceback.print_exc()
            strict = " (--strict)" if isinstance(exc, ExtrapolationWarning) else ""
            print(f"surrogate: error: {_one_line(exc)}{strict}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            shutdown()


if __name__ == "__main__":
    sys.exit(main())

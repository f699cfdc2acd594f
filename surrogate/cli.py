"""Command line: ``surrogate simulate|train|generate|validate|run|infer-energy``.

The only place that reads configuration files and changes torch's global settings (number of
threads, seeds). Bad input ends with a one-line error naming what is wrong and exit status 2.

``train``, ``generate`` and ``run`` start :func:`surrogate.train.distributed.init_distributed`,
so the same command runs on one process or on many (``mpiexec -n 4 python -m mpi4py -m
surrogate run ...``, ``srun python -m mpi4py -m surrogate ...``, ``torchrun --nproc-per-node 4
-m surrogate run ...``). On SIGTERM or SIGUSR1 training writes a checkpoint and the command
exits with status 75; run it again to resume.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

__all__ = ["main"]

def _energy_range(text: str) -> tuple[float, float]:
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"energy must be E or EMIN:EMAX in GeV, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 0 < parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(f"energy must be E or EMIN:EMAX with 0 < EMIN <= EMAX (GeV), got {text!r}")
    return parts[0], parts[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surrogate", description="Generative surrogates of physics simulators.")
    from surrogate import __version__

    p.add_argument("--version", action="version", version=f"surrogate {__version__}")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: the config's, else torch's)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (batch jobs)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="run a reference simulator from a dataset recipe (datasets/*.toml)")
    s.add_argument("recipe", type=Path)
    s.add_argument("--out", type=Path, default=None, help="output HDF5 (default: the recipe's output)")
    s.add_argument("--n", type=int, default=None, help="number of events (default: the recipe's)")
    s.add_argument("--seed", type=int, default=None)

    t = sub.add_parser("train", help="train the model of a pipeline file (resumes from its last checkpoint)")
    t.add_argument("config", type=Path)
    t.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")

    g = sub.add_parser("generate", help="generate showers from a checkpoint into a CaloGAN-layout HDF5 file")
    g.add_argument("checkpoint", type=Path, help="checkpoint file or run folder")
    g.add_argument("--n", type=int, required=True, help="number of showers")
    g.add_argument("--energy", type=_energy_range, default=(1.0, 100.0), help="incident energy E or EMIN:EMAX in GeV (uniform)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--batch-size", type=int, default=1024)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")

    v = sub.add_parser("validate", help="compare generated with reference showers: observables, plots, classifier AUC")
    v.add_argument("reference", type=Path)
    v.add_argument("generated", type=Path)
    v.add_argument("--out", type=Path, required=True, help="report folder")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--threshold-mev", type=float, default=None,
                   help="readout threshold in MeV for both files: cells below it are empty (default 0.01)")
    v.add_argument("--classifier", choices=["fast", "calochallenge"], default="fast",
                   help="classifier test: fast (seconds) or the CaloChallenge 2022 protocol (a 3x2048 DNN, "
                        "50 epochs: about 15 CPU minutes per feature set at 10k vs 10k showers)")

    r = sub.add_parser("run", help="run a whole pipeline file (pipelines/*.toml)")
    r.add_argument("config", type=Path)

    e = sub.add_parser("infer-energy", help="incident-energy posteriors of showers from a calo_flow run's likelihood")
    e.add_argument("run_dir", type=Path, help="calo_flow run folder or checkpoint")
    e.add_argument("showers", type=Path, help="CaloGAN-layout HDF5 file")
    e.add_argument("--out", type=Path, required=True, help="output HDF5 (mean, median, q16, q84, map, flag; GeV)")
    e.add_argument("--prior", choices=("uniform", "log-uniform"), default="uniform",
                   help="prior over the training energy range (default: uniform)")
    e.add_argument("--n-grid", type=int, default=64, help="grid energies per pass (default: 64)")
    return p


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
        distributed.init_distributed()
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
        path = family.generate(args.checkpoint, args.out, args.n, energy_range_gev=args.energy,
                               batch_size=args.batch_size, seed=args.seed, device=args.device, progress=progress)
        say(f"wrote {args.n} events to {path}")
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
    elif args.command == "train":
        cfg, family = _load(args.config, args.threads)
        result = family.train(cfg, resume=not args.no_resume, progress=progress)
        say(f"trained {result.steps} steps; checkpoint: {result.checkpoint}")
    else:
        cfg, family = _load(args.config, args.threads)
        say(f"report: {family.run(cfg, progress=progress)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``surrogate`` console script; returns the exit status."""
    from surrogate.train.distributed import DistributedSetupError, shutdown
    from surrogate.train.loop import TrainingInterrupted

    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, DistributedSetupError) as exc:
        print(f"surrogate: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"surrogate: {exc}", file=sys.stderr)
        return TrainingInterrupted.exit_status
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())

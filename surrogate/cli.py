"""Command line: ``surrogate simulate|train|generate|validate|run``.

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
import importlib
import signal
import sys
from pathlib import Path

__all__ = ["main"]

# Pipelines whose ``run_*_pipeline(table, out_dir, *, progress, base_dir)`` reads its own TOML
# schema (documented in those modules); relative output_dir values are relative to the file.
_OTHER_PIPELINES = {
    "galaxy_vae": ("surrogate.pipelines.galaxy", "run_galaxy_pipeline"),
    "npe": ("surrogate.pipelines.posterior", "run_npe_pipeline"),
}


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

    r = sub.add_parser("run", help="run a whole pipeline file (pipelines/*.toml)")
    r.add_argument("config", type=Path)
    return p


def _pipeline_kind(path: Path) -> str:
    from surrogate.config import read_toml

    return str(read_toml(path).get("run", {}).get("pipeline", "calo_gan"))


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
    if not main_rank:
        progress = False
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if args.command == "simulate":
        import dataclasses

        from surrogate.config import load_simulate_recipe, read_toml

        table = read_toml(args.recipe).get("simulate", {})
        if table.get("simulator") == "galsim_cosmos":
            from surrogate.simulators.galaxies import simulate_galaxies_from_recipe

            table = {**table, **{k: v for k, v in (("n", args.n), ("seed", args.seed)) if v is not None}}
            path = simulate_galaxies_from_recipe(table, output=args.out, progress=progress, base_dir=args.recipe.parent)
            print(f"wrote galaxy stamps to {path}")
            return 0
        from surrogate.pipelines.calo_gan import simulate

        recipe = load_simulate_recipe(args.recipe)
        changes = {k: v for k, v in (("n_events", args.n), ("seed", args.seed)) if v is not None}
        recipe = dataclasses.replace(recipe, **changes)
        path = simulate(recipe, output=args.out, progress=progress)
        print(f"wrote {recipe.n_events} showers to {path}")
        return 0

    if args.command == "generate":
        from surrogate.pipelines.calo_gan import generate_showers_distributed, load_generator

        generator = load_generator(args.checkpoint, device=distributed.resolve_device(args.device))
        path = generate_showers_distributed(generator, args.out, args.n, energy_range_gev=args.energy,
                                            batch_size=args.batch_size, seed=args.seed, progress=progress)
        if main_rank:
            print(f"wrote {args.n} showers to {path}")
        return 0

    if args.command == "validate":
        from surrogate.pipelines.fastsim import validate_calo

        validate_calo(args.reference, args.generated, args.out, seed=args.seed, progress=progress)
        print(f"report: {args.out / 'report.json'}")
        return 0

    kind = _pipeline_kind(args.config)
    if kind in _OTHER_PIPELINES:
        if args.command == "train":
            raise ValueError(f"{args.config}: `surrogate train` runs calo_gan pipelines; use `surrogate run` for {kind!r}")
        from surrogate.config import read_toml

        table = read_toml(args.config)
        run = table.get("run", {})
        if args.threads is None and int(run.get("threads", 0)) > 0:
            torch.set_num_threads(int(run["threads"]))
        out_dir = Path(run.get("output_dir", f"runs/{kind}"))
        if not out_dir.is_absolute():
            out_dir = args.config.resolve().parent / out_dir
        module, function = _OTHER_PIPELINES[kind]
        run_pipeline = getattr(importlib.import_module(module), function)
        report = run_pipeline(table, out_dir, progress=progress, base_dir=args.config.resolve().parent)
        if main_rank:
            print(f"report: {report if isinstance(report, Path) else out_dir / 'report.json'}")
        return 0
    if kind == "calo_gan":
        from surrogate.config import load_calo_pipeline
        from surrogate.pipelines import calo_gan

        cfg = load_calo_pipeline(args.config)
        if args.threads is None and cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        if args.command == "train":
            train_file, _ = calo_gan._data_files(cfg, progress)
            result = calo_gan.train_calo_gan(cfg, train_file, resume=not args.no_resume, progress=progress)
            if main_rank:
                print(f"trained {result.steps} steps; checkpoint: {result.checkpoint}")
            return 0
        report = calo_gan.run_calo_pipeline(cfg, progress=progress)
        if main_rank:
            print(f"report: {report}")
        return 0
    raise ValueError(f"{args.config}: unknown [run] pipeline {kind!r}; known: {['calo_gan', *_OTHER_PIPELINES]}")


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

"""Sequential and conservative NPE on sbibm tasks, one thread: prints a table, writes JSON.

For each task of ``--tasks`` (default two_moons):

1. Expected coverage (50/80/95 %) on ``--coverage-observations`` held-out prior simulations of
   plain NPE and balanced NPE (``balanced_npe_loss``, lambda = 100) (part ``coverage``), an
   ensemble of ``--ensemble`` NPEs (seeds 0..K-1, ``EnsemblePosterior``; part ``ensemble``)
   and an ensemble of balanced NPEs (part ``ensemble_bnpe``) at ``--n`` simulations.
2. C2ST at sbibm observation ``--observation`` of ``--methods``: NPE (one round, ``rounds x
   per_round`` simulations), SNPE-C and TSNPE (``rounds`` x ``per_round``; each round continues the
   previous round's flow unless ``--retrain-from-scratch``), and with ``--sbi`` the ``sbi``
   package's SNPE-C with the same rounds and seeds (``pip install sbi torch==<installed>``).

Usage::

    OMP_NUM_THREADS=1 python3 benchmarks/npe_sequential_calibration.py --n 1000 --rounds 2 --per-round 1000 \\
        --out benchmarks/results/npe_sequential_calibration.json
    python3 benchmarks/npe_sequential_calibration.py --tasks two_moons slcp gaussian_linear gaussian_mixture \\
        bernoulli_glm sir --parts coverage,ensemble --out benchmarks/results/npe_calibration_six_tasks.json
    python3 benchmarks/npe_sequential_calibration.py --tasks two_moons slcp gaussian_linear gaussian_mixture \\
        bernoulli_glm sir --parts c2st --methods tsnpe --rounds 10 --per-round 1000 \\
        --out benchmarks/results/npe_sequential_1e4/tsnpe_six_tasks.json   # add --sbi --methods "" for sbi's

References:
    Greenberg et al. (2019), arXiv:1905.07488; Deistler et al. (2022), arXiv:2210.04815;
    Delaunoy et al. (2022), arXiv:2208.13624; Hermans et al. (2022), arXiv:2110.06581.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import warnings
from pathlib import Path

import torch

from surrogate.data.hdf5 import atomic_output
from surrogate.losses import balanced_npe_loss
from surrogate.metrics.c2st import c2st
from surrogate.metrics.coverage import expected_coverage
from surrogate.models.npe import EnsemblePosterior, LowAcceptanceError
from surrogate.pipelines.npe_sequential import METHODS, run_sequential
from surrogate.pipelines.npe_training import train_npe
from surrogate.simulators.sbi_tasks import TASK_NAMES, get_task, load_reference, simulate_dataset

LEVELS = (0.5, 0.8, 0.95)


def _coverage_row(posterior, theta_test, x_test, seed, **info):
    """Coverage at :data:`LEVELS`, or ``"error"`` when rejection against the prior's support
    fails for a held-out simulation (a posterior with almost no mass inside it)."""
    torch.manual_seed(seed)
    try:
        cov = expected_coverage(posterior, theta_test, x_test, num_samples=500)
    except LowAcceptanceError as exc:
        return {**info, "error": str(exc)}
    return {**info, "coverage_at": {str(k): cov.coverage_at(k) for k in LEVELS}}


def coverage_rows(task_name: str, args) -> dict:
    """Expected coverage of plain NPE, balanced NPE and an ensemble on held-out prior simulations."""
    task = get_task(task_name)
    theta_test, x_test = simulate_dataset(task, args.coverage_observations, seed=args.seed + 100)
    theta, x = simulate_dataset(task, args.n, seed=args.seed)
    parts, rows = args.parts.split(","), {}
    losses = (("npe", None), ("bnpe_100", functools.partial(balanced_npe_loss, prior=task.prior, balance=100.0)))
    for name, loss in losses if "coverage" in parts else ():
        t0 = time.perf_counter()
        result = train_npe(theta, x, prior=task.prior, seed=args.seed, progress=False,
                           min_acceptance=args.min_acceptance, **({} if loss is None else {"loss": loss}))
        rows[f"coverage/{name}"] = _coverage_row(result.posterior, theta_test, x_test, args.seed + 2,
                                                 num_simulations=args.n, train_seconds=time.perf_counter() - t0,
                                                 epochs=result.epochs)
        print(task_name, name, rows[f"coverage/{name}"], flush=True)
    for part, name, loss in (("ensemble", f"ensemble_{args.ensemble}", None),
                             ("ensemble_bnpe", f"ensemble_{args.ensemble}_bnpe_100", losses[1][1])):
        if part not in parts:
            continue
        t0 = time.perf_counter()
        members = [train_npe(theta, x, prior=task.prior, seed=args.seed + k, progress=False,
                             min_acceptance=args.min_acceptance, **({} if loss is None else {"loss": loss})).posterior
                   for k in range(args.ensemble)]
        rows[f"coverage/{name}"] = _coverage_row(EnsemblePosterior(members), theta_test, x_test, args.seed + 2,
                                                 num_simulations=args.n, train_seconds=time.perf_counter() - t0)
        print(task_name, name, rows[f"coverage/{name}"], flush=True)
    return rows


def c2st_rows(task_name: str, args) -> dict:
    """C2ST at sbibm observation ``args.observation`` of NPE (one round of ``rounds x per_round``
    simulations), SNPE-C and TSNPE (``rounds`` x ``per_round``)."""
    task, rows = get_task(task_name), {}
    ref = load_reference(task_name, args.observation)
    total = args.rounds * args.per_round
    methods = [m for m in args.methods.split(",") if m] + (["sbi_snpe_c"] if args.sbi else [])
    for method in methods if "c2st" in args.parts.split(",") else ():
        if method == "sbi_snpe_c":
            rows[f"c2st/{method}"] = _sbi_snpe_c(task, ref, args)
            print(task_name, method, rows[f"c2st/{method}"], flush=True)
            continue
        t0 = time.perf_counter()
        per_round = total if method == "npe" else args.per_round
        result = run_sequential(task.simulate, task.prior, ref.observation, method=method, rounds=args.rounds,
                                simulations_per_round=per_round, seed=args.seed, progress=False,
                                retrain_from_scratch=args.retrain_from_scratch)
        seconds = time.perf_counter() - t0
        torch.manual_seed(args.seed + 2)
        samples = result.posterior.sample((10_000,), x=ref.observation)
        rows[f"c2st/{method}"] = {"num_simulations": total, "rounds": len(result.rounds),
                                  "observation": args.observation,
                                  "c2st": c2st(ref.samples[:10_000], samples), "wall_seconds": seconds,
                                  "per_round": [{k: r[k] for k in ("round", "proposal", "acceptance_rate",
                                                                   "train_seconds")} for r in result.rounds]}
        print(task_name, method, rows[f"c2st/{method}"], flush=True)
    return rows


def _sbi_snpe_c(task, ref, args) -> dict:
    """``sbi``'s SNPE-C (``NPE_C``, its defaults: nsf, batch 200, lr 5e-4, 10 atoms, the same
    network trained on across rounds) with this script's rounds, simulations per round and seeds
    (round ``r`` draws with ``seed + 10 r``, as :func:`run_sequential`)."""
    try:
        from sbi.inference import NPE_C
    except ImportError as exc:  # optional, benchmark-only dependency
        raise SystemExit("--sbi needs the sbi package: pip install sbi torch==" + torch.__version__) from exc
    t0 = time.perf_counter()
    inference = NPE_C(prior=task.prior, density_estimator="nsf", show_progress_bars=False)
    proposal, x_o, per_round = task.prior, ref.observation, []
    for r in range(args.rounds):
        torch.manual_seed(args.seed + 10 * r)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nflows' deprecated triangular_solve and sbi's notices
            theta = proposal.sample((args.per_round,)).float()
            x = task.simulate(theta)
            t1 = time.perf_counter()
            estimator = inference.append_simulations(theta, x, proposal=proposal).train(num_atoms=10)
            proposal = inference.build_posterior(estimator).set_default_x(x_o)
        per_round.append({"round": r + 1, "proposal": "prior" if r == 0 else "posterior",
                          "train_seconds": time.perf_counter() - t1})
    seconds = time.perf_counter() - t0  # simulating and training, as for this project's methods
    torch.manual_seed(args.seed + 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = proposal.sample((10_000,), x=x_o, show_progress_bars=False)
    return {"num_simulations": args.rounds * args.per_round, "rounds": args.rounds, "observation": args.observation,
            "c2st": c2st(ref.samples[:10_000], samples), "wall_seconds": seconds, "per_round": per_round}


def table(rows: dict) -> str:
    """Markdown table, one line per task and method."""
    lines = ["| task | part | method | simulations | C2ST | coverage 50 % | 80 % | 95 % | seconds |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, row in rows.items():
        task, part, method = key.split("/")
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        cov = [fmt(row.get("coverage_at", {}).get(str(k))) for k in LEVELS] if "error" not in row else ["failed"] * 3
        seconds = row.get("train_seconds", row.get("wall_seconds"))
        lines.append(f"| {task} | {part} | {method} | {row['num_simulations']} | {fmt(row.get('c2st'))} | "
                     + " | ".join(cov) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons"], choices=TASK_NAMES)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-round", type=int, default=1000)
    parser.add_argument("--observation", type=int, default=1)
    parser.add_argument("--retrain-from-scratch", action="store_true",
                        help="a new flow every round (default: continue the previous round's)")
    parser.add_argument("--methods", default="npe,snpe_c,tsnpe",
                        help="this project's methods in the C2ST part, comma-separated (npe, snpe_c, tsnpe; "
                             "none: an empty string)")
    parser.add_argument("--sbi", action="store_true", help="also sbi's SNPE-C in the C2ST part (needs sbi)")
    parser.add_argument("--coverage-observations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-acceptance", type=float, default=1e-5,
                        help="lowest rejection rate against the prior's support before sampling fails (coverage "
                             "part; at 10^3 simulations an slcp posterior reached 1e-4 on one held-out simulation)")
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--parts", default="coverage,ensemble,c2st")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    unknown = set(filter(None, args.methods.split(","))) - set(METHODS)
    if unknown:
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(1)
    rows = {}
    for task_name in args.tasks:
        for key, row in {**coverage_rows(task_name, args), **c2st_rows(task_name, args)}.items():
            rows[f"{task_name}/{key}"] = row
        if args.out is not None:  # after every task: a partial run leaves a usable file
            with atomic_output(args.out) as tmp:
                tmp.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                           "torch_threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()

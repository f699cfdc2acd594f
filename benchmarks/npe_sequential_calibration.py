"""Sequential and conservative NPE on two_moons, one thread: prints a table, writes JSON.

1. Expected coverage (50/80/95 %) on held-out prior simulations of plain NPE, balanced NPE
   (``balanced_npe_loss``, lambda = 100) and an ensemble of ``--ensemble`` NPEs (seeds 0..K-1,
   ``EnsemblePosterior``) at ``--n`` simulations.
2. C2ST on observation 1 of NPE (one round, ``rounds x per_round`` simulations), SNPE-C and TSNPE
   (``rounds`` x ``per_round``).

Usage::

    OMP_NUM_THREADS=1 python3 benchmarks/npe_sequential_calibration.py --n 1000 --rounds 2 --per-round 1000 \\
        --out benchmarks/results/npe_sequential_calibration.json

References:
    Greenberg et al. (2019), arXiv:1905.07488; Deistler et al. (2022), arXiv:2210.04815;
    Delaunoy et al. (2022), arXiv:2208.13624; Hermans et al. (2022), arXiv:2110.06581.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from surrogate.losses import balanced_npe_loss
from surrogate.metrics.c2st import c2st
from surrogate.metrics.coverage import expected_coverage
from surrogate.models.npe import EnsemblePosterior
from surrogate.pipelines.npe_sequential import run_sequential
from surrogate.pipelines.npe_training import train_npe
from surrogate.simulators.sbi_tasks import get_task, load_reference, simulate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-round", type=int, default=1000)
    parser.add_argument("--coverage-observations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--parts", default="coverage,ensemble,c2st")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = get_task("two_moons")
    rows = {}
    theta_test, x_test = simulate_dataset(task, args.coverage_observations, seed=args.seed + 100)
    theta, x = simulate_dataset(task, args.n, seed=args.seed)
    parts = args.parts.split(",")
    for name, loss in () if "coverage" not in parts else (("npe", None), ("bnpe_100", functools.partial(balanced_npe_loss, prior=task.prior,
                                                                      balance=100.0))):
        t0 = time.perf_counter()
        kwargs = {} if loss is None else {"loss": loss}
        result = train_npe(theta, x, prior=task.prior, seed=args.seed, progress=False, **kwargs)
        seconds = time.perf_counter() - t0
        torch.manual_seed(args.seed + 2)
        cov = expected_coverage(result.posterior, theta_test, x_test, num_samples=500)
        rows[f"coverage/{name}"] = {"num_simulations": args.n, "train_seconds": seconds,
                                    "coverage_at": {str(k): cov.coverage_at(k) for k in (0.5, 0.8, 0.95)},
                                    "epochs": result.epochs}
        print(name, rows[f"coverage/{name}"], flush=True)

    if "ensemble" in parts:
        t0 = time.perf_counter()
        members = [train_npe(theta, x, prior=task.prior, seed=args.seed + k, progress=False).posterior
                   for k in range(args.ensemble)]
        seconds = time.perf_counter() - t0
        torch.manual_seed(args.seed + 2)
        cov = expected_coverage(EnsemblePosterior(members), theta_test, x_test, num_samples=500)
        rows[f"coverage/ensemble_{args.ensemble}"] = {
            "num_simulations": args.n, "train_seconds": seconds,
            "coverage_at": {str(k): cov.coverage_at(k) for k in (0.5, 0.8, 0.95)}}
        print(f"ensemble_{args.ensemble}", rows[f"coverage/ensemble_{args.ensemble}"], flush=True)

    ref = load_reference("two_moons", 1)
    total = args.rounds * args.per_round
    for method in ("npe", "snpe_c", "tsnpe") if "c2st" in parts else ():
        t0 = time.perf_counter()
        per_round = total if method == "npe" else args.per_round
        result = run_sequential(task.simulate, task.prior, ref.observation, method=method, rounds=args.rounds,
                                simulations_per_round=per_round, seed=args.seed, progress=False)
        seconds = time.perf_counter() - t0
        torch.manual_seed(args.seed + 2)
        samples = result.posterior.sample((10_000,), x=ref.observation)
        rows[f"c2st/{method}"] = {"num_simulations": total, "rounds": result.rounds.__len__(),
                                  "c2st": c2st(ref.samples[:10_000], samples), "wall_seconds": seconds,
                                  "per_round": [{k: r[k] for k in ("round", "proposal", "acceptance_rate",
                                                                   "train_seconds")} for r in result.rounds]}
        print(method, rows[f"c2st/{method}"], flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

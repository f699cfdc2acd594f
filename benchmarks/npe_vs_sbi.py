"""This project's NPE against the ``sbi`` package's NPE on sbibm tasks, same data and seeds.

For each (task, simulation budget, seed) both methods train on the *same* simulations
(``simulate_dataset(task, n, seed=seed)``), then draw 10,000 posterior samples for each of the
sbibm observations 1-10 and are scored with the sbibm C2ST against the reference posterior
samples (0.5 is perfect). Reported: mean C2ST over the observations and training wall time and
CPU time (the machine may be shared: CPU time of this single-threaded process is the steadier
measure of work). Default grid: two_moons at 10^3 and 10^4 simulations, the other five sbibm
tasks (slcp, gaussian_linear, gaussian_mixture, bernoulli_glm, sir) at 10^4, seed 0.

- this project: :func:`surrogate.pipelines.npe_training.train_npe` with the settings of
  ``pipelines/npe_two_moons.toml`` (``OURS`` below).
- sbi: ``sbi.inference.NPE(prior, density_estimator="nsf")`` with ``train()`` defaults (batch 200,
  lr 5e-4, 10 % validation, stop after 20 epochs without improvement) -- the configuration of the
  published sbibm NPE results; ``sbi`` is an optional, benchmark-only dependency
  (``pip install sbi torch==<installed version>``).

``torch.set_num_threads(--threads)`` (default 1) and one BLAS thread for the C2ST classifier are set
deliberately at the start and recorded in the JSON. Results are written after every run
(atomically) to ``--out`` (default ``benchmarks/results/npe_vs_sbi.json``), so a partial run
leaves a usable file; the table is printed at the end.

    python benchmarks/npe_vs_sbi.py                       # full grid, several hours on one core
    python benchmarks/npe_vs_sbi.py --runs two_moons:1000 --observations 1 2 --methods ours
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from surrogate.data.hdf5 import atomic_output  # noqa: E402
from surrogate.metrics.c2st import c2st  # noqa: E402
from surrogate.pipelines.npe_training import train_npe  # noqa: E402
from surrogate.simulators.sbi_tasks import TASK_NAMES, get_task, load_reference, simulate_dataset  # noqa: E402

DEFAULT_RUNS = ("two_moons:1000", "two_moons:10000", "slcp:10000", "gaussian_linear:10000",
                "gaussian_mixture:10000", "bernoulli_glm:10000", "sir:10000")

OURS = {
    "kind": "nsf",
    "flow_kwargs": {"hidden_features": 64, "num_transforms": 5, "num_blocks": 2, "num_bins": 10, "tail_bound": 3.0},
    "batch_size": 256,
    "learning_rate": 1e-3,
    "lr_schedule": "cosine",
    "max_epochs": 150,
    "patience": 30,
    "validation_fraction": 0.1,
    "max_grad_norm": 5.0,
}
"""This project's settings (the same as ``pipelines/npe_two_moons.toml``)."""


def _train_ours(task, theta, x, seed):
    result = train_npe(theta, x, prior=task.prior, seed=seed, progress=False, **OURS)
    info = {"train_seconds": result.train_seconds, "train_cpu_seconds": result.train_cpu_seconds,
            "epochs": result.epochs, "best_validation_loss": result.best_validation_loss}
    posterior = result.posterior

    def sample(x_obs, n):
        samples, acceptance = posterior.sample_with_acceptance((n,), x=x_obs)
        return samples, float(acceptance)

    return sample, info


def _train_sbi(task, theta, x, seed):
    try:
        from sbi.inference import NPE
    except ImportError as exc:  # optional dependency
        raise SystemExit("the sbi package is needed for --methods sbi: pip install sbi torch==" + torch.__version__) from exc
    torch.manual_seed(seed)
    inference = NPE(prior=task.prior, density_estimator="nsf", show_progress_bars=False)
    inference.append_simulations(theta, x)
    t0, c0 = time.perf_counter(), time.process_time()
    estimator = inference.train()
    info = {"train_seconds": time.perf_counter() - t0, "train_cpu_seconds": time.process_time() - c0,
            "epochs": int(inference._summary["epochs_trained"][-1]),
            "best_validation_loss": float(inference._summary["best_validation_loss"][-1])}
    posterior = inference.build_posterior(estimator)

    def sample(x_obs, n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nflows' LULinear.inverse: deprecated triangular_solve
            samples = posterior.sample((n,), x=x_obs, show_progress_bars=False)
        return samples, None

    return sample, info


TRAINERS = {"ours": _train_ours, "sbi": _train_sbi}


def run_one(task_name, num_simulations, seed, method, observations, num_samples):
    """Trains one method on one budget and scores it on the observations; returns a record."""
    task = get_task(task_name)
    theta, x = simulate_dataset(task, num_simulations, seed=seed)
    sample, info = TRAINERS[method](task, theta, x, seed)
    scores, acceptance = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1000)
        for k in observations:
            ref = load_reference(task_name, k)
            samples, acc = sample(ref.observation, num_samples)
            scores.append(c2st(ref.samples[:num_samples], samples[:num_samples]))
            acceptance.append(acc)
            print(f"  {method:4s} {task_name} n={num_simulations} seed={seed} obs {k}: C2ST {scores[-1]:.4f}", flush=True)
    return {"task": task_name, "num_simulations": num_simulations, "seed": seed, "method": method,
            "c2st": dict(zip(map(int, observations), scores)), "c2st_mean": float(np.mean(scores)),
            "acceptance_rate": acceptance if method == "ours" else None, **info}


def table(records) -> str:
    """Markdown table: one row per (task, budget), mean over seeds, both methods side by side."""
    keys = sorted({(r["task"], r["num_simulations"]) for r in records}, key=lambda k: (DEFAULT_ORDER.get(k[0], 9), k[1]))
    lines = ["| task | simulations | C2ST ours | C2ST sbi | train s ours | train s sbi | CPU s ours | CPU s sbi | epochs ours | epochs sbi |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task, n in keys:
        cells = {}
        for method in ("ours", "sbi"):
            rs = [r for r in records if r["task"] == task and r["num_simulations"] == n and r["method"] == method]
            if rs:
                cells[method] = (np.mean([r["c2st_mean"] for r in rs]), np.mean([r["train_seconds"] for r in rs]),
                                 np.mean([r["train_cpu_seconds"] for r in rs]), np.mean([r["epochs"] for r in rs]))
        fmt = lambda m, i, f: (f.format(cells[m][i]) if m in cells else "-")
        lines.append(f"| {task} | {n} | {fmt('ours', 0, '{:.3f}')} | {fmt('sbi', 0, '{:.3f}')} | "
                     f"{fmt('ours', 1, '{:.0f}')} | {fmt('sbi', 1, '{:.0f}')} | {fmt('ours', 2, '{:.0f}')} | "
                     f"{fmt('sbi', 2, '{:.0f}')} | {fmt('ours', 3, '{:.0f}')} | {fmt('sbi', 3, '{:.0f}')} |")
    return "\n".join(lines)


DEFAULT_ORDER = {name: i for i, name in enumerate(TASK_NAMES)}


def _write(path: Path, payload: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS),
                        help=f"TASK:NUM_SIMULATIONS ..., TASK one of {', '.join(TASK_NAMES)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=["ours", "sbi"], choices=sorted(TRAINERS))
    parser.add_argument("--observations", nargs="+", type=int, default=list(range(1, 11)))
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "npe_vs_sbi.json")
    args = parser.parse_args(argv)
    for spec in args.runs:  # fail now, not after hours of earlier runs
        task_name, _, n = spec.partition(":")
        if task_name not in TASK_NAMES or not n.isdigit() or int(n) < 1:
            parser.error(f"--runs: expected TASK:NUM_SIMULATIONS with TASK one of {TASK_NAMES}, got {spec!r}")

    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # the C2ST classifier's BLAS
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import sbi

        sbi_version = sbi.__version__
    except ImportError:
        sbi_version = None
    payload = {"settings": {"torch_threads": args.threads, "blas_threads": 1, "torch": torch.__version__,
                            "sbi": sbi_version, "python": platform.python_version(), "machine": platform.machine(),
                            "ours": OURS, "sbi_npe": {"density_estimator": "nsf", "train": "defaults"},
                            "num_samples": args.num_samples, "observations": args.observations},
               "records": []}
    for spec in args.runs:
        task_name, n = spec.split(":")
        for seed in args.seeds:
            for method in args.methods:
                record = run_one(task_name, int(n), seed, method, args.observations, args.num_samples)
                print(f"{method} {task_name} n={n} seed={seed}: mean C2ST {record['c2st_mean']:.4f}, "
                      f"train {record['train_seconds']:.0f} s wall / {record['train_cpu_seconds']:.0f} s CPU, "
                      f"{record['epochs']:.0f} epochs", flush=True)
                payload["records"].append(record)
                payload["table"] = table(payload["records"])
                _write(args.out, payload)
    print(payload["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

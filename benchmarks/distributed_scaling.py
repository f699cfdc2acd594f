"""Benchmark: data-parallel training throughput and scaling efficiency from 1 to W ranks.

For each model family the script launches itself once per rank count ``W`` (``--ranks``, default
1 2) as an MPI job::

    mpiexec -n W python -m mpi4py benchmarks/distributed_scaling.py --worker FAMILY --result R.json ...

Every rank calls :func:`surrogate.train.distributed.init_distributed` (gloo on the CPU, NCCL with
``--device cuda``), uses ``--threads`` torch threads (default 1, ``OMP_NUM_THREADS`` likewise)
and a fixed batch per rank (weak scaling: the global batch is ``W`` times the per-rank batch):

- ``calo``: the CaloGAN WGAN-GP :class:`~surrogate.train.steps.GANStep` of
  ``pipelines/calo_gan.toml`` (default generator and critic, Adam lr 1e-3, betas (0.5, 0.9),
  ``n_critic=5``, gradient penalty 10), set up as
  :func:`surrogate.pipelines.calo_gan.train` does (the step wraps both networks in
  ``DistributedDataParallel``), data streamed from a GFlash CaloGAN-layout file
  (simulated once by the parent, ``--calo-events`` showers) by
  :class:`~surrogate.data.shower_dataset.CaloShowerDataset` with ``rank``, ``world_size`` and
  ``drop_last=True``, DataLoader ``num_workers=0``; batch 128 per rank;
- ``galaxy``: :class:`~surrogate.models.galaxy_vae.GalaxyVAE` with the architecture of
  ``pipelines/galaxy_vae.toml`` (latent 16, channels 16/32/64, hidden 128) trained on the ELBO
  (:func:`~surrogate.losses.galaxy_vae_loss`) with
  :class:`~surrogate.train.steps.LikelihoodStep` (DDP inside it) on synthetic 32x32 stamps with
  25x25 PSFs held in memory, ``DistributedSampler``; batch 64 per rank;
- ``npe``: a neural spline flow (:func:`surrogate.models.npe.build_npe_flow`, the
  ``pipelines/npe_two_moons.toml`` defaults: 5 transforms, 50 hidden, 10 bins) trained with
  :func:`~surrogate.losses.npe_loss` and ``LikelihoodStep`` (AdamW lr 1e-3, clipping
  at 5) on 10,000 two_moons simulations, :func:`~surrogate.pipelines.npe_training.epoch_batches`;
  batch 256 per rank.

Each rank runs ``--warmup`` steps, then ``--steps`` timed steps (one batch each, data loading
included, as in training) between two barriers (CUDA synchronised first). A single rank runs
without a process group and without DDP (what a one-process job does), so the efficiency
includes DDP's gradient all-reduce. Rank 0 writes the measurement (steps/s, global events/s,
every rank's wall and CPU seconds) to a JSON file that the parent reads. Reported per family:
events/s at every ``W``, speed-up over the smallest ``W`` and scaling efficiency
``rate_W / (W / W_0 * rate_W0)`` (for 1 -> 2 ranks: ``rate_2 / (2 rate_1)``); also each rank's
CPU time / wall time (``CPU/wall``, below 1 when a rank waits for a core or for the others) and
the CPU efficiency, CPU seconds per step and rank at ``W_0`` over those at ``W``: what the
efficiency would be if every rank had a core to itself, i.e. the cost of DDP alone.

On a CPU machine with as many cores as the largest ``W`` (the 2-core machine this was written
on), the largest job uses every core, so an efficiency below 1 includes contention for cores,
memory bandwidth and the OS, not only communication; ``os.cpu_count()`` and the load average are
recorded. Prints a markdown table and writes ``benchmarks/results/distributed_scaling.json``
atomically. A launch that fails (e.g. 2 ranks on a single-GPU machine with ``--device cuda``) is
recorded with its error and the others still run.

Usage::

    python benchmarks/distributed_scaling.py                       # calo, galaxy, npe at 1 and 2 ranks
    python benchmarks/distributed_scaling.py --steps 10 --warmup 2  # quick check
    python benchmarks/distributed_scaling.py [--families calo galaxy npe] [--ranks 1 2] [--steps 100]
        [--warmup 10] [--device cpu|cuda|auto] [--threads 1] [--calo-events 8192]
        [--mpiexec PATH] [--timeout 900] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from surrogate.data.hdf5 import atomic_output  # noqa: E402

FAMILIES = ("calo", "galaxy", "npe")
BATCH = {"calo": 128, "galaxy": 64, "npe": 256}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "distributed_scaling.json"
NOTE = ("weak scaling: fixed batch per rank; 1 rank runs without a process group or DDP; with as many "
        "ranks as cores every core is busy, so efficiency < 1 includes contention for cores and memory "
        "bandwidth (and any other job on the machine), not only gradient communication")


# ------------------------------------------------------------------------------------------------
# Worker side: one family, all ranks of one mpiexec launch


def _cycle(loader, sampler):
    """Batches of ``loader`` forever, calling ``sampler.set_epoch`` at each epoch."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _calo(ctx, batch: int, args):
    from surrogate.config import load_pipeline
    from surrogate.data.shower_dataset import CaloShowerDataset
    from surrogate.pipelines.calo_gan import build_calo_gan
    from surrogate.train.steps import GANStep

    cfg = load_pipeline(REPO / "pipelines" / "calo_gan.toml")
    t = cfg.train
    torch.manual_seed(cfg.run.seed)
    generator, critic = build_calo_gan(cfg.model)
    generator, critic = generator.to(ctx.device), critic.to(ctx.device)
    step = GANStep(
        generator, critic,
        torch.optim.Adam(generator.parameters(), lr=t.learning_rate, betas=(t.beta1, t.beta2)),
        torch.optim.Adam(critic.parameters(), lr=t.critic_learning_rate or t.learning_rate, betas=(t.beta1, t.beta2)),
        n_critic=t.n_critic, gradient_penalty=t.gradient_penalty,
    )
    dataset = CaloShowerDataset(args.data, layout="calogan", block_size=t.block_size, shuffle=True, seed=cfg.run.seed,
                                rank=ctx.rank, world_size=ctx.world_size, drop_last=True)
    if len(dataset) < batch:
        raise ValueError(f"{args.data}: {len(dataset)} events per rank, fewer than one batch of {batch}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=0, drop_last=True,
                                         pin_memory=ctx.device.type == "cuda")
    return step, _cycle(loader, dataset)


def _galaxy(ctx, batch: int, args):
    from surrogate.losses import galaxy_vae_loss
    from surrogate.models.galaxy_vae import GalaxyVAE
    from surrogate.train.steps import LikelihoodStep

    n, size, psf_size = 1024, 32, 25
    g = torch.Generator().manual_seed(0)  # the same synthetic stamps on every rank
    psf = torch.rand(n, 1, psf_size, psf_size, generator=g)
    stamps = {"observed": torch.rand(n, 1, size, size, generator=g) * 3,
              "psf": psf / psf.sum((-2, -1), keepdim=True), "noise_variance": torch.full((n, 1), 0.5)}

    class Stamps(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {k: v[i] for k, v in stamps.items()}

    torch.manual_seed(0)
    model = GalaxyVAE(stamp_size=size, latent_dim=16, channels=(16, 32, 64), hidden_features=128,
                      flow_hidden_features=64, flow_transforms=4).to(ctx.device)
    step = LikelihoodStep(model, torch.optim.Adam(model.vae_parameters(), lr=1e-3), galaxy_vae_loss)
    sampler = torch.utils.data.DistributedSampler(Stamps(), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                                  seed=0, drop_last=True)
    loader = torch.utils.data.DataLoader(Stamps(), batch_size=batch, sampler=sampler, drop_last=True,
                                         pin_memory=ctx.device.type == "cuda")
    return step, _cycle(loader, sampler)


def _npe(ctx, batch: int, args):
    from surrogate.losses import npe_loss
    from surrogate.models.npe import build_npe_flow
    from surrogate.pipelines.npe_training import epoch_batches
    from surrogate.simulators.sbi_tasks import get_task, simulate_dataset
    from surrogate.train.steps import LikelihoodStep

    theta, x = simulate_dataset(get_task("two_moons"), 10_000, seed=0)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(theta)

        def __getitem__(self, index):
            return {"theta": theta[index], "x": x[index]}

    torch.manual_seed(0)
    flow = build_npe_flow(theta, x, kind="nsf", hidden_features=50, num_transforms=5, num_blocks=2,
                          num_bins=10).to(ctx.device)
    step = LikelihoodStep(flow, torch.optim.AdamW(flow.parameters(), lr=1e-3), npe_loss, max_grad_norm=5.0)
    sampler = epoch_batches(len(theta), batch, seed=0, rank=ctx.rank, world_size=ctx.world_size)
    loader = torch.utils.data.DataLoader(Pairs(), sampler=sampler, batch_size=None)
    return step, _cycle(loader, sampler.sampler)


def worker(args) -> None:
    from surrogate.train import distributed

    torch.set_num_threads(args.threads)
    ctx = distributed.init_distributed(args.device)
    batch = args.batch or BATCH[args.worker]
    step, batches = {"calo": _calo, "galaxy": _galaxy, "npe": _npe}[args.worker](ctx, batch, args)
    cuda = ctx.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()
        distributed.barrier()

    for _ in range(args.warmup):
        step(next(batches))
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step(next(batches))
    own = time.perf_counter() - start  # this rank's own compute time, before waiting for the others
    sync()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    per_rank = distributed.all_gather_object({"rank": ctx.rank, "seconds_own": own, "seconds": seconds, "cpu_s": cpu})
    if ctx.is_main:
        result = {
            "family": args.worker, "world_size": ctx.world_size, "batch_per_rank": batch,
            "global_batch": batch * ctx.world_size, "steps": args.steps, "warmup": args.warmup,
            "seconds": seconds, "steps_per_s": args.steps / seconds,
            "events_per_s": args.steps * batch * ctx.world_size / seconds,
            "events_per_s_per_rank": args.steps * batch / seconds,
            "device": str(ctx.device), "backend": ctx.backend, "launcher": ctx.launcher,
            "threads": torch.get_num_threads(), "ranks": per_rank,
        }
        with atomic_output(args.result) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
    distributed.shutdown()


# ------------------------------------------------------------------------------------------------
# Parent side: launches, table, JSON


def _launch(family: str, world: int, folder: Path, data: Path | None, args) -> dict:
    result = folder / f"{family}_{world}.json"
    command = [args.mpiexec, "-n", str(world), sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()),
               "--worker", family, "--result", str(result), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--device", args.device, "--threads", str(args.threads)]
    if data is not None:
        command += ["--data", str(data)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout, cwd=REPO)
        error = None if done.returncode == 0 and result.exists() else (
            f"exit status {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")
    except subprocess.TimeoutExpired:
        error = f"timed out after {args.timeout} s"
    wall = time.perf_counter() - start
    if error is not None:
        print(f"{family} at {world} rank(s) failed: {error}", flush=True)
        return {"family": family, "world_size": world, "error": error, "launch_s": wall}
    row = json.loads(result.read_text())
    row["launch_s"] = wall
    print(f"{family:7s} {world} rank(s): {row['events_per_s']:>10,.0f} events/s ({row['steps_per_s']:.2f} steps/s, "
          f"launch {wall:.0f} s)", flush=True)
    return row


HEADER = ("| family | ranks | batch/rank | steps/s | events/s | speed-up | efficiency | CPU/wall | CPU efficiency |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def _cpu_per_step(row: dict) -> float:
    """Mean over ranks of a rank's CPU seconds per timed step."""
    return sum(r["cpu_s"] for r in row["ranks"]) / len(row["ranks"]) / row["steps"]


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="world sizes to launch")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per launch")
    parser.add_argument("--warmup", type=int, default=10, help="steps before timing")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                        help="passed to init_distributed: cpu (gloo), cuda (NCCL, one GPU per rank) or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--calo-events", type=int, default=8192, help="showers in the calo training file")
    parser.add_argument("--mpiexec", default=shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec")))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per launch")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    # worker mode (used by the launches above)
    parser.add_argument("--worker", choices=FAMILIES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.steps, args.threads, args.calo_events, *args.ranks) < 1 or args.warmup < 0:
        parser.error("--steps, --threads, --calo-events and --ranks must be positive, --warmup >= 0")
    if args.worker:
        worker(args)
        return None

    ranks = sorted(set(args.ranks))
    if "calo" in args.families and args.calo_events < BATCH["calo"] * max(ranks):
        parser.error(f"--calo-events must hold one batch per rank: at least {BATCH['calo'] * max(ranks)}")
    load_start = list(os.getloadavg())
    print(f"distributed scaling: families {args.families}, ranks {ranks}, {args.steps} steps after {args.warmup}, "
          f"device {args.device}, {args.threads} thread(s)/rank, cpu_count {os.cpu_count()}, load {load_start}",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="distributed_scaling_") as tmp:
        folder = Path(tmp)
        data = None
        if "calo" in args.families:
            from surrogate.simulators.gflash_runs import simulate_to_file

            data = folder / "showers.h5"
            simulate_to_file(data, args.calo_events, seed=0, progress=False)
        for family in args.families:
            for world in ranks:
                rows.append(_launch(family, world, folder, data if family == "calo" else None, args))

    summary = {}
    print()
    print(HEADER)
    for family in args.families:
        done = [r for r in rows if r["family"] == family and "error" not in r]
        base = min(done, key=lambda r: r["world_size"]) if done else None
        for r in (r for r in rows if r["family"] == family):
            if "error" in r:
                print(f"| {family} | {r['world_size']} | | | failed | | | | |")
                continue
            r["speedup"] = r["events_per_s"] / base["events_per_s"]
            r["efficiency"] = r["speedup"] / (r["world_size"] / base["world_size"])
            r["cpu_fraction"] = sum(x["cpu_s"] / x["seconds"] for x in r["ranks"]) / len(r["ranks"])
            r["cpu_efficiency"] = _cpu_per_step(base) / _cpu_per_step(r)
            print(f"| {family} | {r['world_size']} | {r['batch_per_rank']} | {r['steps_per_s']:.2f} "
                  f"| {r['events_per_s']:,.0f} | {r['speedup']:.2f}x | {r['efficiency']:.2f} "
                  f"| {r['cpu_fraction']:.2f} | {r['cpu_efficiency']:.2f} |")
        summary[family] = {str(r["world_size"]): r.get("events_per_s") for r in rows if r["family"] == family}
        if base is not None:
            summary[family].update({f"efficiency_{r['world_size']}": r["efficiency"] for r in done})
    print(f"\ncpu_count {os.cpu_count()}; {NOTE}")

    report = {
        "benchmark": "distributed_scaling",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"families": args.families, "ranks": ranks, "steps": args.steps, "warmup": args.warmup,
                     "device": args.device, "threads_per_rank": args.threads, "batch_per_rank": BATCH,
                     "calo_events": args.calo_events, "launch": "mpiexec -n W python -m mpi4py (MPICH), gloo on CPU"},
        "timing": ("wall time of --steps steps (data loading included) between barriers on rank 0; "
                   "events/s = steps * batch_per_rank * W / seconds"),
        "efficiency": "speed-up over the smallest W divided by the ratio of rank counts: rate_2 / (2 rate_1)",
        "cpu_fraction": "per rank CPU seconds / wall seconds of the timed region, mean over ranks (< 1: waiting "
                        "for a core, for I/O or for the other ranks)",
        "cpu_efficiency": ("CPU seconds per step and rank at the smallest W / at W: the efficiency if every rank "
                           "had a core to itself and waiting cost nothing (an estimate of the DDP overhead alone)"),
        "note": NOTE,
        "cpu_count": os.cpu_count(),
        "summary": summary,
        "rows": rows,
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else None,
        "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg()),
    }
    try:
        import mpi4py

        report["mpi4py"] = mpi4py.__version__
    except ImportError:
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out) as tmp_out:
        tmp_out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()

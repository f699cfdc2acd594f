"""Showers per second of the CaloGAN generator (batch 1, 128, 1024) and of the GFlash reference
simulator, measured in the same run, with each process's peak resident memory.

Each measurement runs in a fresh subprocess so that its peak memory (``ru_maxrss``) is its own.
Prints a table and writes ``benchmarks/results/calo_throughput.json``.

    python benchmarks/calo_throughput.py [--checkpoint runs/calo_gan/train] [--threads 1]
                                         [--device cpu|cuda] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def _generator(checkpoint: str | None, device: str):
    from surrogate.config import load_pipeline
    from surrogate.models.calo_gan import CaloGANGenerator
    from surrogate.pipelines.calo_gan import load_generator

    if checkpoint:
        return load_generator(checkpoint, device=device)
    # the main job's architecture (weights do not change the speed)
    kwargs = load_pipeline(REPO / "pipelines" / "calo_gan.toml").model.generator
    return CaloGANGenerator(**kwargs).to(device).eval()


def measure_one(what: str, batch: int, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if what == "generator":
        g = _generator(args.checkpoint, args.device)
        z = torch.randn(batch, g.latent_dim, device=args.device)
        e = torch.rand(batch, 1, device=args.device) * 99 + 1

        def run():
            with torch.no_grad():
                out = g(z, e)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return out

    else:
        from surrogate.simulators.gflash import simulate_calogan_showers

        def run():
            return simulate_calogan_showers(batch, seed=0, progress=False)

    run()  # warm-up
    n, start = 0, time.perf_counter()
    while True:
        run()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed > args.seconds:
            break
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"what": what, "batch": batch, "showers": n, "seconds": elapsed, "showers_per_s": n / elapsed, "peak_rss_mib": peak_mib}
    if args.device.startswith("cuda"):
        row["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="trained checkpoint or run folder (default: untrained main-job architecture)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per row")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        what, batch = args.one.split(":")
        print(json.dumps(measure_one(what, int(batch), args)))
        return

    plan = [("generator", 1), ("generator", 128), ("generator", 1024), ("gflash", 256)]
    rows = []
    for what, batch in plan:
        cmd = [sys.executable, __file__, "--one", f"{what}:{batch}", "--threads", str(args.threads),
               "--device", args.device, "--seconds", str(args.seconds)]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    simulator = next(r for r in rows if r["what"] == "gflash")["showers_per_s"]
    print(f"\nthreads={args.threads} device={args.device} load average={os.getloadavg()[0]:.1f}")
    print(f"{'what':10s} {'batch':>6s} {'showers/s':>12s} {'vs GFlash':>10s} {'peak RSS MiB':>13s}")
    for r in rows:
        r["speedup_vs_gflash"] = r["showers_per_s"] / simulator
        print(f"{r['what']:10s} {r['batch']:6d} {r['showers_per_s']:12.1f} {r['speedup_vs_gflash']:9.1f}x {r['peak_rss_mib']:13.0f}")
    RESULTS.mkdir(exist_ok=True)
    meta = {"threads": args.threads, "device": args.device, "checkpoint": args.checkpoint,
            "load_average_1min": os.getloadavg()[0], "python": platform.python_version(), "machine": platform.machine(),
            "note": "GFlash row: reference simulator, 1-100 GeV e+ in the CaloGAN geometry, batches of 256"}
    (RESULTS / "calo_throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {RESULTS / 'calo_throughput.json'}")


if __name__ == "__main__":
    main()

"""Shower throughput of the CaloFlow sampler, the CaloGAN generator and the GFlash reference
simulator, measured in the same run: showers/s and ms per shower at batch 1, 128 and 1024 on 1
and 2 torch threads, peak resident memory, FLOPs per shower and the fraction of the machine's
float32 matmul rate (a GEMM measured in the same run, on the same thread count) that it reaches.

Every measurement (each model x batch x thread count, and the GEMM per thread count) runs in a
fresh subprocess with ``torch.set_num_threads(n)`` and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` = n, so its peak resident memory (``ru_maxrss``: interpreter, imports,
model and the timed calls) is its own. The flow and the GAN generate through their pipelines'
samplers (:func:`surrogate.pipelines.calo_flow.flow_sampler`,
:func:`surrogate.pipelines.calo_gan.gan_sampler`) under ``torch.inference_mode()``, with incident
energies uniform in 1-100 GeV and noise from a seeded CPU generator; GFlash is its numpy batch
simulator (:func:`surrogate.simulators.gflash.simulate_batch`, same energies). Models: the trained
checkpoints under ``runs/`` when present (``--flow-checkpoint`` / ``--gan-checkpoint auto``),
otherwise (or with ``none``) random weights with the architectures of ``pipelines/calo_flow.toml``
and ``pipelines/calo_gan.toml``; weights do not change the work done.

Each row times ``--repeats`` blocks of at least ``--seconds / --repeats`` seconds (at least one
call each) after one warm-up call and reports the median block's rate.

FLOPs per shower are counted analytically from the module shapes (2 per multiply-add, biases and
activations not counted): every ``nn.Linear`` (2 in out) and ``LocallyConnected2d``
(2 C_out C_in k_h k_w H_out W_out, padding included) of the GAN; every ``nn.Linear`` of the
flow's coupling conditioners and the two triangular solves of each LU layer's inverse (2 D^2);
permutations are free. Not counted for the flow: the rational-quadratic spline evaluation
(bin widths/heights softmax, cumulative sums, bin search, the quadratic root), the GLU and ReLU
activations, the per-call assembly of the LU factors, the stick-breaking softmax-like join
(exp/log/cumsum), thresholding and the normal noise. The goal of issue 11: flow sampling at
<= 0.18 ms per shower at its best batch size, 10^4 times faster than Geant4's ~1.8 s per shower.

Prints a table and writes ``benchmarks/results/calo_throughput.json``.

    python benchmarks/calo_throughput.py [--threads 1 2] [--batches 1 128 1024] [--repeats 5]
        [--seconds 4] [--models flow gan gflash] [--flow-checkpoint auto|none|PATH]
        [--gan-checkpoint auto|none|PATH] [--device cpu|cuda] [--gemm-size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
MODELS = ("flow", "gan", "gflash")
GAN_FLOPS_BY_SHAPES = 981_504  # the default CaloGANGenerator(), per shower (issue 11)
GOAL_MS_PER_SHOWER = 0.18  # issue 11: 10^4 times faster than Geant4
GEANT4_S_PER_SHOWER = 1.8
FLOW_GEMM_SHAPE = (1024, 128, 5773)  # (M, K, N): the cell flow's widest conditioner layer at batch 1024


# ------------------------------------------------------------------------------------ models
def _checkpoint(value: str, family: str) -> str | None:
    """``auto``: ``runs/<family>/train`` if it holds a checkpoint; ``none``: random init."""
    if value == "none":
        return None
    if value != "auto":
        return value
    folder = REPO / "runs" / family / "train"
    return str(folder) if any((folder / "checkpoints").glob("*.pt")) else None


def _gan(checkpoint: str | None, device: str):
    from surrogate.config import load_pipeline
    from surrogate.models.calo_gan import CaloGANGenerator
    from surrogate.pipelines.calo_gan import load_generator

    if checkpoint:
        return load_generator(checkpoint, device=device)
    kwargs = load_pipeline(REPO / "pipelines" / "calo_gan.toml").model.generator
    return CaloGANGenerator(**kwargs).to(device).eval()


def _flow(checkpoint: str | None, device: str):
    from surrogate.config import load_pipeline
    from surrogate.models.calo_flow import CaloFlow
    from surrogate.pipelines.calo_flow import MODEL_DEFAULTS, load_flow

    if checkpoint:
        return load_flow(checkpoint, device=device)
    cfg = load_pipeline(REPO / "pipelines" / "calo_flow.toml")
    kwargs = {**MODEL_DEFAULTS, "threshold_mev": cfg.validate.threshold_mev, **cfg.model}
    return CaloFlow(**kwargs).to(device).eval()


def gan_flops(generator) -> int:
    """FLOPs per shower of the generator from its module shapes (module docstring)."""
    from torch import nn

    from surrogate.nn.locally_connected import LocallyConnected2d

    total = 0
    for m in generator.modules():
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features
        elif isinstance(m, LocallyConnected2d):
            kh, kw = m.kernel_size
            total += 2 * m.out_channels * m.in_channels * kh * kw * m.output_size[0] * m.output_size[1]
    return total


def flow_flops(flow) -> dict:
    """FLOPs per shower of one flow sample from its module shapes, by part (module docstring)."""
    from torch import nn

    from surrogate.models.flows import LULinear

    linear = sum(2 * m.in_features * m.out_features for m in flow.modules() if isinstance(m, nn.Linear))
    lu = sum(2 * m.features**2 for m in flow.modules() if isinstance(m, LULinear))
    return {"coupling_linear": linear, "lu_solves": lu, "total": linear + lu}


# ----------------------------------------------------------------------------------- timing
def _timed_blocks(run, batch: int, seconds: float, repeats: int) -> list[float]:
    """Showers/s of ``repeats`` blocks of >= ``seconds / repeats`` s each, after one warm-up call."""
    run()
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            run()
            n += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / repeats:
                break
        rates.append(n / elapsed)
    return rates


def _sampler(what: str, batch: int, args) -> tuple:
    """``(run, flops per shower or None, model info)`` for one measurement."""
    import numpy as np
    import torch

    energy = torch.rand(batch, 1, generator=torch.Generator().manual_seed(1)) * 99.0 + 1.0
    if what == "gflash":
        from surrogate.simulators.gflash import simulate_batch

        rng, e = np.random.default_rng(0), energy[:, 0].double().numpy()
        return (lambda: simulate_batch(e, rng)), None, {"source": "surrogate.simulators.gflash.simulate_batch"}
    rng = torch.Generator().manual_seed(0)
    if what == "gan":
        from surrogate.pipelines.calo_gan import gan_sampler

        checkpoint = _checkpoint(args.gan_checkpoint, "calo_gan")
        model = _gan(checkpoint, args.device)
        sample, flops, parts = gan_sampler(model), gan_flops(model), {}
    else:
        from surrogate.pipelines.calo_flow import flow_sampler

        checkpoint = _checkpoint(args.flow_checkpoint, "calo_flow")
        model = _flow(checkpoint, args.device)
        sample, parts = flow_sampler(model), flow_flops(model)
        flops = parts["total"]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run():
        with torch.inference_mode():
            out = sample(energy, rng)
        sync()
        return out

    info = {"source": checkpoint or "random init (pipelines/*.toml architecture)",
            "parameters": sum(p.numel() for p in model.parameters()), "flops_parts": parts}
    return run, flops, info


def _rss_mib() -> float:
    """Current resident memory of this process, MiB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_one(what: str, batch: int, args) -> dict:
    """One row, in this process: ``what`` in MODELS at ``batch`` on ``args.threads[0]`` threads."""
    import torch

    torch.set_num_threads(args.threads[0])
    run, flops, info = _sampler(what, batch, args)
    rss_before = _rss_mib()
    rates = _timed_blocks(run, batch, args.seconds, args.repeats)
    row = {"what": what, "batch": batch, "threads": torch.get_num_threads(), "showers_per_s": statistics.median(rates),
           "block_rates": rates, "flops_per_shower": flops, "rss_before_timing_mib": rss_before,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **info}
    if args.device.startswith("cuda") and what != "gflash":
        row["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def measure_gemm(args) -> dict:
    """float32 GEMM rates on ``args.threads[0]`` threads: a square one (the machine's matmul rate)
    and one of the flow's widest conditioner layer at batch 1024."""
    import torch

    torch.set_num_threads(args.threads[0])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    shapes = {"square": (args.gemm_size,) * 3, "flow_layer": FLOW_GEMM_SHAPE}
    out = {"threads": torch.get_num_threads()}
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k, device=args.device)
        b = torch.randn(k, n, device=args.device)
        c = torch.empty(m, n, device=args.device)

        def run():
            torch.mm(a, b, out=c)
            sync()

        rates = _timed_blocks(run, 1, args.seconds / 2, args.repeats)
        out[name] = {"shape_mkn": [m, k, n], "gflops": statistics.median(rates) * 2 * m * k * n / 1e9,
                     "block_gflops": [r * 2 * m * k * n / 1e9 for r in rates]}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# --------------------------------------------------------------------------------- the run
def _subprocess(spec: str, threads: int, args) -> dict:
    """Runs ``--one spec`` on ``threads`` threads in a fresh interpreter; returns its JSON line."""
    cmd = [sys.executable, __file__, "--one", spec, "--threads", str(threads), "--device", args.device,
           "--seconds", str(args.seconds), "--repeats", str(args.repeats), "--gemm-size", str(args.gemm_size),
           "--flow-checkpoint", args.flow_checkpoint, "--gan-checkpoint", args.gan_checkpoint]
    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{spec} on {threads} thread(s) failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _derive(rows: list[dict], gemm: dict[int, dict]) -> None:
    """Adds ms per shower, ratios to GFlash (same thread count: same batch, and GFlash's best
    batch), achieved GFLOP/s and its fraction of the square GEMM's rate."""
    for r in rows:
        same = [g for g in rows if g["what"] == "gflash" and g["threads"] == r["threads"]]
        same_batch = next((g for g in same if g["batch"] == r["batch"]), None)
        best = max((g["showers_per_s"] for g in same), default=None)
        r["ms_per_shower"] = 1e3 / r["showers_per_s"]
        r["vs_gflash_same_batch"] = r["showers_per_s"] / same_batch["showers_per_s"] if same_batch else None
        r["vs_gflash_best_batch"] = r["showers_per_s"] / best if best else None
        r["vs_geant4_1p8s"] = r["showers_per_s"] * GEANT4_S_PER_SHOWER
        if r["flops_per_shower"]:
            r["gflops"] = r["flops_per_shower"] * r["showers_per_s"] / 1e9
            r["fraction_of_gemm"] = r["gflops"] / gemm[r["threads"]]["square"]["gflops"]


def _goal(rows: list[dict]) -> dict:
    """The issue's goal for the flow, per thread count, at its best batch size."""
    out = {"goal": f"flow sampling <= {GOAL_MS_PER_SHOWER} ms per shower at the best batch size "
                   f"(10^4 x faster than Geant4's ~{GEANT4_S_PER_SHOWER} s per shower)"}
    for threads in sorted({r["threads"] for r in rows if r["what"] == "flow"}):
        flows = [r for r in rows if r["what"] == "flow" and r["threads"] == threads]
        best = min(flows, key=lambda r: r["ms_per_shower"])
        out[f"threads_{threads}"] = {"best_batch": best["batch"], "ms_per_shower": best["ms_per_shower"],
                                     "met": best["ms_per_shower"] <= GOAL_MS_PER_SHOWER,
                                     "factor_to_goal": best["ms_per_shower"] / GOAL_MS_PER_SHOWER,
                                     "times_faster_than_geant4": GEANT4_S_PER_SHOWER * 1e3 / best["ms_per_shower"]}
    return out


def _fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}{spec}}"


def _print_table(rows: list[dict], gemm: dict[int, dict], goal: dict, meta: dict) -> None:
    print(f"\ntorch {meta['torch']}, {meta['cpu_model']}, device={meta['device']}, threads {meta['threads']}, "
          f"load average (1 min) {meta['load_average_start'][0]:.2f} at start, "
          f"{meta['load_average_end'][0]:.2f} at end")
    for t, g in sorted(gemm.items()):
        print(f"float32 GEMM on {t} thread(s): {g['square']['gflops']:.1f} GFLOP/s at "
              f"{'x'.join(map(str, g['square']['shape_mkn']))} (the % GEMM column), {g['flow_layer']['gflops']:.1f} "
              f"GFLOP/s at {'x'.join(map(str, g['flow_layer']['shape_mkn']))} (M x K x N, flow's widest layer)")
    head = (f"{'model':7s} {'thr':>3s} {'batch':>5s} {'showers/s':>10s} {'ms/shower':>10s} {'vs GFlash':>9s} "
            f"{'vs GFl best':>11s} {'peak RSS MiB':>12s} {'MFLOP/shower':>12s} {'GFLOP/s':>8s} {'% GEMM':>7s}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        flops = r["flops_per_shower"] / 1e6 if r["flops_per_shower"] else None
        pct = 100 * r["fraction_of_gemm"] if "fraction_of_gemm" in r else None
        print(f"{r['what']:7s} {r['threads']:3d} {r['batch']:5d} {r['showers_per_s']:10.1f} {r['ms_per_shower']:10.4f} "
              f"{_fmt(r['vs_gflash_same_batch'], '.2f', 8)}x {_fmt(r['vs_gflash_best_batch'], '.2f', 10)}x "
              f"{r['peak_rss_mib']:12.0f} {_fmt(flops, '.3f', 12)} {_fmt(r.get('gflops'), '.2f', 8)} "
              f"{_fmt(pct, '.1f', 7)}")
    print("vs GFlash: showers/s over GFlash's at the same batch and thread count; vs GFl best: over GFlash's best "
          "batch at the same thread count. FLOPs: analytic (flow: coupling-net linear layers + LU solves; "
          "spline evaluation and activations not counted).")
    print(f"goal: {goal['goal']}")
    for key, g in goal.items():
        if key.startswith("threads_"):
            print(f"  {key.split('_')[1]} thread(s): best flow {g['ms_per_shower']:.4f} ms/shower "
                  f"at batch {g['best_batch']} "
                  f"= {g['times_faster_than_geant4']:.0f}x Geant4 -> {'MET' if g['met'] else 'NOT met'} "
                  f"({g['factor_to_goal']:.2f}x the goal's time)")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (one subprocess each)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 128, 1024], help="showers per call")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per row (the median is reported)")
    p.add_argument("--seconds", type=float, default=4.0, help="minimum timed seconds per row, over all blocks")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--flow-checkpoint", default="auto", help="auto (runs/calo_flow/train if present), none, or a path")
    p.add_argument("--gan-checkpoint", "--checkpoint", dest="gan_checkpoint", default="auto",
                   help="auto (runs/calo_gan/train if present), none, or a path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--gemm-size", type=int, default=1024, help="M = K = N of the reference float32 GEMM")
    p.add_argument("--output", type=Path, default=RESULTS / "calo_throughput.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if min(args.threads + args.batches + [args.repeats]) < 1 or args.seconds <= 0:
        p.error("--threads, --batches and --repeats must be >= 1 and --seconds > 0")
    return args


def main() -> None:
    args = _parse_args()
    if args.one:
        what, batch = args.one.split(":")
        print(json.dumps(measure_gemm(args) if what == "gemm" else measure_one(what, int(batch), args)))
        return
    import torch

    load_start, start = os.getloadavg(), time.perf_counter()
    rows, gemm = [], {}
    for threads in args.threads:
        gemm[threads] = _subprocess("gemm:0", threads, args)
        for what in args.models:
            for batch in args.batches:
                rows.append(_subprocess(f"{what}:{batch}", threads, args))
                print(f"  {what:6s} threads={threads} batch={batch:5d}: {rows[-1]['showers_per_s']:10.1f} showers/s",
                      flush=True)
    wall = time.perf_counter() - start
    _derive(rows, gemm)
    goal = _goal(rows)
    meta = {"torch": torch.__version__, "threads": args.threads, "batches": args.batches, "repeats": args.repeats,
            "seconds_per_row": args.seconds, "device": args.device, "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(), "load_average_start": load_start, "load_average_end": os.getloadavg(),
            "benchmark_wall_s": wall, "python": platform.python_version(), "machine": platform.machine(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "gan_flops_check": f"analytic {GAN_FLOPS_BY_SHAPES:,} per shower for the default CaloGANGenerator()",
            "notes": ["one subprocess per row: peak_rss_mib is that configuration's own (imports, model, timed calls)",
                      "showers_per_s: median of the timed blocks after one warm-up call",
                      "flow FLOPs count the coupling conditioners' nn.Linear layers and the LU layers' triangular "
                      "solves; not counted: spline evaluation, activations, per-call LU assembly, stick-breaking "
                      "join, thresholding, noise",
                      "GFlash is numpy; torch's thread count does not apply to it (OMP/MKL/OpenBLAS are set too)"]}
    _print_table(rows, gemm, goal, meta)
    print(f"benchmark wall time {wall:.1f} s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "gemm": gemm, "goal": goal, "rows": rows}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

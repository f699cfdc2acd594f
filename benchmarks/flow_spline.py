"""CaloFlow sampling with nflows' spline against :mod:`surrogate.models.splines`, same weights.

The coupling blocks of one trained (or, without a checkpoint, randomly initialised) CaloFlow are
switched between nflows' ``PiecewiseRationalQuadraticCouplingTransform`` and
:class:`~surrogate.models.splines.RQSCouplingTransform` (same parameters), and ``batch`` showers
are sampled with each in turn, ``repeats`` times interleaved, on ``threads`` torch threads. Prints
a table and writes ``benchmarks/results/flow_spline.json``.

    python benchmarks/flow_spline.py [--checkpoint runs/calo_flow/train|none] [--batch 1024]
        [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from nflows import transforms as T

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(HERE.parent / "runs" / "calo_flow" / "train"))
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from calo_throughput import _flow

    from surrogate.models.splines import RQSCouplingTransform
    from surrogate.pipelines.calo_flow import flow_sampler

    checkpoint = None if args.checkpoint == "none" or not Path(args.checkpoint).exists() else args.checkpoint
    model = _flow(checkpoint, "cpu")
    blocks = [m for m in model.modules() if isinstance(m, RQSCouplingTransform)]
    sample = flow_sampler(model)
    energy = torch.full((args.batch, 1), 20.0)
    kinds = {"nflows": T.PiecewiseRationalQuadraticCouplingTransform, "surrogate": RQSCouplingTransform}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, cls in kinds.items():
            for block in blocks:
                block.__class__ = cls
            t0 = time.perf_counter()
            sample(energy, torch.Generator().manual_seed(repeat))
            if repeat:
                times[name].append((time.perf_counter() - t0) / args.batch * 1e3)
    rows = {k: {"median_ms_per_shower": statistics.median(v), "min_ms_per_shower": min(v)} for k, v in times.items()}
    ratio = rows["nflows"]["median_ms_per_shower"] / rows["surrogate"]["median_ms_per_shower"]
    print(f"{'spline':>10} {'median ms/shower':>17} {'min ms/shower':>14}   batch {args.batch}, {args.threads} thread(s)")
    for name, row in rows.items():
        print(f"{name:>10} {row['median_ms_per_shower']:17.3f} {row['min_ms_per_shower']:14.3f}")
    print(f"speed-up (median): {ratio:.2f}x")
    result = {"rows": rows, "speedup_median": ratio, "batch": args.batch, "threads": args.threads,
              "repeats": args.repeats, "checkpoint": checkpoint, "load_average": os.getloadavg(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "flow_spline.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

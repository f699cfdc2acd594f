"""Wall time of the CaloChallenge 2022 classifier metric on GFlash showers (both feature kinds).

Simulates ``--n-events`` reference and as many "generated" GFlash showers (a different seed, and
optionally a different ``--spot-scale``), computes the low- and high-level features
(:func:`surrogate.metrics.calochallenge_features.calochallenge_features`) and runs the full protocol
of :func:`surrogate.metrics.calochallenge.calochallenge_classifier` (by default the challenge's
50 epochs of a 3 x 2048 float64 network) with ``--threads`` torch threads. With the same
simulator on both sides accuracy never reaches 1, so every epoch runs: the worst case.
The wall time counts waiting for a shared CPU; the CPU time (``time.process_time``, all threads
of the process) does not. Prints a table and writes ``benchmarks/results/calochallenge_classifier.json``.

    python benchmarks/calochallenge_classifier.py [--n-events 10000] [--epochs 50] [--threads 1]
                                                  [--kinds low high] [--device cpu|cuda]
                                                  [--dtype float64|float32] [--spot-scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-events", type=int, default=10000, help="showers per sample")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--kinds", nargs="+", default=["low", "high"], choices=["low", "high"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--spot-scale", type=float, default=1.0, help="GFlash spot_scale of the generated sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "calochallenge_classifier.json"))
    args = parser.parse_args()

    import torch

    from surrogate.metrics.calochallenge import calochallenge_classifier
    from surrogate.metrics.calochallenge_features import calochallenge_features
    from surrogate.simulators.gflash_runs import simulate_calogan_showers

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    reference = simulate_calogan_showers(args.n_events, seed=1, progress=False)
    generated = simulate_calogan_showers(args.n_events, seed=2, progress=False, spot_scale=args.spot_scale)
    simulate_s = time.perf_counter() - start
    rows = []
    for kind in args.kinds:
        start = time.perf_counter()
        ref_x = calochallenge_features(reference, kind=kind)
        gen_x = calochallenge_features(generated, kind=kind)
        features_s = time.perf_counter() - start
        start, cpu_start = time.perf_counter(), time.process_time()
        result = calochallenge_classifier(ref_x, gen_x, seed=args.seed, epochs=args.epochs, device=args.device,
                                          dtype=getattr(torch, args.dtype), progress=True)
        classifier_s, classifier_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        result.pop("test_accuracy")
        rows.append({"kind": kind, "features_s": features_s, "classifier_s": classifier_s,
                     "classifier_cpu_s": classifier_cpu_s, "s_per_epoch": classifier_s / result["epochs_run"],
                     **result})

    print(f"{args.n_events} vs {args.n_events} GFlash showers, {args.threads} thread(s), {args.device}, {args.dtype}")
    print(f"{'kind':<5} {'F':>4} {'epochs':>6} {'best':>4} {'AUC':>6} {'JSD':>7} {'features s':>10} "
          f"{'classifier s':>12} {'CPU s':>8} {'s/epoch':>8}")
    for row in rows:
        print(f"{row['kind']:<5} {row['n_features']:>4} {row['epochs_run']:>6} {row['best_epoch']:>4} "
              f"{row['auc']:>6.3f} {row['jsd']:>7.3f} {row['features_s']:>10.2f} {row['classifier_s']:>12.1f} "
              f"{row['classifier_cpu_s']:>8.1f} {row['s_per_epoch']:>8.2f}")
    report = {
        "n_events": args.n_events, "epochs": args.epochs, "threads": args.threads, "device": args.device,
        "dtype": args.dtype, "spot_scale": args.spot_scale, "simulate_s": simulate_s,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__},
        "results": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")


if __name__ == "__main__":
    main()

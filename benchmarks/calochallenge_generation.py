"""Generation time per shower of the CaloFlow in CaloChallenge dataset 1 (photons, 368 voxels) on
CPU, beside the challenge's published CPU timings of the same dataset.

The flow of a ``calochallenge_ds1_photons`` run (``--checkpoint``, default the quality run's
``runs/calochallenge_ds1_photons_quality/train``; ``none``: random weights of the architecture of
``pipelines/calochallenge_ds1_photons.toml``, which do not change the work done) samples ``--batch``
showers per call through the pipeline's sampler (:func:`surrogate.pipelines.calo_flow.flow_sampler`:
base noise, both flows, the 1 MeV readout threshold) under ``torch.inference_mode()``, at incident
energies drawn from the challenge's ladder (2^8 ... 2^22 MeV, equally likely), on ``--threads`` torch
threads. One warm-up call, then ``--repeats`` timed calls; the median is reported (and min, max).

The published figures are the challenge's own: the column ``time CPU 10000`` (batch 10,000) of
``final_results/CaloChallenge_results_ds1_photons.hdf`` in github.com/CaloChallenge/homepage (commit
91f715d), the data behind the timing figures of Krause et al., arXiv:2410.21611. That file states
neither the unit (the values read as milliseconds per shower: CaloDiffusion's 4500 would otherwise be
75 minutes per shower) nor the CPU model and thread count, so the comparison is indicative, not like
for like.

Prints a table and writes ``benchmarks/results/calochallenge_generation.json``.

    python benchmarks/calochallenge_generation.py [--checkpoint PATH|none] [--batch 10000]
        [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
DS1_ENERGIES_MEV = [2.0**k for k in range(8, 23)]

PUBLISHED_CPU_BATCH_10000 = {  # ms per shower (see the module docstring), mean +- std over 10 timings
    "BoloGAN": (0.5529, 0.0318),
    "CaloShower3GAN": (1.197, 0.074),
    "CaloVAE+INN": (1.203, 0.113),
    "CaloShower2GAN": (1.284, 0.070),
    "CaloMan": (1.462, 0.161),
    "CaloINN": (2.878, 0.312),
    "CaloFlow student": (6.108, 0.603),
    "Calo-VQ": (14.06, 3.13),
    "CaloScore single-shot": (19.82, 3.47),
    "CaloForest": (27.29, 1.69),
    "CaloScore distilled": (1276.0, 190.0),
    "CaloGraph": (1382.0, 83.0),
    "CaloFlow teacher": (1912.0, 141.0),
    "CaloDiffusion": (4500.0, 357.0),
    "CaloScore": (12871.0, 1197.0),
}
PUBLISHED_SOURCE = ("CaloChallenge/homepage final_results/CaloChallenge_results_ds1_photons.hdf (commit 91f715d), "
                    "column 'time CPU 10000'; Krause et al., arXiv:2410.21611; unit not stated in the file, read as "
                    "ms per shower; CPU model and threads not stated")


def _flow(checkpoint: str):
    from surrogate.config import load_pipeline
    from surrogate.models.calo_flow import CaloFlow
    from surrogate.pipelines.calo_flow import MODEL_DEFAULTS, load_flow
    from surrogate.pipelines.showers import data_geometry

    if checkpoint != "none":
        return load_flow(checkpoint), checkpoint
    cfg = load_pipeline(REPO / "pipelines" / "calochallenge_ds1_photons.toml")
    kwargs = {**MODEL_DEFAULTS, "threshold_mev": cfg.validate.threshold_mev, **cfg.model,
              "geometry": data_geometry(cfg.data)}
    return CaloFlow(**kwargs).eval(), "random weights, pipelines/calochallenge_ds1_photons.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO / "runs" / "calochallenge_ds1_photons_quality" / "train"))
    parser.add_argument("--batch", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "calochallenge_generation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from surrogate.pipelines.calo_flow import flow_sampler

    model, source = _flow(args.checkpoint)
    sample = flow_sampler(model)
    rng = torch.Generator().manual_seed(0)
    ladder = torch.tensor(DS1_ENERGIES_MEV, dtype=torch.float32)
    energy_gev = ladder[torch.randint(len(ladder), (args.batch, 1), generator=rng)] / 1000.0
    seconds = []
    with torch.inference_mode():
        sample(energy_gev, rng)  # warm-up
        for _ in range(args.repeats):
            start = time.perf_counter()
            showers = sample(energy_gev, rng)
            seconds.append(time.perf_counter() - start)
    n_voxels = sum(int(v[0].numel()) for k, v in showers.items() if k != "energy")
    ms = [1e3 * s / args.batch for s in seconds]
    ours = statistics.median(ms)
    rows = sorted(PUBLISHED_CPU_BATCH_10000.items(), key=lambda item: item[1][0])
    print(f"CaloFlow in DS1 photons ({n_voxels} voxels), batch {args.batch}, {args.threads} thread(s), {source}")
    print(f"{'model':<24}{'ms / shower':>14}{'ratio to ours':>16}")
    print(f"{'surrogate CaloFlow':<24}{ours:>14.3f}{1.0:>16.2f}   (min {min(ms):.3f}, max {max(ms):.3f})")
    for name, (value, spread) in rows:
        print(f"{name:<24}{value:>14.3f}{value / ours:>16.2f}   (+- {spread})")
    result = {
        "benchmark": "calochallenge_generation",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": "1-photons", "n_voxels": n_voxels, "batch": args.batch, "threads": args.threads,
        "model": source, "parameters": sum(p.numel() for p in model.parameters()),
        "ms_per_shower": {"median": ours, "min": min(ms), "max": max(ms), "all": ms},
        "published_cpu_batch_10000_ms_per_shower": {k: {"mean": v, "std": s} for k, (v, s) in rows},
        "published_source": PUBLISHED_SOURCE,
        "torch": torch.__version__, "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

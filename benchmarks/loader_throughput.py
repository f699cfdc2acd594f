"""Benchmark: CaloGAN shower loader throughput per access strategy and file layout, against the
rate at which CaloGAN training consumes events, measured in the same run.

Showers are simulated once with the GFlash-style reference simulator
(:func:`surrogate.simulators.gflash_runs.simulate_to_file`, 1-100 GeV e+) into a temporary folder and
then rewritten with :func:`surrogate.data.calo.write_calogan` in every file variant:

- ``compression``: ``gzip`` (level 4, our default), ``lzf``, ``none``;
- ``chunk``: ``default`` (``chunk_events=None``: the writer's per-dataset rule of
  :func:`surrogate.data.event_writer.chunk_events_for`, at most 512 KiB and 1024 events per chunk, i.e.
  256 events for ``layer_0``, 512 for ``layer_1``, 1024 for the rest) or a fixed number of
  events per chunk for every dataset (``--chunks``, e.g. 64 and 4096).

For each file, training batches of 128 events (keys ``layer_0``, ``layer_1``, ``layer_2``,
``energy``, float32 tensors, as :class:`~surrogate.train.steps.GANStep` takes them) are drawn
through a ``torch.utils.data.DataLoader`` with ``num_workers`` 0 (reading in the training
process) and 1 (one reader process), with these access strategies:

- ``random``: the naive baseline: a map-style Dataset that reads ``f[key][i]`` for every event
  ``i`` of a random permutation (the file opened lazily with
  :func:`surrogate.data.hdf5.open_hdf5`, i.e. with the readers' 4 MiB chunk cache per dataset),
  default collation. Slow on compressed chunks (every miss decompresses a whole chunk for one
  event), so an epoch is capped at ``--random-events`` events and ``--random-seconds`` seconds
  (the rate is then that of the events read);
- ``block256`` / ``block1024`` / ``block4096``: :class:`surrogate.data.shower_dataset.CaloShowerDataset`
  (random order of contiguous blocks of that many events, one read per dataset and block,
  shuffle within the block, cell values checked per block), default collation;
- ``memory``: an in-memory shard: the whole file read once with
  :func:`surrogate.data.calo.read_calogan` (the load time is reported separately, ``load s``),
  then batches of a random permutation taken by fancy indexing of whole batches
  (``BatchSampler`` + ``batch_size=None``, no per-event collation).

A rate is events delivered / wall time of one epoch, from creating the DataLoader iterator to
its last batch, so it includes worker start-up (``persistent_workers=False``, as the block
dataset requires) and the first read; the time to the first batch is reported too (and, in the
JSON, the rate after the first batch, ``steady_events_per_s``). Each entry is
the median over ``--repeats`` epochs (different seeds / epochs). The files were just written,
so they are in the OS page cache: this measures HDF5 + decompression + Python overhead, not the
disk (dropping the page cache needs root and disturbs other jobs).

**Training consumption** is the rate of the CaloGAN WGAN-GP step (the architecture and optimiser
settings of ``pipelines/calo_gan.toml``: default generator and critic, Adam lr 1e-3, betas
(0.5, 0.9), ``n_critic=5``, gradient penalty 10), batch 128, on in-memory batches: ``--steps``
calls after ``--warmup`` calls, measured once before and once after the loader measurements
(the mean is used). Each loader row reports ``loader rate / training rate``; above 1 the loader
keeps up with one training process (with ``num_workers=0`` both share one core, so the training
step slows down by ``1 / ratio`` of its time; with a worker, reading overlaps training on a
second core).

``torch.set_num_threads(--threads)`` (default 1; DataLoader workers use 1) is set and recorded,
with the load average (the machine may be shared). Prints a markdown table and writes
``benchmarks/results/loader_throughput.json`` atomically.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/loader_throughput.py                  # 20,000 showers
    OMP_NUM_THREADS=1 python benchmarks/loader_throughput.py --n-events 4000 --repeats 1  # quick check
    python benchmarks/loader_throughput.py [--n-events N] [--compressions gzip lzf none]
        [--chunks default 64 4096] [--blocks 256 1024 4096] [--workers 0 1] [--random-events 2048]
        [--random-seconds 10]
        [--repeats 3] [--steps 30] [--warmup 5] [--threads 1] [--keep DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from surrogate.config import load_pipeline  # noqa: E402
from surrogate.data.calo import CALOGAN_KEYS, read_calogan, write_calogan  # noqa: E402
from surrogate.data.hdf5 import as_float32, atomic_output, open_hdf5  # noqa: E402
from surrogate.data.shower_dataset import CaloShowerDataset
from surrogate.pipelines.calo_gan import build_calo_gan  # noqa: E402
from surrogate.simulators.gflash import simulate_to_file  # noqa: E402
from surrogate.train.steps import GANStep  # noqa: E402

BATCH = 128
KEYS = ("layer_0", "layer_1", "layer_2", "energy")  # what CaloShowerDataset yields and GANStep takes
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "loader_throughput.json"


# ------------------------------------------------------------------------------------------------
# Access strategies


class RandomEventReads(torch.utils.data.Dataset):
    """The naive baseline: one ``f[key][i]`` read per event and key, in the given (random) order.

    The file is opened lazily in the process that reads (h5py handles do not survive fork).
    """

    def __init__(self, path: Path, order: np.ndarray):
        self.path, self.order = path, order
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._file is None:
            self._file = open_hdf5(self.path)
        j = int(self.order[i])
        return {k: torch.from_numpy(as_float32(self._file[k][j])) for k in KEYS}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class InMemoryShard(torch.utils.data.Dataset):
    """Events held in memory; ``dataset[indices]`` returns a whole batch by fancy indexing."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.tensors = {k: torch.from_numpy(arrays[k]) for k in KEYS}
        self.n = len(self.tensors["energy"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices)
        return {k: v[index] for k, v in self.tensors.items()}


def _loader(strategy: str, path: Path, workers: int, repeat: int, args, memory: InMemoryShard | None, n: int):
    """(DataLoader, cleanup) for one epoch of ``strategy`` on ``path``."""
    if strategy == "random":
        order = np.random.default_rng([1, repeat]).permutation(n)[: args.random_events]
        dataset = RandomEventReads(path, order)
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=False, drop_last=True,
                                             num_workers=workers)
        return loader, dataset.close
    if strategy.startswith("block"):
        dataset = CaloShowerDataset(path, layout="calogan", block_size=int(strategy[5:]), shuffle=True, seed=0)
        dataset.set_epoch(repeat)
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, drop_last=True, num_workers=workers,
                                             persistent_workers=False)
        return loader, (lambda: None)
    if strategy == "memory":
        assert memory is not None
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(memory, generator=torch.Generator().manual_seed(repeat)),
            batch_size=BATCH, drop_last=True,
        )
        loader = torch.utils.data.DataLoader(memory, sampler=sampler, batch_size=None, num_workers=workers)
        return loader, (lambda: None)
    raise ValueError(f"unknown strategy {strategy!r}")


def time_epoch(loader, max_seconds: float = float("inf")) -> tuple[int, float, float, float]:
    """(events, seconds, seconds to the first batch, events/s after the first batch) of one epoch,
    stopped early after ``max_seconds``."""
    events, first, first_events = 0, None, 0
    start = time.perf_counter()
    for batch in loader:
        events += batch["energy"].shape[0]
        now = time.perf_counter() - start
        if first is None:
            first, first_events = now, events
        if now > max_seconds:
            break
    seconds = time.perf_counter() - start
    if first is None:
        return 0, seconds, float("nan"), float("nan")
    steady = (events - first_events) / (seconds - first) if events > first_events else float("nan")
    return events, seconds, first, steady


# ------------------------------------------------------------------------------------------------
# Training consumption


def training_rate(arrays: dict[str, np.ndarray], steps: int, warmup: int) -> dict:
    """Events per second consumed by the CaloGAN GANStep of the main job, batch 128, CPU."""
    cfg = load_pipeline(REPO / "pipelines" / "calo_gan.toml")
    t = cfg.train
    torch.manual_seed(0)
    generator, critic = build_calo_gan(cfg.model)
    step = GANStep(
        generator, critic,
        torch.optim.Adam(generator.parameters(), lr=t.learning_rate, betas=(t.beta1, t.beta2)),
        torch.optim.Adam(critic.parameters(), lr=t.critic_learning_rate or t.learning_rate, betas=(t.beta1, t.beta2)),
        n_critic=t.n_critic, gradient_penalty=t.gradient_penalty,
    )
    memory = InMemoryShard(arrays)
    rng = np.random.default_rng(2)
    batches = [memory[rng.choice(memory.n, BATCH, replace=False).tolist()] for _ in range(min(steps + warmup, 64))]
    for i in range(warmup):
        step(batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(steps):
        step(batches[(warmup + i) % len(batches)])
    seconds = time.perf_counter() - start
    return {"steps": steps, "warmup": warmup, "batch": BATCH, "n_critic": t.n_critic, "seconds": seconds,
            "steps_per_s": steps / seconds, "events_per_s": steps * BATCH / seconds}


# ------------------------------------------------------------------------------------------------
# Files


def write_variants(source: dict[str, np.ndarray], folder: Path, compressions, chunks) -> list[dict]:
    """Writes every (compression, chunk) variant; returns their descriptions."""
    variants = []
    raw = sum(v.nbytes for v in source.values())
    for compression in compressions:
        for chunk in chunks:
            path = folder / f"showers_{compression}_{chunk}.h5"
            start = time.perf_counter()
            write_calogan(path, source, compression=None if compression == "none" else compression,
                          chunk_events=None if chunk == "default" else int(chunk))
            seconds = time.perf_counter() - start
            with h5py.File(path, "r") as f:
                chunk_events = {k: int(f[k].chunks[0]) for k in CALOGAN_KEYS}
            size = path.stat().st_size
            variants.append({"compression": compression, "chunk": chunk, "chunk_events": chunk_events, "path": path,
                             "file_bytes": size, "raw_bytes": raw, "size_fraction": size / raw, "write_s": seconds,
                             "write_mb_per_s": raw / 1e6 / seconds})
            print(f"wrote {path.name}: {size / 1e6:.1f} MB ({100 * size / raw:.1f} % of raw), chunks {chunk_events}, "
                  f"{seconds:.2f} s", flush=True)
    return variants


def _chunk_label(variant: dict) -> str:
    c = variant["chunk_events"]
    if variant["chunk"] != "default":  # the writer caps a chunk at the number of events
        return str(variant["chunk"]) if c["layer_0"] == int(variant["chunk"]) else f"{variant['chunk']} ({c['layer_0']})"
    return f"default ({c['layer_0']}/{c['layer_1']}/{c['energy']})"


# ------------------------------------------------------------------------------------------------


HEADER = (
    "| compression | chunk (events) | file MB | strategy | workers | events/s | first batch ms | load s "
    "| vs training |\n|---|---|---:|---|---:|---:|---:|---:|---:|"
)


def _format(r: dict) -> str:
    load = f"{r['load_s']:.2f}" if r.get("load_s") is not None else ""
    return (
        f"| {r['compression']} | {r['chunk_label']} | {r['file_bytes'] / 1e6:.1f} | {r['strategy']} | {r['workers']} "
        f"| {r['events_per_s']:,.0f} | {1e3 * r['first_batch_s']:.0f} | {load} | {r['vs_training']:.2f} |"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-events", type=int, default=20_000, help="showers simulated (default 20000)")
    parser.add_argument("--compressions", nargs="+", default=["gzip", "lzf", "none"], choices=["gzip", "lzf", "none"])
    parser.add_argument("--chunks", nargs="+", default=["default", "64", "4096"],
                        help="events per chunk: 'default' (the writer's rule) or integers")
    parser.add_argument("--blocks", type=int, nargs="+", default=[256, 1024, 4096], help="CaloShowerDataset block sizes")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="DataLoader num_workers values")
    parser.add_argument("--random-events", type=int, default=2048, help="events per epoch of the per-event baseline")
    parser.add_argument("--random-seconds", type=float, default=10.0,
                        help="stop a per-event baseline epoch after this many seconds (rate of what was read)")
    parser.add_argument("--repeats", type=int, default=3, help="epochs per entry (median)")
    parser.add_argument("--steps", type=int, default=30, help="timed GANStep calls")
    parser.add_argument("--warmup", type=int, default=5, help="GANStep calls before timing")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here and keep them (default: temp dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for chunk in args.chunks:
        if chunk != "default" and not (chunk.isdigit() and int(chunk) >= 1):
            parser.error(f"--chunks takes 'default' or positive integers, got {chunk!r}")
    if min(args.n_events, args.repeats, args.steps, args.threads, args.random_events, *args.blocks) < 1 or args.warmup < 0:
        parser.error("--n-events, --repeats, --steps, --threads, --random-events and --blocks must be positive")
    if args.n_events < BATCH:
        parser.error(f"--n-events must be at least one batch ({BATCH})")
    if min(args.workers) < 0:
        parser.error("--workers must be >= 0")

    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    print(f"loader throughput: {args.n_events} CaloGAN showers, batch {BATCH}, torch threads {args.threads}, "
          f"load average {load_start}", flush=True)
    strategies = ["random", *(f"block{b}" for b in args.blocks), "memory"]

    with tempfile.TemporaryDirectory(prefix="loader_throughput_") as tmp:
        folder = Path(tmp) if args.keep is None else args.keep
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        simulate_to_file(folder / "source.h5", args.n_events, seed=0, progress=False)
        simulate_s = time.perf_counter() - start
        source = read_calogan(folder / "source.h5")
        print(f"simulated {args.n_events} showers in {simulate_s:.1f} s", flush=True)
        variants = write_variants(source, folder, args.compressions, args.chunks)

        training = [training_rate(source, args.steps, args.warmup)]
        print(f"training (GANStep, batch {BATCH}): {training[0]['events_per_s']:,.0f} events/s", flush=True)

        rows = []
        for variant in variants:
            path = variant["path"]
            load_start_t = time.perf_counter()
            memory = InMemoryShard(read_calogan(path))
            load_s = time.perf_counter() - load_start_t
            for strategy in strategies:
                for workers in args.workers:
                    epochs = []
                    for repeat in range(args.repeats):
                        loader, cleanup = _loader(strategy, path, workers, repeat, args, memory, args.n_events)
                        try:
                            limit = args.random_seconds if strategy == "random" else float("inf")
                            epochs.append(time_epoch(loader, limit))
                        finally:
                            del loader
                            cleanup()
                    rates = [e / s for e, s, _, _ in epochs]
                    row = {
                        "compression": variant["compression"], "chunk": variant["chunk"],
                        "chunk_label": _chunk_label(variant), "chunk_events": variant["chunk_events"],
                        "file_bytes": variant["file_bytes"], "strategy": strategy, "workers": workers,
                        "events_per_epoch": [e for e, _, _, _ in epochs], "events_per_s": statistics.median(rates),
                        "events_per_s_all": rates, "first_batch_s": statistics.median(f for _, _, f, _ in epochs),
                        "steady_events_per_s": statistics.median(r for _, _, _, r in epochs),
                        "load_s": load_s if strategy == "memory" else None,
                        "vs_training": float("nan"),
                    }
                    rows.append(row)
                    print(f"  {variant['compression']:4s} {_chunk_label(variant):22s} {strategy:9s} workers={workers} "
                          f"{row['events_per_s']:>10,.0f} events/s", flush=True)
            del memory
        training.append(training_rate(source, args.steps, args.warmup))
        train_rate = statistics.mean(t["events_per_s"] for t in training)
        print()
        print(HEADER)
        for row in rows:
            row["vs_training"] = row["events_per_s"] / train_rate
            print(_format(row))

    print(f"\ntraining consumption (CaloGAN GANStep, batch {BATCH}, {args.threads} thread(s)): "
          f"{train_rate:,.0f} events/s (before {training[0]['events_per_s']:,.0f}, after {training[1]['events_per_s']:,.0f})")
    print("\n| compression | chunk (events) | file MB | % of raw | write MB/s |\n|---|---|---:|---:|---:|")
    for v in variants:
        print(f"| {v['compression']} | {_chunk_label(v)} | {v['file_bytes'] / 1e6:.1f} | {100 * v['size_fraction']:.1f} "
              f"| {v['write_mb_per_s']:.0f} |")

    report = {
        "benchmark": "loader_throughput",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "n_events": args.n_events, "batch": BATCH, "keys": list(KEYS), "threads": args.threads,
            "workers": args.workers, "blocks": args.blocks, "random_events": args.random_events,
            "random_seconds": args.random_seconds,
            "repeats": args.repeats, "compressions": args.compressions, "chunks": args.chunks,
            "simulator": "surrogate.simulators.gflash_runs.simulate_to_file, e+ 1-100 GeV, seed 0",
            "simulate_s": simulate_s,
        },
        "timing": ("events delivered / wall time of one epoch from creating the DataLoader iterator (worker "
                   "start-up included) to its last batch; median over repeats; files in the OS page cache"),
        "training": {"model": "pipelines/calo_gan.toml architecture and optimisers, GANStep", "runs": training,
                     "events_per_s": train_rate},
        "files": [{k: v for k, v in variant.items() if k != "path"} for variant in variants],
        "rows": rows,
        "torch": torch.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out) as tmp_out:
        tmp_out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()

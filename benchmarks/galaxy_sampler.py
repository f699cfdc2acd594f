"""Benchmark: galaxies per second of the VAE sampler vs GalSim drawing the same stamps, same run.

The stamps are those of ``pipelines/galaxy_vae.toml`` (32x32 pixels of 0.15 arcsec, 25x25 PSF
stamps, 25 % HST PSFs, Moffat PSFs otherwise). Four ways of making ``--n`` galaxies:

- ``galsim profile``: GalSim draws the PSF-free, pixel-integrated profile of each galaxy (what
  ``GalaxyVAE.sample`` returns), one stamp at a time;
- ``galsim observed``: GalSim draws galaxy x PSF x pixel (FFT) and adds Gaussian noise: one
  observed stamp per galaxy;
- ``vae profile``: ``GalaxyVAE.sample(n, magnitude=..., half_light_radius=...)`` in batches of
  ``--batch-size`` (flow prior + decoder);
- ``vae observed``: the same, then :func:`surrogate.nn.psf.fft_convolve` with each galaxy's PSF
  image and Gaussian noise (the forward model of :class:`surrogate.models.forward.ForwardModel`).

Both sides get the same galaxies (catalogue parents, rotations, flips, jitters), PSFs,
magnitudes, sizes and noise levels, drawn once with the simulator before timing. The VAE's
speed does not depend on its weights: without ``--checkpoint`` a freshly initialised model of
the pipeline's architecture is timed. Timings are the median of ``--repeats`` runs after a
warm-up; ``torch.set_num_threads(--threads)`` (default 1) and GalSim's OpenMP threads (1) are set
explicitly and recorded, as is the load average (the machine may be shared). Prints a table and
writes ``benchmarks/results/galaxy_sampler.json`` atomically.

    OMP_NUM_THREADS=1 python benchmarks/galaxy_sampler.py
    python benchmarks/galaxy_sampler.py --checkpoint runs/galaxy_vae/model.pt --n 2048 --device cuda
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from surrogate.data.hdf5 import atomic_output  # noqa: E402
from surrogate.models.galaxy_vae import GalaxyVAE  # noqa: E402
from surrogate.nn.psf import fft_convolve  # noqa: E402
from surrogate.simulators.cosmos import load_cosmos_catalog  # noqa: E402
from surrogate.simulators.galaxies import _DEFAULTS, _make_drawer, galsim_omp_threads  # noqa: E402

STAMPS = dict(_DEFAULTS, psf_kinds=("moffat",))
MODEL = dict(stamp_size=32, latent_dim=16, channels=(16, 32, 64), hidden_features=128, flow_hidden_features=64,
             flow_transforms=4, input_scale=0.3, flux_scale=60.0, context_loc=(21.4, -0.8), context_scale=(1.2, 0.5))


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (lookup tables, allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="galaxies per timed run")
    parser.add_argument("--batch-size", type=int, default=256, help="VAE batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--checkpoint", type=Path, default=None, help="model.pt of a galaxy pipeline run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "galaxy_sampler.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    catalog = load_cosmos_catalog()
    drawer = _make_drawer(catalog, None, **STAMPS)
    N, P, s, k = drawer.stamp_size, drawer.psf_size, drawer.pixel_scale, drawer.oversampling

    # The same galaxies and PSFs for everyone, drawn before timing.
    rng = np.random.default_rng(args.seed)
    objects = [drawer.objects(rng) for _ in range(args.n)]
    psf_images = np.stack([psf.drawImage(nx=P, ny=P, scale=s, method="no_pixel").array for _, psf, _ in objects])
    psf_images /= psf_images.sum(axis=(1, 2), keepdims=True)
    magnitude = torch.tensor([v["magnitude"] for _, _, v in objects], dtype=torch.float32)
    radius = torch.tensor([v["half_light_radius"] for _, _, v in objects], dtype=torch.float32)
    sigma = np.full(args.n, 0.3)
    galsim = drawer.galsim

    def galsim_profile():
        for galaxy, _, _ in objects:
            galaxy.drawImage(nx=N * k, ny=N * k, scale=s / k, method="no_pixel").array.reshape(N, k, N, k).sum(axis=(1, 3))

    def galsim_observed():
        noise_rng = np.random.default_rng(1)
        for (galaxy, psf, _), sd in zip(objects, sigma):
            galsim.Convolve(galaxy, psf).drawImage(nx=N, ny=N, scale=s).array + noise_rng.standard_normal((N, N)) * sd

    if args.checkpoint is not None:
        from surrogate.pipelines.galaxy_vae import load_galaxy_vae

        model = load_galaxy_vae(args.checkpoint)
        source = str(args.checkpoint)
    else:
        torch.manual_seed(args.seed)
        model = GalaxyVAE(**MODEL)
        source = "untrained GalaxyVAE of pipelines/galaxy_vae.toml's architecture"
    model = model.to(device).eval()
    psf_t = torch.from_numpy(psf_images[:, None].astype(np.float32)).to(device)
    sigma_t = torch.from_numpy(sigma.astype(np.float32)).to(device).view(-1, 1, 1, 1)
    magnitude, radius = magnitude.to(device), radius.to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def vae(observe: bool):
        def run():
            with torch.inference_mode():
                for lo in range(0, args.n, args.batch_size):
                    hi = min(args.n, lo + args.batch_size)
                    profile = model.sample(hi - lo, magnitude=magnitude[lo:hi], half_light_radius=radius[lo:hi])
                    if observe:
                        image = fft_convolve(profile, psf_t[lo:hi], check_finite=False)
                        image = image + torch.randn_like(image) * sigma_t[lo:hi]
                sync()
        return run

    load_before = os.getloadavg()
    rows = []
    with galsim_omp_threads(1):
        for name, fn in (("galsim profile", galsim_profile), ("galsim observed", galsim_observed),
                         ("vae profile", vae(False)), ("vae observed", vae(True))):
            seconds = _median_time(fn, args.repeats)
            rows.append({"method": name, "seconds": seconds, "galaxies_per_s": args.n / seconds,
                         "ms_per_galaxy": 1e3 * seconds / args.n})
    load_after = os.getloadavg()

    by_name = {r["method"]: r for r in rows}
    speedup = {what: by_name[f"vae {what}"]["galaxies_per_s"] / by_name[f"galsim {what}"]["galaxies_per_s"]
               for what in ("profile", "observed")}
    print(f"{args.n} galaxies, {N}x{N} stamps at {s} arcsec/pixel, PSF {P}x{P}, "
          f"{STAMPS['hst_psf_fraction']:.0%} HST PSFs; torch threads {args.threads}, VAE batch {args.batch_size}, "
          f"device {device}; load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{'method':<18}{'galaxies/s':>12}{'ms/galaxy':>12}")
    for r in rows:
        print(f"{r['method']:<18}{r['galaxies_per_s']:>12.0f}{r['ms_per_galaxy']:>12.3f}")
    print(f"VAE / GalSim speed: profile x{speedup['profile']:.1f}, observed x{speedup['observed']:.1f}")

    payload = {
        "benchmark": "galaxy_sampler",
        "n": args.n, "batch_size": args.batch_size, "repeats": args.repeats, "device": str(device),
        "torch_threads": args.threads, "galsim_omp_threads": 1,
        "stamps": {"stamp_size": N, "pixel_scale_arcsec": s, "psf_size": P, "oversampling": k,
                   "hst_psf_fraction": STAMPS["hst_psf_fraction"], "psf_kinds": list(STAMPS["psf_kinds"])},
        "model": source, "rows": rows, "speedup_vae_over_galsim": speedup,
        "load_average": {"before": load_before, "after": load_after},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__, "galsim": galsim.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: PSF convolution layer vs scipy.signal.fftconvolve vs grouped conv2d.

A batch of ``B`` single-band images, each with its own PSF (the galaxy VAE's likelihood case,
Lanusse et al. 2021, arXiv:2008.03833), float32, "same"-size output:

- ``layer``: :func:`surrogate.nn.psf.fft_convolve` on ``(B, 1, H, W)`` with ``(B, 1, h, w)``
  (input checks included, as users call it);
- ``scipy``: ``scipy.signal.fftconvolve(images, psfs, mode="same", axes=(1, 2))`` on
  ``(B, H, W)`` and ``(B, h, w)``: one vectorised call, the fastest fair scipy form, computed in
  single precision, with ``scipy.fft.set_workers`` equal to the torch thread count;
- ``conv2d``: ``torch.nn.functional.conv2d`` with ``groups=B`` (one group per image, kernel
  flipped so that it is a convolution) and ``padding=h // 2`` (cropped to ``H x W`` for an even
  ``h``), the direct-sum alternative.

PSF sizes 20 (even: the size of the COSMOS catalogue's real PSF images, the layer's half-pixel
phase shift and longer zero padding; see :mod:`surrogate.nn.psf`), 25 and 63. The error column
is each method's float32 result against a float64 reference of the same convolution: scipy's
``"same"`` mode for scipy, conv2d and, for odd sizes, the layer; for the even size the layer's
origin is the stamp's true centre, half a pixel from scipy's, so its reference is the layer in
float64 (the error then measures rounding only, as for the other methods).

Forward passes under ``torch.inference_mode``; the layer's forward + backward (gradients for
image and PSF) is timed too. Each timing is the median of several repeats after one warm-up
call (fewer repeats, at least 3, for calls slower than 2 s). The script prints a table and
writes ``benchmarks/results/psf_convolution.json`` atomically. The machine this was written
on had 2 cores shared with other jobs, so absolute times are noisy; the ratios are measured
back to back.

Usage::

    python3 benchmarks/psf_convolution.py [--threads 1 2] [--repeats 7] [--batch 64]
                                          [--device cpu|cuda] [--out PATH]

With ``--device cuda`` the torch methods run on the GPU (timed with synchronisation) and scipy
on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.fft
import scipy.signal
import torch
import torch.nn.functional as F

from surrogate.data.hdf5 import atomic_output
from surrogate.nn.psf import fft_convolve, fft_shape

IMAGE_SIZES = (64, 128)
PSF_SIZES = (20, 25, 63)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "psf_convolution.json"


def _timer(fn, repeats: int, sync) -> tuple[float, float, int]:
    """Median and minimum wall time (seconds) of ``fn()`` over up to ``repeats`` calls."""
    fn()  # warm-up (FFT plans, allocator)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    n = repeats if first < 2.0 else max(3, min(repeats, int(10.0 / first)))
    times = [first]
    for _ in range(n - 1):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), n


def run(batch: int, threads: int, repeats: int, device: str) -> list[dict]:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for H in IMAGE_SIZES:
        for h in PSF_SIZES:
            image = torch.rand(batch, 1, H, H, generator=gen)
            psf = torch.rand(batch, 1, h, h, generator=gen)
            psf /= psf.sum(dim=(-2, -1), keepdim=True)
            img_np, psf_np = image[:, 0].numpy(), psf[:, 0].numpy()
            image_d, psf_d = image.to(dev), psf.to(dev)
            kernel = psf_d.flip(-2, -1).reshape(batch, 1, h, h)

            def layer():
                with torch.inference_mode():
                    return fft_convolve(image_d, psf_d)

            def layer_backward():
                x = image_d.detach().requires_grad_()
                p = psf_d.detach().requires_grad_()
                fft_convolve(x, p).square().sum().backward()

            def conv():
                with torch.inference_mode():
                    out = F.conv2d(image_d.reshape(1, batch, H, H), kernel, padding=h // 2, groups=batch)
                    return out[..., :H, :H].reshape(batch, 1, H, H)  # H + 1 rows for an even h

            def sp():
                return scipy.signal.fftconvolve(img_np, psf_np, mode="same", axes=(1, 2))

            with scipy.fft.set_workers(threads):
                t_scipy, min_scipy, n_scipy = _timer(sp, repeats, lambda: None)
                ref = sp()
            t_layer, min_layer, n_layer = _timer(layer, repeats, sync)
            t_back, _, _ = _timer(layer_backward, repeats, sync)
            t_conv, min_conv, n_conv = _timer(conv, repeats, sync)
            exact = scipy.signal.fftconvolve(
                img_np.astype(np.float64), psf_np.astype(np.float64), mode="same", axes=(1, 2)
            )
            scale = float(np.abs(exact).max())
            if h % 2:
                exact_layer = exact
            else:  # the layer's origin is half a pixel from scipy's: its own float64 result
                exact_layer = fft_convolve(image.double(), psf.double())[:, 0].numpy()

            def error(out, reference=exact) -> float:
                return float(np.abs(out - reference).max()) / scale

            row = {
                "threads": threads,
                "device": str(dev),
                "batch": batch,
                "image": H,
                "psf": h,
                "fft_shape": list(fft_shape((H, H), (h, h))),
                "layer_ms": 1e3 * t_layer,
                "layer_fwd_bwd_ms": 1e3 * t_back,
                "scipy_ms": 1e3 * t_scipy,
                "conv2d_ms": 1e3 * t_conv,
                "min_ms": {"layer": 1e3 * min_layer, "scipy": 1e3 * min_scipy, "conv2d": 1e3 * min_conv},
                "repeats": {"layer": n_layer, "scipy": n_scipy, "conv2d": n_conv},
                "speedup_vs_scipy": t_scipy / t_layer,
                "speedup_vs_conv2d": t_conv / t_layer,
                "max_rel_error": {  # vs a float64 reference, relative to the output's maximum
                    "layer": error(layer()[:, 0].cpu().numpy(), exact_layer),
                    "scipy": error(ref),
                    "conv2d": error(conv()[:, 0].cpu().numpy()),
                },
            }
            rows.append(row)
            print(_format(row), flush=True)
    return rows


HEADER = (
    f"{'thr':>3} {'image':>7} {'psf':>5} {'layer ms':>9} {'scipy ms':>9} {'conv2d ms':>10} "
    f"{'vs scipy':>9} {'vs conv2d':>10} {'fwd+bwd ms':>11} "
    f"{'err layer':>9} {'err scipy':>9} {'err conv':>9}"
)


def _format(r: dict) -> str:
    e = r["max_rel_error"]
    return (
        f"{r['threads']:>3} {r['image']:>3}x{r['image']:<3} {r['psf']:>2}x{r['psf']:<2} "
        f"{r['layer_ms']:>9.2f} {r['scipy_ms']:>9.2f} {r['conv2d_ms']:>10.2f} "
        f"{r['speedup_vs_scipy']:>8.2f}x {r['speedup_vs_conv2d']:>9.2f}x "
        f"{r['layer_fwd_bwd_ms']:>11.2f} {e['layer']:>9.1e} {e['scipy']:>9.1e} {e['conv2d']:>9.1e}"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or min(args.threads) < 1:
        parser.error("--repeats, --batch and --threads must be positive")

    print(f"PSF convolution, batch {args.batch}, float32, one PSF per image, device {args.device}")
    print(f"load average at start: {os.getloadavg()}")
    print(HEADER)
    rows = []
    for threads in args.threads:
        rows += run(args.batch, threads, args.repeats, args.device)
    report = {
        "benchmark": "psf_convolution",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float32",
        "psf_layout": "one PSF per image, (B, 1, h, w)",
        "timing": "median wall time in ms after one warm-up call; speed-ups are ratios of medians",
        "error": "max |method - float64 reference| / max |float64 scipy|; the reference is "
                 "float64 scipy, except for the layer with an even PSF size (float64 layer: "
                 "its origin is half a pixel from scipy's)",
        "torch": torch.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "cuda_device": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()

"""A small training job for the multi-rank tests, one per model family, built from public
``surrogate.train``, ``surrogate.models`` and ``surrogate.losses`` pieces only, launched as

    mpiexec -n 2 python -m mpi4py tests/train/mpi_job.py FAMILY OUT [--batch B] [--steps S]
        [--checkpoint-every N] [--log-every N] [--resume] [--fail-at K] [--hang-at K] [--timeout S]

FAMILY is ``calo`` (a small CaloGAN with :class:`~surrogate.train.GANStep` and cosine schedules
on synthetic showers), ``galaxy`` (the galaxy VAE and then its flow prior, as in the galaxy
pipeline), or ``npe`` (a conditional spline flow on synthetic pairs, a deterministic model;
``--steps`` counts epochs). The steps get plain modules and wrap them for data parallelism
themselves. Every rank writes its trained parameters to ``OUT/params_rank<r>.pt``; rank 0 writes
``OUT/done.json``. With ``--fail-at K`` rank 1 raises at its K-th step; with ``--hang-at K``
it sleeps there instead (the others must end after the collective timeout ``--timeout``). A stop signal ends the
job with status 75 after a checkpoint (as ``python -m surrogate`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class _Dict(Dataset):
    """Rows ``{key: tensor[i]}`` of equally long tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def _loader(tensors: dict[str, torch.Tensor], batch: int, seed: int) -> DataLoader:
    """Each rank its share of every epoch's permutation (``fit`` calls ``set_epoch``)."""
    from surrogate.train import distributed

    ctx = distributed.context()
    data = _Dict(tensors)
    sampler = DistributedSampler(data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    return DataLoader(data, batch_size=batch, sampler=sampler, drop_last=True)


def _parameters(modules) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.detach().cpu().clone()
            for name, module in modules.items() for key, value in module.state_dict().items()}


class _FailingStep:
    """Wraps a step; rank 1 raises (or, with ``hang``, sleeps for an hour) at its ``fail_at``-th call."""

    def __init__(self, step, fail_at: int, rank: int, hang: bool = False):
        self.step, self.fail_at, self.rank, self.hang, self.calls = step, fail_at, rank, hang, 0
        self.modules, self.state_dict, self.load_state_dict = step.modules, step.state_dict, step.load_state_dict

    def __call__(self, batch):
        self.calls += 1
        if self.rank == 1 and self.calls == self.fail_at:
            if self.hang:
                time.sleep(3600)
            raise RuntimeError(f"rank 1 fails on purpose at step {self.calls}")
        return self.step(batch)


def _toy_showers(n: int) -> dict[str, torch.Tensor]:
    """CaloGAN-layout showers (MeV) with a Gaussian spot holding half the incident energy (GeV)."""
    g = torch.Generator().manual_seed(1)  # the same data on every rank
    energy = 5.0 + 45.0 * torch.rand(n, 1, generator=g)
    out = {"energy": energy}
    for key, (ny, nx), weight in (("layer_0", (3, 96), 0.2), ("layer_1", (12, 12), 0.7), ("layer_2", (12, 6), 0.1)):
        y = torch.arange(ny).view(-1, 1) - (ny - 1) / 2
        x = torch.arange(nx).view(1, -1) - (nx - 1) / 2
        spot = torch.exp(-(x**2 + y**2) / 4.0)
        scale = 500.0 * weight * energy * (1 + 0.05 * torch.randn(n, 1, generator=g))
        out[key] = (spot / spot.sum() * scale.view(-1, 1, 1)).float()
    return out


def calo(args):
    from surrogate.models.calo_gan import CaloGANCritic, CaloGANGenerator
    from surrogate.train import GANStep, fit, make_lr_scheduler

    torch.manual_seed(3)  # identical initial weights on every rank
    generator = CaloGANGenerator(latent_dim=8, channels=2, attention_hidden=8)
    critic = CaloGANCritic(channels=(2,), hidden=16)
    g_opt = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    n_critic = 2
    step = GANStep(generator, critic, g_opt, d_opt, n_critic=n_critic, gradient_penalty=10.0,
                   generator_scheduler=make_lr_scheduler(g_opt, schedule="cosine",
                                                         total_steps=max(args.steps // n_critic, 1)),
                   critic_scheduler=make_lr_scheduler(d_opt, schedule="cosine", total_steps=args.steps, warmup_steps=2))
    result = fit(step, _loader(_toy_showers(512), args.batch, seed=3), max_steps=args.steps, out_dir=args.out / "run",
                 checkpoint_every=args.checkpoint_every, config={"family": "calo"}, resume=args.resume, seed=3,
                 progress=False, log_every=args.log_every)
    return result, step.modules


def npe(args):
    from surrogate.models.flows import build_flow
    from surrogate.train import LikelihoodStep, distributed, fit, make_lr_scheduler

    g = torch.Generator().manual_seed(0)  # the same simulations on every rank
    theta = 2 * torch.rand(1000, 2, generator=g) - 1
    x = theta + 0.1 * torch.randn(1000, 2, generator=g)
    train, held = {"theta": theta[:900], "x": x[:900]}, {"theta": theta[900:], "x": x[900:]}
    torch.manual_seed(0)
    flow = build_flow("nsf", 2, 2, hidden_features=16, num_transforms=2, num_bins=4, seed=0)
    loss = lambda flow, batch: -flow.log_prob(batch["theta"], context=batch["x"]).mean()  # noqa: E731
    loader = _loader(train, args.batch, seed=0)
    max_steps = args.steps * len(loader)  # --steps counts epochs
    optimizer = torch.optim.AdamW(flow.parameters(), lr=1e-3)
    step = LikelihoodStep(flow, optimizer, loss, max_grad_norm=5.0,
                          scheduler=make_lr_scheduler(optimizer, schedule="cosine", total_steps=max_steps))
    result = fit(step, loader, max_steps=max_steps, out_dir=args.out / "run", seed=1, progress=False,
                 log_every=len(loader), validation=lambda: float(loss(flow, held)), validate_every=len(loader))
    return result, {"flow": flow}


def galaxy(args):
    from surrogate.losses import flow_prior_loss, galaxy_vae_loss
    from surrogate.models.galaxy_vae import GalaxyVAE
    from surrogate.train import LikelihoodStep, distributed, fit, make_lr_scheduler

    g = torch.Generator().manual_seed(0)  # the same synthetic stamps on every rank
    n, size = 64, 16
    psf = torch.rand(n, 1, 5, 5, generator=g)
    data = {"observed": torch.rand(n, 1, size, size, generator=g) * 3, "psf": psf / psf.sum((-2, -1), keepdim=True),
            "noise_variance": torch.full((n, 1), 0.5), "magnitude": 20 + 2 * torch.rand(n, 1, generator=g),
            "half_light_radius": 0.3 + torch.rand(n, 1, generator=g)}
    torch.manual_seed(0)
    model = GalaxyVAE(stamp_size=size, latent_dim=4, channels=(4, 8), hidden_features=16, flow_hidden_features=8,
                      flow_transforms=2)
    optimizer = torch.optim.Adam(model.vae_parameters(), lr=1e-3)
    step = LikelihoodStep(model, optimizer, galaxy_vae_loss, max_grad_norm=5.0,
                          scheduler=make_lr_scheduler(optimizer, schedule="cosine", total_steps=args.steps))
    if args.fail_at or args.hang_at:
        step = _FailingStep(step, args.fail_at or args.hang_at, distributed.context().rank, hang=bool(args.hang_at))
    stamps = {k: data[k] for k in ("observed", "psf", "noise_variance")}
    fit(step, _loader(stamps, args.batch, seed=0), max_steps=args.steps, out_dir=args.out / "vae", seed=0,
        progress=False, log_every=2)
    with torch.no_grad():
        latent = model.encode(data["observed"]).mean
    latents = {"latent": latent, "magnitude": data["magnitude"], "half_light_radius": data["half_light_radius"]}
    prior = LikelihoodStep(model, torch.optim.Adam(model.prior_parameters(), lr=1e-3), flow_prior_loss)
    return fit(prior, _loader(latents, args.batch, seed=1), max_steps=args.steps, out_dir=args.out / "prior", seed=1,
               progress=False, log_every=2), {"model": model}


def _exit_interrupted(exc) -> None:
    """Leaves with status 75 on every rank, as ``python -m surrogate`` does after a stop signal
    (under ``python -m mpi4py`` a non-zero SystemExit would become MPI_Abort)."""
    from mpi4py import MPI

    print(f"mpi_job: {exc}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()
    os._exit(exc.exit_status)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("family", choices=["calo", "galaxy", "npe"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fail-at", type=int, default=None)
    parser.add_argument("--hang-at", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="collective timeout, seconds")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from surrogate.train import TrainingInterrupted, distributed, load_checkpoint

    ctx = distributed.init_distributed("cpu", timeout_s=args.timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.fail_at or args.hang_at) and args.family != "galaxy":
        raise SystemExit("--fail-at and --hang-at are implemented for the galaxy job")
    try:
        result, modules = {"calo": calo, "npe": npe, "galaxy": galaxy}[args.family](args)
    except TrainingInterrupted as exc:
        distributed.shutdown()
        _exit_interrupted(exc)
    torch.save(_parameters(modules), args.out / f"params_rank{ctx.rank}.pt")
    distributed.barrier()
    if ctx.is_main:
        ckpt = load_checkpoint(result.checkpoint)
        (args.out / "done.json").write_text(json.dumps({"world_size": ctx.world_size, "step": ckpt["step"]}))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A small training job for the multi-rank tests, one per model family, launched as

    mpiexec -n 2 python -m mpi4py tests/train/mpi_job.py FAMILY OUT [--batch B] [--steps S] [--fail-at K]

FAMILY is ``calo`` (CaloGAN WGAN-GP through ``train_calo_gan``), ``galaxy`` (the galaxy VAE and
then its flow prior, as in the galaxy pipeline), or ``npe`` (``train_npe`` on two_moons, a
deterministic model). Every rank writes its trained parameters to ``OUT/params_rank<r>.pt``;
rank 0 writes ``OUT/done.json``. With ``--fail-at K`` rank 1 raises at its K-th step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _parameters(modules) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in modules.items():
        for key, value in getattr(module, "module", module).state_dict().items():
            out[f"{name}.{key}"] = value.detach().cpu().clone()
    return out


class _FailingStep:
    """Wraps a step; rank 1 raises at its ``fail_at``-th call."""

    def __init__(self, step, fail_at: int, rank: int):
        self.step, self.fail_at, self.rank, self.calls = step, fail_at, rank, 0
        self.modules, self.optimizers = step.modules, step.optimizers

    def __call__(self, batch):
        self.calls += 1
        if self.rank == 1 and self.calls == self.fail_at:
            raise RuntimeError(f"rank 1 fails on purpose at step {self.calls}")
        return self.step(batch)


def calo(out: Path, batch: int, steps: int, fail_at: int | None):
    from surrogate.config import load_calo_pipeline
    from surrogate.pipelines import calo_gan
    from surrogate.simulators.gflash import simulate_to_file
    from surrogate.train import distributed

    data = out / "showers.h5"
    if distributed.context().is_main and not data.exists():
        simulate_to_file(data, 512, energy_range_gev=(5.0, 50.0), seed=1, progress=False)
    distributed.barrier()
    config = out / f"calo_rank{distributed.context().rank}.toml"
    config.write_text(f"""
[run]
output_dir = "{out / 'run'}"
seed = 3
device = "cpu"
[data]
train_file = "{data}"
reference_file = "{data}"
[model.generator]
latent_dim = 8
channels = 2
attention_hidden = 8
[model.critic]
channels = [2]
hidden = 16
[train]
batch_size = {batch}
max_steps = {steps}
generator_lr = 1e-3
critic_lr = 1e-3
n_critic = 2
checkpoint_every = 5
log_every = 5
block_size = 64
""")
    cfg = load_calo_pipeline(config)
    live = {}
    real_fit = calo_gan.fit

    def capturing_fit(step, *args, **kwargs):  # keep this rank's networks to compare across ranks
        live.update(step.modules)
        return real_fit(step, *args, **kwargs)

    calo_gan.fit = capturing_fit
    return calo_gan.train_calo_gan(cfg, data, resume=False, progress=False), live


def npe(out: Path, batch: int, steps: int, fail_at: int | None):
    from surrogate.pipelines.posterior import train_npe
    from surrogate.simulators.sbi_tasks import get_task, simulate_dataset

    task = get_task("two_moons")
    theta, x = simulate_dataset(task, 1000, seed=0)  # 900 training pairs: whole global batches
    result = train_npe(theta, x, prior=task.prior, kind="nsf", batch_size=batch, max_epochs=steps, patience=1000,
                       flow_kwargs={"hidden_features": 16, "num_transforms": 2, "num_bins": 4},
                       progress=False, seed=0, out_dir=out / "run")
    return result.fit, {"flow": result.posterior.flow}


def galaxy(out: Path, batch: int, steps: int, fail_at: int | None):
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from surrogate.models.galaxy_vae import GalaxyVAE, flow_prior_loss, galaxy_vae_loss
    from surrogate.train import distributed, fit
    from surrogate.train.steps import LikelihoodStep

    ctx = distributed.context()
    g = torch.Generator().manual_seed(0)  # the same synthetic stamps on every rank
    n, size = 64, 16
    psf = torch.rand(n, 1, 5, 5, generator=g)
    data = {"observed": torch.rand(n, 1, size, size, generator=g) * 3, "psf": psf / psf.sum((-2, -1), keepdim=True),
            "noise_variance": torch.full((n, 1), 0.5), "magnitude": 20 + 2 * torch.rand(n, 1, generator=g),
            "half_light_radius": 0.3 + torch.rand(n, 1, generator=g)}

    class Stamps(TensorDataset):
        def __init__(self, keys):
            super().__init__(*[data[k] for k in keys])
            self.keys = keys

        def __getitem__(self, i):
            return dict(zip(self.keys, super().__getitem__(i)))

    torch.manual_seed(0)
    model = GalaxyVAE(stamp_size=size, latent_dim=4, channels=(4, 8), hidden_features=16, flow_hidden_features=8,
                      flow_transforms=2)
    stamps = Stamps(("observed", "psf", "noise_variance"))
    sampler = DistributedSampler(stamps, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=0, drop_last=True)
    step = LikelihoodStep(model, torch.optim.Adam(model.vae_parameters(), lr=1e-3), galaxy_vae_loss, max_grad_norm=5.0)
    if fail_at:
        step = _FailingStep(step, fail_at, ctx.rank)
    fit(step, DataLoader(stamps, batch_size=batch, sampler=sampler, drop_last=True), max_steps=steps,
        out_dir=out / "vae", seed=0, progress=False, log_every=2)
    with torch.no_grad():
        latent = model.encode(data["observed"]).mean
    latents = Stamps(("magnitude", "half_light_radius"))
    latents.tensors = (latent, data["magnitude"], data["half_light_radius"])
    latents.keys = ("latent", "magnitude", "half_light_radius")
    sampler = DistributedSampler(latents, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=1, drop_last=True)
    prior = LikelihoodStep(model, torch.optim.Adam(model.prior_parameters(), lr=1e-3), flow_prior_loss)
    return fit(prior, DataLoader(latents, batch_size=batch, sampler=sampler, drop_last=True), max_steps=steps,
               out_dir=out / "prior", seed=1, progress=False, log_every=2), {"model": model}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("family", choices=["calo", "galaxy", "npe"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fail-at", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from surrogate.train import distributed
    from surrogate.train.checkpoint import load_checkpoint

    ctx = distributed.init_distributed("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fail_at and args.family != "galaxy":
        raise SystemExit("--fail-at is implemented for the galaxy job")
    job = {"calo": calo, "npe": npe, "galaxy": galaxy}[args.family]
    result, modules = job(args.out, args.batch, args.steps, args.fail_at)  # FitResult, this rank's networks
    torch.save(_parameters(modules), args.out / f"params_rank{ctx.rank}.pt")
    distributed.barrier()
    if ctx.is_main:
        ckpt = load_checkpoint(result.checkpoint)
        (args.out / "done.json").write_text(json.dumps({"world_size": ctx.world_size, "step": ckpt["step"]}))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

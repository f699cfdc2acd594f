"""Shared fixtures: a fixed seed with torch's global state restored afterwards, small GFlash
shower files, a tiny CaloGAN pipeline file, a small galaxy VAE and a Gaussian PSF."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_global_state():
    """Tests run with one torch thread (fast and repeatable on 2 cores); restored afterwards."""
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


@pytest.fixture
def seed() -> int:
    """Seeds torch's global generator (restored after the test) and returns the seed."""
    torch.manual_seed(1234)
    return 1234


@pytest.fixture
def rng(seed) -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def gflash_files(tmp_path_factory) -> tuple[Path, Path]:
    """CaloGAN-layout GFlash files, 5-50 GeV e+: 512 training and 300 reference showers
    (independent seeds), made once per test session."""
    from surrogate.simulators.gflash_runs import simulate_to_file

    folder = tmp_path_factory.mktemp("gflash")
    train = simulate_to_file(folder / "train.h5", 512, energy_range_gev=(5.0, 50.0), seed=1, progress=False)
    reference = simulate_to_file(folder / "reference.h5", 300, energy_range_gev=(5.0, 50.0), seed=2, progress=False)
    return Path(train), Path(reference)


_TINY_CALO_GAN = """
[run]
pipeline = "calo_gan"
output_dir = "{out}"
seed = {seed}
threads = 1
device = "cpu"
[data]
train_file = "{train}"
reference_file = "{reference}"
[model.generator]
latent_dim = 8
channels = 2
attention_hidden = 8
[model.critic]
channels = [2]
hidden = 16
[train]
batch_size = {batch_size}
max_steps = {max_steps}
checkpoint_every = {every}
log_every = {every}
block_size = 64
{extra}"""


@pytest.fixture(scope="session")
def tiny_calo_gan_config() -> Callable[..., Path]:
    """``write(folder, train, reference=None, *, seed=7, batch_size=32, max_steps=24, every=4,
    extra="")``: writes ``folder/calo.toml``, a CaloGAN pipeline file with a tiny model (seconds
    per hundred steps) training on ``train`` into ``folder/run``, checkpointing and logging every
    ``every`` steps; ``extra`` is appended after the ``[train]`` keys (more keys, or sections).
    Returns the file's path."""

    def write(folder: Path, train: Path, reference: Path | None = None, *, seed: int = 7, batch_size: int = 32,
              max_steps: int = 24, every: int = 4, extra: str = "") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "calo.toml"
        path.write_text(_TINY_CALO_GAN.format(out=folder / "run", train=train, reference=reference or train, seed=seed,
                                              batch_size=batch_size, max_steps=max_steps, every=every, extra=extra))
        return path

    return write


@pytest.fixture
def one_galsim_thread():
    """GalSim's OpenMP threads set to 1 for the test (2-core machines), restored afterwards
    (:func:`surrogate.simulators.galaxies.galsim_omp_threads`); skips without GalSim."""
    pytest.importorskip("galsim")
    from surrogate.simulators.galaxies import galsim_omp_threads

    with galsim_omp_threads(1):
        yield


@pytest.fixture
def small_vae_kwargs() -> dict:
    """Constructor arguments of a small :class:`~surrogate.models.galaxy_vae.GalaxyVAE` (16x16 stamps)."""
    return dict(stamp_size=16, latent_dim=4, channels=(4, 8), hidden_features=16, flow_hidden_features=8,
                flow_transforms=2, flux_scale=50.0)


@pytest.fixture
def gaussian_psf() -> Callable[[int, float], torch.Tensor]:
    """``gaussian_psf(size, sigma)``: a unit-sum Gaussian kernel ``(size, size)`` centred on the
    stamp's true centre ``(size - 1) / 2`` (the PSF origin of :mod:`surrogate.nn.psf`), sigma in pixels."""

    def make(size: int, sigma: float) -> torch.Tensor:
        c = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        kernel = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma**2))
        return kernel / kernel.sum()

    return make

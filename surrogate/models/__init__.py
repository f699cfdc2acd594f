"""Generative models (``import surrogate.models``).

* :mod:`surrogate.models.calo_gan`: the CaloGAN-style conditional generator and critic
  (arXiv:1705.02355, 1712.10321), trained with WGAN-GP.
* :mod:`surrogate.models.calo_flow`: the CaloFlow-style pair of conditional spline flows over
  a calorimeter's cells with an exact likelihood (arXiv:2106.05285).
* :mod:`surrogate.models.galaxy_vae`: the PSF-aware galaxy VAE with a conditional latent flow
  prior (after arXiv:2008.03833); its objectives are in :mod:`surrogate.losses`.
* :mod:`surrogate.models.forward`: the differentiable forward model galaxy -> PSF -> pixel
  noise built on a trained galaxy VAE.
* :mod:`surrogate.models.flows`: builders of conditional MAF and neural spline flows on nflows
  0.14 (the transforms that work on torch 2, tested for invertibility and log-determinants).
* :mod:`surrogate.models.npe`: neural posterior estimation, a conditional flow ``q(theta | x)``
  with built-in z-scoring and the :class:`~surrogate.models.npe.NeuralPosterior` that samples it
  inside the prior's support (arXiv:1605.06376, 1905.07488).

Names are imported on first access (PEP 562), so the calorimeter model does not pull in nflows.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CaloFlow": "calo_flow",
    "CaloGANCritic": "calo_gan",
    "CaloGANGenerator": "calo_gan",
    "FlowPrior": "galaxy_vae",
    "ForwardModel": "forward",
    "GalaxyVAE": "galaxy_vae",
    "build_flow": "flows",
    "build_maf": "flows",
    "build_nsf": "flows",
    "LowAcceptanceError": "npe",
    "NeuralPosterior": "npe",
    "Z_SCORE_X": "npe",
    "build_npe_flow": "npe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

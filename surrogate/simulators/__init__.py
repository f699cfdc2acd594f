"""Reference simulators that make training data.

- :mod:`surrogate.simulators.gflash`: GFlash-style parametrized electromagnetic showers in the
  CaloGAN geometry (``simulate_calogan_showers``, ``simulate_to_file``); its materials, geometry
  and parameter formulas are in :mod:`surrogate.simulators.gflash_params`, its exact mean
  profiles (the references the tests check against) in :mod:`surrogate.simulators.gflash_profiles`;
  the same showers in the CaloChallenge 2022 geometries and file layout (calorimeters, incident
  energy distributions, readout thresholds) in :mod:`surrogate.simulators.gflash_calochallenge`.

- :mod:`surrogate.simulators.galaxies`: GalSim stamps from the COSMOS example catalogue's
  parametric fits, with HST and ground-based PSFs and pixel noise; the catalogue itself (galaxies,
  HST PSFs, magnitudes, half-light radii) is loaded by :mod:`surrogate.simulators.cosmos`.

- :mod:`surrogate.simulators.sbi_tasks`: sbibm benchmark tasks (prior, simulator) and their
  reference posteriors shipped in ``datasets/sbibm``.

- :mod:`surrogate.simulators.user`: a user's own simulator named by ``"module:function"``, run
  in seeded batches; :mod:`surrogate.simulators.priors`: priors from ``[prior]`` tables.

Submodules are imported on first use, so importing one simulator does not import the others'
dependencies.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "simulate_calogan_showers": "gflash",
    "simulate_to_file": "gflash",
    "load_cosmos_catalog": "cosmos",
    "simulate_galaxies": "galaxies",
    "simulate_galaxies_from_recipe": "galaxies",
    "simulate_galaxies_to_file": "galaxies",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

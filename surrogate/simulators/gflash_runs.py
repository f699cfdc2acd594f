"""Runs of the GFlash-style simulator (:mod:`surrogate.simulators.gflash`) in the CaloGAN
geometry: incident energies drawn uniformly in a range, showers in batches, into arrays or
straight into a CaloGAN-layout HDF5 file, with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

from surrogate.checks import check_float, check_int
from surrogate.simulators.gflash import DEFAULT_BATCH_SIZE, READOUT_THRESHOLD_MEV, simulate_batch
from surrogate.simulators.gflash_params import (
    CALOGAN_CALORIMETER,
    SamplingCalorimeter,
    _check_particle,
)

__all__ = [
    "check_energy_range",
    "iter_calogan_batches",
    "simulate_calogan_showers",
    "simulate_to_file",
]


def check_energy_range(energy_range_gev) -> tuple[float, float]:
    """``(low, high)`` in GeV as floats.

    Raises:
        ValueError: not a pair of numbers with ``0 < low <= high < inf`` (naming the value).
    """
    try:
        low, high = (float(v) for v in energy_range_gev)
    except (TypeError, ValueError):
        raise ValueError(f"energy_range_gev: expected (min, max) in GeV, got {energy_range_gev!r}") from None
    if not (0.0 < low <= high < np.inf):
        raise ValueError(f"energy_range_gev: expected 0 < min <= max (GeV), got ({low}, {high})")
    return low, high


def _check_run_arguments(n_events: int, energy_range_gev, batch_size: int) -> tuple[float, float]:
    check_int("n_events", n_events, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    return check_energy_range(energy_range_gev)


def iter_calogan_batches(
    n_events: int,
    *,
    particle: str = "e+",
    energy_range_gev: tuple[float, float] = (1.0, 100.0),
    seed: int = 0,
    progress: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    spot_scale: float = 1.0,
    impact_jitter_mm: float = 0.0,
    calo: SamplingCalorimeter = CALOGAN_CALORIMETER,
    threshold_mev: float = READOUT_THRESHOLD_MEV,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield CaloGAN-layout batches of showers with incident energies uniform in a range.

    One ``np.random.default_rng(seed)`` drives everything, so the same arguments (including
    ``batch_size``) give the same showers.

    Arguments:
        n_events: total number of showers.
        particle: ``"e+"``, ``"e-"`` or ``"gamma"``.
        energy_range_gev: ``(min, max)`` of the uniform incident-energy distribution in GeV
            (``min == max`` for a fixed energy).
        seed: seed of the numpy generator.
        progress: show a tqdm progress bar (counting showers, updated per batch).
        batch_size: showers per batch (peak memory grows with batch_size x spots per shower:
            about 80 MB for 256 showers of 100 GeV, 310 MB for 1000).
        spot_scale: multiplies the GFlash spot count.
        impact_jitter_mm: half-width of a uniform shift of the shower axis in x and y, mm.
        calo: the sampling calorimeter.
        threshold_mev: readout threshold in MeV, as in :func:`simulate_batch`.

    Returns:
        Iterator of dicts as returned by :func:`simulate_batch`; batch sizes sum to ``n_events``.

    Raises:
        ValueError: bad arguments.
    """
    _check_particle(particle)
    low, high = _check_run_arguments(n_events, energy_range_gev, batch_size)
    threshold_mev = check_float("threshold_mev", threshold_mev, minimum=0, unit="MeV")
    rng = np.random.default_rng(seed)
    with tqdm(total=int(n_events), unit="shower", desc=f"gflash {particle}", disable=not progress) as bar:
        done = 0
        while done < n_events:
            size = min(int(batch_size), int(n_events) - done)
            energy = rng.uniform(low, high, size)
            yield simulate_batch(energy, rng, particle=particle, calo=calo, spot_scale=spot_scale,
                                 impact_jitter_mm=impact_jitter_mm, threshold_mev=threshold_mev)
            done += size
            bar.update(size)


def simulate_calogan_showers(
    n_events: int,
    *,
    particle: str = "e+",
    energy_range_gev: tuple[float, float] = (1.0, 100.0),
    seed: int = 0,
    progress: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    spot_scale: float = 1.0,
    impact_jitter_mm: float = 0.0,
    threshold_mev: float = READOUT_THRESHOLD_MEV,
) -> dict[str, np.ndarray]:
    """Simulate GFlash showers in the CaloGAN geometry, in memory.

    Arguments:
        n_events: number of showers N.
        particle: ``"e+"`` (default), ``"e-"`` (identical to e+ here) or ``"gamma"``.
        energy_range_gev: ``(min, max)`` of the uniform incident-energy distribution, GeV.
        seed: seed of ``np.random.default_rng``.
        progress: show a tqdm progress bar.
        batch_size: showers simulated per vectorized batch (results depend on it via the order
            of random draws; memory grows with it).
        spot_scale: multiplies GFlash's spot count (default 1: the published formula).
        impact_jitter_mm: half-width of a uniform random shift of the shower axis in x and y,
            mm (default 0: axis at the centre).
        threshold_mev: readout threshold in MeV: cells below it are 0 and their energy is lost
            (default :data:`READOUT_THRESHOLD_MEV` = 0.01 MeV, CaloFlow's; 0 keeps every
            deposit). Cells at or above it do not depend on it (same seed, same values).

    Returns:
        dict with ``"layer_0"`` float32 (N, 3, 96), ``"layer_1"`` (N, 12, 12), ``"layer_2"``
        (N, 12, 6) cell energies in MeV (EM scale; 0 or >= ``threshold_mev``), ``"energy"``
        (N, 1) incident energy in GeV, ``"overflow"`` (N, 3) energy in MeV outside the +-240 mm
        grid per layer.

    Raises:
        ValueError: bad arguments (message names the argument, expected and actual value).

    Example:
        >>> showers = simulate_calogan_showers(4, energy_range_gev=(10.0, 10.0), progress=False)
        >>> showers["layer_1"].shape, showers["energy"][:, 0].tolist()
        ((4, 12, 12), [10.0, 10.0, 10.0, 10.0])
    """
    batches = list(iter_calogan_batches(
        n_events, particle=particle, energy_range_gev=energy_range_gev, seed=seed,
        progress=progress, batch_size=batch_size, spot_scale=spot_scale,
        impact_jitter_mm=impact_jitter_mm, threshold_mev=threshold_mev,
    ))
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def simulate_to_file(
    path: str | os.PathLike,
    n_events: int,
    *,
    particle: str = "e+",
    energy_range_gev: tuple[float, float] = (1.0, 100.0),
    seed: int = 0,
    progress: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    spot_scale: float = 1.0,
    impact_jitter_mm: float = 0.0,
    threshold_mev: float = READOUT_THRESHOLD_MEV,
) -> str | os.PathLike:
    """Simulate showers and stream them batch by batch into a CaloGAN HDF5 file.

    Written through :class:`surrogate.data.calo.CaloGANWriter`, so the file appears under
    ``path`` only once all ``n_events`` are written (atomic). Same showers as
    :func:`simulate_calogan_showers` with the same arguments. The file records the readout
    threshold as its attribute ``readout_threshold_mev`` (float, MeV).

    Arguments:
        path: output HDF5 path.
        n_events: number of showers.
        particle, energy_range_gev, seed, progress, batch_size, spot_scale, impact_jitter_mm,
        threshold_mev: as in :func:`simulate_calogan_showers`.

    Returns:
        ``path``.

    Raises:
        ValueError: bad arguments.
    """
    from surrogate.data.calo import CaloGANWriter

    batches = iter_calogan_batches(
        n_events, particle=particle, energy_range_gev=energy_range_gev, seed=seed,
        progress=progress, batch_size=batch_size, spot_scale=spot_scale,
        impact_jitter_mm=impact_jitter_mm, threshold_mev=threshold_mev,
    )
    threshold_mev = check_float("threshold_mev", threshold_mev, minimum=0, unit="MeV")
    with CaloGANWriter(path, n_events, attrs={"readout_threshold_mev": threshold_mev}) as writer:
        for batch in batches:
            writer.write(batch)
    return path

"""GFlash-style showers in the CaloChallenge 2022 geometries, written in the challenge's file layout.

The physics is that of :mod:`surrogate.simulators.gflash` (longitudinal Gamma profiles with
correlated fluctuations, two-component radial profiles sampled as spots, sampling fluctuations,
zero suppression; Grindhammer & Peters, hep-ex/0001020); only the calorimeter behind the voxels
and the readout cells change. The voxels are the polar bins of a challenge binning file
(:func:`surrogate.data.binning.read_binning_xml`); the calorimeter is a
:class:`~surrogate.simulators.gflash_params.SamplingCalorimeter` with one readout layer per layer
of the geometry (:data:`CALORIMETERS`). The showers are written as the challenge's files are
(Krause et al., arXiv:2410.21611): ``incident_energies`` (N, 1) and ``showers`` (N, voxels), both
MeV, voxel order layer, angle, radius; energy beyond a layer's last radial edge is not recorded.

**Calorimeters** (assumptions stated; the challenge gives only the voxel binning):

* ``"atlas_barrel"``, for dataset 1 photons (layers 0, 1, 2, 3 and 12 of the ATLAS calorimeter
  sampling numbering: barrel presampler, EM barrel strips, middle and back, first Tile barrel
  layer). A stand-in for the ATLAS LAr accordion at normal incidence: sampling layers of
  1.53 mm Pb + 4.2 mm LAr (the barrel's lead thickness at ``|eta| < 0.8`` and its two 2.1 mm
  argon gaps; the accordion folds, steel cladding and electrodes are ignored), X0_eff = 18.9 mm.
  Readout layers of 2, 14, 53, 7 and 45 sampling layers: presampler 0.6 X0 (ATLAS: 11 mm of
  LAr, behind about 2 X0 of inner detector, solenoid and cryostat, which are *not* simulated),
  strips 4.2 X0, middle 16.0 X0, back 2.1 X0 (ATLAS at eta = 0: about 4.3, 16 and 2 X0; ATLAS
  Collaboration, JINST 3 (2008) S08003, sec. 5.2), and for the Tile layer 12 a further 13.6 X0
  of the same Pb/LAr medium that catches what leaks out of the back of the EM part, read out at
  the same EM scale (the real Tile calorimeter is iron/scintillator, 1.5 interaction lengths in
  its first layer).
* ``"par04"``, for datasets 2 and 3 (electrons): the Geant4 ``Par04`` detector the challenge
  used, 90 sampling layers of 1.4 mm W + 0.3 mm Si (153 mm; challenge homepage), read out in
  pairs: 45 layers of 3.4 mm (0.81 X0_eff; X0_eff = 4.22 mm, Molière radius 10.9 mm).
* ``"calogan"``: CaloGAN's 80 x (2 mm Pb + 4 mm LAr) read out as 15, 58 and 7 layers (for a
  three-layer geometry).

**Incident energies** (:func:`sample_incident_energies`): ``"powers-of-two"`` (dataset 1: the
15 energies 2^8 ... 2^22 MeV, 256 MeV to 4.19 TeV, equally likely here; the challenge's files
hold fewer showers at the highest energies), ``"log-uniform"`` (datasets 2 and 3: 1 GeV to
1 TeV) and ``"uniform"``.

**Readout thresholds** of the challenge's evaluation (``code/evaluate.py``, ``args.min_energy``):
:data:`THRESHOLDS_MEV`, 1 MeV for dataset 1 and 0.5 keV / 0.033 = 15.15 keV for datasets 2 and 3;
cells below the threshold are written as 0.

**Memory.** Spots per shower grow as E^0.959 (about 3 x 10^5 at 4 TeV in ``"atlas_barrel"``), so
batches are cut to hold at most ``max_spots_per_batch`` expected spots (default 2^22, about
150 MB of working arrays) as well as at most ``batch_size`` showers.

Example:
    >>> import numpy as np
    >>> from surrogate.geometry import CaloGeometry, PolarLayer
    >>> toy = CaloGeometry("toy", [PolarLayer(f"layer_{i}", (0.0, 20.0, 100.0), 4) for i in range(3)])
    >>> batch = simulate_batch(np.array([10.0]), np.random.default_rng(0), calo=CALORIMETERS["calogan"],
    ...                        geometry=toy)
    >>> batch["layer_1"].shape, toy.flatten(batch).shape
    ((1, 4, 2), (1, 24))
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
from tqdm.auto import tqdm

from surrogate.checks import check_choice, check_float, check_int
from surrogate.geometry import CaloGeometry
from surrogate.simulators.gflash import simulate_batch
from surrogate.simulators.gflash_params import (
    CALOGAN_CALORIMETER,
    LEAD,
    LIQUID_ARGON,
    SILICON,
    TUNGSTEN,
    SamplingCalorimeter,
    _check_particle,
    mean_spot_count,
)
from surrogate.simulators.gflash_runs import check_energy_range

__all__ = [
    "CALORIMETERS",
    "ENERGY_DISTRIBUTIONS",
    "THRESHOLDS_MEV",
    "iter_calochallenge_batches",
    "sample_incident_energies",
    "simulate_calochallenge_to_file",
]

ATLAS_BARREL_CALORIMETER = SamplingCalorimeter(
    passive=LEAD, active=LIQUID_ARGON, passive_thickness_mm=1.53, active_thickness_mm=4.2,
    readout_ends=(2, 16, 69, 76, 121),
)
PAR04_CALORIMETER = SamplingCalorimeter(
    passive=TUNGSTEN, active=SILICON, passive_thickness_mm=1.4, active_thickness_mm=0.3,
    readout_ends=tuple(range(2, 91, 2)),
)
CALORIMETERS: Mapping[str, SamplingCalorimeter] = MappingProxyType({
    "calogan": CALOGAN_CALORIMETER,
    "atlas_barrel": ATLAS_BARREL_CALORIMETER,
    "par04": PAR04_CALORIMETER,
})
"""Sampling calorimeters by name (module docstring): ``"atlas_barrel"`` (5 readout layers, DS1
photons), ``"par04"`` (45, DS2 and DS3), ``"calogan"`` (3)."""

THRESHOLDS_MEV: Mapping[str, float] = MappingProxyType({"1-photons": 1.0, "1-pions": 1.0, "2": 0.5e-3 / 0.033,
                                                        "3": 0.5e-3 / 0.033})
"""Voxel readout threshold in MeV of the challenge's evaluation per dataset (``evaluate.py``)."""

ENERGY_DISTRIBUTIONS = ("uniform", "log-uniform", "powers-of-two")
"""Incident-energy distributions of :func:`sample_incident_energies`."""

DEFAULT_MAX_SPOTS = 2**22


def sample_incident_energies(n: int, distribution: str, energy_range_gev: tuple[float, float],
                             rng: np.random.Generator) -> np.ndarray:
    """Incident energies in MeV, the challenge's unit.

    Arguments:
        n: Number of energies (>= 1).
        distribution: ``"uniform"`` in the range, ``"log-uniform"`` (uniform in ``ln E``), or
            ``"powers-of-two"``: ``2^k`` MeV for every integer ``k`` with ``2^k`` MeV in the range,
            equally likely (dataset 1: range 0.256 to 4194.304 GeV, ``k = 8 ... 22``).
        energy_range_gev: ``(min, max)`` in GeV, ``0 < min <= max``.
        rng: numpy generator.

    Returns:
        float64 ``(n,)`` in MeV (exact powers of two for ``"powers-of-two"``).

    Raises:
        ValueError: For an unknown distribution, a bad range, or no power of two in the range.

    Example:
        >>> e = sample_incident_energies(1000, "powers-of-two", (0.256, 4194.304), np.random.default_rng(0))
        >>> sorted(set(np.log2(e).astype(int).tolist())) == list(range(8, 23))
        True
    """
    n = check_int("n", n, minimum=1)
    check_choice("distribution", distribution, ENERGY_DISTRIBUTIONS)
    low, high = check_energy_range(energy_range_gev)
    if distribution == "uniform":
        return 1000.0 * rng.uniform(low, high, n)
    if distribution == "log-uniform":
        return 1000.0 * np.exp(rng.uniform(np.log(low), np.log(high), n))
    exponents = np.arange(np.ceil(np.log2(1000.0 * low) - 1e-9), np.floor(np.log2(1000.0 * high) + 1e-9) + 1)
    if exponents.size == 0:
        raise ValueError(f"energy_range_gev ({low}, {high}) GeV holds no power of two in MeV")
    return np.exp2(rng.choice(exponents, n))


def _batches(energy_gev: np.ndarray, calo: SamplingCalorimeter, spot_scale: float, batch_size: int,
             max_spots: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` showers and ``max_spots`` expected spots (at least one shower)."""
    spots = spot_scale * mean_spot_count(energy_gev, calo)
    out, start = [], 0
    while start < energy_gev.size:
        stop, total = start, 0.0
        while (stop < energy_gev.size and stop - start < batch_size
               and (stop == start or total + spots[stop] <= max_spots)):
            total += spots[stop]
            stop += 1
        out.append(slice(start, stop))
        start = stop
    return out


def iter_calochallenge_batches(
    n_events: int,
    *,
    geometry: CaloGeometry,
    calorimeter: str | SamplingCalorimeter,
    particle: str = "gamma",
    energy_distribution: str = "powers-of-two",
    energy_range_gev: tuple[float, float] = (0.256, 4194.304),
    seed: int = 0,
    threshold_mev: float = 1.0,
    spot_scale: float = 1.0,
    batch_size: int = 256,
    max_spots_per_batch: int = DEFAULT_MAX_SPOTS,
    progress: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields batches of showers in the CaloChallenge layout.

    One ``np.random.default_rng(seed)`` draws all incident energies first, then the showers batch
    by batch; the same arguments give the same showers.

    Arguments:
        n_events: Number of showers (>= 1).
        geometry: The voxels (a challenge geometry, or any :class:`~surrogate.geometry.CaloGeometry`).
        calorimeter: A name of :data:`CALORIMETERS` or a calorimeter with one readout layer per
            layer of ``geometry``.
        particle: ``"gamma"``, ``"e-"`` or ``"e+"``.
        energy_distribution, energy_range_gev: As :func:`sample_incident_energies`.
        seed: Seed of the generator.
        threshold_mev: Readout threshold in MeV: voxels below it are 0 (:data:`THRESHOLDS_MEV`).
        spot_scale: Multiplies GFlash's spot count.
        batch_size: At most this many showers per batch.
        max_spots_per_batch: At most this many expected spots per batch (memory bound).
        progress: Show a progress bar.

    Yields:
        ``{"incident_energies": (B, 1) MeV, "showers": (B, geometry.n_voxels) MeV}``, float32.

    Raises:
        ValueError: For a bad argument, or a calorimeter whose readout layers do not match the geometry.
    """
    _check_particle(particle)
    n_events = check_int("n_events", n_events, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    max_spots = check_int("max_spots_per_batch", max_spots_per_batch, minimum=1)
    threshold_mev = check_float("threshold_mev", threshold_mev, minimum=0.0, unit="MeV")
    spot_scale = check_float("spot_scale", spot_scale, minimum=0.0, exclusive_minimum=True)
    calo = _calorimeter(calorimeter, geometry)
    rng = np.random.default_rng(seed)
    energy_mev = sample_incident_energies(n_events, energy_distribution, energy_range_gev, rng)
    energy_gev = energy_mev / 1000.0
    with tqdm(total=n_events, unit="shower", desc=f"gflash {particle} ({geometry.name})",
              disable=not progress) as bar:
        for cut in _batches(energy_gev, calo, spot_scale, batch_size, max_spots):
            batch = simulate_batch(energy_gev[cut], rng, particle=particle, calo=calo, spot_scale=spot_scale,
                                   threshold_mev=threshold_mev, geometry=geometry)
            yield {"incident_energies": energy_mev[cut, None].astype(np.float32),
                   "showers": geometry.flatten(batch)}
            bar.update(cut.stop - cut.start)


def _calorimeter(calorimeter: str | SamplingCalorimeter, geometry: CaloGeometry) -> SamplingCalorimeter:
    if isinstance(calorimeter, str):
        calorimeter = CALORIMETERS[check_choice("calorimeter", calorimeter, sorted(CALORIMETERS))]
    if len(calorimeter.readout_ends) != geometry.n_layers:
        raise ValueError(f"calorimeter has {len(calorimeter.readout_ends)} readout layers but geometry "
                         f"{geometry.name!r} has {geometry.n_layers} ({', '.join(geometry.layer_names)})")
    return calorimeter


def simulate_calochallenge_to_file(path: str | os.PathLike, n_events: int, *, attrs: Mapping | None = None,
                                   **kwargs) -> Path:
    """Simulates showers (:func:`iter_calochallenge_batches`) into a CaloChallenge-layout file, atomically.

    Written with :class:`surrogate.data.calo.CaloChallengeWriter`: ``incident_energies`` (N, 1)
    and ``showers`` (N, voxels), float32, MeV, gzip; file attributes ``layout =
    "calochallenge"``, ``readout_threshold_mev``, ``geometry`` (its name), ``particle`` and
    ``calorimeter`` (when given by name), plus ``attrs``.

    Arguments:
        path: Output file; its folder must exist.
        n_events: Number of showers.
        attrs: Further file attributes.
        kwargs: The keyword arguments of :func:`iter_calochallenge_batches` (``geometry`` and
            ``calorimeter`` required).

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ValueError: As :func:`iter_calochallenge_batches`.
    """
    from surrogate.data.calo import CaloChallengeWriter

    geometry = kwargs["geometry"]
    info = {"readout_threshold_mev": float(kwargs.get("threshold_mev", 1.0)), "geometry": geometry.name,
            "particle": kwargs.get("particle", "gamma")}
    if isinstance(kwargs.get("calorimeter"), str):
        info["calorimeter"] = kwargs["calorimeter"]
    batches = iter_calochallenge_batches(n_events, **kwargs)
    with CaloChallengeWriter(path, n_events, n_voxels=geometry.n_voxels, attrs={**info, **(attrs or {})}) as writer:
        for batch in batches:
            writer.write(batch)
    return Path(path)

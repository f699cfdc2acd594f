r"""Incident-energy inference through a trained shower flow's likelihood.

A :class:`~surrogate.models.calo_flow.CaloFlow` gives the exact density :math:`p(y \mid E)` of a
dequantised shower :math:`y`; Bayes' rule turns it into a posterior over the incident energy,
:math:`p(E \mid y) \propto p(y \mid E)\,\pi(E)` (Du et al., arXiv:2404.18992). The posterior is
evaluated on a 1-D grid and normalised there:

- **Grid.** :func:`energy_grid`: geometric spacing over the training range (the resolution
  :math:`\sigma/E` shrinks with energy, so equal steps in :math:`\log E` suit all energies). With
  ``refine`` (default) a second pass puts as many points, again geometric, between the grid
  points either side of the region where the first pass's log-posterior is within 20 nats of its
  maximum: per shower, so a posterior narrower than the grid spacing (1.2 % resolution at
  60-100 GeV vs 7.3 % spacing for 64 points over 1-100 GeV) is resolved.
- **Prior.** ``"uniform"`` in :math:`E` over the grid (the training range; default) or
  ``"log-uniform"`` (:math:`\pi \propto 1/E`). Outside the grid the posterior is zero.
- **Dequantisation.** Each shower is dequantised once
  (:meth:`~surrogate.models.calo_flow.CaloFlow.dequantize`, a generator seeded with ``seed``) and
  the same noisy cells are scored at every grid energy, so the likelihood curve is smooth in
  :math:`E`; the :math:`-\sum \log y` Jacobian terms do not depend on :math:`E` and cancel in the
  normalisation.
- **Summaries.** Normalised with trapezoid weights; ``mean`` by the trapezoid rule, ``median``,
  ``q16``, ``q84`` by linear interpolation of the trapezoid CDF, ``map`` the grid point of
  highest density; all in GeV.
- **Flags.** ``flag`` (N,) uint8, a sum of the bits in :data:`FLAG_BITS`: the MAP on the first
  or last grid energy (the mass piles at the edge: the shower's energy is likely outside the
  range), the density at the first or last grid energy above ``edge_ratio`` times the
  posterior's peak (the posterior is cut off by the range: for a Gaussian posterior and the
  default 0.1, its mode lies within 2.15 sigma of the end and more than 1.6 % of its mass is
  missing), or no finite likelihood at any grid energy (every summary NaN). Flagged showers keep
  their numbers, are counted in an :class:`EnergyEdgeWarning`, never dropped. (The mass in the
  first/last grid interval is no such measure: 64 points over 1-100 GeV make the last interval
  7 % wide, 6 resolutions, and it holds most of the posterior of every shower above 93 GeV.)

:func:`infer_energy` runs this for a trained run and a shower file (``surrogate infer-energy``);
:func:`compare_energy_calibration` compares it with the standard calibration and with NPE
(pieces in :mod:`surrogate.pipelines.energy_calibration`).

Example:
    >>> import torch
    >>> from surrogate.models.calo_flow import CaloFlow
    >>> flow = CaloFlow(hidden_features=8, num_transforms=2, energy_hidden_features=8)
    >>> showers = flow.sample(torch.tensor([[20.0], [40.0]]), generator=torch.Generator().manual_seed(0))
    >>> post = energy_posterior(flow, showers, grid_gev=energy_grid(1.0, 100.0, 16), progress=False)
    >>> post.median.shape, post.grid.shape, post.flag.dtype
    ((2,), (2, 16), dtype('uint8'))

References:
    Du, Krause, Nachman, Shih et al. (2024), "Unifying simulation and inference with normalizing
    flows", arXiv:2404.18992. Krause & Shih (2021), CaloFlow, arXiv:2106.05285.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from surrogate.checks import ExtrapolationWarning, check_choice, check_float, check_int
from surrogate.data.hdf5 import Field, atomic_output, check_layout, check_values, open_hdf5
from surrogate.pipelines.shower_generation import training_energy_range
from surrogate.train.checkpoint import checkpoint_config, find_checkpoint

__all__ = [
    "FLAG_BITS", "FLAG_EDGE_HIGH", "FLAG_EDGE_LOW", "FLAG_MAP_HIGH", "FLAG_MAP_LOW", "FLAG_NO_LIKELIHOOD", "PRIORS",
    "EnergyEdgeWarning", "EnergyPosterior", "compare_energy_calibration", "energy_grid", "energy_posterior",
    "infer_energy", "read_showers",
]

PRIORS = ("uniform", "log-uniform")
"""Priors over the incident energy on the grid: uniform in E, or uniform in log E."""
FLAG_MAP_LOW, FLAG_MAP_HIGH, FLAG_EDGE_LOW, FLAG_EDGE_HIGH, FLAG_NO_LIKELIHOOD = 1, 2, 4, 8, 16
FLAG_BITS: Mapping[int, str] = {
    FLAG_MAP_LOW: "MAP at the lowest grid energy",
    FLAG_MAP_HIGH: "MAP at the highest grid energy",
    FLAG_EDGE_LOW: "density at the lowest grid energy above edge_ratio times the peak",
    FLAG_EDGE_HIGH: "density at the highest grid energy above edge_ratio times the peak",
    FLAG_NO_LIKELIHOOD: "no finite likelihood at any grid energy (summaries are NaN)",
}
"""Meaning of each bit of ``flag`` (0: nothing to report)."""
_WINDOW_NATS = 20.0  # the refined grid covers the coarse points within this of the maximum


class EnergyEdgeWarning(ExtrapolationWarning):
    """Some posteriors pile up at an end of the energy grid (see :data:`FLAG_BITS`): those showers
    look like incident energies outside the training range (an error with ``--strict``)."""


@dataclass(frozen=True)
class EnergyPosterior:
    """Posteriors of :func:`energy_posterior` for ``N`` showers on ``G`` energies each.

    Attributes:
        mean, median, q16, q84, map: ``(N,)`` in GeV (NaN where ``flag`` has
            :data:`FLAG_NO_LIKELIHOOD`).
        flag: ``(N,)`` uint8, bits of :data:`FLAG_BITS`.
        grid: ``(N, G)`` energies in GeV on which each posterior is normalised (the refined grid).
        density: ``(N, G)`` posterior density in 1/GeV; its trapezoid integral over ``grid`` is 1.
    """

    mean: np.ndarray
    median: np.ndarray
    q16: np.ndarray
    q84: np.ndarray
    map: np.ndarray
    flag: np.ndarray
    grid: np.ndarray
    density: np.ndarray


def energy_grid(low_gev: float, high_gev: float, n: int) -> np.ndarray:
    """``n`` energies from ``low_gev`` to ``high_gev`` (both included), equally spaced in log E.

    Returns:
        ``(n,)`` float64, GeV.

    Raises:
        ValueError: ``n < 3`` or not ``0 < low_gev < high_gev``.
    """
    n = check_int("n_grid", n, minimum=3)
    low = check_float("energy_min_gev", low_gev, minimum=0.0, exclusive_minimum=True, unit="GeV")
    if not high_gev > low:
        raise ValueError(f"the energy grid needs low < high, got {low_gev} and {high_gev} GeV")
    grid = np.geomspace(low, float(high_gev), n)
    grid[0], grid[-1] = low, float(high_gev)
    return grid


def _check_grid(grid_gev: Any) -> np.ndarray:
    grid = np.asarray(grid_gev, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 3 or not np.all(np.isfinite(grid)) or grid[0] <= 0 or np.any(np.diff(grid) <= 0):
        raise ValueError(f"grid_gev must be a strictly increasing 1-D array of >= 3 finite energies > 0 GeV, "
                         f"got shape {grid.shape} starting {grid.ravel()[:4].tolist()}")
    return grid


def _as_cells(model: Any, showers: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The model's layers as float32 tensors ``(N, *shape)``, checked against its geometry."""
    if not isinstance(showers, Mapping):
        raise ValueError(f"showers must be a dict of layers {list(model.layer_names)}, got {type(showers).__name__}")
    cells = {}
    for name in model.layer_names:
        if name not in showers:
            raise ValueError(f"showers lack dataset {name!r}; the model's layers are {list(model.layer_names)}")
        cells[name] = torch.as_tensor(showers[name], dtype=torch.float32).to(device)
    n = cells[model.layer_names[0]].shape[0] if cells[model.layer_names[0]].dim() else 0
    for name, value in cells.items():
        expected = (n, *model.layer_shapes[name])
        if tuple(value.shape) != expected or n == 0:
            raise ValueError(f"showers[{name!r}] has shape {tuple(value.shape)}, expected (N={n}, "
                             f"{', '.join(map(str, expected[1:]))}) in MeV (the model's geometry), N >= 1")
    return cells


@torch.no_grad()
def _log_likelihood(model: Any, cells: Mapping[str, torch.Tensor], grids: np.ndarray, batch_size: int,
                    bar: tqdm) -> np.ndarray:
    """``log p(y_i | E_ij)`` ``(N, G)`` for energies ``grids`` ``(N, G)``; non-finite -> -inf."""
    n, g = grids.shape
    per = max(1, batch_size // g)  # showers per call: their grids together
    device = next(iter(cells.values())).device
    energies = torch.as_tensor(grids, dtype=torch.float32)
    out = np.empty((n, g))
    for start in range(0, n, per):
        stop = min(n, start + per)
        rows = {name: c[start:stop].repeat_interleave(g, dim=0) for name, c in cells.items()}
        log_p = model.log_prob(rows, energies[start:stop].reshape(-1, 1).to(device))
        out[start:stop] = log_p.double().cpu().numpy().reshape(stop - start, g)
        bar.update(stop - start)
    return np.where(np.isfinite(out), out, -np.inf)


def _refined_grids(grid: np.ndarray, log_post: np.ndarray) -> np.ndarray:
    """Per shower ``(N, G)``: geometric grid between the coarse points either side of the region
    within :data:`_WINDOW_NATS` of the maximum of ``log_post`` ``(N, G)``."""
    g = grid.size
    keep = log_post >= log_post.max(axis=1, keepdims=True) - _WINDOW_NATS
    index = np.arange(g)
    low = np.clip(np.where(keep, index, g).min(axis=1) - 1, 0, g - 1)
    high = np.clip(np.where(keep, index, -1).max(axis=1) + 1, 0, g - 1)
    high = np.where(high == low, np.minimum(low + 1, g - 1), high)
    low = np.where(high == low, high - 1, low)
    a, b = np.log(grid[low]), np.log(grid[high])
    grids = np.exp(a[:, None] + (b - a)[:, None] * np.linspace(0.0, 1.0, g))
    grids[:, 0], grids[:, -1] = grid[low], grid[high]
    return grids


def _summarise(grids: np.ndarray, log_post: np.ndarray) -> dict[str, np.ndarray]:
    """Trapezoid-normalised density, CDF and summaries of ``log_post`` on ``grids`` (both ``(N, G)``)."""
    valid = np.isfinite(log_post).any(axis=1)
    shifted = log_post - np.where(valid, log_post.max(axis=1), 0.0)[:, None]
    p = np.exp(shifted)  # -inf -> 0
    steps = np.diff(grids, axis=1) * 0.5 * (p[:, 1:] + p[:, :-1])
    cdf = np.concatenate([np.zeros((len(p), 1)), np.cumsum(steps, axis=1)], axis=1)
    norm = np.where(valid, cdf[:, -1], np.nan)
    density, cdf = p / norm[:, None], cdf / norm[:, None]
    f = density * grids
    out = {"density": density, "cdf": cdf, "valid": valid,
           "mean": (np.diff(grids, axis=1) * 0.5 * (f[:, 1:] + f[:, :-1])).sum(axis=1),
           "map": np.where(valid, grids[np.arange(len(p)), p.argmax(axis=1)], np.nan)}
    for key, level in (("median", 0.5), ("q16", 0.16), ("q84", 0.84)):
        out[key] = np.array([np.interp(level, c, e) if ok else np.nan for c, e, ok in zip(cdf, grids, valid)])
    return out


def _flags(grid: np.ndarray, s: Mapping[str, np.ndarray], grids: np.ndarray, edge_ratio: float) -> np.ndarray:
    """Bits of :data:`FLAG_BITS` ``(N,)`` from the summaries ``s`` on ``grids`` and the coarse ``grid``
    (a refined grid not reaching an end of ``grid`` has no density there)."""
    flag = np.zeros(len(grids), dtype=np.uint8)
    valid, density = s["valid"], np.nan_to_num(s["density"])
    peak = np.maximum(density.max(axis=1), np.finfo(float).tiny)
    low = (grids[:, 0] <= grid[0]) & (density[:, 0] > edge_ratio * peak)
    high = (grids[:, -1] >= grid[-1]) & (density[:, -1] > edge_ratio * peak)
    for bit, hit in ((FLAG_MAP_LOW, valid & (s["map"] <= grid[0])), (FLAG_MAP_HIGH, valid & (s["map"] >= grid[-1])),
                     (FLAG_EDGE_LOW, valid & low), (FLAG_EDGE_HIGH, valid & high), (FLAG_NO_LIKELIHOOD, ~valid)):
        flag[hit] |= bit
    return flag


def energy_posterior(model: Any, showers: Mapping[str, Any], *, grid_gev: Any, prior: str = "uniform",
                     refine: bool = True, batch_size: int = 1024, seed: int = 0, edge_ratio: float = 0.1,
                     progress: bool = True) -> EnergyPosterior:
    r"""Posterior of the incident energy of each shower, :math:`p(E \mid y) \propto p(y \mid E)\,\pi(E)`, on a grid.

    Arguments:
        model: a :class:`~surrogate.models.calo_flow.CaloFlow` (or any model with its
            ``layer_names``, ``layer_shapes``, ``dequantize(showers, generator=)`` and
            ``log_prob(showers, energy)`` in nats); used in evaluation mode, without gradients.
        showers: ``{layer: (N, *shape)}`` cell energies in MeV (tensors or arrays; other keys
            ignored), not yet dequantised.
        grid_gev: ``(G,)`` increasing energies in GeV, ``G >= 3`` (e.g. :func:`energy_grid` over
            the training range); the prior's support.
        prior: one of :data:`PRIORS`.
        refine: add the per-shower refined pass (module docstring); ``False``: one pass on ``grid_gev``.
        batch_size: rows per ``log_prob`` call (at least one shower's ``G`` energies).
        seed: seed of the one dequantisation of every shower.
        edge_ratio: flag a posterior whose density at the first or last grid energy exceeds this
            fraction of its peak (module docstring).
        progress: show a progress bar (showers per pass).

    Returns:
        An :class:`EnergyPosterior` (summaries in GeV, ``flag``, the grid and density).

    Raises:
        ValueError: layers missing or not of the model's shapes (naming the dataset and shape),
            negative or non-finite cells, a bad grid, an unknown prior.

    Warns:
        EnergyEdgeWarning: how many showers are flagged, per bit.

    References:
        Du et al., arXiv:2404.18992.
    """
    check_choice("prior", prior, PRIORS)
    grid = _check_grid(grid_gev)
    edge_ratio = check_float("edge_ratio", edge_ratio, minimum=0.0, maximum=1.0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else torch.device("cpu")
    cells = _as_cells(model, showers, device)
    n = next(iter(cells.values())).shape[0]
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        generator = torch.Generator(device=device).manual_seed(seed)
        cells = model.dequantize(cells, generator=generator)
        with tqdm(total=n * (1 + refine), desc="energy posterior", unit="shower", disable=not progress) as bar:
            grids = np.tile(grid, (n, 1))
            log_like = _log_likelihood(model, cells, grids, batch_size, bar)
            if refine:
                grids = _refined_grids(grid, log_like - (np.log(grids) if prior == "log-uniform" else 0.0))
                log_like = _log_likelihood(model, cells, grids, batch_size, bar)
    finally:
        if was_training:
            model.train()
    s = _summarise(grids, log_like - (np.log(grids) if prior == "log-uniform" else 0.0))
    flag = _flags(grid, s, grids, edge_ratio)
    if flag.any():
        counts = ", ".join(f"{int(np.count_nonzero(flag & bit))} {text}" for bit, text in FLAG_BITS.items()
                           if np.any(flag & bit))
        warnings.warn(f"{int(np.count_nonzero(flag))} of {n} showers flagged ({counts}; grid "
                      f"{grid[0]:g}-{grid[-1]:g} GeV): their posteriors are truncated by the energy range",
                      EnergyEdgeWarning, stacklevel=2)
    return EnergyPosterior(mean=s["mean"], median=s["median"], q16=s["q16"], q84=s["q84"], map=s["map"], flag=flag,
                           grid=grids, density=s["density"])


def read_showers(path: str | os.PathLike, model: Any, *, require_energy: bool = False
                 ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Reads the model's layers (and the incident energy when present) from a shower file, all in memory.

    Arguments:
        path: HDF5 file in the CaloGAN layout (``{layer: (N, *shape)}`` in MeV; ``energy``
            ``(N, 1)`` in GeV optional) or in the CaloChallenge layout (``showers`` ``(N, voxels)``
            and ``incident_energies`` ``(N, 1)``, both MeV, voxels in the order of the model's
            geometry, :meth:`~surrogate.geometry.CaloGeometry.flatten`).
        model: gives ``layer_names`` and ``layer_shapes`` (the geometry); a challenge-layout file
            needs a model with a ``geometry`` of the file's voxel count.
        require_energy: raise when the incident energy is missing.

    Returns:
        ``({layer: (N, *shape)} float32 MeV, energy (N,) GeV or None)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not HDF5, a missing layer, a shape or voxel count not of the model's
            geometry or a bad value (the message names the file, dataset and shape).
    """
    with open_hdf5(path) as file:
        challenge = "showers" in file and not any(name in file for name in model.layer_names)
    if challenge:
        return _read_challenge_showers(path, model)
    fields = [Field(name, tuple(model.layer_shapes[name]), "MeV") for name in model.layer_names]
    with open_hdf5(path) as file:
        if "energy" in file or require_energy:
            fields.append(Field("energy", (1,), "GeV", positive=True, description="incident energy"))
        check_layout(file, fields, path=path)
        arrays = {field.name: np.asarray(file[field.name][...], dtype=np.float32) for field in fields}
    for field in fields:
        check_values(arrays[field.name], field, path=path)
    energy = arrays.pop("energy", None)
    return arrays, None if energy is None else energy[:, 0]


def _read_challenge_showers(path: str | os.PathLike, model: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A CaloChallenge-layout file as the model's layers (MeV) and incident energies (GeV)."""
    from surrogate.data.calo import read_calochallenge

    geometry = getattr(model, "geometry", None)
    data = read_calochallenge(path)
    n_voxels = data["showers"].shape[1]
    if geometry is None or geometry.n_voxels != n_voxels:
        where = f"geometry {geometry.describe()}" if geometry is not None else "no geometry"
        raise ValueError(f"{path}: 'showers' has {n_voxels} voxels per event; the model has {where}")
    cells = {name: np.ascontiguousarray(value, dtype=np.float32)
             for name, value in geometry.unflatten(data["showers"]).items()}
    return cells, (data["incident_energies"][:, 0] / np.float32(1000.0)).astype(np.float32)


def _write_posterior(out_path: Path, post: EnergyPosterior, energy: np.ndarray | None,
                     attrs: Mapping[str, Any]) -> None:
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as file:
        for key in ("mean", "median", "q16", "q84", "map"):
            file.create_dataset(key, data=getattr(post, key)).attrs["unit"] = "GeV"
        flag = file.create_dataset("flag", data=post.flag)
        flag.attrs["bits"] = "; ".join(f"{bit}: {text}" for bit, text in FLAG_BITS.items())
        if energy is not None:
            file.create_dataset("energy", data=energy).attrs["unit"] = "GeV"
        for key, value in attrs.items():
            file.attrs[key] = value


def infer_energy(run_dir: str | os.PathLike, showers_path: str | os.PathLike, out_path: str | os.PathLike, *,
                 prior: str = "uniform", n_grid: int = 64, refine: bool = True,
                 energy_range_gev: tuple[float, float] | None = None, batch_size: int = 1024, seed: int = 0,
                 edge_ratio: float = 0.1, device: str = "cpu", progress: bool = True) -> Path:
    """Energy posteriors of every shower of a file through a trained calo_flow run (``surrogate infer-energy``).

    Writes ``out_path`` (HDF5, atomically): ``mean``, ``median``, ``q16``, ``q84``, ``map`` ``(N,)``
    in GeV, ``flag`` ``(N,)`` uint8 (bits in its ``bits`` attribute, :data:`FLAG_BITS`),
    ``energy`` ``(N,)`` in GeV copied from the input when it has one; file attributes ``units``,
    ``prior``, ``grid_gev`` (the coarse grid), ``refine``, ``energy_range_gev``,
    ``energy_range_source``, ``source_run`` (the checkpoint), ``showers``, ``seed``, ``edge_ratio``.

    Arguments:
        run_dir: calo_flow checkpoint or run folder.
        showers_path: CaloGAN- or CaloChallenge-layout file (see :func:`read_showers`).
        out_path: file to write; its folder must exist.
        prior: one of :data:`PRIORS`, over the training range.
        n_grid: grid energies per pass (:func:`energy_grid` over the training range).
        refine, batch_size, seed, edge_ratio, progress: see :func:`energy_posterior`.
        energy_range_gev: ``(low, high)`` GeV instead of :func:`~surrogate.pipelines.shower_generation.training_energy_range`.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Returns:
        ``out_path``.

    Raises:
        FileNotFoundError: no checkpoint or shower file.
        ValueError: as :func:`read_showers` and :func:`energy_posterior`; a checkpoint not of calo_flow.
    """
    from surrogate.pipelines.calo_flow import load_flow
    from surrogate.train.distributed import resolve_device

    check_choice("prior", prior, PRIORS)
    checkpoint = find_checkpoint(run_dir)
    flow = load_flow(checkpoint, device=resolve_device(device))
    if energy_range_gev is None:
        low, high, source = training_energy_range(checkpoint)
    else:
        (low, high), source = energy_range_gev, "argument energy_range_gev"
    grid = energy_grid(low, high, n_grid)
    cells, energy = read_showers(showers_path, flow)
    post = energy_posterior(flow, cells, grid_gev=grid, prior=prior, refine=refine, batch_size=batch_size,
                            seed=seed, edge_ratio=edge_ratio, progress=progress)
    attrs = {"units": "GeV", "prior": prior, "grid_gev": grid, "refine": refine, "energy_range_gev": [low, high],
             "energy_range_source": source, "source_run": str(checkpoint), "showers": str(showers_path),
             "seed": seed, "edge_ratio": edge_ratio}
    _write_posterior(Path(out_path), post, energy, attrs)
    return Path(out_path)


def compare_energy_calibration(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                               reference_path: str | os.PathLike | None = None,
                               calibration_path: str | os.PathLike | None = None, energy_bins_gev: Any = None,
                               prior: str = "uniform", n_grid: int = 64, max_showers: int | None = 2000,
                               npe_kwargs: Mapping[str, Any] | None = None, seed: int = 0, device: str = "cpu",
                               progress: bool = True) -> Path:
    """Energy calibration of held-out showers: standard calibration vs flow posterior vs NPE.

    Per bin of true energy: bias, resolution and 16-84 % coverage of (a) ``E_tot / k``, ``k =
    <E_tot / E_inc>`` on the calibration sample, with a Gaussian interval from that sample's
    resolution per bin, (b) the flow posterior's **median** and 16/84 % quantiles, (c) NPE trained
    on the calibration sample (details in :mod:`surrogate.pipelines.energy_calibration`). Writes
    ``out_dir/energy_calibration.json`` (section ``"energy_calibration"``) and ``.png``.

    Arguments:
        run_dir: calo_flow checkpoint or run folder.
        out_dir: folder for the report and figure (created).
        reference_path: held-out showers with ``energy`` (default: the run's reference file).
        calibration_path: showers with ``energy`` to fit ``k``, the per-bin resolution and NPE
            (default: the run's training file, what the flow learnt from).
        energy_bins_gev: bins ``(low, high)`` in GeV (default: the run's ``[validate]`` bins).
        prior, n_grid: the flow posterior's prior and grid (:func:`infer_energy`); NPE's prior is
            uniform over the same training range.
        max_showers: reference showers used at most (a seeded random subset; ``None``: all); the
            flow costs ``2 n_grid`` likelihood evaluations per shower.
        npe_kwargs: settings of :func:`~surrogate.pipelines.energy_calibration.npe_energy_estimates`.
        seed, device, progress: seeds of subset, dequantisation and NPE; the flow's device; bars.

    Returns:
        The JSON report's path.

    Raises:
        FileNotFoundError: no checkpoint or shower file.
        ValueError: as :func:`read_showers`; a calibration bin with fewer than two showers.
    """
    from surrogate.metrics.report import write_report
    from surrogate.pipelines import energy_calibration as ec
    from surrogate.pipelines.calo_flow import load_flow
    from surrogate.pipelines.fastsim import DEFAULT_ENERGY_BINS_GEV
    from surrogate.train.distributed import resolve_device

    checkpoint = find_checkpoint(run_dir)
    config = checkpoint_config(checkpoint)
    flow = load_flow(checkpoint, device=resolve_device(device))
    low, high, source = training_energy_range(checkpoint)
    if reference_path is None or calibration_path is None:
        train_file, reference_file = ec.run_data_files(config)
        reference_path, calibration_path = reference_path or reference_file, calibration_path or train_file
    bins = energy_bins_gev or (config.get("validate") or {}).get("energy_bins_gev") or DEFAULT_ENERGY_BINS_GEV
    bins = [(float(low_gev), float(high_gev)) for low_gev, high_gev in bins]
    ref_cells, ref_energy = read_showers(reference_path, flow, require_energy=True)
    if max_showers is not None and len(ref_energy) > max_showers:
        keep = np.sort(np.random.default_rng(seed).choice(len(ref_energy), max_showers, replace=False))
        ref_cells, ref_energy = {k: v[keep] for k, v in ref_cells.items()}, ref_energy[keep]
    cal_cells, cal_energy = read_showers(calibration_path, flow, require_energy=True)
    standard = ec.fit_standard_calibration(ec.total_energy(cal_cells, flow.threshold_mev), cal_energy, bins)
    post = energy_posterior(flow, ref_cells, grid_gev=energy_grid(low, high, n_grid), prior=prior, seed=seed,
                            progress=progress)
    npe, npe_info = ec.npe_energy_estimates(cal_cells, cal_energy, ref_cells, energy_range_gev=(low, high),
                                            threshold_mev=flow.threshold_mev, seed=seed, progress=progress,
                                            **dict(npe_kwargs or {}))
    estimates = {"calibration": standard.estimate(ec.total_energy(ref_cells, flow.threshold_mev)),
                 "flow": (post.median, post.q16, post.q84), "npe": npe}
    metrics = {name: ec.calibration_metrics(*values, ref_energy, bins) for name, values in estimates.items()}
    for label, fraction in ec.bin_fractions(post.flag > 0, ref_energy, bins).items():
        metrics["flow"][label]["flagged_fraction"] = fraction
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ec.plot_energy_calibration(out_dir / "energy_calibration.png", bins, metrics)
    report = {"settings": {
        "run": str(checkpoint), "reference": str(reference_path), "calibration": str(calibration_path),
        "n_reference": len(ref_energy), "n_calibration": len(cal_energy), "energy_bins_gev": bins,
        "energy_range_gev": [low, high], "energy_range_source": source, "prior": prior, "n_grid": n_grid,
        "refine": True, "seed": seed, "threshold_mev": flow.threshold_mev},
        "methods": {"calibration": {**ec.METHODS["calibration"], "k": standard.constant,
                                    "sigma_b": standard.resolution},
                    "flow": ec.METHODS["flow"], "npe": {**ec.METHODS["npe"], **npe_info}},
        "bins": {label: {name: metrics[name][label] for name in metrics} for label in metrics["flow"]},
        "figure": "energy_calibration.png"}
    return write_report(out_dir / "energy_calibration.json", {"energy_calibration": report})

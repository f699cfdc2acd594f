"""Validation of showers in the CaloChallenge layout, as the challenge's evaluation does it.

:func:`validate_calochallenge_files` compares a generated with a reference file of the
CaloChallenge 2022 layout (``incident_energies`` (N, 1), ``showers`` (N, voxels), MeV; Krause et
al., arXiv:2410.21611) in a geometry read from the challenge's binning file
(:func:`surrogate.data.binning.read_binning_xml`), following its evaluation script
(``code/evaluate.py`` and ``code/evaluate_plotting_helper.py`` of github.com/CaloChallenge/homepage,
commit 9b41df7):

1. **Readout threshold.** Voxels below ``threshold_mev`` are set to 0 in both files; by default the
   evaluation's own per dataset (``args.min_energy``: 1 MeV for dataset 1, 15.15 keV for 2 and 3;
   :data:`~surrogate.simulators.gflash_calochallenge.THRESHOLDS_MEV`). The dataset is recognised by
   the voxel count, as ``check_file`` does (368: ``"1-photons"``, 533: ``"1-pions"``, 6480: ``"2"``,
   40500: ``"3"``).
2. **High-level features** (:func:`~surrogate.metrics.calochallenge_features.calochallenge_observables`):
   layer energies, centres of energy and widths in eta and phi (layers with angular bins), in r,
   sparsity, E_tot / E_inc.
3. **Separation powers** (the triangular discrimination of eq. 15 of arXiv:2009.03796 that the
   evaluation computes, :func:`~surrogate.metrics.showers.separation_power` with
   ``outside="drop"``) of every feature's histogram over the evaluation's fixed ranges
   (:func:`challenge_histogram_edges`): E_tot / E_inc on [0.5, 1.5] (100 bins), layer energies
   on 40 log bins from the threshold to the reference's maximum, centres and widths on 100 bins
   of the evaluation's ranges (datasets 2 and 3: eta, phi within +-30 mm, widths to 30 mm, r
   centres to 42 mm and widths to 20 mm; dataset 1: +-100 mm and 100 mm, layers 12 and 13
   +-500 mm and 400 mm, r to 500 mm, layers 12-14 to 1500 mm), sparsity on 20 bins, the voxel
   energies on 50 log bins, and for dataset 1 E_tot / E_inc at each of the 15 incident energies
   (20 bins on [0.4, 1.4], photons above 2 GeV on [0.9, 1.1]). Values outside a range are not
   counted, as in the evaluation's ``plt.hist``.
4. **Classifier AUCs** on the low-level (log10 E_inc and voxels / E_inc), the normalised
   low-level (voxels / their layer's energy, with the layer energies: ``cls-low-normed``) and the
   high-level features
   (:func:`~surrogate.metrics.calochallenge_features.calochallenge_features`): the fast test
   (:func:`~surrogate.metrics.classifier.classifier_auc`) or the challenge's protocol
   (:func:`~surrogate.metrics.calochallenge.calochallenge_classifier`).
5. **Physics distances** (``physics_distances=True``): FPD and KPD
   (:mod:`surrogate.metrics.physics_distances`, Kansal et al., arXiv:2211.10295) of all events'
   high-level features, with the evaluation's settings (``min_samples=10000`` for the FPD, draws
   of 10,000 events for the KPD), reported times 10^3 as the evaluation prints them; about 40 s on one core.
6. **Plots**: the average shower of each layer in (r, alpha), reference beside generated, and
   the histograms of every feature group.

Files in ``out_dir``: ``report.json``, ``average_layer_<id>.png`` per layer and
``hist_<quantity>.png`` per feature group (a panel per layer). Both files are read into memory
(``max_events`` caps the events read). The classifier features are computed for its subsample
only and the high-level features one layer at a time; the low-level features (1 + voxels float64
columns per event) dominate the memory: dataset 2, 10 000 against 1 000 showers, took 64 s of
CPU and 2.3 GB at peak, 10 000 against 100 000 showers 4.6 minutes and 11.1 GB (dataset 1,
3 000 against 3 000: 0.44 GB).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from surrogate.checks import check_choice, check_float, check_int
from surrogate.data.calo import read_calochallenge
from surrogate.geometry import CaloGeometry
from surrogate.metrics.calochallenge_features import (calochallenge_features, calochallenge_observables,
                                                      high_level_features)
from surrogate.metrics.report import write_report
from surrogate.metrics.showers import histogram_edges, separation_power

__all__ = ["CHALLENGE_DATASETS", "challenge_dataset", "challenge_histogram_edges", "validate_calochallenge_files"]

CHALLENGE_DATASETS = {368: "1-photons", 533: "1-pions", 6480: "2", 40500: "3"}
"""The challenge's datasets by voxel count (``evaluate.py``, ``check_file``)."""

_VOXEL_HISTOGRAM_EVENTS = 10000  # events per sample in the voxel-energy histogram


def challenge_dataset(geometry: CaloGeometry) -> str | None:
    """``"1-photons"``, ``"1-pions"``, ``"2"`` or ``"3"`` for a geometry with that dataset's voxel
    count, else ``None``."""
    return CHALLENGE_DATASETS.get(geometry.n_voxels)


def challenge_histogram_edges(name: str, reference: np.ndarray, *, dataset: str | None,
                              threshold_mev: float) -> np.ndarray:
    """Histogram edges of a feature as the challenge's evaluation bins it (module docstring, step 3).

    Arguments:
        name: A key of :func:`~surrogate.metrics.calochallenge_features.calochallenge_observables`
            (``"E_12"``, ``"EC_eta_1"``, ``"width_r_3"`` ...), ``"E_tot/E_inc"`` or ``"voxel"``.
        reference: The reference values (N,) (for the ranges that depend on them).
        dataset: :func:`challenge_dataset`; ``None`` uses 100 bins over the reference's range for
            the centres and widths.
        threshold_mev: The readout threshold (lower edge of the log-binned energies; > 0 there).

    Returns:
        Increasing edges (K + 1,).
    """
    quantity, _, label = name.rpartition("_")
    layer = int(label) if label.isdigit() else None
    if name == "E_tot/E_inc":
        return np.linspace(0.5, 1.5, 101)
    if name == "voxel" or quantity == "E":
        count = 50 if name == "voxel" else 40
        positive = reference[reference > 0]
        low = threshold_mev if threshold_mev > 0 else (positive.min() if positive.size else 1.0)
        high = max(float(reference.max()), low * 1.0001)
        return np.logspace(np.log10(low), np.log10(high), count)
    if quantity == "sparsity":
        return np.linspace(0.0, 1.0, 21)
    large_eta, large_r = layer in (12, 13), layer in (12, 13, 14)
    small = dataset in ("2", "3")
    limits = {
        "EC_eta": (-30.0, 30.0) if small else (-500.0, 500.0) if large_eta else (-100.0, 100.0),
        "width_eta": (0.0, 30.0) if small else (0.0, 400.0) if large_eta else (0.0, 100.0),
        "EC_r": (0.0, 42.0) if small else (0.0, 1500.0) if large_r else (0.0, 500.0),
        "width_r": (0.0, 20.0) if small else (0.0, 1500.0) if large_r else (0.0, 500.0),
    }
    limits["EC_phi"], limits["width_phi"] = limits["EC_eta"], limits["width_eta"]
    if dataset is None or quantity not in limits:
        return histogram_edges(reference, 100)
    return np.linspace(*limits[quantity], 101)


def validate_calochallenge_files(
    reference_path: str | os.PathLike,
    generated_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    geometry: CaloGeometry,
    threshold_mev: float | None = None,
    seed: int = 0,
    classifier_protocol: str = "fast",
    classifier_max_events: int = 20000,
    max_events: int | None = None,
    plots: bool = True,
    progress: bool = True,
    physics_distances: bool = True,
) -> dict:
    """Compares two CaloChallenge-layout files as the challenge's evaluation does; writes ``report.json`` and PNGs.

    Arguments:
        reference_path: The reference file (e.g. the challenge's Geant4 file or our GFlash one).
        generated_path: The generated file.
        out_dir: Folder for the report and plots (created if needed).
        geometry: The voxels of both files (:func:`surrogate.data.binning.read_binning_xml`).
        threshold_mev: Readout threshold in MeV for both files; ``None``: the evaluation's for the
            recognised dataset (module docstring, step 1).
        seed: Seeds the classifier tests and the subsampling.
        classifier_protocol: ``"fast"`` or ``"calochallenge"`` (module docstring, step 4).
        classifier_max_events: At most this many events per sample (a seeded random subset) in
            each classifier test.
        max_events: Read at most the first ``max_events`` events of each file (``None``: all).
        plots: Write the PNGs.
        progress: Show the classifier's progress (challenge protocol).
        physics_distances: Compute the FPD and KPD (module docstring, step 5).

    Returns:
        The report (also in ``out_dir/report.json``): ``{"reference": {"path", "n_events"},
        "generated": {...}, "settings": {"dataset", "geometry", "readout_threshold_mev", "seed",
        "classifier_protocol", "classifier_max_events"}, "separation_power": {feature: S},
        "mean_separation_power", "mean_response": {"reference", "generated"},
        "classifier": {"low_level" | "low_level_normed" | "high_level": {...}},
        "physics_distances": {"fpd_x1e3", "fpd_error_x1e3", "kpd_x1e3", "kpd_error_x1e3",
        "n_features", "settings"} or ``null``, "plots": [file names]}``. A separation power is
        ``null`` when a sample has no value in the feature's range.

    Raises:
        FileNotFoundError: A file does not exist.
        ValueError: A file is not in the CaloChallenge layout or its voxel count is not the
            geometry's; no threshold for an unrecognised dataset; a bad option. Messages name
            the file, key or value.

    References:
        Krause et al., arXiv:2410.21611; the challenge's ``code/evaluate.py``.
    """
    from surrogate.simulators.gflash_calochallenge import THRESHOLDS_MEV

    check_choice("classifier_protocol", classifier_protocol, ("fast", "calochallenge"))
    classifier_max_events = check_int("classifier_max_events", classifier_max_events, minimum=10)
    max_events = check_int("max_events", max_events, minimum=1, optional=True)
    dataset = challenge_dataset(geometry)
    if threshold_mev is None:
        if dataset is None:
            raise ValueError(f"geometry {geometry.describe()} is none of the challenge's datasets; give threshold_mev")
        threshold_mev = THRESHOLDS_MEV[dataset]
    threshold_mev = check_float("threshold_mev", threshold_mev, minimum=0.0, unit="MeV")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    samples, observables, voxels = {}, {}, {}
    for kind, path in (("reference", reference_path), ("generated", generated_path)):
        data = _read(path, geometry, max_events)
        showers = data.pop("showers")  # read afresh: thresholded in place, no second copy of the file
        showers[showers < threshold_mev] = 0
        samples[kind] = {**geometry.unflatten(showers), "energy": data["incident_energies"].astype(np.float64) / 1000.0}
        observables[kind] = calochallenge_observables(samples[kind], geometry=geometry)
        observables[kind]["E_tot/E_inc"] = observables[kind]["E_tot"] / observables[kind]["E_inc"]
        rows = np.random.default_rng(seed).permutation(showers.shape[0])[:_VOXEL_HISTOGRAM_EVENTS]
        voxels[kind] = showers[np.sort(rows)].ravel()

    powers = {}
    ref, gen = observables["reference"], observables["generated"]
    for name in ref:
        if name in ("E_inc", "E_tot"):
            continue
        edges = challenge_histogram_edges(name, ref[name], dataset=dataset, threshold_mev=threshold_mev)
        powers[name] = separation_power(ref[name], gen[name], edges, outside="drop")
    voxel_edges = challenge_histogram_edges("voxel", voxels["reference"], dataset=dataset, threshold_mev=threshold_mev)
    powers["voxel"] = separation_power(voxels["reference"], voxels["generated"], voxel_edges, outside="drop")
    if dataset in ("1-photons", "1-pions"):
        for k in range(8, 23):
            sel = [(o["E_inc"] >= 2.0**k) & (o["E_inc"] < 2.0**(k + 1)) for o in (ref, gen)]
            if sel[0].any() and sel[1].any():
                narrow = k > 11 and dataset == "1-photons"  # the evaluation: index > 3, i.e. above 2 GeV
                edges = np.linspace(0.9, 1.1, 21) if narrow else np.linspace(0.4, 1.4, 21)
                powers[f"E_tot/E_inc at {2**k} MeV"] = separation_power(
                    ref["E_tot/E_inc"][sel[0]], gen["E_tot/E_inc"][sel[1]], edges, outside="drop")
    finite = [v for v in powers.values() if np.isfinite(v)]

    classifier = {}
    subsets, rows = {}, {}  # at most classifier_max_events per sample, drawn once: cell features of those only
    high = {kind: high_level_features(values) for kind, values in observables.items()}  # all events, as computed
    for kind, sample in samples.items():
        n = sample["energy"].shape[0]
        rows[kind] = np.sort(np.random.default_rng([seed, len(subsets)]).permutation(n)[:classifier_max_events])
        subsets[kind] = {k: v[rows[kind]] for k, v in sample.items()}
    for kind, name in (("low", "low_level"), ("low_normed", "low_level_normed"), ("high", "high_level")):
        features = [high[s][rows[s]] if kind == "high" else
                    calochallenge_features(subsets[s], kind=kind, geometry=geometry) for s in ("reference", "generated")]
        classifier[name] = _classify(*features, protocol=classifier_protocol, seed=seed,
                                     max_events=classifier_max_events, progress=progress)

    distances = _physics_distances(high["reference"], high["generated"], seed) if physics_distances else None
    written = _plots(out, geometry, samples, observables, powers, dataset, threshold_mev) if plots else []
    report = {
        "reference": {"path": str(reference_path), "n_events": int(ref["E_inc"].size)},
        "generated": {"path": str(generated_path), "n_events": int(gen["E_inc"].size)},
        "settings": {"dataset": dataset, "geometry": geometry.name, "readout_threshold_mev": threshold_mev,
                     "seed": seed, "classifier_protocol": classifier_protocol,
                     "classifier_max_events": classifier_max_events, "max_events": max_events},
        "separation_power": {k: (float(v) if np.isfinite(v) else None) for k, v in powers.items()},
        "mean_separation_power": float(np.mean(finite)) if finite else None,
        "mean_response": {k: float(np.mean(o["E_tot/E_inc"])) for k, o in observables.items()},
        "classifier": classifier,
        "physics_distances": distances,
        "plots": written,
    }
    write_report(out / "report.json", report)
    return report


def _physics_distances(reference: np.ndarray, generated: np.ndarray, seed: int) -> dict:
    """FPD and KPD of all events' high-level features ``(N, F)``, with the challenge evaluation's settings."""
    from surrogate.metrics.physics_distances import frechet_physics_distance, kernel_physics_distance

    fpd, fpd_error = frechet_physics_distance(reference, generated, min_samples=10_000, seed=seed)
    kpd, kpd_error = kernel_physics_distance(reference, generated, batch_size=10_000, seed=seed)
    return {"fpd_x1e3": 1e3 * fpd, "fpd_error_x1e3": 1e3 * fpd_error, "kpd_x1e3": 1e3 * kpd,
            "kpd_error_x1e3": 1e3 * kpd_error, "n_features": int(reference.shape[1]),
            "settings": "features / the reference's max |value|; FPD extrapolated from 10 sizes 10,000-50,000 "
                        "(20 draws each); KPD median of 10 draws of 10,000, kernel (x.y/D + 1)^4"}


def _read(path: str | os.PathLike, geometry: CaloGeometry, max_events: int | None) -> dict[str, np.ndarray]:
    from surrogate.data.hdf5 import open_hdf5

    with open_hdf5(path) as file:
        n = file["showers"].shape[0] if "showers" in file else None
    stop = None if max_events is None or n is None else min(max_events, n)
    data = read_calochallenge(path, stop=stop)
    if data["showers"].shape[1] != geometry.n_voxels:
        raise ValueError(f"{path}: 'showers' has {data['showers'].shape[1]} voxels per event; expected "
                         f"{geometry.n_voxels} of geometry {geometry.describe()}")
    return data


def _classify(reference: np.ndarray, generated: np.ndarray, *, protocol: str, seed: int, max_events: int,
              progress: bool) -> dict:
    if min(len(reference), len(generated)) < 10:
        return {"status": "skipped", "protocol": protocol, "reason": "fewer than 10 events in a sample"}
    if protocol == "fast":
        from surrogate.metrics.classifier import classifier_auc

        result = classifier_auc(reference, generated, seed=seed, max_events=max_events)
    else:
        from surrogate.metrics.calochallenge import calochallenge_classifier

        result = calochallenge_classifier(reference, generated, seed=seed, max_events=max_events, progress=progress)
    return {"status": "ok", "protocol": protocol, **result}


def _plots(out: Path, geometry: CaloGeometry, samples: Mapping, observables: Mapping, powers: Mapping,
           dataset: str | None, threshold_mev: float) -> list[str]:
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    from surrogate.metrics.plots import save_figure

    written = []
    for layer in geometry.layers:
        means = [samples[k][layer.name].mean(axis=0) for k in ("reference", "generated")]  # (n_alpha, n_r) MeV
        positive = [m[m > 0] for m in means if (m > 0).any()]
        norm = (LogNorm(min(float(p.min()) for p in positive), max(float(p.max()) for p in positive))
                if positive else None)
        figure = Figure(figsize=(7.0, 3.4))
        alpha = getattr(layer, "alpha_edges", None)
        for index, (title, mean) in enumerate(zip(("reference", "generated"), means)):
            if alpha is not None:  # polar voxels: (r, alpha)
                axis = figure.add_subplot(1, 2, index + 1, projection="polar")
                theta, radius = np.meshgrid(alpha(), np.asarray(layer.r_edges_mm))
                mesh = axis.pcolormesh(theta, radius, mean.T, norm=norm, cmap="viridis")
                axis.set_yticklabels([])
            else:  # a rectangular grid
                axis = figure.add_subplot(1, 2, index + 1)
                mesh = axis.imshow(mean, norm=norm, cmap="viridis", origin="lower", aspect="auto")
            axis.set_title(f"{title}, {layer.name}", fontsize=9)
        figure.colorbar(mesh, ax=figure.axes, label="mean energy per voxel [MeV]", shrink=0.8)
        name = f"average_{layer.name}.png"
        save_figure(figure, out / name)
        written.append(name)

    ref, gen = observables["reference"], observables["generated"]
    groups: dict[str, list[str]] = {}
    for key in ref:
        if key not in ("E_inc", "E_tot"):
            groups.setdefault(key.rpartition("_")[0] if key[-1].isdigit() else key, []).append(key)
    for quantity, names in groups.items():
        columns = int(np.ceil(np.sqrt(len(names))))
        rows = int(np.ceil(len(names) / columns))
        figure = Figure(figsize=(2.6 * columns, 2.2 * rows))
        for index, key in enumerate(names):
            axis = figure.add_subplot(rows, columns, index + 1)
            edges = challenge_histogram_edges(key, ref[key], dataset=dataset, threshold_mev=threshold_mev)
            axis.hist(ref[key], bins=edges, density=True, histtype="stepfilled", color="0.35", alpha=0.35,
                      label="reference")
            axis.hist(gen[key], bins=edges, density=True, histtype="step", color="tab:red", label="generated")
            if key.startswith("E_") and key != "E_tot/E_inc":
                axis.set_xscale("log")
            power = powers.get(key)
            axis.set_title(f"{key}  S={power:.3f}" if power is not None and np.isfinite(power) else key, fontsize=8)
            axis.tick_params(labelsize=6)
        figure.axes[0].legend(fontsize=6)
        figure.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.92, wspace=0.35, hspace=0.55)
        name = f"hist_{quantity.replace('/', '_over_')}.png"
        save_figure(figure, out / name)
        written.append(name)
    return written

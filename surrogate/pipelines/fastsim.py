"""Validation of fast calorimeter simulation: generated vs reference showers in the CaloGAN layout.

:func:`validate_calo` compares two CaloGAN-layout HDF5 files (reference, e.g. Geant4 or the GFlash
stand-in, and generated, e.g. by the CaloGAN surrogate) with the CaloGAN observables in bins of
incident energy, the CaloChallenge separation power of each observable, the mean energy
response, and classifier two-sample tests; it writes PNG plots and a JSON report. Both files
are read through the same readout threshold (zero suppression, default
:data:`~surrogate.simulators.gflash.READOUT_THRESHOLD_MEV` = 0.01 MeV, CaloFlow's), so that
sparsity means "cells at or above the threshold" for a reference, a GAN and a flow alike.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from surrogate.checks import check_choice, check_float
from surrogate.data.calo import read_calogan
from surrogate.data.hdf5 import open_hdf5
from surrogate.geometry import CALOGAN_LAYERS
from surrogate.metrics.classifier import calo_cell_features, calo_high_level_features, classifier_auc
from surrogate.metrics.report import write_report
from surrogate.metrics.showers import OBSERVABLE_UNITS, separation_power, shower_observables, zero_suppress
from surrogate.simulators.gflash import READOUT_THRESHOLD_MEV

__all__ = ["CLASSIFIER_PROTOCOLS", "DEFAULT_ENERGY_BINS_GEV", "validate_calo"]

CLASSIFIER_PROTOCOLS = ("fast", "calochallenge")
"""Classifier tests of :func:`validate_calo`: ``"fast"``
(:func:`surrogate.metrics.classifier.classifier_auc`, seconds; for main jobs and tests) or
``"calochallenge"`` (the CaloChallenge 2022 evaluation's DNN and protocol,
:func:`surrogate.metrics.calochallenge.calochallenge_classifier`; about 15 CPU minutes per
feature set at 10k vs 10k showers on one core)."""

#: Default incident-energy bins (low, high) in GeV for :func:`validate_calo`.
DEFAULT_ENERGY_BINS_GEV: tuple[tuple[float, float], ...] = ((1, 10), (10, 30), (30, 60), (60, 100))

_N_BINS = 40  # equal-width bins over the reference's range, for separation powers and histograms


def _bin_label(low: float, high: float) -> str:
    return f"{low:g}-{high:g} GeV"


def _check_energy_bins(energy_bins_gev: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    bins = []
    for item in energy_bins_gev:
        if len(item) != 2:
            raise ValueError(f"energy_bins_gev entries must be (low, high) in GeV, got {item!r}")
        low, high = float(item[0]), float(item[1])
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low < high):
            raise ValueError(f"energy bin {item!r} must satisfy 0 <= low < high (GeV)")
        bins.append((low, high))
    labels = [_bin_label(*b) for b in bins]
    if len(set(labels)) != len(labels) or "all" in labels:
        raise ValueError(f"energy_bins_gev must not repeat a bin, got {energy_bins_gev!r}")
    return bins


def _select(energy_gev: np.ndarray, low: float, high: float, top: float) -> np.ndarray:
    """Events with ``low <= E < high``; the bin ending at the largest edge ``top`` includes it."""
    mask = (energy_gev >= low) & (energy_gev < high)
    if high == top:
        mask |= energy_gev == high
    return mask


def _mean_and_error(values: np.ndarray) -> tuple[float, float]:
    mean = float(values.mean())
    error = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
    return mean, error


def _response(ref: np.ndarray, gen: np.ndarray) -> dict:
    """Mean response with standard errors and the generated/reference ratio (None if undefined)."""
    ref_mean, ref_err = _mean_and_error(ref)
    gen_mean, gen_err = _mean_and_error(gen)
    if ref_mean > 0:
        ratio = gen_mean / ref_mean
        ratio_err = abs(ratio) * float(np.hypot(gen_err / gen_mean if gen_mean > 0 else 0.0, ref_err / ref_mean))
    else:
        ratio, ratio_err = None, None
    return {
        "reference": ref_mean,
        "reference_error": ref_err,
        "generated": gen_mean,
        "generated_error": gen_err,
        "ratio": ratio,
        "ratio_error": ratio_err,
    }


def _subset(observables: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[mask] for name, values in observables.items()}


def _sample_indices(n: int, max_events: int, seed: int) -> np.ndarray:
    """Sorted random subset of ``min(n, max_events)`` of ``range(n)`` (all of them if n is smaller)."""
    if n <= max_events:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_events, replace=False))


def _take(arrays: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {key: values[index] for key, values in arrays.items()}


def _recorded_threshold(path: str | os.PathLike) -> float | None:
    """The file's ``readout_threshold_mev`` attribute (written by the reference simulator), or None."""
    with open_hdf5(path) as f:
        value = f.attrs.get("readout_threshold_mev")
    return None if value is None else float(value)


def validate_calo(
    reference_path: str | os.PathLike,
    generated_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    energy_bins_gev: Sequence[Sequence[float]] = DEFAULT_ENERGY_BINS_GEV,
    seed: int = 0,
    progress: bool = True,
    min_events_per_bin: int = 50,
    classifier_max_events: int = 20000,
    plots: bool = True,
    threshold_mev: float = READOUT_THRESHOLD_MEV,
    classifier_protocol: str = "fast",
) -> dict:
    """Compares generated with reference calorimeter showers; writes PNGs and ``report.json``.

    Both samples are first read through the same readout threshold: every cell below
    ``threshold_mev`` is set to 0 (:func:`~surrogate.metrics.showers.zero_suppress`), in both
    files, before the observables, the classifier features and the plots; ``sparsity_i`` is
    therefore the fraction of cells at or above the threshold in either sample.

    For the selection "all" and for each incident-energy bin ``[low, high)`` (the bin ending at
    the largest upper edge also includes that edge) the report gives the event counts, the mean
    response ``<E_tot / E_inc>`` of both samples with standard errors and their ratio
    (generated / reference), and the separation power of every CaloGAN observable of
    :func:`~surrogate.metrics.showers.shower_observables` (40 equal-width bins over the reference's
    range plus under- and overflow, :func:`~surrogate.metrics.showers.separation_power`). A
    selection with fewer than ``min_events_per_bin`` events in either sample is reported as
    ``"skipped"`` with the reason instead. Two classifier tests of the chosen protocol
    (:data:`CLASSIFIER_PROTOCOLS`) are run on all energies together (at most
    ``classifier_max_events`` random events per sample): on the high-level features and on the
    cell energies; their held-out ROC AUC is reported (0.5 = indistinguishable) with the
    protocol that produced it (``"protocol"`` in each entry, ``classifier_protocol`` in the
    settings and the summary); the CaloChallenge protocol also reports its JSD. Both files
    are read into memory whole (about 2 kB per event).

    Files written to ``out_dir`` (created if needed), each atomically:
    ``hist_<observable>.png`` (one per observable; panels "all" and each evaluated energy bin),
    ``average_images.png`` (mean cell energies per layer, reference vs generated),
    ``mean_response.png`` (mean response per energy bin and the ratio; only if a bin was
    evaluated) and ``report.json``, whose structure is::

        {"reference": {"path", "n_events", "readout_threshold_mev"},
         "generated": {"path", "n_events", "readout_threshold_mev"},
         "settings": {"energy_bins_gev", "seed", "min_events_per_bin", "n_bins_separation_power",
                      "classifier_max_events", "readout_threshold_mev", "classifier_protocol"},
         "observables": {name: unit},
         "energy_bins": {"all" | "<low>-<high> GeV": {
             "range_gev": [low, high] | null, "n_reference", "n_generated",
             "status": "ok" | "skipped", "reason": str (if skipped),
             "mean_response": {"reference", "reference_error", "generated", "generated_error",
                               "ratio", "ratio_error"},
             "separation_power": {name: S}, "mean_separation_power": float,
             "separation_power_floor": float}},
         "classifier": {"high_level" | "cells": {"status": "ok", "protocol", "auc", ... (the
                        protocol's result)} | {"status": "skipped", "protocol", "reason"}},
         "summary": {"auc_high_level", "auc_cells", "max_abs_response_deviation",
                     "mean_separation_power", "worst_observable", "readout_threshold_mev",
                     "classifier_protocol"},
         "plots": {"observables": {name: file}, "average_images": file | null,
                   "mean_response": file | null}}

    The separation power of finite samples is biased upwards: two samples of one distribution
    with ``N_r`` and ``N_g`` events give on average about ``separation_power_floor =
    n_bins / 4 * (1 / N_r + 1 / N_g)`` (each occupied bin adds ``(1/N_r + 1/N_g) / 4``; an upper
    estimate, as not all 40 bins are occupied), so values near it are consistent with noise.
    ``max_abs_response_deviation`` is ``max |ratio - 1|`` over the evaluated energy bins (null if
    none); ``mean_separation_power`` and ``worst_observable`` refer to the selection "all".
    File names in ``"plots"`` are relative to ``out_dir``. ``settings.readout_threshold_mev``
    (repeated in ``summary``) is the threshold applied here; ``reference.readout_threshold_mev``
    and ``generated.readout_threshold_mev`` are the thresholds the files record in their
    attribute of that name (the reference simulator writes it; ``null`` if absent). A file
    recorded with a higher threshold than the one applied here lacks cells the other sample
    keeps, which biases the comparison: a :class:`UserWarning` says so.

    Arguments:
        reference_path: CaloGAN-layout HDF5 file of reference showers.
        generated_path: CaloGAN-layout HDF5 file of generated showers.
        out_dir: Output folder for the report and the plots.
        energy_bins_gev: Incident-energy bins ``(low, high)`` in GeV.
        seed: Seed of the classifier tests (subsampling, split, initialization).
        progress: Show a progress bar over the steps.
        min_events_per_bin: Selections with fewer events in either sample are skipped.
        classifier_max_events: At most this many events per sample enter each classifier test.
        plots: Write the PNG figures (a fraction of a second each); with ``False`` only
            ``report.json`` is written and ``"plots"`` lists nothing.
        threshold_mev: Readout threshold in MeV (>= 0) applied to both files (default
            :data:`~surrogate.simulators.gflash.READOUT_THRESHOLD_MEV` = 0.01 MeV, the CaloFlow
            value for the CaloGAN geometry; 0 compares the cells as stored).
        classifier_protocol: ``"fast"`` or ``"calochallenge"`` (:data:`CLASSIFIER_PROTOCOLS`).

    Returns:
        The report (the dict written to ``report.json``).

    Raises:
        ValueError: If a file is not a valid CaloGAN-layout file (raised by
            :func:`surrogate.data.calo.read_calogan`), an energy bin is malformed,
            ``threshold_mev`` is negative, ``classifier_protocol`` unknown, or ``out_dir`` is
            an existing file.

    References:
        Paganini, de Oliveira, Nachman, arXiv:1705.02355, arXiv:1712.10321 (observables);
        Krause et al., arXiv:2410.21611 (separation power, classifier metric).
    """
    bins = _check_energy_bins(energy_bins_gev)
    threshold_mev = check_float("threshold_mev", threshold_mev, minimum=0.0, unit="MeV")
    classifier_protocol = check_choice("classifier_protocol", classifier_protocol, CLASSIFIER_PROTOCOLS)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: the report folder is an existing file; name a folder")
    out.mkdir(parents=True, exist_ok=True)
    names = list(OBSERVABLE_UNITS)
    steps = ["read", "observables", "separation powers", "classifiers",
             *(f"plot {name}" for name in names), "plot average images", "plot mean response", "report"]
    with tqdm(total=len(steps), desc="validate", unit="step", disable=not progress) as bar:

        def step(description: str) -> None:
            """Marks the previous step done and shows the one starting now."""
            bar.update(steps.index(description) - bar.n)
            bar.set_postfix_str(description)

        step("read")
        recorded = {}
        for kind, path in (("reference", reference_path), ("generated", generated_path)):
            recorded[kind] = _recorded_threshold(path)
            if recorded[kind] is not None and recorded[kind] > threshold_mev:
                warnings.warn(f"{path} was written with readout threshold {recorded[kind]} MeV, above the "
                              f"{threshold_mev} MeV applied to both files: its sparsity is biased low",
                              UserWarning, stacklevel=2)
        # one readout for both samples: cells below the threshold are empty everywhere below
        reference = zero_suppress(read_calogan(reference_path), threshold_mev)
        generated = zero_suppress(read_calogan(generated_path), threshold_mev)
        step("observables")
        ref_obs = shower_observables(reference, threshold_mev=threshold_mev)
        gen_obs = shower_observables(generated, threshold_mev=threshold_mev)
        ref_energy = np.asarray(reference["energy"], dtype=np.float64)[:, 0]
        gen_energy = np.asarray(generated["energy"], dtype=np.float64)[:, 0]

        step("separation powers")
        energy_bins, evaluated = _compare_selections(ref_obs, gen_obs, ref_energy, gen_energy, bins, min_events_per_bin)

        step("classifiers")
        classifier = _classifier_tests(reference, generated, ref_obs, gen_obs, protocol=classifier_protocol,
                                       seed=seed, max_events=classifier_max_events, min_events=min_events_per_bin,
                                       threshold_mev=threshold_mev, progress=progress)

        figures = _write_plots(out, reference, generated, energy_bins, evaluated, step if plots else None)

        step("report")
        binned = [label for label in evaluated if label != "all"]
        deviations = [
            abs(energy_bins[label]["mean_response"]["ratio"] - 1.0)
            for label in binned
            if energy_bins[label]["mean_response"]["ratio"] is not None
        ]
        overall = energy_bins["all"]
        report = {
            "reference": {"path": str(reference_path), "n_events": int(ref_energy.size),
                          "readout_threshold_mev": recorded["reference"]},
            "generated": {"path": str(generated_path), "n_events": int(gen_energy.size),
                          "readout_threshold_mev": recorded["generated"]},
            "settings": {
                "energy_bins_gev": [list(b) for b in bins],
                "seed": int(seed),
                "min_events_per_bin": int(min_events_per_bin),
                "n_bins_separation_power": _N_BINS,
                "classifier_max_events": int(classifier_max_events),
                "readout_threshold_mev": threshold_mev,
                "classifier_protocol": classifier_protocol,
            },
            "observables": dict(OBSERVABLE_UNITS),
            "energy_bins": energy_bins,
            "classifier": classifier,
            "summary": {
                "auc_high_level": classifier["high_level"].get("auc"),
                "auc_cells": classifier["cells"].get("auc"),
                "max_abs_response_deviation": max(deviations) if deviations else None,
                "mean_separation_power": overall.get("mean_separation_power"),
                "worst_observable": (
                    max(overall["separation_power"], key=overall["separation_power"].get)
                    if overall["status"] == "ok" else None
                ),
                "readout_threshold_mev": threshold_mev,
                "classifier_protocol": classifier_protocol,
            },
            "plots": figures,
        }
        write_report(out / "report.json", report)
        bar.update(len(steps) - bar.n)
    return report


def _classifier_tests(reference: Mapping[str, np.ndarray], generated: Mapping[str, np.ndarray],
                      ref_obs: Mapping[str, np.ndarray], gen_obs: Mapping[str, np.ndarray], *, protocol: str,
                      seed: int, max_events: int, min_events: int, threshold_mev: float,
                      progress: bool) -> dict[str, dict]:
    """The report's ``"classifier"`` entry: high-level and cell classifiers of one protocol."""
    n_ref, n_gen = len(reference["energy"]), len(generated["energy"])
    if min(n_ref, n_gen) < min_events:
        reason = f"fewer than {min_events} events: {n_ref} reference, {n_gen} generated"
        return {kind: {"status": "skipped", "reason": reason, "protocol": protocol} for kind in ("high_level", "cells")}
    # features of at most max_events events per sample (bounded memory)
    ref_take, gen_take = (_sample_indices(n, max_events, seed + offset) for offset, n in enumerate((n_ref, n_gen)))
    ref, gen = _take(reference, ref_take), _take(generated, gen_take)
    out = {}
    for kind in ("high_level", "cells"):
        if protocol == "calochallenge":
            from surrogate.metrics.calochallenge import calochallenge_classifier
            from surrogate.metrics.calochallenge_features import calochallenge_features

            level = "high" if kind == "high_level" else "low"
            result = calochallenge_classifier(calochallenge_features(ref, kind=level, threshold_mev=threshold_mev),
                                              calochallenge_features(gen, kind=level, threshold_mev=threshold_mev),
                                              seed=seed, progress=progress)
        else:
            if kind == "high_level":
                ref_x = calo_high_level_features(ref, _take(ref_obs, ref_take))[0]
                gen_x = calo_high_level_features(gen, _take(gen_obs, gen_take))[0]
            else:
                ref_x = calo_cell_features(ref, threshold_mev=threshold_mev)
                gen_x = calo_cell_features(gen, threshold_mev=threshold_mev)
            result = classifier_auc(ref_x, gen_x, seed=seed, max_events=max_events)
        out[kind] = {"status": "ok", "protocol": protocol, **result}
    return out


def _compare_selections(
    ref_obs: Mapping[str, np.ndarray],
    gen_obs: Mapping[str, np.ndarray],
    ref_energy: np.ndarray,
    gen_energy: np.ndarray,
    bins: Sequence[tuple[float, float]],
    min_events: int,
) -> tuple[dict[str, dict], dict[str, tuple[dict, dict]]]:
    """Report entries per selection ("all", then each bin) and the observables of the evaluated ones."""
    top = max((b[1] for b in bins), default=np.inf)
    selections = {"all": (None, np.ones(ref_energy.shape, bool), np.ones(gen_energy.shape, bool))}
    for low, high in bins:
        selections[_bin_label(low, high)] = (
            [low, high], _select(ref_energy, low, high, top), _select(gen_energy, low, high, top)
        )
    energy_bins: dict[str, dict] = {}
    evaluated: dict[str, tuple[dict, dict]] = {}
    for label, (range_gev, ref_mask, gen_mask) in selections.items():
        n_ref, n_gen = int(ref_mask.sum()), int(gen_mask.sum())
        entry: dict = {"range_gev": range_gev, "n_reference": n_ref, "n_generated": n_gen}
        if min(n_ref, n_gen) < min_events:
            entry["status"] = "skipped"
            entry["reason"] = f"fewer than {min_events} events: {n_ref} reference, {n_gen} generated"
        else:
            ref_sel, gen_sel = _subset(ref_obs, ref_mask), _subset(gen_obs, gen_mask)
            powers = {name: separation_power(ref_sel[name], gen_sel[name], _N_BINS) for name in OBSERVABLE_UNITS}
            entry["status"] = "ok"
            entry["mean_response"] = _response(ref_sel["E_tot_over_E_inc"], gen_sel["E_tot_over_E_inc"])
            entry["separation_power"] = powers
            entry["mean_separation_power"] = float(np.mean(list(powers.values())))
            entry["separation_power_floor"] = _N_BINS / 4 * (1 / n_ref + 1 / n_gen)
            evaluated[label] = (ref_sel, gen_sel)
        energy_bins[label] = entry
    return energy_bins, evaluated


def _write_plots(
    out: Path,
    reference: Mapping[str, np.ndarray],
    generated: Mapping[str, np.ndarray],
    energy_bins: Mapping[str, dict],
    evaluated: Mapping[str, tuple[dict, dict]],
    step: Callable[[str], None] | None,
) -> dict:
    """Writes the PNGs (none if ``step`` is None) and returns the report's ``"plots"`` entry."""
    figures: dict = {"observables": {}, "average_images": None, "mean_response": None}
    if step is None:
        return figures
    from surrogate.metrics.plots import plot_average_images, plot_mean_response, plot_observable

    for name, unit in OBSERVABLE_UNITS.items():
        step(f"plot {name}")
        if not evaluated:
            continue
        filename = f"hist_{name}.png"
        plot_observable(
            out / filename, name,
            {label: pair[0][name] for label, pair in evaluated.items()},
            {label: pair[1][name] for label, pair in evaluated.items()},
            unit=unit, n_bins=_N_BINS,
            separation_powers={label: energy_bins[label]["separation_power"][name] for label in evaluated},
        )
        figures["observables"][name] = filename
    step("plot average images")
    plot_average_images(
        out / "average_images.png",
        {layer: np.asarray(reference[layer], np.float64).mean(axis=0) for layer in CALOGAN_LAYERS},
        {layer: np.asarray(generated[layer], np.float64).mean(axis=0) for layer in CALOGAN_LAYERS},
    )
    figures["average_images"] = "average_images.png"
    step("plot mean response")
    binned = [label for label in evaluated if label != "all"]
    if binned:
        responses = [energy_bins[label]["mean_response"] for label in binned]
        plot_mean_response(
            out / "mean_response.png",
            [tuple(energy_bins[label]["range_gev"]) for label in binned],
            [r["reference"] for r in responses], [r["reference_error"] for r in responses],
            [r["generated"] for r in responses], [r["generated_error"] for r in responses],
        )
        figures["mean_response"] = "mean_response.png"
    return figures

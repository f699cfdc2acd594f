"""Validation metrics: physics observables, separation power, classifier two-sample tests, plots.

Calorimeter metrics: :mod:`surrogate.metrics.showers` (CaloGAN observables, CaloChallenge
separation power), :mod:`surrogate.metrics.classifier` (classifier ROC AUC),
:mod:`surrogate.metrics.calochallenge` (the CaloChallenge 2022 DNN classifier protocol) on the
features of :mod:`surrogate.metrics.calochallenge_features`, and :mod:`surrogate.metrics.plots`
(PNG figures). Galaxy morphology (HSM moments, Gini, M20, KS distances):
:mod:`surrogate.metrics.morphology`. Posteriors: :mod:`surrogate.metrics.c2st`,
:mod:`surrogate.metrics.coverage` and :mod:`surrogate.metrics.posterior_plots`. JSON reports:
:mod:`surrogate.metrics.report`. Their main functions are also reachable here
(``surrogate.metrics.shower_observables``); they are imported on first access (PEP 562), so
importing one submodule does not pull in scikit-learn, matplotlib or the data layer of another.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "OBSERVABLE_UNITS": "surrogate.metrics.showers",
    "histogram_edges": "surrogate.metrics.showers",
    "separation_power": "surrogate.metrics.showers",
    "shower_observables": "surrogate.metrics.showers",
    "calo_cell_features": "surrogate.metrics.classifier",
    "calo_high_level_features": "surrogate.metrics.classifier",
    "classifier_auc": "surrogate.metrics.classifier",
    "ks_distances": "surrogate.metrics.morphology",
    "morphology_statistics": "surrogate.metrics.morphology",
    "write_report": "surrogate.metrics.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

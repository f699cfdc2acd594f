"""Classifier two-sample test: ROC AUC of an MLP separating reference from generated events.

A classifier that cannot tell the two samples apart has a held-out ROC AUC of 0.5; a perfect one
1.0. Following CaloChallenge 2022 (Krause et al., arXiv:2410.21611, "classifier metric"), it is run
once on high-level features (the CaloGAN observables) and once on low-level features (the cell
energies divided by the incident energy, plus the log incident energy).

Procedure of :func:`classifier_auc`:

1. Each class is randomly subsampled (without replacement, seeded) to
   ``n = min(N_reference, N_generated, max_events)`` events, so the classes are balanced and the
   run time is bounded (default 20000 per class: well under a minute on 2 CPU cores for ~500
   features).
2. A stratified train/test split (``test_fraction`` held out, seeded).
3. Features are standardized (mean 0, variance 1, fitted on the training split only) and a
   scikit-learn ``MLPClassifier`` (ReLU, Adam, early stopping on 10 % of the training split) is fit.
4. ROC AUC (``sklearn.metrics.roc_auc_score``) of the predicted probabilities on the held-out split.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from surrogate.checks import check_float, check_int
from surrogate.geometry import CALOGAN_LAYERS
from surrogate.metrics.showers import shower_observables, zero_suppress

__all__ = ["calo_cell_features", "calo_high_level_features", "classifier_auc"]

#: Observables that are energies in MeV; they enter the high-level features as log10(1 + E/MeV).
_ENERGY_OBSERVABLES = ("E_0", "E_1", "E_2", "E_tot")

_MIN_EVENTS_PER_CLASS = 10


def calo_high_level_features(
    showers: Mapping[str, np.ndarray],
    observables: Mapping[str, np.ndarray] | None = None,
    *,
    threshold_mev: float = 0.0,
) -> tuple[np.ndarray, list[str]]:
    """High-level classifier features of CaloGAN showers.

    The features are ``log10(E_inc / GeV)`` followed by every CaloGAN observable of
    :func:`~surrogate.metrics.showers.shower_observables`, with the energies ``E_0, E_1, E_2,
    E_tot`` (MeV) replaced by ``log10(1 + E / MeV)`` (CaloChallenge also feeds log layer energies).

    Arguments:
        showers: CaloGAN layout (``"layer_*"`` in MeV, ``"energy"`` (N, 1) in GeV).
        observables: Precomputed ``shower_observables(showers, threshold_mev=...)``, to avoid
            recomputing them (they carry their own threshold; ``threshold_mev`` is then unused).
        threshold_mev: Readout threshold in MeV (>= 0) for computing the observables: cells
            below it are empty (see :func:`~surrogate.metrics.showers.shower_observables`).

    Returns:
        ``(features, names)``: float64 array (N, F) and the F feature names.

    Raises:
        ValueError: As :func:`~surrogate.metrics.showers.shower_observables`.
    """
    if observables is None:
        observables = shower_observables(showers, threshold_mev=threshold_mev)
    energy_gev = np.asarray(showers["energy"], dtype=np.float64)[:, 0]
    columns = [np.log10(np.clip(energy_gev, 1e-12, None))]
    names = ["log10_E_inc"]
    for name, values in observables.items():
        values = np.asarray(values, dtype=np.float64)
        if name in _ENERGY_OBSERVABLES:
            columns.append(np.log10(1.0 + np.clip(values, 0.0, None)))
            names.append(f"log10_1p_{name}")
        else:
            columns.append(values)
            names.append(name)
    return np.stack(columns, axis=1), names


def calo_cell_features(showers: Mapping[str, np.ndarray], *, threshold_mev: float = 0.0) -> np.ndarray:
    """Low-level classifier features of CaloGAN showers (CaloChallenge preprocessing).

    Arguments:
        showers: CaloGAN layout: ``"layer_0"`` (N, 3, 96), ``"layer_1"`` (N, 12, 12),
            ``"layer_2"`` (N, 12, 6) in MeV and ``"energy"`` (N, 1) in GeV.
        threshold_mev: Readout threshold in MeV (>= 0): cells below it are set to 0 first
            (:func:`~surrogate.metrics.showers.zero_suppress`; the CaloChallenge's
            ``evaluate.py`` does the same to both samples); default 0: the cells as given.

    Returns:
        float64 array (N, 505): the 504 cell energies (layers in order, row-major) divided by the
        incident energy in MeV, followed by ``log10(E_inc / GeV)``.

    Raises:
        ValueError: If a key is missing, the incident energy is not positive or
            ``threshold_mev`` is negative.

    References:
        Krause et al., arXiv:2410.21611 (low-level classifier inputs: voxels / E_inc, log E_inc).
    """
    for key in (*CALOGAN_LAYERS, "energy"):
        if key not in showers:
            raise ValueError(f"showers is missing key {key!r}; got keys {tuple(showers)}")
    showers = zero_suppress(showers, threshold_mev)
    energy_gev = np.asarray(showers["energy"], dtype=np.float64).reshape(-1)
    if not np.all(energy_gev > 0):
        raise ValueError("showers['energy'] must be > 0 GeV for every event to normalize the cells")
    n_events = energy_gev.shape[0]
    cells = np.concatenate(
        [np.asarray(showers[layer], dtype=np.float64).reshape(n_events, -1) for layer in CALOGAN_LAYERS],
        axis=1,
    )
    cells /= (energy_gev * 1000.0)[:, None]
    return np.concatenate([cells, np.log10(energy_gev)[:, None]], axis=1)


def classifier_auc(
    reference_features: np.ndarray,
    generated_features: np.ndarray,
    *,
    seed: int = 0,
    max_events: int = 20000,
    test_fraction: float = 0.3,
    hidden_layer_sizes: tuple[int, ...] = (64, 64),
    max_iter: int = 100,
    blas_threads: int | None = 1,
) -> dict:
    """Held-out ROC AUC of an MLP trained to separate reference from generated events.

    Arguments:
        reference_features: Reference events (N, F), finite (label 0).
        generated_features: Generated events (M, F), finite (label 1).
        seed: Seed of the subsampling, the train/test split and the MLP initialization.
        max_events: At most this many events per class are used (balanced subsample).
        test_fraction: Fraction of the (balanced) events held out for the AUC, in (0, 1).
        hidden_layer_sizes: Widths of the MLP's hidden layers.
        max_iter: Maximum number of training epochs (early stopping usually ends sooner).
        blas_threads: Threads of the BLAS library during the fit, limited only inside this call
            (``threadpoolctl``; restored afterwards). The MLP's matrices are small, so one thread
            is fastest, and much faster than several on a CPU shared with other work; ``None``
            leaves the library's setting.

    Returns:
        Dict with ``"auc"`` (float, held-out ROC AUC; 0.5 = indistinguishable),
        ``"n_per_class"``, ``"n_train"``, ``"n_test"``, ``"n_features"``, ``"n_epochs"`` (ints)
        and ``"seed"``.

    Raises:
        ValueError: If the arrays are not 2-D with the same number of features, contain
            non-finite values, or have fewer than 10 events in a class; or if ``test_fraction``
            or ``max_events`` is out of range.

    References:
        Lopez-Paz & Oquab, "Revisiting classifier two-sample tests", arXiv:1610.06545;
        Krause et al., arXiv:2410.21611 (classifier metric for calorimeter showers).
    """
    reference = np.asarray(reference_features, dtype=np.float64)
    generated = np.asarray(generated_features, dtype=np.float64)
    for name, array in (("reference_features", reference), ("generated_features", generated)):
        if array.ndim != 2:
            raise ValueError(f"{name} must have shape (N, F), got {array.shape}")
        if array.shape[0] < _MIN_EVENTS_PER_CLASS:
            raise ValueError(
                f"{name} has {array.shape[0]} events; expected at least {_MIN_EVENTS_PER_CLASS}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains non-finite values")
    if reference.shape[1] != generated.shape[1]:
        raise ValueError(
            f"reference_features has {reference.shape[1]} features but generated_features has "
            f"{generated.shape[1]}; expected the same"
        )
    test_fraction = check_float("test_fraction", test_fraction, minimum=0, maximum=1, exclusive_minimum=True,
                                exclusive_maximum=True)
    max_events = check_int("max_events", max_events, minimum=_MIN_EVENTS_PER_CLASS)

    rng = np.random.default_rng(seed)
    n = min(reference.shape[0], generated.shape[0], int(max_events))
    reference = reference[np.sort(rng.choice(reference.shape[0], n, replace=False))]
    generated = generated[np.sort(rng.choice(generated.shape[0], n, replace=False))]
    features = np.concatenate([reference, generated])
    labels = np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)])
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=tuple(hidden_layer_sizes),
            early_stopping=True,
            validation_fraction=0.1,
            n_iter_no_change=10,
            max_iter=int(max_iter),
            random_state=seed,
        ),
    )
    with warnings.catch_warnings(), threadpool_limits(limits=blas_threads):
        # Hitting max_iter is an expected outcome of a capped budget, not an error.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        model.fit(x_train, y_train)
        probability = model.predict_proba(x_test)[:, 1]
    return {
        "auc": float(roc_auc_score(y_test, probability)),
        "n_per_class": int(n),
        "n_train": int(x_train.shape[0]),
        "n_test": int(x_test.shape[0]),
        "n_features": int(features.shape[1]),
        "n_epochs": int(model[-1].n_iter_),
        "seed": int(seed),
    }

"""Classifier two-sample test (C2ST) exactly as the sbibm benchmark computes it.

A classifier is trained to tell reference posterior samples from approximate posterior samples;
its held-out accuracy is 0.5 when the two sets are indistinguishable and 1.0 when they are
disjoint. sbibm's recipe (arXiv:2101.04653, appendix; ``sbibm.metrics.c2st``): z-score both sets
with the mean and (unbiased) standard deviation of the *reference* set; an sklearn
``MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), solver="adam",
max_iter=10000, random_state=1)``; 5-fold ``KFold(shuffle=True, random_state=1)``; the mean
accuracy over the folds.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(300, 2)), rng.normal(loc=5.0, size=(300, 2))
    >>> c2st(a, b) > 0.95
    True
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neural_network import MLPClassifier

__all__ = ["c2st"]


def _as_2d_array(samples, name: str) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, dim) with N >= 2, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def c2st(
    reference,
    samples,
    *,
    seed: int = 1,
    n_folds: int = 5,
    z_score: bool = True,
    max_iter: int = 10000,
) -> float:
    """Classifier two-sample test accuracy between ``reference`` and ``samples``.

    Arguments:
        reference: reference samples ``(N, dim)`` (numpy array or tensor); also defines the
            z-scoring.
        samples: samples to test ``(M, dim)``; sbibm uses ``M = N = 10000``.
        seed: ``random_state`` of the classifier and of the fold split (sbibm: 1).
        n_folds: number of cross-validation folds (sbibm: 5).
        z_score: z-score both sets with the reference's mean and standard deviation (ddof=1).
        max_iter: the classifier's maximum number of epochs (sbibm: 10000).

    Returns:
        Mean held-out classification accuracy in [0, 1]; 0.5 means indistinguishable.

    Raises:
        ValueError: shapes differ in ``dim``, fewer than 2 samples, or non-finite values.

    References:
        Lopez-Paz & Oquab (2017), "Revisiting Classifier Two-Sample Tests", arXiv:1610.06545.
        Lueckmann et al. (2021), sbibm, arXiv:2101.04653.
    """
    x = _as_2d_array(reference, "reference")
    y = _as_2d_array(samples, "samples")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"reference and samples must have the same dim, got {x.shape[1]} and {y.shape[1]}")
    if z_score:
        mean, std = x.mean(axis=0), x.std(axis=0, ddof=1)
        std = np.where(std > 0, std, 1.0)
        x, y = (x - mean) / std, (y - mean) / std
    dim = x.shape[1]
    classifier = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * dim, 10 * dim),
        max_iter=max_iter,
        solver="adam",
        random_state=seed,
    )
    data = np.concatenate([x, y]).astype(np.float32)
    target = np.concatenate([np.zeros(len(x)), np.ones(len(y))])
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = cross_val_score(classifier, data, target, cv=folds, scoring="accuracy")
    return float(np.mean(scores))

"""The CaloChallenge 2022 classifier metric, reproduced for CaloGAN-layout showers.

CaloChallenge 2022 (Krause et al., arXiv:2410.21611) scores a generator by training a deep
neural network to tell its showers from the reference (Geant4) showers and reporting two numbers
on an independent split: the ROC **AUC** and a Jensen-Shannon-like score **JSD** (0 for
indistinguishable samples, 1 for perfectly separable ones). This module follows the challenge's
public evaluation script (``code/evaluate.py`` and ``code/HighLevelFeatures.py`` of the
repository ``CaloChallenge/homepage``, version of commit e1109af, 2024-01-25, the latest change
to the classifier; line numbers below refer to the file at commit 9b41df7) and adapts its
features from the challenge's polar voxels to the rectangular cells of a
:class:`~surrogate.geometry.CaloGeometry` (default :data:`~surrogate.geometry.CALOGAN`).

The inputs (readout threshold, low- and high-level features) are computed by
:mod:`surrogate.metrics.calochallenge_features`.

**Classifier** (:func:`calochallenge_classifier`; ``evaluate.py`` l. 110-123 for the defaults,
l. 140-164 network, l. 227-250 split, l. 264-390 training, selection and calibration,
l. 617-667 the run):

1. Labels 0 for generated, 1 for reference events (l. 601-615). The two samples must be equally
   large (the script asserts it, l. 232); here the larger one is subsampled (seeded).
2. Each class is shuffled and cut 60 / 20 / 20 % into *train*, *test* and *validation*
   (``floor`` of the fractions, the remainder to validation, l. 234 and 240-243); the classes
   are merged and each split shuffled (l. 244-249).
3. :class:`CaloChallengeDNN`: three hidden layers of 2048 LeakyReLU units (the script's input
   layer plus ``--cls_n_layer 2``), dropout 0, one output logit; float64 throughout
   (``torch.set_default_dtype(torch.float64)``, l. 57). No input standardization.
4. Adam (lr 2e-4), ``BCEWithLogitsLoss``, batches of 1000 reshuffled every epoch, 50 epochs.
   After each epoch the accuracy (logit > 0) on the *test* split is computed; the epoch with the
   highest accuracy (first one on ties) is kept, and training stops once it reaches 1
   (l. 264-284).
5. The kept network's probabilities are calibrated by isotonic regression
   (``IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6)``) fitted on the
   *test* split, and AUC and JSD are computed from the calibrated probabilities on the
   *validation* split (l. 367-390 and 659-667: ``evaluate_cls(..., val_dataloader,
   final_eval=True, calibration_data=test_dataloader)``), so the reported numbers come from
   events used neither for training nor for selection or calibration.
6. ``JSD = (log 2 - BCE) / log 2`` with ``BCE`` the mean binary cross-entropy of the calibrated
   probabilities (l. 345-364). It estimates the Jensen-Shannon divergence in bits from below; on
   finite samples of identical distributions it scatters around 0 and can be slightly negative.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score
from torch import nn

from surrogate.checks import check_float, check_int

__all__ = ["CaloChallengeDNN", "calochallenge_classifier"]

#: Range of the calibrated probabilities (``evaluate.py`` l. 388).
_CALIBRATION_CLIP = 1e-6
#: Train / test / validation fractions per class (``evaluate.py`` l. 227).
_SPLIT = (0.6, 0.2, 0.2)
_MIN_EVENTS_PER_CLASS = 10



class CaloChallengeDNN(nn.Module):
    """The challenge's classifier network: ``n_hidden_layers`` LeakyReLU layers and one logit.

    ``Linear(F, H), LeakyReLU, Dropout, [Linear(H, H), LeakyReLU, Dropout] x (n_hidden_layers - 1),
    Linear(H, 1)``; no sigmoid at the end (use it with ``BCEWithLogitsLoss``). The defaults are
    the script's (``evaluate.py`` l. 112-117 and 140-164: an input layer plus ``--cls_n_layer 2``
    hidden-to-hidden layers of ``--cls_n_hidden 2048`` units, ``--cls_dropout_probability 0``).

    Arguments:
        n_features: Input features F.
        hidden_features: Units H of every hidden layer.
        n_hidden_layers: Hidden layers (>= 1).
        dropout: Dropout probability after every hidden layer, in [0, 1).

    Raises:
        ValueError: If an argument is out of range (the message names it).

    Example:
        >>> net = CaloChallengeDNN(26)
        >>> net(torch.zeros(5, 26)).shape
        torch.Size([5, 1])
        >>> sum(p.numel() for p in net.parameters())
        8450049
    """

    def __init__(
        self, n_features: int, *, hidden_features: int = 2048, n_hidden_layers: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        n_features = check_int("n_features", n_features, minimum=1)
        hidden_features = check_int("hidden_features", hidden_features, minimum=1)
        n_hidden_layers = check_int("n_hidden_layers", n_hidden_layers, minimum=1)
        dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0, exclusive_maximum=True)
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(width, hidden_features), nn.LeakyReLU(), nn.Dropout(dropout)]
            width = hidden_features
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1)`` of inputs ``x`` ``(N, F)``; positive means "reference"."""
        return self.layers(x)


def calochallenge_classifier(
    reference_features: np.ndarray,
    generated_features: np.ndarray,
    *,
    seed: int = 0,
    epochs: int = 50,
    batch_size: int = 1000,
    learning_rate: float = 2e-4,
    hidden_features: int = 2048,
    n_hidden_layers: int = 3,
    dropout: float = 0.0,
    max_events: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """AUC and JSD of the CaloChallenge 2022 classifier test (the protocol in the module docstring).

    The defaults are the challenge's (``evaluate.py`` l. 110-123 and 57), which assume the
    challenge's 10^5 events per sample (60 optimizer steps per epoch). Inputs are not
    standardized, as in the script: low-level cell fractions of order 1e-3 are learned slowly at
    lr 2e-4, so on small samples (10^3 events per class, a few epochs) even a 50 % energy-scale
    error in the cells can go unnoticed, while shape differences in the high-level features show
    within a few epochs. Run time grows as ``epochs`` x events x ``hidden_features``^2: about
    1.6 ms of CPU per training event and epoch at 2048 units in float64 on one thread (half
    that in float32), test-split evaluation included; 10^4 vs 10^4 events and 50 epochs took
    930 s (low-level) and 830 s (high-level) of CPU (``benchmarks/calochallenge_classifier.py``).

    Arguments:
        reference_features: Reference events (N, F), finite (label 1), e.g. from
            :func:`~surrogate.metrics.calochallenge_features.calochallenge_features`.
        generated_features: Generated events (M, F), finite (label 0).
        seed: Seeds the subsampling, the split, the initialization, the batch order and dropout.
            The caller's torch and numpy random states are left untouched.
        epochs: Maximum number of training epochs (``--cls_n_epochs``).
        batch_size: Events per optimizer step and per evaluation batch (``--cls_batch_size``).
        learning_rate: Adam's learning rate (``--cls_lr``).
        hidden_features: Units per hidden layer (``--cls_n_hidden``).
        n_hidden_layers: Hidden layers (the script's ``--cls_n_layer`` + 1).
        dropout: Dropout probability (``--cls_dropout_probability``).
        max_events: At most this many events per class (random subsample); ``None`` uses
            ``min(N, M)``.
        dtype: Floating-point type of the network and the data (the script's float64).
        device: Where the network is trained, e.g. ``"cpu"`` or ``"cuda:0"``.
        progress: Show a tqdm bar over the epochs.

    Returns:
        Dict with ``"auc"`` and ``"jsd"`` (floats: calibrated, on the validation split; the
        numbers the challenge reports), ``"auc_uncalibrated"`` and ``"jsd_uncalibrated"`` (same
        split, raw sigmoid outputs), ``"accuracy"`` (calibrated, validation split),
        ``"best_epoch"`` (1-based epoch kept), ``"epochs_run"``, ``"test_accuracy"`` (list:
        test-split accuracy after each epoch), ``"n_per_class"``, ``"n_train"``, ``"n_test"``,
        ``"n_validation"``, ``"n_features"``, ``"seed"`` and ``"protocol"`` (``"calochallenge"``).

    Raises:
        ValueError: If an array is not 2-D, contains non-finite values or has fewer than 10
            events, the feature counts differ, or an option is out of range (the message names
            the argument and the value).

    References:
        Krause et al., "CaloChallenge 2022: A Community Challenge for Fast Calorimeter
        Simulation", arXiv:2410.21611 (classifier metric); ``CaloChallenge/homepage``
        ``code/evaluate.py`` (``DNN``, ``ttv_split``, ``train_and_evaluate_cls``,
        ``evaluate_cls``, ``calibrate_classifier``); isotonic calibration: Zadrozny & Elkan,
        KDD 2002.
    """
    reference = _check_features("reference_features", reference_features)
    generated = _check_features("generated_features", generated_features)
    if reference.shape[1] != generated.shape[1]:
        raise ValueError(
            f"reference_features has {reference.shape[1]} features but generated_features has "
            f"{generated.shape[1]}; expected the same"
        )
    seed = check_int("seed", seed, minimum=0)
    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    learning_rate = check_float("learning_rate", learning_rate, minimum=0.0, exclusive_minimum=True)
    max_events = check_int("max_events", max_events, minimum=_MIN_EVENTS_PER_CLASS, optional=True)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    device = torch.device(device)

    rng = np.random.default_rng(seed)
    n = min(reference.shape[0], generated.shape[0], max_events or reference.shape[0])
    samples = [generated[rng.choice(generated.shape[0], n, replace=False)],
               reference[rng.choice(reference.shape[0], n, replace=False)]]
    splits = _split(samples, rng)
    train, test, validation = ((torch.as_tensor(x, dtype=dtype, device=device),
                                torch.as_tensor(y, dtype=dtype, device=device)) for x, y in splits)

    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        model = CaloChallengeDNN(reference.shape[1], hidden_features=hidden_features,
                                 n_hidden_layers=n_hidden_layers, dropout=dropout).to(device=device, dtype=dtype)
        history = _train(model, train, test, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         seed=seed, progress=progress)
    best_epoch = int(np.argmax(history["accuracy"])) + 1
    model.load_state_dict(history["best_state"])

    test_p = _sigmoid(_logits(model, test[0], batch_size))
    validation_logits = _logits(model, validation[0], batch_size)
    y_test, y_validation = test[1].cpu().numpy(), validation[1].cpu().numpy()
    calibrator = IsotonicRegression(
        out_of_bounds="clip", y_min=_CALIBRATION_CLIP, y_max=1.0 - _CALIBRATION_CLIP
    ).fit(test_p, y_test)
    calibrated = calibrator.predict(_sigmoid(validation_logits))
    bce = -np.mean(y_validation * np.log(calibrated) + (1.0 - y_validation) * np.log1p(-calibrated))
    bce_raw = np.mean(np.logaddexp(0.0, np.where(y_validation > 0.5, -validation_logits, validation_logits)))
    return {
        "auc": float(roc_auc_score(y_validation, calibrated)),
        "jsd": float((math.log(2.0) - bce) / math.log(2.0)),
        "auc_uncalibrated": float(roc_auc_score(y_validation, validation_logits)),
        "jsd_uncalibrated": float((math.log(2.0) - bce_raw) / math.log(2.0)),
        # np.round(0.5) == 0 in the script (l. 353): a calibrated 0.5 counts as label 0
        "accuracy": float(np.mean((calibrated > 0.5) == (y_validation > 0.5))),
        "best_epoch": best_epoch,
        "epochs_run": len(history["accuracy"]),
        "test_accuracy": [float(a) for a in history["accuracy"]],
        "n_per_class": int(n),
        "n_train": int(train[0].shape[0]),
        "n_test": int(test[0].shape[0]),
        "n_validation": int(validation[0].shape[0]),
        "n_features": int(reference.shape[1]),
        "seed": seed,
        "protocol": "calochallenge",
    }


def _check_features(name: str, features: np.ndarray) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (N, F), got {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} has dtype {array.dtype}; expected a real dtype")
    array = array.astype(np.float64, copy=False)
    if array.shape[0] < _MIN_EVENTS_PER_CLASS:
        raise ValueError(f"{name} has {array.shape[0]} events; expected at least {_MIN_EVENTS_PER_CLASS}")
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite values; expected finite features")
    return array


def _split(samples: list[np.ndarray], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(x, y)]`` for train, test, validation: each class cut 60/20/20 %, merged, shuffled."""
    n = samples[0].shape[0]
    cuts = np.cumsum((n * np.asarray(_SPLIT)).astype(int))[:-1]
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[], [], []]
    for label, events in enumerate(samples):
        for part, chunk in zip(parts, np.split(events[rng.permutation(n)], cuts)):
            part.append((chunk, np.full(chunk.shape[0], float(label))))
    out = []
    for part in parts:
        x = np.concatenate([chunk for chunk, _ in part])
        y = np.concatenate([labels for _, labels in part])
        order = rng.permutation(x.shape[0])
        out.append((x[order], y[order]))
    return out


def _train(model: CaloChallengeDNN, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
           *, epochs: int, batch_size: int, learning_rate: float, seed: int, progress: bool) -> dict:
    """Adam + BCE-with-logits; keeps the state of the epoch with the best test accuracy."""
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x_train, y_train = train
    y_test = test[1].cpu().numpy() > 0.5
    accuracies: list[float] = []
    best_state = None
    with tqdm(range(epochs), desc="calochallenge classifier", unit="epoch", disable=not progress) as bar:
        for _ in bar:
            model.train()
            order = torch.randperm(x_train.shape[0], generator=generator).to(x_train.device)
            for start in range(0, x_train.shape[0], batch_size):
                batch = order[start:start + batch_size]
                loss = loss_fn(model(x_train[batch]), y_train[batch, None])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            accuracy = float(np.mean((_logits(model, test[0], batch_size) > 0.0) == y_test))
            if not accuracies or accuracy > max(accuracies):
                best_state = copy.deepcopy(model.state_dict())
            accuracies.append(accuracy)
            bar.set_postfix(test_accuracy=f"{accuracy:.4f}")
            if accuracy == 1.0:
                break
    return {"accuracy": accuracies, "best_state": best_state}


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """Logits (N,) as float64 numpy, computed in evaluation mode batch by batch."""
    model.eval()
    out = [model(x[start:start + batch_size]).reshape(-1) for start in range(0, x.shape[0], batch_size)]
    return torch.cat(out).to(device="cpu", dtype=torch.float64).numpy()


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))

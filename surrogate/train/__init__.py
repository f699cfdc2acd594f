"""Training: one loop (:func:`fit`) for every model family, step functions and checkpoints.

Submodules: :mod:`~surrogate.train.steps` (the steps and learning-rate schedules),
:mod:`~surrogate.train.loop` (:func:`fit`), :mod:`~surrogate.train.log` (``log.csv`` and the
progress bar), :mod:`~surrogate.train.checkpoint` and :mod:`~surrogate.train.distributed` (ranks,
collectives, ``main_rank_first``).
"""

from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from surrogate.train.loop import FitResult, Step, TrainingInterrupted, fit
from surrogate.train.steps import GANStep, LikelihoodStep, make_lr_scheduler

__all__ = [
    "FitResult",
    "GANStep",
    "LikelihoodStep",
    "Step",
    "TrainingInterrupted",
    "fit",
    "latest_checkpoint",
    "load_checkpoint",
    "make_lr_scheduler",
    "save_checkpoint",
]

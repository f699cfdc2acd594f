"""Training: one loop (:func:`fit`) for every model family, step functions and checkpoints."""

from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from surrogate.train.loop import FitResult, fit

__all__ = ["FitResult", "fit", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

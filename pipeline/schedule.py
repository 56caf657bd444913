"""Scheduled-sampling schedules: per epoch, the probability of feeding the true word.

Reads and writes nothing. `inverse_sigmoid` is the seed's schedule (Bengio et al.
2015's inverse-sigmoid decay): for 100 epochs it runs from 0.88079708 at epoch 0
through 0.5 at epoch 50 to 0.12346705 at epoch 99.
"""

from __future__ import annotations

import numpy as np


def inverse_sigmoid(epochs: int) -> np.ndarray:
    """sigmoid(2 - 4 * epoch / epochs) for epoch = 0 .. epochs - 1."""
    epoch = np.arange(epochs, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(2.0 - 4.0 * epoch / epochs)))


def constant(epochs: int) -> np.ndarray:
    """Pure teacher forcing: always the true previous word."""
    return np.ones(epochs)


def linear(epochs: int, start: float = 1.0, end: float = 0.5) -> np.ndarray:
    """From `start` at the first epoch straight down to `end` at the last."""
    return np.linspace(start, end, epochs) if epochs > 1 else np.full(epochs, start)


SCHEDULES = {"inverse_sigmoid": inverse_sigmoid, "constant": constant, "linear": linear}


def per_epoch(schedule: str, epochs: int) -> np.ndarray:
    """The teacher-forcing probability of each epoch under `schedule`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule](epochs)

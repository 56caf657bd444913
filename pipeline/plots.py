"""Draws a run's training plots from its metrics history.

Reads the history rows `train` keeps (one dict per epoch, `metrics.csv`'s columns)
and the teacher-forcing schedule; writes `RUN/curves.png` (losses and validation
BLEU-1 per epoch) and `RUN/schedule.png` (the probability of feeding the true word).
The report embeds both.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def plot_history(run: Path, history: list[dict], teacher_forcing: np.ndarray) -> None:
    """curves.png (losses and validation BLEU per epoch) and schedule.png (teacher forcing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def column(key: str) -> list[float]:  # what was not measured (no validation split) is not drawn
        return [math.nan if row[key] is None else row[key] for row in history]

    epochs = column("epoch")
    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, column("train_loss"), label="train")
    ax_loss.plot(epochs, column("val_loss"), label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_bleu.plot(epochs, column("val_bleu"), color="tab:green")
    if all(row["val_bleu"] is None for row in history):
        ax_bleu.text(0.5, 0.5, "no validation split\n(--val-fraction 0)", ha="center", va="center",
                     transform=ax_bleu.transAxes)
    ax_bleu.set(xlabel="epoch", ylabel="course BLEU-1", title="Validation BLEU-1")
    fig.tight_layout()
    fig.savefig(run / "curves.png", dpi=80)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(len(teacher_forcing)), teacher_forcing)
    ax.set(xlabel="epoch", ylabel="P(feed the true word)", title="Scheduled sampling", ylim=(0, 1.05))
    fig.tight_layout()
    fig.savefig(run / "schedule.png", dpi=80)
    plt.close(fig)

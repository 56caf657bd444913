"""Pairs stored frame features with tokenised captions, and cuts epochs into batches.

Reads the feature store and `{video_id: [caption]}`; writes nothing. All features
of a split are held in memory as one `(N, F, D)` tensor, so a batch is an index
into it and the loader never starves the model. Which captions an epoch uses is a
pure function of `(seed, epoch)`, so a resumed run draws exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .captions import Vocab
from .store import FeatureStore


@dataclass
class CaptionSet:
    """One split: features, and every caption as a padded token row."""

    ids: list[str]
    features: torch.Tensor  # (N, F, D) float32
    tokens: torch.Tensor  # (C, max_len + 2) long: <bos> w1 .. wL <eos> <pad> ..
    video_of: torch.Tensor  # (C,) long: the row of `features` each caption describes
    references: dict[str, list[str]]  # raw captions, for scoring

    def __len__(self) -> int:
        return len(self.ids)


def encode_captions(captions: list[str], vocab: Vocab, max_len: int) -> torch.Tensor:
    """Token rows `(C, max_len + 2)`: <bos>, at most `max_len` words, <eos>, padding."""
    rows = torch.full((len(captions), max_len + 2), vocab.pad_id, dtype=torch.long)
    for i, caption in enumerate(captions):
        words = vocab.encode(caption)[:max_len]
        rows[i, : len(words) + 2] = torch.tensor([vocab.bos_id, *words, vocab.eos_id])
    return rows


def usable_ids(captions: dict[str, list[str]], store: FeatureStore, labels_name: str) -> list[str]:
    """Labelled ids that have features; the others are reported, never silently dropped."""
    stored = set(store.ids())
    missing = sorted(set(captions) - stored)
    if missing:
        warnings.warn(f"{len(missing)} of {len(captions)} videos in {labels_name} have no features in "
                      f"{store.path} (first: {', '.join(missing[:5])}); they are left out. Put their clips "
                      f"in RAW and run `make features` to include them.", stacklevel=2)
    kept = sorted(set(captions) & stored)
    if not kept:
        raise ValueError(f"no video of {labels_name} has features in {store.path}: are LABELS and FEATURES "
                         f"for the same clips? (a label id is the clip's file name, e.g. {next(iter(captions))})")
    return kept


def build_set(ids: list[str], captions: dict[str, list[str]], store: FeatureStore, vocab: Vocab,
              max_len: int) -> CaptionSet:
    features = torch.from_numpy(store.read_many(ids).astype(np.float32, copy=False))  # (N, F, D)
    texts = [c for vid in ids for c in captions[vid]]
    video_of = torch.tensor([i for i, vid in enumerate(ids) for _ in captions[vid]], dtype=torch.long)
    return CaptionSet(ids, features, encode_captions(texts, vocab, max_len), video_of,
                      {vid: captions[vid] for vid in ids})


def split_ids(ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded (train, validation) split of `ids`; validation is empty for fraction 0."""
    n_val = int(round(len(ids) * val_fraction)) if len(ids) > 1 else 0
    if val_fraction > 0:
        n_val = min(max(n_val, 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return sorted(ids[i] for i in order[n_val:]), val


def epoch_captions(data: CaptionSet, per_epoch: str, seed: int, epoch: int) -> np.ndarray:
    """Shuffled caption rows for one epoch: one random caption per video, or all of them."""
    rng = np.random.default_rng([seed, epoch])
    video_of = data.video_of.numpy()
    if per_epoch == "all":
        rows = np.arange(len(video_of))
    elif per_epoch == "one":
        starts = np.searchsorted(video_of, np.arange(len(data)))
        counts = np.bincount(video_of, minlength=len(data))
        rows = starts + (rng.random(len(data)) * counts).astype(np.int64)
    else:
        raise ValueError(f"captions per epoch must be 'one' or 'all', got {per_epoch!r}")
    return rng.permutation(rows)

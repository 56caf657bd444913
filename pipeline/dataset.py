"""Pairs stored frame features with tokenised captions, epoch by epoch, batch by batch.

Reads the feature streams (one store, or several side by side: `streams`) and
`{video_id: [caption]}`; writes nothing. The features of a split are held in memory
as one `(N, F, D)` tensor when they fit the memory budget (on a GPU, in its memory
when half of what is free holds them), so a batch is an index into it; a larger set
is read from the HDF5 stores a batch at a time (after one pass reading it all, so
that a video a store refuses stops the run before training, as it does when the set
is loaded whole). Either way the next batch is gathered in a thread while the model
works on this one. Which captions an epoch uses is a pure function of `(seed, epoch)`,
so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .labels import CaptionError
from .vocab import Vocab
from .streams import FeatureStreams

CHECK_CHUNK = 64  # videos read at a time checking a split left in the store


class StoredFeatures:
    """A split's features left in the stores: `features[rows]` reads those videos `(len(rows), F, D)`."""

    def __init__(self, store: FeatureStreams, ids: list[str]):
        self.store, self.ids = store, ids
        self.shape = (len(ids), store.frames, store.feature_dim)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: torch.Tensor | slice) -> torch.Tensor:
        picked = self.ids[rows] if isinstance(rows, slice) else [self.ids[r] for r in rows.tolist()]
        return torch.from_numpy(self.store.read_many(picked).astype(np.float32, copy=False))

    def check(self) -> None:
        """Read every video once, `CHECK_CHUNK` at a time: one the store refuses (its values not finite, its
        checksum not matching) is named now, before training, not when an epoch reaches it."""
        for start in range(0, len(self.ids), CHECK_CHUNK):
            self.store.read_many(self.ids[start:start + CHECK_CHUNK])


@dataclass
class CaptionSet:
    """One split: features, and every caption as a padded token row."""

    ids: list[str]
    features: torch.Tensor | StoredFeatures  # (N, F, D) float32
    tokens: torch.Tensor  # (C, max_len + 2) long: <bos> w1 .. wL <eos> <pad> ..
    video_of: torch.Tensor  # (C,) long: the row of `features` each caption describes
    references: dict[str, list[str]]  # raw captions, for scoring
    pad_id: int  # the token that fills `tokens` after <eos>

    def __len__(self) -> int:
        return len(self.ids)


def encode_captions(captions: list[str], vocab: Vocab, max_len: int) -> torch.Tensor:
    """Token rows `(C, max_len + 2)`: <bos>, at most `max_len` words, <eos>, padding. Made as one tensor
    from lists (a tensor per caption took twice as long: 1.4 s for MSR-VTT's 140,200 captions)."""
    words = (vocab.encode(caption)[:max_len] for caption in captions)
    rows = [[vocab.bos_id, *w, vocab.eos_id] + [vocab.pad_id] * (max_len - len(w)) for w in words]
    return torch.tensor(rows, dtype=torch.long).reshape(len(captions), max_len + 2)


def usable_ids(captions: dict[str, list[str]], store: FeatureStreams, labels_name: str) -> list[str]:
    """Labelled ids that have features in every stream; the others are reported, never silently dropped."""
    kept = store.usable(captions, labels_name)
    if not kept:
        raise CaptionError(f"no video of {labels_name} has features in {store.name}: are LABELS and FEATURES "
                           f"for the same clips? (a label id is the clip's file name, e.g. {next(iter(captions))})")
    return kept


def available_memory() -> int:
    """Bytes of memory available for new data (MemAvailable on Linux, else half the physical memory)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def features_fit(store: FeatureStreams, n_videos: int, budget_gb: float, processes_per_node: int = 1,
                 device: torch.device = torch.device("cpu")) -> tuple[torch.device | None, str]:
    """Where `n_videos` of the store's features are held: on `device` when it is a GPU with room for them
    (half its free memory), in RAM when they fit `budget_gb` GB (0 = half the available memory, shared by
    the node's processes), else None (read from the store); and a sentence saying which."""
    need = n_videos * store.frames * store.feature_dim * 4  # float32 in memory
    if device.type == "cuda" and budget_gb <= 0 and need <= torch.cuda.mem_get_info(device)[0] / 2:
        return device, f"in GPU memory ({need / 1e9:.2f} GB)"
    budget = budget_gb * 1e9 if budget_gb > 0 else available_memory() / 2 / processes_per_node
    if need <= budget:
        return torch.device("cpu"), f"in memory ({need / 1e9:.2f} GB)"
    return None, (f"read from {store.name} batch by batch (they need {need / 1e9:.1f} GB, the budget is "
                  f"{budget / 1e9:.1f} GB; --feature-memory GB sets it)")


def build_set(ids: list[str], captions: dict[str, list[str]], store: FeatureStreams, vocab: Vocab,
              max_len: int, held_on: torch.device | None = torch.device("cpu")) -> CaptionSet:
    """The split `ids`: features held on `held_on` (None: left in the store), captions as token rows."""
    texts = [c for vid in ids for c in captions[vid]]
    video_of = torch.tensor([i for i, vid in enumerate(ids) for _ in captions[vid]], dtype=torch.long)
    tokens = encode_captions(texts, vocab, max_len)
    if held_on is None:
        features = StoredFeatures(store, ids)
        features.check()
    else:
        features = torch.from_numpy(store.read_many(ids).astype(np.float32, copy=False)).to(held_on)  # (N, F, D)
        tokens, video_of = tokens.to(held_on), video_of.to(held_on)
    return CaptionSet(ids, features, tokens, video_of, {vid: captions[vid] for vid in ids}, vocab.pad_id)


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
    video_of = data.video_of.cpu().numpy()
    if per_epoch == "all":
        rows = np.arange(len(video_of))
    elif per_epoch == "one":
        starts = np.searchsorted(video_of, np.arange(len(data)))
        counts = np.bincount(video_of, minlength=len(data))
        rows = starts + (rng.random(len(data)) * counts).astype(np.int64)
    else:
        raise ValueError(f"captions per epoch must be 'one' or 'all', got {per_epoch!r}")  # TrainConfig checks
    return rng.permutation(rows)


def batches(data: CaptionSet, rows: np.ndarray, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`(tokens (b, T + 2), features (b, F, D))` for caption `rows` in batches of `size`; the next
    batch is gathered (or read from the store) in a thread while the caller uses this one."""
    chunks = [torch.from_numpy(np.asarray(rows[i:i + size])) for i in range(0, len(rows), size)]

    def gather(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return data.tokens[chunk], data.features[data.video_of[chunk]]

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(gather, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            batch = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(gather, chunks[i + 1])
            yield batch

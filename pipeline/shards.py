"""Merges the per-rank shard stores a torchrun extraction writes beside the store into it.

Reads and writes the `.h5` files beside a feature store. Under torchrun each rank
writes the clips it extracts to its own `<stem>.shard<rank>.h5`, so no two
processes ever write one file; rank 0 merges every shard into the store, one video
per write as always, and deletes it. Merging is safe to repeat after a crash (a
video merged twice is written again), so a run first merges whatever shards a run
that died left behind.
"""

from __future__ import annotations

import glob
from pathlib import Path

from .store import FeatureStore


def shard_path(features: str | Path, rank: int) -> Path:
    store = Path(features)
    return store.with_name(f"{store.stem}.shard{rank}{store.suffix}")


def shards_beside(features: str | Path) -> list[Path]:
    """The shard stores of torchrun ranks beside the store `features` (`<stem>.shard<rank>.h5`)."""
    store = Path(features)
    prefix = f"{store.stem}.shard"
    return sorted(p for p in store.parent.glob(glob.escape(prefix) + "*" + store.suffix)
                  if p.name[len(prefix):-len(store.suffix)].isdigit())


def merge_shards(store: FeatureStore) -> int:
    """Move the videos of every shard store beside `store` into it, deleting each shard once it is
    merged; returns how many videos moved."""
    return sum(store.absorb(shard) for shard in shards_beside(store.path))

"""Gives each torchrun rank of an extraction its own shard store, merged into the store by rank 0.

Reads and writes the `.h5` files beside a feature store. Under torchrun each rank
writes the clips it extracts to its own `<stem>.shard<rank>.h5`, so no two
processes ever write one file; rank 0 merges every shard into the store, one video
per write as always, and deletes it. Merging is safe to repeat after a crash (a
video merged twice is written again), so a run first merges whatever shards a run
that died left behind. A plain run (one process) writes the store itself.
"""

from __future__ import annotations

import glob
from pathlib import Path

from . import distributed
from .store import FeatureStore, StoreError, StoreSettings, package_versions


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


def open_stores(features: str, settings: StoreSettings, world: distributed.World
                ) -> tuple[FeatureStore, FeatureStore]:
    """The store `features`, and the one this rank writes (its shard under torchrun). Rank 0 first clears
    what interrupted writes left and merges the shards a run that died left behind."""
    versions = package_versions()
    if world.is_main:
        main_store = FeatureStore.open_or_create(features, settings, versions)
        main_store.discard_incomplete()
        merge_shards(main_store)
    distributed.barrier(world)
    main_store = FeatureStore.open_or_create(features, settings, versions)
    if not world.distributed:
        return main_store, main_store
    return main_store, FeatureStore.open_or_create(shard_path(features, world.rank), settings, versions)


def merge_ranks(store: FeatureStore, stale: list[str], world: distributed.World) -> None:
    """Rank 0, at the end: every rank's shard into the store, and the `stale` entries out of it."""
    unseen = [r for r in range(world.size) if world.distributed and not shard_path(store.path, r).is_file()]
    if unseen:
        raise StoreError(f"the shards of ranks {unseen} are not visible here: under torchrun on several "
                         f"machines FEATURES must be on a filesystem they all share")
    merge_shards(store)
    for video_id in stale:
        store.remove(video_id)

"""Feature streams: one or more stores of the same clips read as one, each frame's features side by side.

Reads the stores FEATURES names (`make features` made each, e.g. `clip_vitb32_80.h5` and
`r2plus1d_18_80.h5`); writes nothing. A video's features are its `(F, D_1)`, `(F, D_2)`, ...
arrays concatenated along the feature axis into `(F, D_1 + D_2 + ...)`, in the order the
stores are named: the model sees one feature vector per sampled frame. The stores must sample
the same number of frames; a video is used only where every store holds it, sampled at the same
decoded frames (a store extracted from another version of its clip is not): the others are left
out with a warning naming the store that lacks them, as a video without features is with one
store. One store is the common case, and reads exactly as that store does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .store import FeatureStore, StoreError, StoreSettings


class FeatureStreams:
    """The stores of `paths`, in that order: their ids, settings, and videos' features concatenated."""

    def __init__(self, paths: str | Path | Sequence[str | Path]):
        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        if not paths:
            raise ConfigError("FEATURES names no feature store: give one store, or several of the same clips")
        twice = sorted({str(p) for p in paths if paths.count(p) > 1})
        if twice:
            raise ConfigError(f"FEATURES names {', '.join(twice)} more than once: name each store once")
        self.stores = [FeatureStore(path) for path in paths]
        frames = {store.settings.frames for store in self.stores}
        if len(frames) > 1:
            raise StoreError(f"the feature streams sample different numbers of frames ("
                             f"{', '.join(f'{s.path}: {s.settings.frames}' for s in self.stores)}): a frame's "
                             f"features are read side by side, so extract every stream with the same FRAMES")

    @property
    def name(self) -> str:
        """The stores' paths, for messages: `a.h5`, or `a.h5 + b.h5`."""
        return " + ".join(str(store.path) for store in self.stores)

    @property
    def settings(self) -> list[StoreSettings]:
        """Each store's settings, in order: what a checkpoint records and is checked against."""
        return [store.settings for store in self.stores]

    @property
    def frames(self) -> int:
        return self.stores[0].settings.frames

    @property
    def feature_dim(self) -> int:
        """The concatenated feature dimension, the model's input."""
        return sum(store.feature_dim for store in self.stores)

    def describe(self) -> str:
        """The backbones and their dimensions: `vgg16`, or `clip_vitb32 (512) + r2plus1d_18 (512)`."""
        if len(self.stores) == 1:
            return self.stores[0].settings.backbone
        return " + ".join(f"{s.backbone} ({s.feature_dim})" for s in self.settings)

    def ids(self) -> list[str]:
        """Every video all the streams hold, at the same frames; the others are left out with a warning."""
        return self.usable(None, "the stores")

    def usable(self, wanted: Iterable[str] | None, what: str) -> list[str]:
        """The ids of `wanted` (all the stores hold, when None) that every store holds, sampled at the same
        frames, sorted; each store lacking some, and any video sampled differently, is warned about, naming
        `what` the ids come from."""
        held = [set(store.ids()) for store in self.stores]
        wanted = set(wanted) if wanted is not None else set().union(*held)
        for store, ids in zip(self.stores, held):
            missing = sorted(wanted - ids)
            if missing:
                _leave_out(f"{len(missing)} of {len(wanted)} videos in {what} have no features in {store.path} "
                           f"(first: {', '.join(missing[:5])}); they are left out. Put their clips in RAW and run "
                           f"`make features` with FEATURES={store.path} to include them.")
        kept = wanted.intersection(*held)
        unaligned = self._unaligned(kept)
        if unaligned:
            _leave_out(f"{len(unaligned)} of the videos of {what} were sampled at other frames in "
                       f"{self.stores[0].path} than in another stream (first: {', '.join(unaligned[:5])}): a store "
                       f"was extracted from another version of their clips; they are left out. Touch those clips "
                       f"in RAW and run `make features` for every stream to include them.")
        return sorted(kept - set(unaligned))

    def _unaligned(self, ids: set[str]) -> list[str]:
        """The videos of `ids` whose recorded sampled frames differ between the stores (none with one store)."""
        if len(self.stores) == 1:
            return []
        first, *others = (store.sampled() for store in self.stores)
        return sorted(vid for vid in ids if any(not _same(first[vid], other[vid]) for other in others))

    def read_many(self, video_ids: list[str]) -> np.ndarray:
        """Features of `video_ids` as one `(N, F, D_1 + D_2 + ...)` array, the streams side by side."""
        if len(self.stores) == 1:
            return self.stores[0].read_many(video_ids)
        return np.concatenate([store.read_many(video_ids) for store in self.stores], axis=-1)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two videos' recorded sampled frames agree (a store written without them agrees with any)."""
    return a is None or b is None or np.array_equal(a, b)


def _leave_out(message: str) -> None:
    warnings.warn(message, stacklevel=3)

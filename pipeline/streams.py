"""Feature streams: one or more stores of the same clips read as one, each frame's features side by side.

Reads the stores FEATURES names (`make features` made each, e.g. `clip_vitb32_80.h5` and
`r2plus1d_18_80.h5`); writes nothing. A video's features are its `(F, D_1)`, `(F, D_2)`, ...
arrays concatenated along the feature axis into `(F, D_1 + D_2 + ...)`, in the order the
stores are named: the model sees one feature vector per sampled frame. The stores must sample
the same number of frames; a video is used only where every store holds it, made from a file of
the same size and sampled at the same decoded frames (a store extracted from another version of
its clip is not): the others are left out with a warning naming the store that lacks or differs,
as a video without features is with one store. One store is the common case, and reads exactly as that store does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .backbones import weights_option
from .errors import ConfigError, PipelineWarning
from .store import FeatureStore, StoreError, StoreSettings

ALIGNED = ("source_size", "indices")  # recorded per video: the same in every stream, or the video is left out


class FeatureStreams:
    """The stores of `paths`, in that order: their ids, settings, and videos' features concatenated."""

    def __init__(self, paths: str | Path | Sequence[str | Path]):
        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        if not paths:
            raise ConfigError("FEATURES names no feature store: give one store, or several of the same clips")
        real = [path.resolve() for path in paths]  # the same file by two paths, or through a link, is one store
        twice = sorted({str(p) for p, r in zip(paths, real) if real.count(r) > 1})
        if twice:
            raise ConfigError(f"FEATURES names one store more than once ({', '.join(twice)}): name each store once")
        self.stores = [FeatureStore(path) for path in paths]
        alike = [(a, b) for i, a in enumerate(self.stores) for b in self.stores[i + 1:] if a.settings == b.settings]
        if alike:
            a, b = alike[0]
            raise ConfigError(f"{a.path} and {b.path} hold features made alike ({a.settings.backbone}, the same "
                              f"weights and FRAMES): streams are different networks' features of the same clips, "
                              f"so the model would read the same features twice. To add clips to a store, extract "
                              f"them into it (`make features FEATURES={a.path}`)")
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
        """Every video all the streams hold, at the same frames; the others are left out with a warning. None
        at all is an error: there is nothing to caption."""
        ids = self.usable(None, "the stores")
        if not ids:
            raise StoreError(f"no video is in every store of {self.name}: extract the same clips into each "
                             f"(`make features` with each store's BACKBONE and FEATURES)" if len(self.stores) > 1
                             else f"{self.name} holds no video yet: run `make features` first")
        return ids

    def usable(self, wanted: Iterable[str] | None, what: str) -> list[str]:
        """The ids of `wanted` (all the stores hold, when None) that every store holds, made from the same clip
        and sampled at the same frames, sorted; each store lacking some, and any video whose stores differ so,
        is warned about, naming `what` the ids come from."""
        held = [set(store.ids()) for store in self.stores]
        wanted = set(wanted) if wanted is not None else set().union(*held)
        for store, ids in zip(self.stores, held):
            missing = sorted(wanted - ids)
            if missing:
                _leave_out(f"{len(missing)} of {len(wanted)} videos in {what} have no features in {store.path} "
                           f"(first: {', '.join(missing[:5])}); they are left out. Put their clips in RAW and run "
                           f"`{extract_command(store)}` to include them.")
        kept = wanted.intersection(*held)
        for other, unaligned in self._unaligned(kept).items():
            _leave_out(f"{len(unaligned)} of the videos of {what} were made from another clip file, or sampled at "
                       f"other frames, in {other.path} than in {self.stores[0].path} (first: "
                       f"{', '.join(unaligned[:5])}): one store was extracted from another version of their clips; "
                       f"they are left out. Touch those clips in RAW and run `make features` for every stream to "
                       f"include them.")
            kept -= set(unaligned)
        return sorted(kept)

    def _unaligned(self, ids: set[str]) -> dict[FeatureStore, list[str]]:
        """Per store after the first, the videos of `ids` whose recorded source file size or sampled frames
        differ from the first store's (nothing with one store)."""
        if len(self.stores) == 1:
            return {}
        first, *others = ([store.recorded(name) for name in ALIGNED] for store in self.stores)
        unaligned = {store: sorted(vid for vid in ids if not all(_same(a[vid], b[vid]) for a, b in zip(first, other)))
                     for store, other in zip(self.stores[1:], others)}
        return {store: vids for store, vids in unaligned.items() if vids}

    def read_many(self, video_ids: list[str]) -> np.ndarray:
        """Features of `video_ids` as one `(N, F, D_1 + D_2 + ...)` array, the streams side by side; each
        store's features are read into their columns (no second copy of the whole set; one store's straight
        into the array's rows)."""
        dtype = np.result_type(*(s.dtype for s in self.settings))
        features = np.empty((len(video_ids), self.frames, self.feature_dim), dtype)  # (N, F, D_1 + D_2 + ...)
        start = 0
        for store in self.stores:
            store.read_many(video_ids, into=features[..., start:start + store.feature_dim])
            start += store.feature_dim
        return features


def extract_command(store: FeatureStore) -> str:
    """The `make features` that extends `store` as it was made: its network, frames and weights (its precision
    it keeps by itself)."""
    settings, option = store.settings, weights_option(store.settings.weights)
    weights = f"path/to/{option}" if settings.weights.startswith("file:") else option
    return (f"make features BACKBONE={settings.backbone} FRAMES={settings.frames} WEIGHTS={weights} "
            f"FEATURES={store.path}")


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether a video's recorded attribute agrees in two stores (a store written without it agrees with any)."""
    return a is None or b is None or np.array_equal(a, b)


def _leave_out(message: str) -> None:
    warnings.warn(message, PipelineWarning, stacklevel=3)

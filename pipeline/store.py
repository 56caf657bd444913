"""The HDF5 feature store: one file per (backbone, frames, weights) setting.

Reads and writes one `.h5` file. Each video's features are the dataset
`features/<video_id>` of shape `(F, D)`, readable with plain h5py; the file's
attributes record how it was made (`StoreSettings` plus package versions), and
each dataset's attributes record the video's source (size, mtime, decoded frame
count, fps, sampled indices, decoder).

Writes open, append and close the file for every video, so between two videos the
file on disk is complete and closed: a run killed at any moment loses at most the
video it was writing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from .errors import PipelineError

FORMAT = "s2vt-features"
FORMAT_VERSION = 1
SOURCE_KEYS = ("source_size", "source_mtime_ns", "n_frames", "fps", "indices", "decoder")


class StoreError(PipelineError):
    """A feature store that cannot be used; the message names the file."""


@dataclass(frozen=True)
class StoreSettings:
    """What makes two feature arrays comparable; a store holds one setting only."""

    backbone: str
    layer: str
    feature_dim: int
    weights: str  # identity of the weights ("torchvision:...", "file:...:sha256=...", "random(seed=0)")
    preprocessing: str  # JSON of the Preprocess parameters
    frames: int
    dtype: str  # "float32" or "float16"
    precision: str = "fp32"  # the backbone's arithmetic: fp32, bf16 or fp16 (stores made before it were fp32)

    def differences(self, other: "StoreSettings", only: tuple[str, ...] | None = None) -> list[str]:
        """One line per differing field (of `only`, when given): this value, then the other's."""
        names = only or tuple(f.name for f in fields(self))
        return [f"{name}: {getattr(self, name)!r} here, {getattr(other, name)!r} there"
                for name in names if getattr(self, name) != getattr(other, name)]


def _read_settings(f: h5py.File, path: Path) -> StoreSettings:
    if f.attrs.get("format") != FORMAT:
        raise StoreError(f"{path} is not a feature store of this project (no '{FORMAT}' format attribute)")
    try:
        values = {fl.name: f.attrs[fl.name] for fl in fields(StoreSettings) if fl.name in f.attrs or
                  fl.default is MISSING}
    except KeyError as exc:
        raise StoreError(f"{path}: store attribute {exc} is missing") from None
    values["feature_dim"], values["frames"] = int(values["feature_dim"]), int(values["frames"])
    return StoreSettings(**{k: (v if isinstance(v, int) else str(v)) for k, v in values.items()})


def _open(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise StoreError(f"{path} cannot be opened as HDF5 ({exc}); move it away or pass another "
                         f"FEATURES path") from None


class FeatureStore:
    """One feature file: list ids, read one or many, append, validate."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such feature store (run `make features` first)")
        with _open(self.path, "r") as f:
            self.settings = _read_settings(f, self.path)
            self.info = dict(f.attrs)

    @classmethod
    def open_or_create(cls, path: str | Path, settings: StoreSettings, versions: dict) -> "FeatureStore":
        """Open `path` for appending with `settings`, creating it if missing.

        A file made with other settings is refused: features of two settings never mix.
        """
        path = Path(path)
        if path.exists():
            store = cls(path)
            diff = store.settings.differences(settings)
            if diff:
                raise StoreError(f"{path} was made with other settings ({'; '.join(diff)}, 'here' being the "
                                 f"store and 'there' what was asked for); pass another "
                                 f"FEATURES path for this setting, or delete the file to rebuild it")
            return store
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".creating")
        with h5py.File(partial, "w") as f:
            f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(settings),
                            "versions": json.dumps(versions, sort_keys=True),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            f.create_group("features")
        partial.replace(path)
        return cls(path)

    @property
    def feature_dim(self) -> int:
        return self.settings.feature_dim

    def ids(self) -> list[str]:
        with _open(self.path, "r") as f:
            return sorted(f["features"].keys())

    def sources(self) -> dict[str, dict]:
        """Per video id, the source attributes recorded with its features."""
        with _open(self.path, "r") as f:
            return {vid: {k: ds.attrs[k] for k in SOURCE_KEYS if k in ds.attrs}
                    for vid, ds in f["features"].items()}

    def read(self, video_id: str) -> np.ndarray:
        return self.read_many([video_id])[0]

    def read_many(self, video_ids: list[str]) -> np.ndarray:
        """Features of `video_ids` as one `(N, F, D)` array, in that order."""
        with _open(self.path, "r") as f:
            group = f["features"]
            missing = [v for v in video_ids if v not in group]
            if missing:
                raise KeyError(f"{self.path} has no features for {len(missing)} ids, e.g. {missing[:3]}")
            return np.stack([group[v][()] for v in video_ids]) if video_ids else np.zeros(
                (0, self.settings.frames, self.settings.feature_dim), np.float32)

    def write(self, video_id: str, features: np.ndarray, source: dict) -> None:
        """Add (or replace) one video's `(F, D)` features with its source attributes."""
        expected = (self.settings.frames, self.settings.feature_dim)
        if features.shape != expected:
            raise ValueError(f"features for {video_id} have shape {features.shape}, store wants {expected}")
        with _open(self.path, "a") as f:
            group = f["features"]
            if video_id in group:
                del group[video_id]
            ds = group.create_dataset(video_id, data=features.astype(self.settings.dtype))
            ds.attrs.update(source)

    def absorb(self, shard: Path) -> int:
        """Move every video of the store `shard` (made with the same settings) into this one, one
        video per write as always, then delete `shard`; returns how many videos moved."""
        other = FeatureStore(shard)
        diff = self.settings.differences(other.settings)
        if diff:
            raise StoreError(f"shard {shard} was made with other settings than {self.path} ({'; '.join(diff)}); "
                             f"delete the shard, its clips will be extracted again")
        ids = other.ids()
        for video_id in ids:
            with _open(shard, "r") as f:
                ds = f["features"][video_id]
                features, source = ds[()], dict(ds.attrs)
            self.write(video_id, features, source)
        shard.unlink()
        return len(ids)

    def remove(self, video_id: str) -> None:
        with _open(self.path, "a") as f:
            if video_id in f["features"]:
                del f["features"][video_id]

    def validate(self) -> list[str]:
        """Every problem found in the file, as sentences; an empty list means valid."""
        problems = []
        expected = (self.settings.frames, self.settings.feature_dim)
        with _open(self.path, "r") as f:
            for vid, ds in f["features"].items():
                if ds.shape != expected:
                    problems.append(f"{vid}: shape {ds.shape}, expected {expected}")
                elif ds.dtype != np.dtype(self.settings.dtype):
                    problems.append(f"{vid}: dtype {ds.dtype}, expected {self.settings.dtype}")
                elif not np.isfinite(ds[()]).all():
                    problems.append(f"{vid}: non-finite values")
                missing = [k for k in SOURCE_KEYS if k not in ds.attrs]
                if missing:
                    problems.append(f"{vid}: source attributes missing: {', '.join(missing)}")
        return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.store FILE`: print how a store was made, and validate it."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("path", help="feature store (.h5)")
    args = parser.parse_args(argv)
    try:
        store = FeatureStore(args.path)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, value in sorted(store.info.items()):
        print(f"{key:>14}: {value}")
    print(f"{'videos':>14}: {len(store.ids())}")
    problems = store.validate()
    for problem in problems:
        print(f"problem: {problem}")
    print("valid" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

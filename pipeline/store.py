"""The HDF5 feature store: one file of per-video features for one (backbone, frames, weights) setting.

Reads and writes one `.h5` file. Each video's features are the dataset
`features/<video_id>` of shape `(F, D)`, readable with plain h5py; the file's
attributes record how it was made (`StoreSettings` plus package versions), and
each dataset's attributes record the video's source (size, mtime, decoded and
claimed frame counts, fps, sampled indices, decoder). Each dataset is one chunk
with HDF5's Fletcher-32 checksum filter.

What it guarantees, and how:
- Between two videos the file on disk is complete and closed: every write opens,
  appends and closes it, so a run killed at any moment loses at most the video it
  was writing.
- A video's entry is written all or nothing: its array and attributes are written
  under `incomplete/<video_id>` and only then moved to `features/<video_id>`; an
  interrupted or failed write leaves nothing under `features/`.
- One extraction run writes to a store at a time (`writer_lock`, a hidden lock
  file beside it, `.<name>.lock`, holding the writer's process id); another is
  refused at its start.
- Readers and the writer wait for each other's brief opens (HDF5's file lock)
  instead of failing; a file that cannot be read because it is damaged, not ours,
  a folder or not writable is a `StoreError` naming it and what to do.
- Values are finite and undamaged, or refused naming the video: `write` refuses NaN
  and infinite features, `read_many` refuses a video whose values are not finite
  (a store written by other means) or whose checksum does not match (bytes rotted
  inside its data). A video written before stores had checksums is read as ever:
  damage to its values cannot be detected, and the validator says so.
- `python -m pipeline.store FILE` validates a store entry by entry; one damaged
  where its header or settings lie is refused, listing the videos whose features
  can still be read, or saying that none can.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import MISSING, asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import h5py
import numpy as np

from . import files
from .config import InspectConfig, parse_config
from .errors import PipelineError, run_command
from .ids import decomposed_id, normal_id

FORMAT = "s2vt-features"
FORMAT_VERSION = 1
SOURCE_KEYS = ("source_size", "source_mtime_ns", "n_frames", "fps", "indices", "decoder")
INCOMPLETE = "incomplete"  # the group a video's entry is written in before it is moved to `features`
LOCK_WAIT = 600.0  # seconds to wait for another process's open of the file before giving up
LOCK_NOTE = 5.0  # seconds after which the wait is announced
T = TypeVar("T")
# What h5py raises reading a file whose bytes were damaged (bad signatures, headers, heaps).
DAMAGE = (OSError, KeyError, RuntimeError, ValueError, AttributeError, TypeError)


class StoreError(PipelineError):
    """A feature store that cannot be used; the message names the file."""


NON_FINITE = "non-finite values (NaN or infinite), which cannot be trained on or captioned"
AGAIN = "extract it again: touch its clip in RAW and run `make features`"  # a new size or mtime makes it redone


def _unreadable(dataset: h5py.Dataset, exc: Exception) -> str:
    """Why the values of `dataset` could not be read: HDF5 reports a Fletcher-32 checksum that does not match as
    its filter failing (or, in some versions, names the checksum)."""
    if dataset.fletcher32 and any(word in str(exc).lower() for word in ("filter", "fletcher", "checksum")):
        return "damaged: its checksum does not match"
    return f"cannot be read ({type(exc).__name__}: {exc}): damaged"


def _refusal(path: Path, problems: list[str]) -> str:
    """The error refusing the videos `problems` describe (`"<id>: <why>"`), saying how to extract them again."""
    if len(problems) == 1:
        return f"{path}: video {problems[0]}; {AGAIN}"
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return (f"{path}: {len(problems)} videos cannot be used ({shown}); extract them again: touch their clips in "
            f"RAW and run `make features` (`python -m pipeline.store {path}` lists every such video)")


class DamagedStoreError(StoreError):
    """A store whose bytes are damaged where what every read needs lies (its header, its settings): `damage`
    names the file and what HDF5 found, the rest of the message what to do."""

    def __init__(self, damage: str, advice: str):
        super().__init__(f"{damage}; {advice}")
        self.damage = damage


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
    window: int = 1  # consecutive frames each feature describes (a video network's clip; stores before it: 1)

    def differences(self, other: "StoreSettings", only: tuple[str, ...] | None = None,
                    sides: tuple[str, str] = ("here", "there")) -> list[str]:
        """One line per differing field (of `only`, when given): this value, then the other's, each followed by
        its side's name."""
        names = only or tuple(f.name for f in fields(self))
        return [f"{name}: {getattr(self, name)!r} {sides[0]}, {getattr(other, name)!r} {sides[1]}"
                for name in names if getattr(self, name) != getattr(other, name)]


def package_versions() -> dict[str, str]:
    """The versions of Python and of the packages that shape the features, recorded in a store made here."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "h5py", "numpy", "opencv-python-headless", "decord",
                 "efficientnet-lite-pytorch", "open-clip-torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _entries(group: h5py.Group) -> dict[str, str]:
    """Per video id (NFC), the name of its entry: a store made before ids were compared composed may name an
    entry decomposed (NFD, as macOS names files)."""
    return {normal_id(key): key for key in group}


def _entry_of(group: h5py.Group, video_id: str) -> str | None:
    """The name of `video_id`'s entry: the id composed, or an older store's decomposed spelling; None if neither."""
    return next((key for key in (normal_id(video_id), decomposed_id(video_id)) if key in group), None)


def _delete_entry(group: h5py.Group, video_id: str) -> None:
    """Delete the entry of `video_id` (NFC), and its decomposed twin an older store may hold."""
    for key in {video_id, decomposed_id(video_id)}:
        if key in group:
            del group[key]


def _read_settings(f: h5py.File, path: Path) -> StoreSettings:
    made_as = f.attrs["format"] if "format" in f.attrs else None  # `attrs.get` takes a damaged one for none
    if made_as != FORMAT:
        raise StoreError(f"{path} is not a feature store of this project (no '{FORMAT}' format attribute)")
    try:
        values = {fl.name: f.attrs[fl.name] for fl in fields(StoreSettings) if fl.name in f.attrs or
                  fl.default is MISSING}
    except KeyError as exc:
        raise StoreError(f"{path}: store attribute {exc} is missing") from None
    for name in ("feature_dim", "frames", "window"):
        if name in values:
            values[name] = int(values[name])
    return StoreSettings(**{k: (v if isinstance(v, int) else str(v)) for k, v in values.items()})


def _open(path: Path, mode: str) -> h5py.File:
    """`h5py.File(path, mode)`, waiting while another process has it open for writing (or, to write,
    for reading); every other failure is a `StoreError` saying what is wrong with the file."""
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a feature store: give the path of the .h5 file")
    waited = 0.0
    while True:
        try:
            return h5py.File(path, mode)
        except BlockingIOError:  # HDF5's lock: another process is inside the file right now
            if waited >= LOCK_WAIT:
                raise StoreError(f"{path} stayed locked by another process for {LOCK_WAIT:.0f} s; try again "
                                 f"when it is done") from None
            if waited < LOCK_NOTE <= waited + 0.05:
                print(f"waiting for another process to close {path} ...", file=sys.stderr, flush=True)
            time.sleep(0.05)
            waited += 0.05
        except PermissionError as exc:
            raise StoreError(f"{path} cannot be {'read' if mode == 'r' else 'written'} ({exc.strerror}): "
                             f"change its permissions or pass another FEATURES path") from None
        except OSError as exc:
            if mode != "r" and not os.access(path, os.W_OK):
                raise StoreError(f"{path} cannot be written (read-only): make it writable or pass another "
                                 f"FEATURES path") from None
            raise DamagedStoreError(f"{path} cannot be opened as HDF5 ({exc}): it is damaged or not a feature "
                                    f"store", "move it away or pass another FEATURES path") from None


@contextlib.contextmanager
def _inside(path: Path, mode: str) -> Iterator[h5py.File]:
    """The open file; what h5py raises on damaged bytes inside it becomes a `StoreError` naming it."""
    with _open(path, mode) as f:
        try:
            yield f
        except StoreError:
            raise
        except DAMAGE as exc:
            raise DamagedStoreError(f"{path} is damaged inside ({type(exc).__name__}: {exc})", f"`python -m "
                                    f"pipeline.store {path}` lists what can still be read; move it away to extract "
                                    f"again") from None


def writer_lock(path: str | Path) -> contextlib.AbstractContextManager[None]:
    """Hold the right to write `path` for one run: a lock file beside it (`.<name>.lock`) with this
    process's id; a store another run is writing is refused with that run's process id."""
    path = Path(path)
    return files.writer_lock(path.with_name(f".{path.name}.lock"), str(path), "another feature extraction",
                             "FEATURES path", StoreError)


class FeatureStore:
    """One feature file: list ids, read one or many, append, validate."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such feature store (run `make features` first)")
        with _inside(self.path, "r") as f:
            self.settings = _read_settings(f, self.path)
            self.info = dict(f.attrs)

    @classmethod
    def open_or_create(cls, path: str | Path, settings: StoreSettings, versions: dict) -> "FeatureStore":
        """Open `path` for appending with `settings`, creating it if missing (safely when several processes
        try at once: one file wins, the others open it).

        A file made with other settings is refused: features of two settings never mix.
        """
        path = Path(path)
        if not path.exists():
            cls._create(path, settings, versions)
        store = cls(path)
        diff = store.settings.differences(settings)
        if diff:
            raise StoreError(f"{path} was made with other settings ({'; '.join(diff)}, 'here' being the "
                             f"store and 'there' what was asked for); pass another "
                             f"FEATURES path for this setting, or delete the file to rebuild it")
        return store

    @staticmethod
    def _create(path: Path, settings: StoreSettings, versions: dict) -> None:
        partial = path.with_name(f".{path.name}.creating{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(partial, "w") as f:
                f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(settings),
                                "versions": json.dumps(versions, sort_keys=True),
                                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                f.create_group("features")
            os.link(partial, path)  # fails if another process created it meanwhile: theirs stands
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create the feature store {path} ({exc.strerror or exc}): pass a FEATURES "
                             f"path in a folder you can write") from None
        finally:
            partial.unlink(missing_ok=True)

    @property
    def feature_dim(self) -> int:
        return self.settings.feature_dim

    def ids(self) -> list[str]:
        """The video ids, composed (NFC) as every id is compared, whatever form an older store named them in."""
        with _inside(self.path, "r") as f:
            return sorted(_entries(f["features"]))

    def sources(self) -> dict[str, dict]:
        """Per video id, the source attributes recorded with its features."""
        with _inside(self.path, "r") as f:
            group = f["features"]
            return {vid: dict(group[key].attrs) for vid, key in _entries(group).items()}

    def stamps(self) -> dict[str, tuple[int, int] | None]:
        """Per video id, the size and mtime (ns) of the file its features were made from, or None when its
        source attributes are not all there: what deciding to skip a clip needs.

        Reads those two attributes alone, through h5py's low-level API: reading every attribute of 10,000
        entries the high-level way took 3 s, this 0.5 s."""
        def stamp(entry: h5py.h5o.ObjectID) -> tuple[int, int] | None:
            if not all(h5py.h5a.exists(entry, key.encode()) for key in SOURCE_KEYS):
                return None
            return int(_attribute(entry, "source_size")), int(_attribute(entry, "source_mtime_ns"))
        return self._read_entries(stamp)

    def recorded(self, name: str) -> dict[str, np.ndarray | None]:
        """Per video id, its source attribute `name` (e.g. `indices`, the sampled frames `(F,)`), or None where
        it was not recorded; read as `stamps` reads."""
        return self._read_entries(lambda entry: _attribute(entry, name) if h5py.h5a.exists(entry, name.encode())
                                  else None)

    def _read_entries(self, read: Callable[[h5py.h5o.ObjectID], T]) -> dict[str, T]:
        """Per video id, `read` of its entry opened through h5py's low-level API, for reading a few attributes
        fast; inside the open file, so what damaged bytes raise is a `StoreError` naming the store."""
        with _inside(self.path, "r") as f:
            group = f["features"]
            return {vid: read(h5py.h5o.open(group.id, key.encode())) for vid, key in _entries(group).items()}

    def read(self, video_id: str) -> np.ndarray:
        return self.read_many([video_id])[0]

    def read_many(self, video_ids: list[str], into: np.ndarray | None = None) -> np.ndarray:
        """Features of `video_ids` as one `(N, F, D)` array of the store's dtype, in that order; or written into
        `into`, an `(N, F, D)` view (another stream's columns beside them, another dtype), and returned.

        Each video is read straight into its row through h5py's low-level API: no array per video to stack
        (which doubled the memory a split loaded whole takes), and a third of the time a batch read from the
        store took; a row of `into` that is not one contiguous block of the store's dtype is read through a
        one-row buffer. A video whose checksum does not match or whose values are not finite is a
        `StoreError` naming it (every such one of `video_ids`)."""
        shape = (len(video_ids), self.settings.frames, self.settings.feature_dim)
        features = np.empty(shape, self.settings.dtype) if into is None else into
        if features.shape != shape:
            raise ValueError(f"reading {self.path} into an array of shape {features.shape}, not {shape}")
        buffer = np.empty(shape[1:], self.settings.dtype)  # (F, D)
        problems = []
        with _inside(self.path, "r") as f:
            group = f["features"]
            keys = [_entry_of(group, vid) for vid in video_ids]  # looked up, not listed: a batch of 64 from
            missing = [v for v, key in zip(video_ids, keys) if key is None]  # 10,000 entries stays milliseconds
            if missing:
                raise StoreError(f"{self.path} has no features for {len(missing)} ids, e.g. {missing[:3]}")
            for row, vid, key in zip(features, video_ids, keys):  # row: (F, D)
                dataset = h5py.h5d.open(group.id, key.encode())
                if dataset.shape != row.shape:  # a store written by other means: the read would not fit the row
                    problems.append(f"{vid}: features of shape {dataset.shape}, not the store's {row.shape}")
                    continue
                direct = row.flags.c_contiguous and row.dtype == buffer.dtype
                try:
                    dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, row if direct else buffer)
                except OSError as exc:  # its values are damaged (a damaged header fails the open: `_inside`)
                    problems.append(f"{vid}: {_unreadable(group[key], exc)}")
                    continue
                if not direct:
                    row[...] = buffer
                if not np.isfinite(row).all():  # 0.16 ms for an (80, 4096) row
                    problems.append(f"{vid}: {NON_FINITE}")
        if problems:
            raise StoreError(_refusal(self.path, problems))
        return features

    def write(self, video_id: str, features: np.ndarray, source: dict) -> None:
        """Add (or replace) one video's `(F, D)` features with its source attributes, all or nothing; as one
        chunk with its Fletcher-32 checksum (4 bytes, and about 2.6 KB of HDF5's chunk index per video)."""
        expected = (self.settings.frames, self.settings.feature_dim)
        if features.shape != expected:
            raise ValueError(f"features for {video_id} have shape {features.shape}, store wants {expected}")
        values = features.astype(self.settings.dtype)
        if not np.isfinite(values).all():
            raise ValueError(f"features for {video_id} hold NaN or infinite values as {values.dtype}")
        with _inside(self.path, "a") as f:
            partial = f.require_group(INCOMPLETE)
            if video_id in partial:
                del partial[video_id]
            try:
                ds = partial.create_dataset(video_id, data=values, chunks=expected, fletcher32=True)
                ds.attrs.update(source)
            except Exception as exc:
                if video_id in partial:
                    del partial[video_id]
                raise StoreError(f"{self.path}: the features of {video_id} could not be written ({exc}); the "
                                 f"store holds everything written before it") from None
            done = f["features"]
            _delete_entry(done, video_id)
            f.move(f"{INCOMPLETE}/{video_id}", f"features/{video_id}")

    def discard_incomplete(self) -> None:
        """Drop what interrupted writes left under `incomplete/` (those videos are extracted again)."""
        with _inside(self.path, "a") as f:
            if INCOMPLETE in f:
                del f[INCOMPLETE]

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
            with _inside(shard, "r") as f:
                ds = f["features"][video_id]
                features, source = ds[()], dict(ds.attrs)
            self.write(video_id, features, source)
        shard.unlink()
        return len(ids)

    def without_checksums(self) -> list[str]:
        """The videos written before stores had checksums: damage to their values cannot be detected."""
        with _inside(self.path, "r") as f:
            return sorted(vid for vid, ds in f["features"].items() if not ds.fletcher32)

    def remove(self, video_id: str) -> None:
        with _inside(self.path, "a") as f:
            _delete_entry(f["features"], video_id)

    def validate(self) -> list[str]:
        """Every problem found in the file, as sentences; an empty list means valid. Damage is reported
        per entry as far as the file can be read, never raised."""
        problems = []
        expected = (self.settings.frames, self.settings.feature_dim)
        try:
            with _open(self.path, "r") as f:
                try:
                    names = list(f["features"].keys())
                    leftovers = list(f[INCOMPLETE].keys()) if INCOMPLETE in f else []
                except DAMAGE as exc:
                    return [f"{self.path}: the list of videos cannot be read ({type(exc).__name__}: {exc}): the "
                            f"file is damaged; move it away to extract again"]
                problems += [f"{vid}: an interrupted write left it incomplete; it is not in the store, and the "
                             f"next `make features` extracts it again" for vid in leftovers]
                for vid in names:
                    problems += _entry_problems(f, vid, expected, np.dtype(self.settings.dtype))
        except StoreError as exc:
            problems.append(str(exc))
        return problems


def _attribute(entry: h5py.h5o.ObjectID, name: str) -> np.ndarray:
    """The attribute `name` of an entry opened with h5py's low-level API, as an array of its shape."""
    attribute = h5py.h5a.open(entry, name.encode())
    value = np.empty(attribute.shape, attribute.dtype)
    attribute.read(value)
    return value


def _entry_problems(f: h5py.File, vid: str, expected: tuple[int, int], dtype: np.dtype) -> list[str]:
    try:
        ds = f["features"][vid]
        if ds.shape != expected:
            return [f"{vid}: shape {ds.shape}, expected {expected}"]
        if ds.dtype != dtype:
            return [f"{vid}: dtype {ds.dtype}, expected {dtype}"]
        try:
            values = ds[()]
        except OSError as exc:
            return [f"{vid}: {_unreadable(ds, exc)}; {AGAIN}"]
        problems = [] if np.isfinite(values).all() else [f"{vid}: {NON_FINITE}; {AGAIN}"]
        missing = [k for k in SOURCE_KEYS if k not in ds.attrs]
        if missing:
            problems.append(f"{vid}: source attributes missing: {', '.join(missing)}")
        return problems
    except DAMAGE as exc:
        return [f"{vid}: cannot be read ({type(exc).__name__}: {exc}): damaged"]


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.store FILE`: print how a store was made, and validate it."""
    cfg = parse_config(InspectConfig, main.__doc__, argv)
    return run_command(lambda: _inspect(cfg.path))


def _inspect(path: str) -> int:
    """Print how the store at `path` was made and every problem in it; 1 if there are any. A store whose
    settings cannot be read is refused, after listing the videos whose features still can be."""
    try:
        store = FeatureStore(path)
    except DamagedStoreError as exc:
        raise DamagedStoreError(exc.damage, _what_is_left(Path(path))) from None
    for key, value in sorted(store.info.items()):
        print(f"{key:>14}: {value}")
    problems = store.validate()
    try:
        print(f"{'videos':>14}: {len(store.ids())}")
    except StoreError:
        pass  # the list itself is damaged: validate says so
    for problem in problems:
        print(f"problem: {problem}")
    _note_checksums(store)
    print("valid" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


def _note_checksums(store: FeatureStore) -> None:
    """Say which videos have no checksum (written before stores had them): they are read as ever, but damage to
    their values cannot be detected."""
    try:
        unchecked = store.without_checksums()
    except StoreError:
        return  # the store is damaged: validate says so
    if unchecked:
        print(f"note: {len(unchecked)} videos have no checksums (written before stores had them, e.g. "
              f"{unchecked[0]}): they are read as ever, but damage to their values cannot be detected; to add "
              f"checksums, extract them again: into a new FEATURES path, or touch their clips in RAW and run "
              f"`make features`")


def _what_is_left(path: Path) -> str:
    """For a store too damaged to be used: print the ids whose features can still be read, one a line, and
    say so and what to do."""
    readable = []
    with contextlib.suppress(StoreError, *DAMAGE):
        with _open(path, "r") as f:
            group = f["features"]
            for vid in group:  # listing may fail part-way: what was read stands
                with contextlib.suppress(*DAMAGE):
                    group[vid][()]
                    readable.append(vid)
    for vid in readable:
        print(f"readable: {vid}")
    left = (f"the features of {len(readable)} videos can still be read with h5py (listed above, e.g. "
            f"{readable[:3]}), but without its settings they cannot be used" if readable else
            "nothing in it can be read")
    return (f"{left}; extract again into a new store (make features FEATURES=<a new .h5 path>), and keep this file "
            f"as it is until that store is complete")


if __name__ == "__main__":
    raise SystemExit(main())

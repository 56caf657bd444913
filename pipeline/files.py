"""Writes the pipeline's output files atomically, into folders checked to be writable first.

Reads nothing; writes what its callers give it (`config.json`, `scores.json`,
captions, checkpoints, `metrics.csv`): each file is written to a temporary file
beside it and renamed into place, so a reader never sees half a file and a run
killed mid-write leaves the previous version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_writable_folder(folder: str | Path, option: str) -> Path:
    """`folder`, created if missing, after checking a file can be written in it; `option` (the `make`
    variable that names it) is named in the error otherwise."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{option}: cannot write in {folder}: {existing} is a file, not a folder; pass a {option} "
                          f"path in a folder you can write")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{option}: cannot write in {folder} ({exc.strerror or exc}); pass a {option} path "
                          f"in a folder you can write") from None
    return folder


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))

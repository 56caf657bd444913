"""Writes the pipeline's output files atomically, into folders checked to be writable first, one writer at a time.

Reads nothing; writes what its callers give it (`config.json`, `scores.json`,
captions, checkpoints, `metrics.csv`): each file is written to a temporary file
beside it and renamed into place, so a reader never sees half a file and a run
killed mid-write leaves the previous version. A write that fails (a full disk, an
I/O error) is an `OutputError` naming the file and the reason, the previous version
kept. `writer_lock` holds an output (a feature store, a run folder) for one run: a
lock file holding the writer's process id, on which a second writer is refused.
What makes an input path unreadable is said here too, for clips and label files alike:
`not_a_file` (from its directory entry alone) and `PERMISSION_DENIED`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ConfigError, PipelineError


class OutputError(PipelineError):
    """An output file that could not be written; the message names it and the reason."""


# Why a file this user may not read cannot be used, and what to do (clips and label files alike).
PERMISSION_DENIED = ("permission denied: this user may not read the file (or its folder); give it read permission "
                     "(chmod a+r) or run as a user who may read it")


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a clip or a label file, told from its directory entry alone (a FIFO is
    never opened), or None for a regular file: no such file, a broken symbolic link, a folder, or not a regular
    file (a FIFO, a socket, a device)."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return f"a broken symbolic link (to {os.readlink(path)})"
    if not path.exists():
        return "no such file"
    return "a folder" if path.is_dir() else "not a regular file"


def _unwritable(path: str | Path, exc: OSError) -> str:
    """Why `path` could not be written, in words the user can act on."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device to write {path}: free some space"
    return f"{path} could not be written ({exc.strerror or exc})"


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: `exc` itself, or the one it was raised over (torch's checkpoint
    writer raises RuntimeError "unexpected pos ..." over the OSError of the file's own write)."""
    return exc if isinstance(exc, OSError) else exc.__context__ if isinstance(exc.__context__, OSError) else None


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place; a write failing for
    an OSError (a full disk) is an `OutputError` naming `path`, which keeps its previous version."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    except Exception as exc:
        reason = _os_error(exc)
        if reason is None:
            raise
        raise OutputError(_unwritable(path, reason)) from None


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


@contextlib.contextmanager
def writer_lock(lock: Path, name: str, writer: str, option: str,
                error: type[PipelineError] = PipelineError) -> Iterator[None]:
    """Hold the right to write `name` for one run: the file `lock`, locked (flock, released by the system
    if the process dies) and holding this process's id while the block runs. Another process holding it
    (or another open of it here) is refused at once with an `error` naming `name`, that process's id and
    the `writer` it is, and suggesting another `option`."""
    try:
        handle = open(lock, "a+")
    except OSError as exc:
        raise error(f"cannot write the lock file {lock} ({exc.strerror}): pass another {option} you can "
                    f"write") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise error(f"{name} is in use by process {owner} ({writer} writing it): wait for it to finish, "
                        f"or pass another {option}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))

"""The exception every expected failure derives from, with how a command line reports one.

Reads and writes nothing. An expected failure is one the user can act on: a file that
cannot be read or written, an option out of range, settings that do not fit. Each
stage raises its own subclass (`StoreError`, `CaptionError`, `CheckpointError`,
`VideoError`, `WeightsError`, `ConfigError`, ...) with a message naming the file or
option and what to do; every command line catches `PipelineError` alone, prints
`error: <message>` and exits with status 2, and prints a `PipelineWarning` as one
`warning: <message>` line. Anything else is a bug and keeps its
traceback. A stage that keeps its finished work through an interrupt (extraction,
training) says so on Ctrl-C and exits with status 130.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable


class PipelineError(Exception):
    """A failure the user can act on; the message names the file or option and what to do."""


class ConfigError(PipelineError, ValueError):
    """An option that is out of range, unknown, or does not fit this machine."""


class PipelineWarning(UserWarning):
    """Something the user should know that does not stop the stage (videos left out, empty captions); a command
    line prints it as one `warning:` line."""


def _shown_as_one_line(default: Callable) -> Callable:
    """A `warnings.showwarning` for a command line: ours as one `warning: <message>` line, without the file
    and source line Python adds for a programmer; everyone else's as `default` shows them."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PipelineWarning):
            print(f"warning: {message}", file=sys.stderr if file is None else file)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def run_command(work: Callable[[], int], interrupted: str = "") -> int:
    """`work()`'s exit status; an expected failure is printed as one `error:` line and gives status 2, a
    `PipelineWarning` as one `warning:` line. With `interrupted` (what an interrupt leaves, and what to do),
    Ctrl-C prints it and gives status 130."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _shown_as_one_line(warnings.showwarning)
            return work()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not interrupted:
            raise
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        return 130

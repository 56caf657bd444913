"""Video ids in the one form they are compared in: a clip's file name, in Unicode's composed form (NFC).

Reads and writes nothing. macOS writes file names decomposed (NFD: `e` and a combining accent), label files
usually hold them composed: both print the same, and every place where ids meet compares them in NFC.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path


def normal_id(video_id: str) -> str:
    """`video_id` in the form every id is compared in: Unicode's composed form (NFC)."""
    return unicodedata.normalize("NFC", video_id)


def decomposed_id(video_id: str) -> str:
    """The decomposed spelling (NFD) of `video_id`, as macOS would have named its file."""
    return unicodedata.normalize("NFD", video_id)


def video_id(path: str | Path) -> str:
    """The video id of the clip at `path`: its file name, in the form ids are compared in."""
    return normal_id(Path(path).name)

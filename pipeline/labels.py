"""Reads caption label files into `{video_id: [caption, ...]}` in any of four formats.

Reads MLDS JSON (`[{"id": "x.avi", "caption": [...]}]`, the native format), a
`video_id,caption` CSV (one caption a line; the seed's output format too), the MSR
Video Description Corpus CSV (English rows; id `VideoID_Start_End.avi`), and the
MSVD standard split (`vidN<TAB>caption` files beside
`youtube_video_to_id_mapping.txt`). `load_captions` picks the loader from the file.
Files may start with a UTF-8 byte-order mark. In a `video_id,caption` line an id
holding a comma or a double quote is written quoted, CSV-style (`"a,b.avi",a dog`,
quotes doubled inside), and read back the same way; the caption is the rest of the
line. Writes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from pathlib import Path
from typing import Iterator

from .errors import PipelineError
from .video import VIDEO_EXTENSIONS
from .vocab import tokenize

MSVD_MAPPING = "youtube_video_to_id_mapping.txt"


class CaptionError(PipelineError):
    """A label file that cannot be read; the message names the file and the entry."""


def read_text(path: Path) -> str:
    """The text of a UTF-8 file (a byte-order mark dropped); undecodable bytes name the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise CaptionError(f"{path}: line {line} is not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                           f"{exc.start}); save the file as UTF-8") from None


def format_id_caption(video_id: str, caption: str) -> str:
    """One `video_id,caption` line (without its newline); an id with a comma or a quote is quoted."""
    if "," in video_id or '"' in video_id:
        video_id = '"' + video_id.replace('"', '""') + '"'
    return f"{video_id},{caption}"


def _split_id_caption(line: str) -> tuple[str, str] | None:
    """`(video id, caption)` of a `video_id,caption` line, or None if it has no such shape."""
    if line.startswith('"'):
        end = 1
        while True:  # the closing quote is a quote not doubled
            end = line.find('"', end)
            if end < 0:
                return None
            if line[end + 1:end + 2] != '"':
                break
            end += 2
        if line[end + 1:end + 2] != ",":
            return None
        return line[1:end].replace('""', '"'), line[end + 2:]
    if "," not in line:
        return None
    video_id, caption = line.split(",", 1)
    return video_id, caption


def _add(captions: dict[str, list[str]], path: Path, where: str, video_id: str, caption) -> None:
    if not isinstance(caption, str) or not tokenize(caption):
        warnings.warn(f"{path}: {where}: empty caption for {video_id!r} skipped", stacklevel=3)
        return
    captions.setdefault(video_id, []).append(caption.strip())


def load_mlds_json(path: Path) -> dict[str, list[str]]:
    try:
        entries = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise CaptionError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(entries, list):
        raise CaptionError(f"{path}: expected a JSON list of {{\"id\": ..., \"caption\": [...]}} entries")
    captions: dict[str, list[str]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "caption" not in entry:
            raise CaptionError(f"{path}: entry {i} needs an \"id\" and a \"caption\" list, got {str(entry)[:80]}")
        texts = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        for text in texts:
            _add(captions, path, f"entry {i}", str(entry["id"]), text)
        if str(entry["id"]) not in captions:
            warnings.warn(f"{path}: entry {i} ({entry['id']!r}) has no usable caption", stacklevel=2)
    return captions


def read_id_caption_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    """`(line number, video id, caption)` of a `video_id,caption` file (header and blank lines skipped)."""
    for line_no, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip() or (line_no == 1 and line.lower().replace(" ", "") == "video_id,caption"):
            continue
        parts = _split_id_caption(line.strip())
        if parts is None:
            raise CaptionError(f"{path}: line {line_no} is not 'video_id,caption': {line[:80]!r}")
        yield line_no, parts[0].strip(), parts[1].strip().strip('"')


def load_id_caption_csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    for line_no, video_id, caption in read_id_caption_lines(path):
        rest = caption.split(",", 1)[0].strip()
        if "," in caption and rest.lower().endswith(VIDEO_EXTENSIONS):
            raise CaptionError(f"{path}: line {line_no}: the id seems cut at a comma ({video_id!r}, then "
                               f"{rest!r}); quote an id that holds a comma: \"{video_id},{rest}\",caption")
        _add(captions, path, f"line {line_no}", video_id, caption)
    return captions


def load_msr_vdc_csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        needed = {"VideoID", "Start", "End", "Language", "Description"}
        if not needed <= set(reader.fieldnames or ()):
            raise CaptionError(f"{path}: an MSR Video Description CSV needs the columns {sorted(needed)}")
        for row in reader:
            if row["Language"] == "English":
                video_id = f"{row['VideoID']}_{row['Start']}_{row['End']}.avi"
                _add(captions, path, f"line {reader.line_num}", video_id, row["Description"])
    return captions


def load_msvd_split(path: Path) -> dict[str, list[str]]:
    mapping_path = path.parent / MSVD_MAPPING
    if not mapping_path.is_file():
        raise CaptionError(f"{path}: an MSVD split file needs {MSVD_MAPPING} beside it to name the clips")
    clip_of = {}
    for line_no, line in enumerate(read_text(mapping_path).splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2:
                raise CaptionError(f"{mapping_path}: line {line_no} is not 'clipname vidN': {line[:80]!r}")
            clip_of[parts[1]] = parts[0] + ".avi"
    captions: dict[str, list[str]] = {}
    for line_no, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        vid, _, caption = line.partition("\t")
        if vid not in clip_of:
            raise CaptionError(f"{path}: line {line_no}: {vid!r} is not in {mapping_path.name}")
        _add(captions, path, f"line {line_no}", clip_of[vid], caption)
    return captions


def load_captions(path: str | Path) -> dict[str, list[str]]:
    """Read a label file in any of the four formats, chosen from the file itself."""
    path = Path(path)
    if not path.is_file():
        raise CaptionError(f"{path}: no such label file")
    first = read_text(path).lstrip()[:200]
    if first.startswith(("[", "{")):
        loader = load_mlds_json
    elif first.startswith("VideoID,"):
        loader = load_msr_vdc_csv
    elif re.match(r"vid\d+\t", first):
        loader = load_msvd_split
    else:
        loader = load_id_caption_csv
    captions = loader(path)
    if not captions:
        raise CaptionError(f"{path}: no captions found")
    return captions

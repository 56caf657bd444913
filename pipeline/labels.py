"""Reads caption label files into `{video_id: [caption, ...]}` in any of the benchmarks' formats.

Reads MLDS JSON (`[{"id": "x.avi", "caption": [...]}]`, the native format),
MSR-VTT's JSON as downloaded (`train_val_videodatainfo.json`,
`test_videodatainfo.json`: `videos` with their split, `sentences`; id
`video_id.mp4`), VATEX's JSON (`[{"videoID": ..., "enCap": [...]}]`; id
`videoID.mp4`), a `video_id,caption` CSV (one caption a line; the seed's output
format too), the MSR Video Description Corpus CSV (English rows; id
`VideoID_Start_End.avi`), and the MSVD standard split (`vidN<TAB>caption` files
beside `youtube_video_to_id_mapping.txt`). `load_captions` picks the loader from
the file, and a split by its name where the data holds several: MSR-VTT's `train`,
`validate`, `test`; MSVD's `train`, `val`, `test` (the file of that name beside the
one given, the mapping or their folder).
Files may start with a UTF-8 byte-order mark. In a `video_id,caption` line an id
holding a comma or a double quote is written quoted, CSV-style (`"a,b.avi",a dog`,
quotes doubled inside), and read back the same way; the caption is the rest of the
line. Video ids come back in the form clips' ids are compared in (Unicode's composed
form, `ids.normal_id`), whatever form the file wrote them in. Writes nothing.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator

from .errors import PipelineError, PipelineWarning
from .ids import normal_id
from .files import PERMISSION_DENIED, not_a_file
from .video import VIDEO_EXTENSIONS
from .vocab import tokenize

MSVD_MAPPING = "youtube_video_to_id_mapping.txt"
MSVD_SPLIT_FILE = "sents_{split}_lc_nopunc.txt"
MSVD_SPLITS = ("train", "val", "test")
FORMATS = ("MLDS JSON ([{\"id\": ..., \"caption\": [...]}]), MSR-VTT JSON (videodatainfo), VATEX JSON "
           "([{\"videoID\": ..., \"enCap\": [...]}]), video_id,caption CSV, the MSR Video Description Corpus CSV, "
           "or the MSVD standard split (sents_*_lc_nopunc.txt beside youtube_video_to_id_mapping.txt)")


class CaptionError(PipelineError):
    """A label file that cannot be read; the message names the file and the entry."""


def read_text(path: Path) -> str:
    """The text of a UTF-8 file (a byte-order mark dropped); undecodable bytes name the file and line, and
    a file that ends inside a character is called truncated."""
    try:
        data = path.read_bytes()
    except PermissionError:
        raise CaptionError(f"{path}: {PERMISSION_DENIED}") from None
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # the decoder says so only at the end of the bytes
            raise _truncated(path, len(data), "inside a character") from None
        start = bom + exc.start
        line = data[:start].count(b"\n") + 1
        raise CaptionError(f"{path}: line {line} is not UTF-8 text (byte {data[start]:#04x} at offset "
                           f"{start}); save the file as UTF-8") from None


def _truncated(path: Path, size: int, where: str) -> CaptionError:
    return CaptionError(f"{path} is truncated: it is cut off at byte {size:,}, {where}; download or copy it again")


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
    """Add `caption` to the video `video_id`, in the form clips' ids are compared in (`ids.normal_id`)."""
    if not isinstance(caption, str) or not tokenize(caption):
        warnings.warn(f"{path}: {where}: empty caption for {video_id!r} skipped", PipelineWarning, stacklevel=3)
        return
    captions.setdefault(normal_id(video_id), []).append(caption.strip())


def load_json(path: Path, split: str) -> dict[str, list[str]]:
    """MLDS, MSR-VTT or VATEX JSON, told apart by their keys."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # the text ran out where more was expected (json calls a string unterminated only when no closing quote
        # follows to the end, and names where it starts)
        inside_string = exc.msg.startswith("Unterminated string")
        if inside_string or not text[exc.pos:].strip():
            stops, line = "inside a string" if inside_string else exc.msg.lower(), text.count("\n") + 1
            raise _truncated(path, path.stat().st_size, f"before its JSON is complete (it stops in line {line}, "
                             f"{stops})") from None
        raise CaptionError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if isinstance(data, dict) and "videos" in data and "sentences" in data:
        return load_msrvtt(path, data, split)
    if not isinstance(data, list):
        raise CaptionError(f"{path}: a JSON file that is no label format read here; the formats are {FORMATS}")
    _one_split(path, split)
    vatex = bool(data) and isinstance(data[0], dict) and "videoID" in data[0]
    return load_vatex(path, data) if vatex else load_mlds(path, data)


def _one_split(path: Path, split: str) -> None:
    if split:
        raise CaptionError(f"{path} holds one split, so no split can be chosen in it (asked for {split!r}): "
                           f"only MSR-VTT's files and the MSVD standard split hold several")


def load_msrvtt(path: Path, data: dict, split: str) -> dict[str, list[str]]:
    """MSR-VTT's `videodatainfo` JSON: the captions of the videos of `split` (or of its only split)."""
    split_of = {str(video["video_id"]): video.get("split", "") for video in data["videos"]}
    counts = Counter(split_of.values())
    if not split and len(counts) > 1:
        raise CaptionError(f"{path} holds the splits {_listed(counts)}: choose one (make: SPLIT=train and "
                           f"VAL_SPLIT=validate for training, TEST_SPLIT=test for evaluation)")
    if split and split not in counts:
        raise CaptionError(f"{path} has no split {split!r}; it holds {_listed(counts)}")
    wanted = split or next(iter(counts))
    captions: dict[str, list[str]] = {}
    for i, sentence in enumerate(data["sentences"]):
        video_id = str(sentence.get("video_id"))
        if split_of.get(video_id) == wanted:
            _add(captions, path, f"sentence {i}", video_id + ".mp4", sentence.get("caption"))
    return captions


def _listed(counts: Counter) -> str:
    return ", ".join(f"{name} ({n:,} videos)" for name, n in counts.items())


def load_vatex(path: Path, entries: list) -> dict[str, list[str]]:
    """VATEX's JSON: each video's English captions (`enCap`)."""
    captions: dict[str, list[str]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "videoID" not in entry:
            raise CaptionError(f"{path}: entry {i} needs a \"videoID\" as VATEX's others, got {str(entry)[:80]}")
        for text in entry.get("enCap") or []:
            _add(captions, path, f"entry {i}", f"{entry['videoID']}.mp4", text)
    return captions


def load_mlds(path: Path, entries: list) -> dict[str, list[str]]:
    """MLDS JSON: `{"id", "caption"}` entries."""
    captions: dict[str, list[str]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "caption" not in entry:
            raise CaptionError(f"{path}: entry {i} needs an \"id\" and a \"caption\" list, got {str(entry)[:80]}")
        texts = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        for text in texts:
            _add(captions, path, f"entry {i}", str(entry["id"]), text)
        if normal_id(str(entry["id"])) not in captions:
            warnings.warn(f"{path}: entry {i} ({entry['id']!r}) has no usable caption", PipelineWarning, stacklevel=2)
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


MSVD_SPLIT_LINE = re.compile(r"vid\d+\t")  # how every line of an MSVD standard split file starts


def _is_msvd_split(path: Path) -> bool:
    """Whether `path` is an MSVD standard split file (`vidN<TAB>caption` lines), told from its first bytes."""
    if not path.is_file():
        return False
    with path.open("rb") as f:
        head = f.read(256).decode("utf-8", errors="ignore").lstrip("\ufeff").lstrip()
    return MSVD_SPLIT_LINE.match(head) is not None


def msvd_split_file(path: Path, split: str) -> Path:
    """The MSVD standard split file to read: `path` itself (a split file), or the file of `split` beside
    `path` (a split file, the mapping or their folder)."""
    folder = path if path.is_dir() else path.parent
    if not split:
        if path.is_dir() or path.name == MSVD_MAPPING:
            raise CaptionError(f"{path} holds the MSVD standard splits {', '.join(MSVD_SPLITS)} (1,200, 100 and "
                               f"670 videos): choose one (make: SPLIT=train VAL_SPLIT=val, TEST_SPLIT=test)")
        return path
    if split not in MSVD_SPLITS:
        raise CaptionError(f"{path}: the MSVD standard split has no split {split!r}; it holds "
                           f"{', '.join(MSVD_SPLITS)}")
    chosen = folder / MSVD_SPLIT_FILE.format(split=split)
    if not chosen.is_file():
        raise CaptionError(f"{chosen}: no such file, where the MSVD standard split's {split!r} captions belong")
    return chosen


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


def load_captions(path: str | Path, split: str = "") -> dict[str, list[str]]:
    """Read a label file in any of the formats, chosen from the file itself; `split` names the split to read
    where the data holds several (MSR-VTT, the MSVD standard split), and must be empty elsewhere."""
    path = Path(path)
    if path.is_dir() or path.name == MSVD_MAPPING or (split and _is_msvd_split(path)):
        path, split = msvd_split_file(path, split), ""
    reason = not_a_file(path)  # a FIFO is not opened: reading it would wait for a writer
    if reason:
        raise CaptionError(f"{path}: {reason}, where a label file was expected")
    first = read_text(path).lstrip()[:200]
    if first.startswith(("[", "{")):
        captions = load_json(path, split)
    else:
        _one_split(path, split)
        if first.startswith("VideoID,"):
            captions = load_msr_vdc_csv(path)
        elif MSVD_SPLIT_LINE.match(first):
            captions = load_msvd_split(path)
        elif _split_id_caption(first.splitlines()[0] if first else "") is None:
            raise CaptionError(f"{path}: not a label format read here (it starts {first[:60]!r}); the formats are "
                               f"{FORMATS}")
        else:
            captions = load_id_caption_csv(path)
    if not captions:
        raise CaptionError(f"{path}: no captions found")
    return captions

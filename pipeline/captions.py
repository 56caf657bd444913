"""Caption label files, the tokenizer, and the vocabulary.

Reads label files in four formats and returns `{video_id: [caption, ...]}`:
MLDS JSON (`[{"id": "x.avi", "caption": [...]}]`, the native format), a
`video_id,caption` CSV (one caption a line; the seed's output format too), the MSR
Video Description Corpus CSV (English rows; id `VideoID_Start_End.avi`), and the
MSVD standard split (`vidN<TAB>caption` files beside
`youtube_video_to_id_mapping.txt`). `load_captions` picks the loader from the file.
Writes nothing; `Vocab.to_dict` is what checkpoints store.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
MSVD_MAPPING = "youtube_video_to_id_mapping.txt"
_LETTERS = r"[^\s!-/:-@\[-`{-~“”‘’]+"  # anything but space and punctuation, accents and marks included
_WORD = re.compile(rf"{_LETTERS}(?:'{_LETTERS})?")


class CaptionError(Exception):
    """A label file that cannot be read; the message names the file and the entry."""


def tokenize(text: str) -> list[str]:
    """Lower-case words; punctuation is split off and dropped ("A man’s dog." -> a man's dog)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _add(captions: dict[str, list[str]], path: Path, where: str, video_id: str, caption) -> None:
    if not isinstance(caption, str) or not tokenize(caption):
        warnings.warn(f"{path}: {where}: empty caption for {video_id!r} skipped", stacklevel=3)
        return
    captions.setdefault(video_id, []).append(caption.strip())


def load_mlds_json(path: Path) -> dict[str, list[str]]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
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
    with path.open(encoding="utf-8", newline="") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or (line_no == 1 and line.lower().replace(" ", "") == "video_id,caption"):
                continue
            if "," not in line:
                raise CaptionError(f"{path}: line {line_no} is not 'video_id,caption': {line[:80]!r}")
            video_id, caption = line.split(",", 1)
            yield line_no, video_id.strip(), caption.strip().strip('"')


def load_id_caption_csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    for line_no, video_id, caption in read_id_caption_lines(path):
        _add(captions, path, f"line {line_no}", video_id, caption)
    return captions


def load_msr_vdc_csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
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
    for line_no, line in enumerate(mapping_path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2:
                raise CaptionError(f"{mapping_path}: line {line_no} is not 'clipname vidN': {line[:80]!r}")
            clip_of[parts[1]] = parts[0] + ".avi"
    captions: dict[str, list[str]] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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
    first = path.read_text(encoding="utf-8", errors="replace").lstrip()[:200]
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


@dataclass
class Vocab:
    """Words <-> ids; ids 0..3 are <pad> <bos> <eos> <unk>."""

    words: list[str]
    min_count: int

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: dict[str, list[str]], min_count: int = 3) -> "Vocab":
        counts = Counter(w for caps in captions.values() for c in caps for w in tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept, min_count)

    def __len__(self) -> int:
        return len(self.words)

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def encode(self, caption: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in tokenize(caption)]

    def decode(self, ids) -> str:
        """Words up to the first <eos>, without the special tokens."""
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= len(SPECIALS):
                words.append(self.words[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"words": self.words, "min_count": self.min_count}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocab":
        return cls(list(data["words"]), int(data["min_count"]))

"""Turns captions into the word ids a model is trained with: the tokenizer, the vocabulary.

Reads and writes nothing. `tokenize` lower-cases a caption and drops punctuation;
`Vocab` maps words to ids, the special tokens <pad> <bos> <eos> <unk> first, and
its special ids are what the model is built with. `Vocab.to_dict` is what
checkpoints store.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
_LETTERS = r"[^\s!-/:-@\[-`{-~“”‘’]+"  # anything but space and punctuation, accents and marks included
_WORD = re.compile(rf"{_LETTERS}(?:'{_LETTERS})?")


def tokenize(text: str) -> list[str]:
    """Lower-case words; punctuation is split off and dropped ("A man’s dog." -> a man's dog)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


@dataclass
class Vocab:
    """Words <-> ids; the first ids are the special tokens, in the order of `SPECIALS`."""

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

    pad_id, bos_id, eos_id, unk_id = (SPECIALS.index(token) for token in (PAD, BOS, EOS, UNK))

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

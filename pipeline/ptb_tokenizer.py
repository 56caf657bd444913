"""A pure-Python stand-in for the Stanford PTB tokenizer that coco-caption runs in Java.

Reads and writes nothing. `ptb_tokenize(text)` gives the tokens pycocoevalcap's
`PTBTokenizer` gives (lower-cased, punctuation tokens removed), so the BLEU,
ROUGE-L and CIDEr scores are the same on a machine without Java; the tests check
it on every caption of the MLDS labels.
"""

from __future__ import annotations

import re

# The tokens pycocoevalcap drops after tokenizing (its PUNCTUATIONS list).
REMOVED = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
QUOTES = set('"“”')
CONTRACTION = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
ELLIPSIS = re.compile(r"\.{2,}")
_W = r"[^\s!-/:-@\[-`{-~“”‘’]"  # a word character: anything but space and ASCII/typographic punctuation
_TOKEN = re.compile(
    r"<[a-z]+>"  # tags such as <unk> stay whole
    r"|(?:mt|mr|mrs|dr|st|ms|jr|sr|[a-z])\.(?=\.|\s+\S)"  # abbreviations and initials keep their period
    rf"|'n\b|o'{_W}+"  # 'n (as in slip 'n slide), o'clock
    rf"|{_W}+(?:[-'./&]{_W}+)*"  # words, with inner hyphens, apostrophes, dots, slashes, ampersands
    r"|\.{2,}|--|\S")


def _split(token: str) -> list[str]:
    if token == "'n" or token.startswith("o'"):
        return [token]
    if ELLIPSIS.fullmatch(token):
        return ["..."]
    contraction = CONTRACTION.match(token)
    if contraction:
        return [contraction.group(1), contraction.group(2)]
    if "'" in token:  # any other inner apostrophe is split off (and dropped)
        return [part for part in token.split("'") if part]
    return [BRACKETS.get(token, "''" if token in QUOTES else token)]


def ptb_tokenize(text: str) -> str:
    """`text` tokenized as coco-caption's PTB tokenizer does, tokens joined by spaces."""
    tokens = [t for raw in _TOKEN.findall(text.replace("\n", " ").lower()) for t in _split(raw)]
    return " ".join(t for t in tokens if t not in REMOVED)

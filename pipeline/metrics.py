"""Caption metrics: the course's per-video BLEU-1 beside the coco-caption metrics.

Reads nothing from disk; takes `{video_id: caption}` and `{video_id: [references]}`
and returns plain dicts with the keys of `scores.json`: `mlds_bleu1` (the seed's
headline number), `bleu1`..`bleu4`, `meteor`, `rouge_l`, `cider` (pycocoevalcap,
PTB tokenizer) and `n_videos`. Java runs the PTB tokenizer and METEOR when it is
installed; without it, tokenizing falls back to `ptb_tokenizer` (same tokens) and
`meteor` is None (unavailable), never 0.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import shutil
import subprocess
import sys
from collections import Counter

from .ptb_tokenizer import ptb_tokenize

METRIC_KEYS = ("mlds_bleu1", "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")


def _bleu1_one(candidate: str, references: list[str]) -> float:
    words = [w.lower() for w in candidate.split()]
    refs = [[w.lower() for w in r.rstrip().rstrip(".").split()] for r in references]
    c = len(words)
    if c == 0 or not refs:
        return 0.0
    max_counts: Counter = Counter()
    for ref in refs:
        for word, count in Counter(ref).items():
            max_counts[word] = max(max_counts[word], count)
    clipped = sum(min(count, max_counts[word]) for word, count in Counter(words).items())
    r = min((len(ref) for ref in refs), key=lambda length: abs(length - c))  # first closest wins ties
    penalty = 1.0 if c > r else math.exp(1 - r / c)
    return clipped / c * penalty


def course_bleu1(predictions: dict[str, str], references: dict[str, list[str]]) -> float:
    """The MLDS course BLEU-1: the plain mean over videos of per-video BLEU-1.

    Candidate and references are split on whitespace (references lose trailing
    periods) and lower-cased; candidate word counts are clipped at their largest
    count in any single reference; the brevity penalty uses the reference length
    closest to the candidate's.
    """
    return _mean(bleu1_per_video(predictions, references))


def bleu1_per_video(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """The course BLEU-1 of each video's caption."""
    return {vid: _bleu1_one(caption, references[vid]) for vid, caption in predictions.items()}


def _mean(per_video: dict[str, float]) -> float:
    return sum(per_video.values()) / len(per_video) if per_video else 0.0


@functools.lru_cache(maxsize=1)
def java_available() -> bool:
    """A Java that really runs (a `java` stub without a JRE does not count)."""
    if shutil.which("java") is None:
        return False
    try:
        return subprocess.run(["java", "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def _quiet_java():
    """Silence what pycocoevalcap's Java subprocesses print on stderr (their progress lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # and what pycocoevalcap prints itself
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tokenized(captions: dict[str, list[str]], use_java: bool) -> dict[str, list[str]]:
    if not use_java:
        return {vid: [ptb_tokenize(c) for c in caps] for vid, caps in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with _quiet_java():
        return PTBTokenizer().tokenize({vid: [{"caption": c} for c in caps] for vid, caps in captions.items()})


def coco_scores(caption_sets: list[dict[str, str]], references: dict[str, list[str]],
                use_java: bool | None = None) -> list[dict[str, float | None]]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of each set of captions (one caption per id, every set captioning
    the same videos) against the same references.

    What depends on the references alone is done once for all the sets: tokenizing them, counting their
    n-grams for BLEU, and starting METEOR's Java process, which takes about 6 s to load and, started first,
    loads while the other metrics are computed. Each set's scores are what scoring it alone gives."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    use_java = java_available() if use_java is None else use_java
    ids = sorted(caption_sets[0])
    if any(sorted(captions) != ids for captions in caption_sets):
        raise ValueError("every set of captions must caption the same videos")
    meteor = _meteor() if use_java else None
    gts = _tokenized({vid: references[vid] for vid in ids}, use_java)
    bleu = BleuScorer(n=4)
    for vid in ids:
        bleu.cook_append(None, gts[vid])  # the references' n-gram counts, kept for every set
    tokenized = [_tokenized({vid: [captions[vid]] for vid in ids}, use_java) for captions in caption_sets]
    all_scores = []
    with _quiet_java():
        for res in tokenized:
            # what pycocoevalcap's Bleu(4).compute_score does, with the references counted once
            bleu_scores, _ = bleu.retest([res[vid][0] for vid in ids]).compute_score(option="closest")
            scores: dict[str, float | None] = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu_scores)}
            scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
            scores["cider"] = float(Cider().compute_score(gts, res)[0])
            all_scores.append(scores)
        for scores, res in zip(all_scores, tokenized):
            # the corpus-level score METEOR's jar reports
            scores["meteor"] = float(meteor.compute_score(gts, res)[0]) if meteor else None
    return all_scores


def _meteor():
    """pycocoevalcap's METEOR, its Java process started (and loading in the background)."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def score_caption_sets(caption_sets: list[dict[str, str]], references: dict[str, list[str]],
                       use_java: bool | None = None, per_video: dict[str, float] | None = None) -> list[dict]:
    """Every metric of `scores.json` for each set of captions against the same references (a model's and the
    constant baseline's): `coco_scores` does the references' share of the work once. `per_video` is the first
    set's course BLEU-1 per video (`bleu1_per_video`) where the caller has it already."""
    coco = coco_scores(caption_sets, references, use_java)
    given = [per_video] + [None] * (len(caption_sets) - 1)
    return [{"mlds_bleu1": _mean(bleu1_per_video(captions, references) if known is None else known), **scores,
             "n_videos": len(captions)} for captions, scores, known in zip(caption_sets, coco, given)]


def score_captions(predictions: dict[str, str], references: dict[str, list[str]],
                   use_java: bool | None = None) -> dict:
    """Every metric of `scores.json` for `predictions` against `references`."""
    return score_caption_sets([predictions], references, use_java)[0]

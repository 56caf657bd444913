"""Caption metrics: the course's per-video BLEU-1 (the seed's headline number).

Reads nothing from disk; takes `{video_id: caption}` and `{video_id: [references]}`.
"""

from __future__ import annotations

import math
from collections import Counter


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
    if not predictions:
        return 0.0
    return sum(_bleu1_one(caption, references[vid]) for vid, caption in predictions.items()) / len(predictions)

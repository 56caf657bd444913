"""Scores captions against references, with no model.

Reads a captions file (the seed's format: one `video_id,caption` line per video)
and the references (any label format); returns the metrics of `metrics.py`, the
same for the constant-caption baseline (the commonest training caption given to
every video), and formats them as the console table `make eval` prints. A
captions file must give
exactly one caption per reference video: missing, unknown or duplicate ids are
refused with a message naming them (an id may leave out the references'
extension, `x` for `x.avi`, but may not name a video twice that way); empty
captions are reported and score 0.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

from .labels import CaptionError, load_captions, read_id_caption_lines
from .vocab import tokenize
from .errors import PipelineError, PipelineWarning
from .metrics import METRIC_KEYS, score_caption_sets, score_captions
from .ids import normal_id
from .files import not_a_file


class PredictionError(PipelineError):
    """A captions file that cannot be scored as it is; the message says what is wrong."""


def read_predictions(path: str | Path) -> dict[str, str]:
    """`video_id,caption` lines, their ids composed as clips' are (`ids.normal_id`); duplicate ids are an
    error, empty captions are kept."""
    path = Path(path)
    reason = not_a_file(path)
    if reason:
        raise PredictionError(f"{path}: {reason}, where a captions file was expected")
    predictions: dict[str, str] = {}
    duplicates = []
    try:
        for _, vid, caption in read_id_caption_lines(path):
            vid = normal_id(vid)  # as the references' ids are
            if vid in predictions:
                duplicates.append(vid)
            predictions[vid] = caption
    except CaptionError as exc:
        raise PredictionError(str(exc)) from None
    if duplicates:
        raise PredictionError(f"{path}: {len(duplicates)} ids appear more than once, e.g. {duplicates[:3]}")
    return predictions


def match_ids(predictions: dict[str, str], references: dict[str, list[str]], name: str) -> dict[str, str]:
    """Predictions keyed by reference ids; ids may lack the references' extension.

    Unknown, missing or doubly given ids are an error: nothing is silently dropped or added.
    """
    by_stem = {Path(vid).stem: vid for vid in references}
    matched, unknown, twice = {}, [], []
    for vid, caption in predictions.items():
        key = vid if vid in references else by_stem.get(vid)
        if key is None:
            unknown.append(vid)
        elif key in matched:
            twice.append(key)
        else:
            matched[key] = caption
    missing = sorted(set(references) - set(matched))
    problems = []
    if twice:
        problems.append(f"{len(twice)} videos are given twice, with and without the extension (e.g. {twice[:3]})")
    if unknown:
        problems.append(f"{len(unknown)} ids are not in the references (e.g. {unknown[:3]})")
    if missing:
        problems.append(f"{len(missing)} reference videos have no caption (e.g. {missing[:3]})")
    if problems:
        raise PredictionError(f"{name}: " + "; ".join(problems))
    warn_empty_captions(matched, name)
    return matched


def warn_empty_captions(captions: dict[str, str], name: str) -> None:
    """Warn, naming the captions file `name`, when captions are empty: they are scored, and score 0. Both
    `make eval` and scoring a captions file say it this way."""
    empty = sorted(vid for vid, caption in captions.items() if not caption)
    if empty:
        warnings.warn(f"{name}: {len(empty)} empty captions (e.g. {empty[:3]}) score 0", PipelineWarning, stacklevel=3)


def score_file(predictions_path: str | Path, references_path: str | Path, split: str = "") -> dict:
    references = load_captions(references_path, split)
    predictions = match_ids(read_predictions(predictions_path), references, str(predictions_path))
    return score_captions(predictions, references)


def most_frequent_caption(captions: dict[str, list[str]]) -> str:
    """The constant-caption baseline: the commonest training caption, normalised."""
    counts = Counter(" ".join(tokenize(c)) for caps in captions.values() for c in caps)
    return counts.most_common(1)[0][0]


def scores_with_baseline(captions: dict[str, str], references: dict[str, list[str]], labels: str | Path,
                         split: str = "", per_video: dict[str, float] | None = None) -> dict:
    """The scores of `captions`, with under `baseline` those of giving every video the most frequent caption of
    the training `labels` (their `split`); both are scored in one pass, so the references' share of the work is
    done once. `per_video` is the captions' course BLEU-1 per video where the caller has it already."""
    try:
        caption = most_frequent_caption(load_captions(labels, split))
    except CaptionError as exc:
        raise CaptionError(f"the baseline needs the training labels ({exc}); pass --train-labels") from None
    model, baseline = score_caption_sets([captions, {vid: caption for vid in references}], references,
                                         per_video=per_video)
    return {**model, "baseline": {**baseline, "caption": caption}}


def format_scores(scores: dict) -> str:
    """The scores as a console table, the constant-caption baseline beside them when present."""
    baseline = scores.get("baseline")
    header = f"{'metric':<11}{'model':>9}" + (f"{'baseline':>10}" if baseline else "")
    lines = [header]
    for key in METRIC_KEYS:
        cells = [scores[key]] + ([baseline[key]] if baseline else [])
        lines.append(f"{key:<11}" + "".join(f"{'n/a' if v is None else f'{v:.4f}':>{w}}"
                                           for v, w in zip(cells, (9, 10))))
    baseline_note = f"; baseline caption: \"{baseline['caption']}\"" if baseline else ""
    left_out = scores.get("videos_left_out", 0)  # test videos without features (make eval)
    lines.append(f"{scores['n_videos']} videos{baseline_note}" + (
        f"\n{left_out} of the {scores['n_videos'] + left_out} test videos were left out (no features): these scores "
        f"are not comparable with a whole test set's" if left_out else ""))
    if scores["meteor"] is None:
        lines.append("METEOR needs Java (not found): reported as unavailable")
    return "\n".join(lines)

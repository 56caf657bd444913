"""Metrics against the reference numbers in ../shared/data/README.md."""

from __future__ import annotations

import json
import math

import pytest

from conftest import SHARED, needs_java, needs_shared
from pipeline.labels import load_captions
from pipeline import metrics
from pipeline.metrics import _tokenized, course_bleu1, java_available, score_caption_sets, score_captions
from pipeline.ptb_tokenizer import ptb_tokenize

MLDS = SHARED / "msvd-mlds"
# coco-caption on the seed's output (PTB tokenizer, Java present), from the data README
SEED_COCO = {"bleu1": 0.740462, "bleu4": 0.264770, "meteor": 0.224935, "rouge_l": 0.601705, "cider": 0.480967}


@pytest.fixture(scope="module")
def seed():
    return load_captions(MLDS / "seed_output.txt"), load_captions(MLDS / "testing_label.json")


@pytest.fixture(scope="module")
def seed_scores(seed):
    """The seed output's scores, scored alone (Java present)."""
    predictions, references = seed
    return score_captions(_single(predictions), references, use_java=True)


def _single(predictions):
    return {vid: caps[0] for vid, caps in predictions.items()}


@needs_shared
def test_course_bleu1_is_the_seeds_number(seed):
    predictions, references = seed
    assert course_bleu1(_single(predictions), references) == pytest.approx(0.7243460350812861, abs=1e-12)


def test_course_bleu1_worked_examples():
    refs = {"v": ["A man is cooking.", "a man cooks food"]}
    assert course_bleu1({"v": "a man is cooking"}, refs) == 1.0
    assert course_bleu1({"v": "a a a a"}, refs) == pytest.approx(1 / 4)  # "a" clipped at 1
    assert course_bleu1({"v": "a man"}, refs) == pytest.approx(math.exp(1 - 4 / 2))  # brevity penalty, r = 4
    assert course_bleu1({"v": ""}, refs) == 0.0


@needs_shared
@needs_java
def test_coco_metrics_of_the_seed_output(seed_scores):
    for key, value in SEED_COCO.items():
        assert seed_scores[key] == pytest.approx(value, abs=1e-4), key
    assert seed_scores["n_videos"] == 100 and seed_scores["mlds_bleu1"] == pytest.approx(0.7243460350812861,
                                                                                         abs=1e-12)


@needs_shared
@needs_java
def test_a_set_scored_after_another_by_the_same_meteor_process_scores_exactly_as_alone(seed, seed_scores,
                                                                                       monkeypatch):
    """`make eval` scores the model and the baseline with one METEOR process (its Java takes about 6 s to
    start); the second set's scores are the very numbers it gets alone."""
    predictions, references = seed
    started = []
    monkeypatch.setattr(metrics, "_meteor", lambda start=metrics._meteor: started.append(1) or start())
    constant = {vid: "a man is playing a guitar" for vid in references}
    _, second = score_caption_sets([constant, _single(predictions)], references, use_java=True)
    assert second == seed_scores and len(started) == 1


def test_sets_scored_together_score_as_each_alone_with_the_references_tokenized_once(monkeypatch):
    references = {"a.avi": ["A man is cooking.", "a man cooks food"], "b.avi": ["a dog runs", "The dog is running!"],
                  "c.avi": ["two cats sleep on a sofa", "cats are sleeping"]}
    sets = [{"a.avi": "a man is cooking", "b.avi": "a dog is running fast", "c.avi": ""},
            {vid: "a man is running" for vid in references}]
    alone = [score_captions(captions, references, use_java=False) for captions in sets]
    tokenized = []
    monkeypatch.setattr(metrics, "_tokenized", lambda captions, use_java, tokenize=metrics._tokenized:
                        tokenized.append(captions) or tokenize(captions, use_java))
    assert score_caption_sets(sets, references, use_java=False) == alone
    assert len(tokenized) == 1 + len(sets) and sum(len(c) > 1 for c in tokenized[0].values()) == 3
    with pytest.raises(ValueError, match="same videos"):
        score_caption_sets([sets[0], {"a.avi": "a man"}], references, use_java=False)


@needs_shared
def test_without_java_meteor_is_unavailable_and_the_rest_unchanged(seed):
    predictions, references = seed
    scores = score_captions(_single(predictions), references, use_java=False)
    assert scores["meteor"] is None
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):
        assert scores[key] == pytest.approx(SEED_COCO[key], abs=1e-4), key


@needs_shared
@needs_java
def test_python_tokenizer_equals_ptb_on_every_mlds_caption():
    captions = {}
    for name in ("training_label.json", "testing_label.json"):
        for entry in json.loads((MLDS / name).read_text()):
            for i, caption in enumerate(entry["caption"]):
                captions[f"{name}/{entry['id']}/{i}"] = [caption]
    java = _tokenized(captions, use_java=True)
    differ = [(captions[k][0], java[k][0], ptb_tokenize(captions[k][0])) for k in captions
              if ptb_tokenize(captions[k][0]) != java[k][0]]
    assert len(captions) == 25906 and differ == []


def test_empty_captions_score_zero_not_crash():
    refs = {"a": ["a man is cooking"], "b": ["a dog runs"]}
    scores = score_captions({"a": "a man is cooking", "b": ""}, refs)
    assert scores["mlds_bleu1"] == 0.5 and 0 < scores["cider"]
    assert (scores["meteor"] is not None) == java_available(), "METEOR is a number with Java, unavailable without"

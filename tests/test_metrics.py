"""Metrics against the reference numbers in ../shared/data/README.md."""

from __future__ import annotations

import json
import math

import pytest

from conftest import SHARED, needs_java, needs_shared
from pipeline.labels import load_captions
from pipeline.metrics import _tokenized, course_bleu1, java_available, score_captions
from pipeline.ptb_tokenizer import ptb_tokenize

MLDS = SHARED / "msvd-mlds"
# coco-caption on the seed's output (PTB tokenizer, Java present), from the data README
SEED_COCO = {"bleu1": 0.740462, "bleu4": 0.264770, "meteor": 0.224935, "rouge_l": 0.601705, "cider": 0.480967}


@pytest.fixture(scope="module")
def seed():
    return load_captions(MLDS / "seed_output.txt"), load_captions(MLDS / "testing_label.json")


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
def test_coco_metrics_of_the_seed_output(seed):
    predictions, references = seed
    scores = score_captions(_single(predictions), references, use_java=True)
    for key, value in SEED_COCO.items():
        assert scores[key] == pytest.approx(value, abs=1e-4), key
    assert scores["n_videos"] == 100 and scores["mlds_bleu1"] == pytest.approx(0.7243460350812861, abs=1e-12)


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

"""The embedded sample dataset: held-out combinations, determinism, attribute parsing."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pipeline.config import SampleConfig
from pipeline.attributes import attribute_accuracy, parse_attributes
from pipeline.sample import COLOURS, LIGHT_RAMP, MOTIONS, PAIRS, SHAPES, TEMPLATES, generate, held_out_combinations
from pipeline.video import read_clip

SMALL = {"clips_per_combination": 1, "test_clips_per_combination": 1, "held_out": 8, "frames": 12, "size": 64}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    cfg = SampleConfig(sample=str(tmp_path_factory.mktemp("sample")), **SMALL)
    return cfg, generate(cfg)


def _combos(labels_path, attributes):
    return {tuple(attributes[e["id"]][k] for k in ("colour", "shape", "motion"))
            for e in json.loads(labels_path.read_text())}


def test_test_split_holds_only_unseen_combinations(sample):
    cfg, out = sample
    attributes = json.loads(out["attributes"].read_text())
    train, test = _combos(out["train"], attributes), _combos(out["test"], attributes)
    assert len(test) == 8 and not train & test
    assert train | test == set(itertools.product(COLOURS, SHAPES, MOTIONS))
    for k, values in enumerate((COLOURS, SHAPES, MOTIONS)):  # every value is still taught
        assert {c[k] for c in train} == set(values)


@pytest.mark.parametrize("n, least", [(8, 2), (12, 2), (16, 2), (24, 1), (32, 1)])
def test_every_pair_of_a_held_out_combination_is_still_taught_with_other_third_attributes(n, least):
    held_out = held_out_combinations(n, np.random.default_rng(n))
    taught = set(itertools.product(COLOURS, SHAPES, MOTIONS)) - set(held_out)
    assert len(set(held_out)) == n
    for combo in held_out:
        for i, j in PAIRS:
            others = [c for c in taught if (c[i], c[j]) == (combo[i], combo[j])]
            assert len(others) >= least, f"{combo}: the pair {combo[i]}, {combo[j]} is taught {len(others)} times"


def test_clips_and_references(sample):
    cfg, out = sample
    entries = json.loads(out["train"].read_text()) + json.loads(out["test"].read_text())
    assert len(entries) == len(list(out["raw"].glob("*.avi"))) == 48
    attributes = json.loads(out["attributes"].read_text())
    for entry in entries:
        assert len(entry["caption"]) == len(TEMPLATES)
        assert all(parse_attributes(c) == attributes[entry["id"]] for c in entry["caption"])
    clip = read_clip(out["raw"] / entries[0]["id"], 12)
    assert clip.n_frames == 12 and clip.frames.shape == (12, 64, 64, 3)


def test_the_background_is_lit_from_one_corner_so_that_left_and_right_look_different(sample):
    """ImageNet networks see a clip and its mirror image nearly alike; the light ramp tells them apart."""
    cfg, out = sample
    grey = np.mean([read_clip(path, 12).frames.astype(np.float64).mean(axis=(0, 3))  # (64, 64) per clip
                    for path in sorted(out["raw"].glob("*.avi"))], axis=0)  # over all clips: texture averages out
    strip = 8
    expected = LIGHT_RAMP / 2 * (1 - strip / cfg.size)  # half the ramp runs along each axis
    assert grey[:, -strip:].mean() - grey[:, :strip].mean() == pytest.approx(expected, abs=5)  # right - left
    assert grey[-strip:].mean() - grey[:strip].mean() == pytest.approx(expected, abs=5)  # bottom - top


def test_deterministic_and_idempotent(sample, tmp_path):
    cfg, out = sample
    again = generate(SampleConfig(sample=str(tmp_path / "again"), **SMALL))
    assert again["train"].read_text() == out["train"].read_text()
    first = sorted(out["raw"].glob("*.avi"))[0]
    assert (again["raw"] / first.name).read_bytes() == first.read_bytes()
    mtime = first.stat().st_mtime_ns
    generate(cfg)  # the same set again: nothing is rewritten, so features stay current
    assert first.stat().st_mtime_ns == mtime


def test_parse_attributes_and_accuracy():
    assert parse_attributes("a red ball moves to the left") == {"colour": "red", "shape": "circle", "motion": "left"}
    assert parse_attributes("a box is sliding upwards") == {"colour": None, "shape": "square", "motion": "up"}
    assert parse_attributes("a red and blue triangle") == {"colour": None, "shape": "triangle", "motion": None}
    truth = {"a": {"colour": "red", "shape": "circle", "motion": "left"},
             "b": {"colour": "blue", "shape": "square", "motion": "down"}}
    accuracy = attribute_accuracy({"a": "a red circle moves left", "b": "a blue box moves up"}, truth)
    assert accuracy == {"colour": 1.0, "shape": 1.0, "motion": 0.5, "all": 0.5}

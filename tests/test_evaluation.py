"""Scoring captions files, and make eval / make captions on a tiny trained run."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import CLIPS_DIR, ROOT, SHARED, needs_shared, run_main
from pipeline import evaluation
from pipeline.labels import load_captions
from pipeline.metrics import METRIC_KEYS, course_bleu1

MLDS = SHARED / "msvd-mlds"
LABELS = CLIPS_DIR / "labels.json"
N_VIDEOS = len(json.loads(LABELS.read_text()))


def _score(*args):
    return run_main(evaluation.main, *args)


@needs_shared
def test_score_the_seed_output(tmp_path):
    out = tmp_path / "scores.json"
    proc = _score("--predictions", str(MLDS / "seed_output.txt"), "--references", str(MLDS / "testing_label.json"),
                  "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "mlds_bleu1" in proc.stdout and "0.7243" in proc.stdout and "0.4810" in proc.stdout
    scores = json.loads(out.read_text())
    assert set(METRIC_KEYS) <= set(scores) and scores["n_videos"] == 100
    assert scores["mlds_bleu1"] == pytest.approx(0.7243460350812861, abs=1e-12)


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def seed_lines():
    """`video_id,caption` predictions for the clips here: each clip's second reference."""
    return [f"{entry['id']},{entry['caption'][1]}" for entry in json.loads(LABELS.read_text())]


def _course_bleu1(lines: list[str]) -> float:
    """The course's BLEU-1 of `video_id,caption` lines against the labels here, computed in this process."""
    predictions = dict(line.split(",", 1) for line in lines)
    return course_bleu1(predictions, load_captions(LABELS))


def test_ids_without_extension_are_matched(tmp_path, seed_lines):
    preds = _write(tmp_path / "p.txt", [line.replace(".avi,", ",", 1) for line in seed_lines])
    proc = _score("--predictions", str(preds), "--references", str(LABELS))
    assert proc.returncode == 0 and f"mlds_bleu1    {_course_bleu1(seed_lines):.4f}" in proc.stdout


@pytest.mark.parametrize("edit,message", [
    (lambda lines: lines[:-2], "2 reference videos have no caption"),
    (lambda lines: lines + [lines[0]], "appear more than once"),
    (lambda lines: lines + ["made_up.avi,a dog"], "1 ids are not in the references"),
    (lambda lines: lines + ["no comma"], "is not 'video_id,caption'"),
])
def test_malformed_prediction_files(tmp_path, seed_lines, edit, message):
    preds = _write(tmp_path / "p.txt", edit(seed_lines))
    proc = _score("--predictions", str(preds), "--references", str(LABELS))
    assert proc.returncode == 2 and message in proc.stderr and "p.txt" in proc.stderr


def test_a_video_given_with_and_without_its_extension_is_refused(tmp_path, seed_lines):
    preds = _write(tmp_path / "p.txt", seed_lines + [seed_lines[0].replace(".avi,", ",", 1)])
    proc = _score("--predictions", str(preds), "--references", str(LABELS))
    assert proc.returncode == 2 and "1 videos are given twice, with and without the extension" in proc.stderr


def test_the_scorer_reads_its_own_captions_for_ids_holding_commas(tmp_path):
    from pipeline.evaluation import write_captions
    from pipeline.scoring import score_file

    references = tmp_path / "refs.json"
    references.write_text(json.dumps([{"id": "a,b.avi", "caption": ["a dog runs"]},
                                      {"id": "c.avi", "caption": ["a cat sits"]}]))
    write_captions(tmp_path / "captions.txt", {"a,b.avi": "a dog runs", "c.avi": "a cat"})
    assert (tmp_path / "captions.txt").read_text().startswith('"a,b.avi",a dog runs\n')
    scores = score_file(tmp_path / "captions.txt", references)
    assert scores["n_videos"] == 2 and scores["mlds_bleu1"] > 0.5


def test_empty_captions_score_zero(tmp_path, seed_lines):
    lines = [line.split(",")[0] + "," if i < 3 else line for i, line in enumerate(seed_lines)]
    preds = _write(tmp_path / "p.txt", lines)
    out = tmp_path / "s.json"
    proc = _score("--predictions", str(preds), "--references", str(LABELS), "--out", str(out))
    assert proc.returncode == 0 and f"warning: {preds}: 3 empty captions" in proc.stderr, "one line"
    assert _course_bleu1(seed_lines) == 1.0, "each prediction is one of its video's references"
    assert json.loads(out.read_text())["mlds_bleu1"] == pytest.approx(0.25), "three of the four score zero"


@pytest.mark.slow
def test_make_eval_and_captions(tiny_run, clip_features):
    make = ["make", "-s", "eval", f"RUN={tiny_run}", f"FEATURES={clip_features}", f"TEST_LABELS={LABELS}", "BEAM=3",
            f"RAW={CLIPS_DIR}"]
    proc = subprocess.run(make, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "baseline" in proc.stdout and "cider" in proc.stdout
    assert (tiny_run / "report.html").read_text().count("data:image/gif;base64,") == N_VIDEOS
    lines = (tiny_run / "captions.txt").read_text().splitlines()
    assert len(lines) == N_VIDEOS and all(line.split(",", 1)[0].endswith(".avi") for line in lines)
    scores = json.loads((tiny_run / "scores.json").read_text())
    assert set(METRIC_KEYS) <= set(scores) and set(METRIC_KEYS) <= set(scores["baseline"])
    assert scores["decoding"]["beam"] == 3 and scores["n_videos"] == N_VIDEOS
    assert scores["cider"] > scores["baseline"]["cider"], "a memorising model beats the constant caption"

    proc = subprocess.run(["make", "-s", "captions", f"RUN={tiny_run}", f"FEATURES={clip_features}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len((tiny_run / "captions_all.txt").read_text().splitlines()) == N_VIDEOS


def test_checkpoint_and_store_must_match(tiny_run, tmp_path):
    from pipeline.config import ExtractConfig
    from pipeline.features import extract

    other = tmp_path / "random.h5"
    extract(ExtractConfig(raw=str(CLIPS_DIR), features=str(other), backbone="efficientnet_lite0", weights="random",
                          frames=16))
    proc = _score("--run-dir", str(tiny_run), "--features", str(other), "--references", str(LABELS))
    assert proc.returncode == 2 and "does not fit" in proc.stderr and "weights" in proc.stderr

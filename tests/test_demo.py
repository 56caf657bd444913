"""The newcomer's path: make demo (reduced), new clips dropped in, caption.py on files."""

from __future__ import annotations

import pytest
import json
import shutil
import subprocess

from conftest import CLIPS_DIR, ROOT, SMALL_CLIPS, copy_clips, run_main, run_make, run_script, write_index_video
from pipeline import caption_files
from pipeline.config import TrainConfig
from pipeline.labels import load_captions
from pipeline.training import train


@pytest.mark.slow
def test_make_demo_smoke(tmp_path):
    sample, run = tmp_path / "sample", tmp_path / "demo"
    demo = ["demo", f"SAMPLE={sample}", f"DEMO_RUN={run}", "DEMO_CLIPS=1", "DEMO_FRAMES=4", "DEMO_EPOCHS=2",
            "DEMO_TRAIN_ARGS=--hidden 32 --embed 32 --captions-per-epoch all --val-fraction 0 --motion 4"]
    first = run_make(*demo).stdout
    assert "no validation split (--val-fraction 0): best.pt is the epoch with the lowest training loss" in first
    assert "train loss" in first and ", no validation," in first and "val loss nan" not in first
    test_ids = [entry["id"] for entry in json.loads((sample / "testing_label.json").read_text())]
    train_ids = [entry["id"] for entry in json.loads((sample / "training_label.json").read_text())]
    assert len(test_ids) >= 48 and not set(test_ids) & set(train_ids)
    scores = json.loads((run / "scores.json").read_text())
    assert scores["n_videos"] == len(test_ids) and scores["checkpoint"]["epoch"] == 2
    assert all(0 <= scores[key] <= 1 for key in ("bleu4", "mlds_bleu1", "rouge_l")) and scores["cider"] >= 0
    assert set(scores["attributes"]) == {"colour", "shape", "motion", "all"}
    assert all(0 <= value <= 1 for value in scores["attributes"].values())
    assert sorted(load_captions(run / "captions.txt")) == sorted(test_ids)
    assert (run / "report.html").read_text().count("data:image/gif;base64,") == 8
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[2:4] == ["", ""], "no validation split: empty cells, not nan"
    again = run_make(*demo)
    assert "already holds this sample set" in again.stdout and "skipped" in again.stdout
    extraction = json.loads((sample / "features" / "efficientnet_lite0_4.config.json").read_text())
    assert extraction["summary"]["done"] == [], "the second run extracts nothing"


@pytest.mark.slow
def test_new_clips_dropped_in_are_extracted_and_captioned(tmp_path):
    raw, store, run = tmp_path / "raw", tmp_path / "f.h5", tmp_path / "run"
    copy_clips(SMALL_CLIPS[:2], raw)
    common = [f"RAW={raw}", f"FEATURES={store}", "BACKBONE=efficientnet_lite0", "WEIGHTS=random", "FRAMES=8"]
    run_make("features", *common)
    train(TrainConfig(features=str(store), labels=str(CLIPS_DIR / "labels.json"), run_dir=str(run), epochs=10,
                      hidden=16, embed=16, val_fraction=0, captions_per_epoch="all", min_count=1, lr=1e-2))
    shutil.copy2(SMALL_CLIPS[2], raw / SMALL_CLIPS[2].name)
    write_index_video(raw / "synthetic, clip.mkv", 20)  # another container, a comma: its id is its file name
    assert "done 2, skipped 2" in run_make("features", *common).stdout
    run_make("captions", f"RUN={run}", f"FEATURES={store}", "BEAM=1")
    captioned = load_captions(run / "captions_all.txt")  # the id with a comma is quoted, and reads back
    assert sorted(captioned) == sorted([p.name for p in SMALL_CLIPS[:3]] + ["synthetic, clip.mkv"])


@pytest.mark.slow
def test_caption_py_on_files_with_a_bad_one(tiny_run, clip_features, tmp_path):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"not a video")
    good = [SMALL_CLIPS[3], SMALL_CLIPS[0]]
    proc = run_script("caption.py", str(good[0]), str(bad), str(good[1]), "--run-dir", str(tiny_run), "--beam", "1")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert [line.split(",")[0] for line in lines] == [p.name for p in good]
    assert "broken.avi" in proc.stderr and "cannot be opened" in proc.stderr
    # the same sampler, backbone and weights as the stored features: the same captions as make captions
    run_make("captions", f"RUN={tiny_run}", f"FEATURES={clip_features}", "BEAM=1")
    stored = dict(line.split(",", 1) for line in (tiny_run / "captions_all.txt").read_text().splitlines())
    assert all(stored[vid] == caption for vid, caption in (line.split(",", 1) for line in lines))


def test_caption_py_refuses_two_files_giving_one_video_id(tiny_run, tmp_path):
    first, second = copy_clips(SMALL_CLIPS[:1], tmp_path / "a"), copy_clips(SMALL_CLIPS[:1], tmp_path / "b")
    name = SMALL_CLIPS[0].name
    proc = run_main(caption_files.main, str(first / name), str(second / name), "--run-dir", str(tiny_run))
    assert proc.returncode == 2 and f"{name!r} by {first / name}, {second / name}" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_make_caption_target(tiny_run):
    proc = run_make("caption", f"VIDEO={SMALL_CLIPS[1]}", f"RUN={tiny_run}", "BEAM=1")
    assert proc.stdout.strip().splitlines()[-1].startswith(f"{SMALL_CLIPS[1].name},")


def test_demo_seed_makes_its_own_sample_set_and_run_with_that_seed():
    """`make demo DEMO_SEED=N` (dry run): the sample set and the training both take seed N, in their own folders."""
    plan = subprocess.run(["make", "-n", "--no-print-directory", "demo", "DEMO_SEED=3"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    sample = next(line for line in plan.splitlines() if "sample.py" in line)
    training = next(line for line in plan.splitlines() if "train.py" in line)
    assert "--sample data/sample-seed3" in sample and "--seed 3" in sample
    assert "--run-dir runs/demo-seed3" in training and "--seed 3" in training
    assert "data/sample-seed3/features/" in training

"""The benchmarks as downloaded: MSR-VTT's splits through training and evaluation, no conversion."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from conftest import SHARED, needs_shared, random_store, run_make
from pipeline.checkpoint import CheckpointError
from pipeline.config import EvalConfig, TrainConfig
from pipeline.evaluation import evaluate_run
from pipeline.labels import CaptionError
from pipeline.training import train

TINY = {"epochs": 2, "hidden": 8, "embed": 8, "batch_size": 4, "min_count": 1, "device": "cpu"}


def _videodatainfo(path: Path, captions: dict[str, tuple[str, list[str]]]) -> Path:
    """An MSR-VTT `videodatainfo` file: `{video_id: (split, [caption, ...])}`."""
    videos = [{"video_id": v, "split": split, "id": i} for i, (v, (split, _)) in enumerate(captions.items())]
    sentences = [{"video_id": v, "caption": c} for v, (_, texts) in captions.items() for c in texts]
    path.write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    return path


@pytest.fixture
def msrvtt(tmp_path) -> dict[str, Path]:
    """A small MSR-VTT laid out as downloaded: train and validate in one file, test in another, and a store
    holding every video. The commonest caption of all is a validation one; of train, "a man is cooking"."""
    train_val = {f"video{i}": ("train", ["a man is cooking", f"a person number {i}"]) for i in range(4)} | \
        {f"video{i}": ("validate", ["a dog runs"] * 3) for i in range(4, 6)}
    test = {f"video{i}": ("test", ["a man is cooking food", "a dog runs"]) for i in range(6, 8)}
    return {"train_val": _videodatainfo(tmp_path / "train_val_videodatainfo.json", train_val),
            "test": _videodatainfo(tmp_path / "test_videodatainfo.json", test),
            "store": random_store(tmp_path / "f.h5", [f"video{i}.mp4" for i in range(8)])}


def test_train_on_train_select_on_validate_score_on_test(msrvtt, tmp_path, capsys):
    run = tmp_path / "run"
    history = train(TrainConfig(features=str(msrvtt["store"]), labels=str(msrvtt["train_val"]), split="train",
                                val_split="validate", run_dir=str(run), **TINY))
    assert all(row["val_loss"] is not None for row in history), "validated on the benchmark's own split"
    assert "train: 4 videos, 8 captions; validation: 2 videos (validate of train_val_videodatainfo.json)" in \
        capsys.readouterr().out
    scores = evaluate_run(EvalConfig(run_dir=str(run), features=str(msrvtt["store"]),
                                     references=str(msrvtt["test"]), beam=1, raw=str(tmp_path), device="cpu"))
    assert scores["n_videos"] == 2
    assert scores["baseline"]["caption"] == "a man is cooking", "the baseline is the training split's caption"


def test_a_run_resumes_only_with_the_splits_it_was_started_with(msrvtt, tmp_path):
    settings = dict(features=str(msrvtt["store"]), labels=str(msrvtt["train_val"]), split="train",
                    run_dir=str(tmp_path / "run"), **TINY)
    train(TrainConfig(val_split="validate", **settings))
    with pytest.raises(CheckpointError, match="val_split: checkpoint has 'validate', asked for ''"):
        train(TrainConfig(**{**settings, "epochs": 3}))


def test_a_validation_split_that_shares_videos_with_training_is_refused(msrvtt, tmp_path):
    with pytest.raises(CaptionError, match="4 videos are in both the training and the validation captions"):
        train(TrainConfig(features=str(msrvtt["store"]), labels=str(msrvtt["train_val"]), split="train",
                          val_split="train", run_dir=str(tmp_path / "run"), **TINY))


def test_vatex_files_train_validate_and_score_as_they_come(tmp_path):
    """VATEX: a JSON file a split, `videoID` and English captions (`enCap`) beside Chinese ones (`chCap`)."""
    def vatex(name: str, videos: range, caption: str) -> Path:
        entries = [{"videoID": f"yt{i}_000010_000020", "enCap": [caption, f"{caption} number {i}"],
                    "chCap": ["一个视频"]} for i in videos]
        (tmp_path / name).write_text(json.dumps(entries, ensure_ascii=False))
        return tmp_path / name

    train_file, val_file = vatex("vatex_training_v1.0.json", range(4), "a man plays"), \
        vatex("vatex_validation_v1.0.json", range(4, 6), "a dog runs")
    test_file = vatex("vatex_public_test_english_v1.1.json", range(6, 8), "a man plays")
    store = random_store(tmp_path / "f.h5", [f"yt{i}_000010_000020.mp4" for i in range(8)])
    run = tmp_path / "run"
    history = train(TrainConfig(features=str(store), labels=str(train_file), val_labels=str(val_file),
                                run_dir=str(run), **TINY))
    assert all(row["val_loss"] is not None for row in history)
    scores = evaluate_run(EvalConfig(run_dir=str(run), features=str(store), references=str(test_file), beam=1,
                                     raw=str(tmp_path), device="cpu"))
    assert scores["n_videos"] == 2 and scores["baseline"]["caption"] == "a man plays"


@pytest.mark.slow
@needs_shared
def test_the_real_msr_vtt_files_train_and_score_without_conversion(tmp_path):
    """MSR-VTT's own annotation files, as downloaded; random features stand in for its 10,000 clips' (100 of
    the 2,990 test videos have them, so the others are left out with a warning)."""
    for name in ("train_val_annotation.zip", "test_videodatainfo.json.zip"):
        zipfile.ZipFile(SHARED / "msr-vtt" / name).extractall(tmp_path)
    store = random_store(tmp_path / "f.h5", [f"video{i}.mp4" for i in range(7110)])  # train, validate, 100 test
    run = tmp_path / "run"
    train(TrainConfig(features=str(store), labels=str(tmp_path / "train_val_videodatainfo.json"), split="train",
                      val_split="validate", run_dir=str(run), epochs=1, hidden=8, embed=8, device="cpu", min_count=50,
                      max_len=8))
    with pytest.warns(UserWarning, match="2890 of 2990 videos .* have no features"):
        scores = evaluate_run(EvalConfig(run_dir=str(run), features=str(store), beam=1, raw=str(tmp_path),
                                         references=str(tmp_path / "test_videodatainfo.json"), device="cpu"))
    assert scores["n_videos"] == 100 and scores["baseline"]["n_videos"] == 100


def test_the_documented_protocol_commands_hand_their_splits_to_the_stages():
    """docs/benchmarks.md's `make train ... SPLIT=train VAL_SPLIT=validate` and `make eval ... TEST_SPLIT=test`
    (dry runs: the options the scripts receive)."""
    train = run_make("-n", "train", "LABELS=data/msr-vtt/train_val_videodatainfo.json", "SPLIT=train",
                     "VAL_SPLIT=validate", "VAL_LABELS=v.json").stdout.replace("\\\n", " ")
    assert "--labels data/msr-vtt/train_val_videodatainfo.json" in train
    assert "--split train" in train and "--val-split validate" in train and "--val-labels v.json" in train
    assert "--references-split test" in run_make("-n", "eval", "TEST_SPLIT=test").stdout
    assert "--split" not in run_make("-n", "train").stdout, "no split unless asked for"

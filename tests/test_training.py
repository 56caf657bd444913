"""Training end to end on the 8 real clips: learning, validation, resume, refusals, make."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CLIPS_DIR, ROOT, run_main, run_script
from pipeline.labels import load_captions
from pipeline.vocab import Vocab, tokenize
from pipeline.config import DecodeConfig, ExtractConfig, TrainConfig
from pipeline.features import extract
from pipeline.schedule import inverse_sigmoid
from pipeline.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from pipeline.dataset import encode_captions
from pipeline.decoding import caption_features
from pipeline.training import main as training_main
from pipeline.training import train
from pipeline.store import FeatureStore

LABELS = CLIPS_DIR / "labels.json"
TINY = {"hidden": 32, "embed": 32, "batch_size": 16, "val_fraction": 0.0, "dropout": 0.1}


def test_captions_become_token_rows_of_bos_words_cut_at_max_len_eos_and_padding():
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "a", "man", "is", "cooking"], 1)
    rows = encode_captions(["A man is cooking!", "a zebra", "", "a man is a man is"], vocab, max_len=4)
    assert rows.dtype == torch.long and rows.tolist() == [[1, 4, 5, 6, 7, 2], [1, 4, 3, 2, 0, 0], [1, 2, 0, 0, 0, 0],
                                                          [1, 4, 5, 6, 4, 2]]
    assert encode_captions([], vocab, max_len=4).shape == (0, 6)


def _cfg(features: Path, run: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"features": str(features), "labels": str(LABELS), "run_dir": str(run), **TINY, **kw})


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_model_learns_the_tiny_set(clip_features, tmp_path):
    """Given one caption per real clip, the model learns to say it: every caption back, word for word."""
    labels = tmp_path / "one_each.json"
    one_each = [{"id": entry["id"], "caption": entry["caption"][:1]} for entry in json.loads(LABELS.read_text())]
    labels.write_text(json.dumps(one_each))
    history = train(_cfg(clip_features, tmp_path / "run", labels=str(labels), epochs=40, hidden=64, embed=64,
                         batch_size=8, captions_per_epoch="all", schedule="constant", dropout=0.0, lr=3e-3,
                         min_count=1))
    losses = [row["train_loss"] for row in history]
    means = [sum(losses[i:i + 10]) / 10 for i in range(0, 40, 10)]
    assert all(a > b for a, b in zip(means, means[1:])), f"loss should fall steadily: {means}"
    assert losses[-1] < losses[0] / 5
    model, vocab = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    store = FeatureStore(clip_features)
    ids = store.ids()
    captions = caption_features(model, vocab, store.read_many(ids), torch.device("cpu"), DecodeConfig(beam=1))
    said = {vid: " ".join(tokenize(caps[0])) for vid, caps in load_captions(labels).items()}
    exact = [vid for vid, caption in zip(ids, captions) if said[vid] == caption]
    assert len(exact) == len(ids), f"only {len(exact)} of {len(ids)} captions are the one taught: {captions}"


def test_outputs_validation_and_plots(clip_features, tmp_path):
    run = tmp_path / "run"
    history = train(_cfg(clip_features, run, epochs=3, val_fraction=0.25, schedule="inverse_sigmoid"))
    assert [row["epoch"] for row in history] == [0, 1, 2]
    rows = _rows(run)
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_bleu", "teacher_forcing", "lr", "seconds"]
    assert all(0 <= float(r["val_bleu"]) <= 1 and float(r["val_loss"]) > 0 for r in rows)
    assert [float(r["teacher_forcing"]) for r in rows] == pytest.approx(inverse_sigmoid(3).tolist())
    for name in ("config.json", "last.pt", "best.pt", "curves.png", "schedule.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    checkpoint = load_checkpoint(run / "best.pt")
    [stream] = checkpoint["feature_settings"]  # one stream
    assert stream["feature_dim"] == 1280 and stream["backbone"] == "efficientnet_lite0"
    assert checkpoint["model_config"]["feature_dim"] == 1280 and checkpoint["vocab"]["words"][0] == "<pad>"


def test_larger_epochs_continue_a_finished_run(clip_features, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(clip_features, run, epochs=2))
    train(_cfg(clip_features, run, epochs=4))
    assert [int(r["epoch"]) for r in _rows(run)] == [0, 1, 2, 3]
    capsys.readouterr()
    train(_cfg(clip_features, run, epochs=4))
    assert "already trained 4 epochs" in capsys.readouterr().out
    assert len(_rows(run)) == 4


def _train_cmd(features: Path, run: Path, epochs: int) -> list[str]:
    return [sys.executable, "train.py", "--features", str(features), "--labels", str(LABELS), "--run-dir", str(run),
            "--epochs", str(epochs), "--hidden", "32", "--embed", "32", "--batch-size", "8",
            "--val-fraction", "0.25", "--captions-per-epoch", "all"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(clip_features, tmp_path):
    epochs = 8
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(clip_features, killed, epochs), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.csv").exists() and len(_rows(killed)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.kill()
    proc.wait()
    done = len(_rows(killed))
    assert 3 <= done < epochs
    run_script(*_train_cmd(clip_features, killed, epochs)[1:], check=True)
    run_script(*_train_cmd(clip_features, whole, epochs)[1:], check=True)
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["epoch"] == b["epoch"] == epochs
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after resume"
    assert [int(r["epoch"]) for r in _rows(killed)] == list(range(epochs))
    assert [r["train_loss"] for r in _rows(killed)] == [r["train_loss"] for r in _rows(whole)]


def test_checkpoint_of_another_setting_is_refused(clip_features, tmp_path):
    run = tmp_path / "run"
    train(_cfg(clip_features, run, epochs=1))
    saved_config = (run / "config.json").read_text()
    with pytest.raises(CheckpointError, match=r"hidden: checkpoint has 32, asked for 64") as info:
        train(_cfg(clip_features, run, epochs=2, hidden=64))
    assert "last.pt" in str(info.value) and "RUN" in str(info.value)
    assert (run / "config.json").read_text() == saved_config, "a refused resume must not touch the run"
    with pytest.raises(CheckpointError, match=r"seed: checkpoint has 0, asked for 1"):
        train(_cfg(clip_features, run, epochs=2, seed=1))

    other_labels = tmp_path / "labels.json"
    other_labels.write_text(json.dumps([{"id": p.name, "caption": ["a b c d e f"] * 3}
                                        for p in sorted(CLIPS_DIR.glob("*.avi"))]))
    with pytest.raises(CheckpointError, match="vocabulary"):
        train(_cfg(clip_features, run, epochs=2, labels=str(other_labels)))

    other_store = tmp_path / "lite_8.h5"
    extract(ExtractConfig(raw=str(CLIPS_DIR), features=str(other_store), backbone="efficientnet_lite0",
                          weights="random", frames=16))
    with pytest.raises(CheckpointError, match="features weights"):
        train(_cfg(other_store, run, epochs=2))


def test_damaged_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pt is not a readable checkpoint"):
        load_checkpoint(path)


def test_labels_without_features_are_reported(clip_features, tmp_path):
    labels = json.loads(LABELS.read_text()) + [{"id": "never_extracted.avi", "caption": ["a dog runs"]}]
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(labels))
    with pytest.warns(UserWarning, match=r"1 of 5 videos in .*labels.json have no features .*never_extracted.avi"):
        train(_cfg(clip_features, tmp_path / "run", epochs=1, labels=str(path)))


@pytest.mark.slow
def test_make_train_end_to_end(clip_features, tmp_path):
    run = tmp_path / "run"
    cmd = ["make", "-s", "train", f"FEATURES={clip_features}", f"LABELS={LABELS}", f"RUN={run}", "EPOCHS=2",
           "BATCH=16", "TRAIN_ARGS=--hidden 32 --embed 32 --val-fraction 0.25"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Epoch 1: train loss" in proc.stdout and "batch_size = 16" in proc.stdout
    assert len(_rows(run)) == 2 and (run / "best.pt").is_file()
    bad = subprocess.run(cmd[:-1] + ["TRAIN_ARGS=--hidden 48"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "hidden: checkpoint has 32, asked for 48" in bad.stderr


def test_train_help_lists_every_option_with_its_default_and_make_variable():
    out = " ".join(run_main(training_main, "--help").stdout.split())
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in out, flag
        shown = " ".join(field.default) if isinstance(field.default, tuple) else field.default  # FEATURES
        notes = ([f"default: {shown}"] if shown != "" else []) + \
            ([f"make: {field.metadata['make']}"] if field.metadata["make"] else [])
        assert f"({'; '.join(notes)})" in out, field.name
    assert "--no-bidirectional" in out and "{none,luong,bahdanau}" in out


def test_features_read_from_the_store_train_exactly_as_in_memory(clip_features, tmp_path, capsys):
    """A set over the memory budget is read from HDF5 batch by batch, with the very same results."""
    kw = {"epochs": 2, "val_fraction": 0.25, "schedule": "inverse_sigmoid"}
    in_memory = train(_cfg(clip_features, tmp_path / "memory", **kw))
    assert "features: in memory" in capsys.readouterr().out
    from_store = train(_cfg(clip_features, tmp_path / "store", feature_memory=1e-9, **kw))
    assert "batch by batch" in capsys.readouterr().out

    def drop_times(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert drop_times(from_store) == drop_times(in_memory)

"""torchrun: sharded extraction and DistributedDataParallel training, 2 gloo processes on a CPU.

Both go through `make ... NPROC=2`, which launches `torchrun --standalone`.
"""

from __future__ import annotations

import pytest
import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from conftest import CLIPS_DIR, LITE, ROOT, SMALL_CLIPS, copy_clips, run_make
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.features import extract
from pipeline.shards import shard_path
from pipeline.store import FeatureStore
from pipeline.training import train

LABELS = CLIPS_DIR / "labels.json"
FP32_LITE = {**LITE, "precision": "fp32"}

pytestmark = pytest.mark.slow  # every test here launches processes through torchrun


def _make(*args: str) -> subprocess.CompletedProcess:
    """`make` with two processes (torchrun) on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share the two cores
    return run_make(*args, "NPROC=2", "DEVICE=cpu", check=False, env=env, timeout=600)


def _make_features(raw: Path, store: Path, frames: int = 4) -> subprocess.CompletedProcess:
    return _make("features", f"RAW={raw}", f"FEATURES={store}", "BACKBONE=efficientnet_lite0", f"FRAMES={frames}",
                 "WEIGHTS=random", "PRECISION=fp32")


def _videos(path: Path) -> dict:
    with h5py.File(path) as f:
        return {vid: (ds[()], dict(ds.attrs)) for vid, ds in f["features"].items()}


def test_two_processes_extract_the_same_store_as_one(tmp_path):
    raw = copy_clips(SMALL_CLIPS, tmp_path / "raw")
    single, merged = tmp_path / "single.h5", tmp_path / "merged.h5"
    extract(ExtractConfig(raw=str(raw), features=str(single), **FP32_LITE))
    proc = _make_features(raw, merged)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert FeatureStore(merged).settings == FeatureStore(single).settings
    ours, theirs = _videos(merged), _videos(single)
    assert sorted(ours) == sorted(theirs) == sorted(p.name for p in SMALL_CLIPS)
    for vid, (features, source) in theirs.items():
        np.testing.assert_allclose(ours[vid][0], features, rtol=1e-5, atol=1e-6)
        assert ours[vid][1].keys() == source.keys()
        for key, value in source.items():
            np.testing.assert_array_equal(ours[vid][1][key], value, err_msg=f"{vid} {key}")
    assert not list(tmp_path.glob("merged.shard*")), "the shards are merged and removed"
    summary = json.loads((tmp_path / "merged.config.json").read_text())["summary"]
    assert len(summary["done"]) == 4 and summary["failed"] == []
    assert proc.stdout.count("done 4, skipped 0") == 1 and proc.stdout.count("extract_features config:") == 1, \
        "rank 0 alone reports"


def test_a_dead_rank_leaves_its_shard_and_the_next_run_redoes_only_the_rest(tmp_path):
    """A shard left by a run that died is merged first; only the clips it lacks are extracted."""
    raw = copy_clips(SMALL_CLIPS, tmp_path / "raw")
    store = tmp_path / "f.h5"
    finished = copy_clips(SMALL_CLIPS[:1], tmp_path / "finished-before-the-crash")
    extract(ExtractConfig(raw=str(finished), features=str(shard_path(store, 1)), **FP32_LITE))
    (raw / "broken.avi").write_bytes(b"\x00" * 500)
    proc = _make_features(raw, store)
    assert proc.returncode != 0 and "exitcode  : 1" in proc.stderr  # each rank exits 1 for the broken clip
    summary = json.loads((tmp_path / "f.config.json").read_text())["summary"]
    assert sorted(summary["done"]) == sorted(p.name for p in SMALL_CLIPS[1:])
    assert [Path(f["file"]).name for f in summary["failed"]] == ["broken.avi"]
    assert json.loads((tmp_path / "f.failures.json").read_text())["failed"][0]["file"].endswith("broken.avi")
    assert FeatureStore(store).ids() == sorted(p.name for p in SMALL_CLIPS)
    assert FeatureStore(store).validate() == [] and not list(tmp_path.glob("f.shard*"))


def _rank_pid(rank: int, marker: str) -> int | None:
    """The pid of torchrun's worker `rank` whose command line mentions `marker`."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_text() and \
                    f"RANK={rank}\0" in (proc / "environ").read_text():
                return int(proc.name)
        except OSError:  # a process that ended, or one not ours to read
            continue
    return None


def _stored(path: Path) -> list[str]:
    """The ids in a store, or none while its writer holds it open."""
    try:
        return FeatureStore(path).ids() if path.is_file() else []
    except Exception:  # HDF5 refuses a reader while the writer has the file open
        return []


def test_a_rank_killed_mid_run_corrupts_no_shard_and_the_next_run_finishes_the_rest(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(10):
        shutil.copy2(SMALL_CLIPS[i % 2], raw / f"clip{i:02d}.avi")
    store = tmp_path / "f.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(ROOT / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc_per_node=2", "extract_features.py",
           "--raw", str(raw), "--features", str(store), "--backbone", "efficientnet_lite0", "--weights", "random",
           "--frames", "48", "--batch", "48", "--precision", "fp32", "--device", "cpu"]
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not _stored(shard_path(store, 1)) and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.1)
    pid = _rank_pid(1, str(store))
    assert launcher.poll() is None and pid, "rank 1 finished a clip, and the run is still going"
    os.kill(pid, signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and "Signal 9" in err  # torchrun saw the rank die and ended the run

    shards = [shard_path(store, r) for r in (0, 1)]
    kept = set()
    for path in [store, *shards]:
        if path.is_file():
            assert FeatureStore(path).validate() == [], path
            kept |= set(FeatureStore(path).ids())
    assert 1 <= len(kept) < 10

    proc = _make_features(raw, store, frames=48)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "f.config.json").read_text())["summary"]
    assert sorted(summary["done"]) == sorted(f"clip{i:02d}.avi" for i in range(10) if f"clip{i:02d}.avi" not in kept)
    assert FeatureStore(store).ids() == [f"clip{i:02d}.avi" for i in range(10)] and FeatureStore(store).validate() == []
    assert not any(path.is_file() for path in shards)


def _losses(run: Path) -> list[tuple[float, float]]:
    with (run / "metrics.csv").open() as f:
        return [(float(r["train_loss"]), float(r["val_loss"])) for r in csv.DictReader(f)]


def test_two_process_training_follows_the_one_process_loss_curve(clip_features, tmp_path):
    """Same global batch, no dropout, teacher forcing: the two runs compute the same thing.

    Each rank takes every other caption of the epoch's order, so the two ranks' batches
    together are the one process's batch, and each rank's loss is its share of the global
    mean over real tokens, so DDP's gradient average is that mean's gradient. What can
    differ is floating-point summation order (a sum of two halves instead of one sum):
    about 1e-7 relative per step, amplified a little by Adam over the steps; 1e-4 leaves
    room for that, while averaging the ranks' own means instead of the global mean over
    tokens (the plain DDP way) already moves the curve by 3e-3.
    """
    # Half the four clips for validation: two training captions an epoch, one a rank (an odd count would
    # make DistributedSampler repeat one).
    options = ["--hidden", "32", "--embed", "32", "--dropout", "0", "--schedule", "constant",
               "--val-fraction", "0.5", "--captions-per-epoch", "one", "--lr", "3e-3"]
    one, two = tmp_path / "one", tmp_path / "two"
    cfg = TrainConfig(features=str(clip_features), labels=str(LABELS), run_dir=str(one), epochs=4, batch_size=2,
                      device="cpu", hidden=32, embed=32, dropout=0.0, schedule="constant", val_fraction=0.5,
                      captions_per_epoch="one", lr=3e-3)
    train(cfg)
    proc = _make("train", f"FEATURES={clip_features}", f"LABELS={LABELS}", f"RUN={two}", "EPOCHS=4", "BATCH=2",
                 f"TRAIN_ARGS={' '.join(options)}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-4)
    ddp = json.loads((two / "ddp.json").read_text())
    assert ddp["world_size"] == 2 and ddp["batch_size_per_process"] == 1
    assert [e["epoch"] for e in ddp["epochs"]] == [0, 1, 2, 3]
    for epoch in ddp["epochs"]:  # both ranks held identical weights after every epoch
        assert len(epoch["fingerprints"]) == 2 and len(set(epoch["fingerprints"])) == 1
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert proc.stdout.count("Epoch 3:") == 1 and proc.stdout.count("train config:") == 1, "rank 0 alone logs"


def test_a_global_batch_that_does_not_divide_is_refused(clip_features, tmp_path):
    proc = _make("train", f"FEATURES={clip_features}", f"LABELS={LABELS}", f"RUN={tmp_path / 'r'}", "EPOCHS=1",
                 "BATCH=3")
    assert proc.returncode != 0
    assert "must divide by the number of processes 2" in proc.stderr + proc.stdout


def test_a_resumed_two_process_run_ends_where_an_uninterrupted_one_does(clip_features, tmp_path):
    """Dropout on, so each rank's own RNG stream must come back from the checkpoint."""
    options = "--hidden 32 --embed 32 --dropout 0.3 --schedule constant --val-fraction 0.25 --lr 3e-3"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for run, epochs in ((straight, 4), (resumed, 2), (resumed, 4)):
        proc = _make("train", f"FEATURES={clip_features}", f"LABELS={LABELS}", f"RUN={run}", f"EPOCHS={epochs}",
                     "BATCH=4", f"TRAIN_ARGS={options}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stdout
    a, b = (torch.load(run / "last.pt", weights_only=True) for run in (straight, resumed))
    assert len(a["rng"]) == 2, "one RNG state per rank"
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert _losses(straight) == _losses(resumed)
    epochs = json.loads((resumed / "ddp.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3], "the fingerprints from before the resume are kept"

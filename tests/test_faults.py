"""Fault injection: what the project guarantees when processes collide, writes fail, bytes rot and inputs are
hostile (docs/faults.md). Each test fails on the code before these guarantees."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import (CLIPS_DIR, ROOT, SMALL_CLIPS, STORE_SETTINGS, copy_clips, lite_config, run_main, run_script,
                      source_attrs, write_index_video)
from pipeline import caption_files, evaluation, features, training
from pipeline import store as store_module
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.checkpoint import load_checkpoint
from pipeline.errors import ConfigError, PipelineError
from pipeline.features import extract
from pipeline.store import FeatureStore, StoreError, StoreSettings
from pipeline.training import train


def _many_clips(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_index_video(folder / "clip_000.avi", 6)
    for i in range(1, n):
        shutil.copyfile(folder / "clip_000.avi", folder / f"clip_{i:03d}.avi")
    return folder


def _extract_cmd(raw: Path, store: Path) -> list[str]:
    return [sys.executable, "extract_features.py", "--raw", str(raw), "--features", str(store), "--backbone",
            "efficientnet_lite0", "--weights", "random", "--frames", "4", "--device", "cpu"]


def _count(store: Path) -> int:
    try:
        return len(FeatureStore(store).ids())
    except StoreError:
        return 0


# -- concurrent writers and readers -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_writer_is_refused_whole_and_readers_during_a_run_neither_fail_nor_cost_a_clip(tmp_path):
    raw, store = _many_clips(tmp_path / "raw", 120), tmp_path / "f.h5"
    first = subprocess.Popen(_extract_cmd(raw, store), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while _count(store) < 2 and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    second = run_script(*_extract_cmd(raw, store)[1:])
    assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr, second.stderr
    reads = 0
    while first.poll() is None:  # a reader polling the store all through the run
        ids = FeatureStore(store).ids()
        if ids:
            assert FeatureStore(store).read_many(ids[-3:]).shape[1:] == (4, 1280)
        reads += 1
    out, err = first.communicate()
    assert first.returncode == 0, err[-2000:]
    assert reads > 10 and "done 120" in out
    assert len(FeatureStore(store).ids()) == 120 and FeatureStore(store).validate() == []
    assert json.loads((tmp_path / "f.failures.json").read_text()) == {"failed": [], "warnings": []}


def _create_and_write(path: str, name: str) -> None:
    store = FeatureStore.open_or_create(path, STORE_SETTINGS, {})
    store.write(name, np.ones((4, 6), np.float32), source_attrs())


@pytest.mark.slow
def test_two_processes_creating_the_same_new_store_both_succeed(tmp_path):
    context = get_context("spawn")
    for attempt in range(6):
        path = str(tmp_path / f"new{attempt}.h5")
        workers = [context.Process(target=_create_and_write, args=(path, f"{who}.avi")) for who in "ab"]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert [w.exitcode for w in workers] == [0, 0]
        assert FeatureStore(path).ids() == ["a.avi", "b.avi"]
    assert not list(tmp_path.glob(".*creating*"))


def test_a_store_open_in_another_process_is_waited_for_not_failed(tmp_path, monkeypatch):
    store = FeatureStore.open_or_create(tmp_path / "f.h5", STORE_SETTINGS, {})
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               f"f = h5py.File({str(store.path)!r}, 'a'); print('open', flush=True); time.sleep(1.5)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    began = time.time()
    store.write("a.avi", np.zeros((4, 6), np.float32), source_attrs())  # waits for the other writer's close
    assert time.time() - began > 0.5 and store.ids() == ["a.avi"]
    holder.wait()
    monkeypatch.setattr(store_module, "LOCK_WAIT", 0.3)
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, time\n"
                               f"f = h5py.File({str(store.path)!r}, 'a'); print('open', flush=True); time.sleep(5)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    with pytest.raises(StoreError, match="locked by another process"):
        store.ids()
    holder.kill()
    holder.wait()


# -- a write that fails between its steps -------------------------------------------------------------------


def test_a_write_failing_between_its_steps_leaves_no_entry_and_stops_the_run_without_loss(tmp_path, monkeypatch):
    raw, path = copy_clips(SMALL_CLIPS, tmp_path / "raw"), tmp_path / "f.h5"
    real_update, writes = h5py.AttributeManager.update, []

    def failing_update(self, *args, **kwargs):  # the array is written; its attributes fail on the third clip
        writes.append("source_size" in (args[0] if args else kwargs))
        if sum(writes) == 3 and writes[-1]:
            raise OSError("Unable to synchronously create attribute (object header message is too large)")
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(h5py.AttributeManager, "update", failing_update)
    with pytest.raises(StoreError, match="could not be written .* the store holds everything written before it"):
        extract(lite_config(raw, path))
    store = FeatureStore(path)
    assert store.ids() == sorted(p.name for p in SMALL_CLIPS)[:2], "the two finished clips stay, whole"
    assert store.validate() == []
    monkeypatch.setattr(h5py.AttributeManager, "update", real_update)
    summary = extract(lite_config(raw, path))
    assert len(summary.skipped) == 2 and len(summary.done) == 2 and not summary.failed


def test_an_entry_without_its_source_attributes_is_not_current(tmp_path):
    raw, path = copy_clips(SMALL_CLIPS[:2], tmp_path / "raw"), tmp_path / "f.h5"
    extract(lite_config(raw, path))
    with h5py.File(path, "a") as f:
        for key in ("indices", "decoder"):
            del f["features"][SMALL_CLIPS[0].name].attrs[key]
    summary = extract(lite_config(raw, path))
    assert summary.done == [SMALL_CLIPS[0].name] and summary.skipped == [SMALL_CLIPS[1].name]
    assert FeatureStore(path).validate() == []


def test_a_write_killed_halfway_leaves_only_an_incomplete_entry_that_the_next_run_redoes(tmp_path):
    raw, path = copy_clips(SMALL_CLIPS[:2], tmp_path / "raw"), tmp_path / "f.h5"
    extract(lite_config(raw, path))
    with h5py.File(path, "a") as f:  # what a kill between the array and the move leaves
        f.move(f"features/{SMALL_CLIPS[1].name}", f"incomplete/{SMALL_CLIPS[1].name}")
    store = FeatureStore(path)
    assert store.ids() == [SMALL_CLIPS[0].name]
    assert any("interrupted write" in p for p in store.validate())
    summary = extract(lite_config(raw, path))
    assert summary.done == [SMALL_CLIPS[1].name] and FeatureStore(path).validate() == []


def test_frame_counts_whose_indices_cannot_be_stored_are_refused_up_front(tmp_path):
    with pytest.raises(ConfigError, match=r"--frames \(make: FRAMES\) must be below 4097, not 10000"):
        ExtractConfig(raw=str(tmp_path), features=str(tmp_path / "f.h5"), frames=10000)
    proc = subprocess.run(["make", "-s", "features", f"RAW={tmp_path}", f"FEATURES={tmp_path / 'f.h5'}",
                           "FRAMES=10000", "BACKBONE=efficientnet_lite0"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "must be below 4097" in proc.stderr and not (tmp_path / "f.h5").exists()
    settings = StoreSettings(**{**STORE_SETTINGS.__dict__, "frames": 4096})
    big = FeatureStore.open_or_create(tmp_path / "big.h5", settings, {})
    big.write("long.avi", np.zeros((4096, 6), np.float32), {**source_attrs(), "indices": np.arange(4096)})
    assert big.validate() == []


# -- bytes damaged inside ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "f.h5"
    store = FeatureStore.open_or_create(path, STORE_SETTINGS, {"torch": "x"})
    rng = np.random.default_rng(0)
    for i in range(40):
        store.write(f"clip_{i:02d}.avi", rng.standard_normal((4, 6)).astype(np.float32), source_attrs(i))
    return path


def test_damage_anywhere_in_a_store_is_reported_never_a_traceback(pristine_store, tmp_path, capsys):
    """A few KB of garbage at every offset of the file in turn: the validator reports what it finds, and every
    read either works or raises StoreError naming the file."""
    data = pristine_store.read_bytes()
    garbage = np.random.default_rng(1).bytes(2048)
    damaged = tmp_path / "damaged.h5"
    found = 0
    for offset in range(0, len(data), 1024):
        damaged.write_bytes(data[:offset] + garbage + data[offset + 2048:])
        status = store_module.main([str(damaged)])
        printed = capsys.readouterr()
        assert status in (0, 1, 2) and (status == 0) == printed.out.endswith("valid\n")
        found += status > 0
        try:
            store = FeatureStore(damaged)
            ids = store.ids()
            store.read_many(ids)
            store.sources()
            store.stamps()
        except StoreError as exc:
            assert str(damaged) in str(exc)
    assert found >= len(data) // 1024 // 4, f"damage was found at only {found} offsets"


def test_every_stage_reports_a_damaged_store_as_an_error_line(tmp_path, tiny_run):
    raw = copy_clips(SMALL_CLIPS[:2], tmp_path / "raw")
    path = tmp_path / "f.h5"
    extract(ExtractConfig(raw=str(raw), features=str(path), backbone="efficientnet_lite0", weights="imagenet",
                          frames=16, precision="fp32"))
    data = bytearray(path.read_bytes())
    for node in [i for i in range(len(data)) if data.startswith(b"SNOD", i)]:  # the nodes that list the videos
        data[node:node + 64] = np.random.default_rng(node).bytes(64)
    path.write_bytes(bytes(data))
    commands = [(store_module.main, str(path)),
                (features.main, "--raw", str(raw), "--features", str(path), "--backbone", "efficientnet_lite0",
                 "--frames", "16", "--precision", "fp32"),
                (training.main, "--features", str(path), "--labels", str(CLIPS_DIR / "labels.json"), "--run-dir",
                 str(tmp_path / "run"), "--epochs", "1", "--hidden", "16", "--embed", "16"),
                (evaluation.main, "--run-dir", str(tiny_run), "--features", str(path), "--references",
                 str(CLIPS_DIR / "labels.json"))]
    for main, *args in commands:
        proc = run_main(main, *args)
        assert "Traceback" not in proc.stderr, f"{main.__module__}: {proc.stderr[-1500:]}"
        assert proc.returncode in (1, 2) and str(path) in proc.stdout + proc.stderr, main.__module__


# -- inputs ---------------------------------------------------------------------------------------------------


def test_a_truncated_clip_is_a_failure_past_a_tenth_missing_and_a_warning_below(tmp_path, capsys):
    from pipeline.features import main as features_main

    raw = tmp_path / "raw"
    raw.mkdir()
    whole = SMALL_CLIPS[0].read_bytes()  # its header claims 210 frames
    (raw / "cut_most.avi").write_bytes(whole[:int(len(whole) * 0.3)])  # 64 of 210 decode
    (raw / "cut_end.avi").write_bytes(whole[:int(len(whole) * 0.95)])  # 203 of 210 decode
    path = tmp_path / "f.h5"
    assert features_main(["--raw", str(raw), "--features", str(path), "--backbone", "efficientnet_lite0",
                          "--weights", "random", "--frames", "8"]) == 1
    out = capsys.readouterr().out
    assert "1 with warnings" in out and "203 of the 210 frames its header claims decode" in out
    report = json.loads((tmp_path / "f.failures.json").read_text())
    assert [Path(f["file"]).name for f in report["failed"]] == ["cut_most.avi"]
    assert "only 64 of the 210 frames" in report["failed"][0]["reason"]
    assert [Path(w["file"]).name for w in report["warnings"]] == ["cut_end.avi"]
    source = FeatureStore(path).sources()["cut_end.avi"]
    assert int(source["n_frames"]) == 203 and int(source["claimed_frames"]) == 210
    assert FeatureStore(path).ids() == ["cut_end.avi"]


def test_things_named_like_clips_that_are_not_files_are_listed(tmp_path):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    (raw / "folder.avi").mkdir()
    (raw / "gone.avi").symlink_to(tmp_path / "nowhere.avi")
    summary = extract(lite_config(raw, tmp_path / "f.h5"))
    reasons = {Path(f["file"]).name: f["reason"] for f in summary.failed}
    assert reasons == {"folder.avi": "a folder, named like a video",
                       "gone.avi": f"a broken symbolic link (to {tmp_path / 'nowhere.avi'})"}
    assert summary.done == [SMALL_CLIPS[0].name]


@pytest.mark.parametrize("where, message", [
    ("RAW=file", "is a file: RAW is the folder that holds the clips"),
    ("FEATURES=folder", "is a folder: give the path of the .h5 file"),
    ("FEATURES=/etc/passwd/f.h5", "FEATURES: cannot write in /etc/passwd: /etc/passwd is a file, not a folder"),
])
def test_misplaced_paths_get_messages_that_say_what_is_wrong(tmp_path, where, message):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    variables = {"RAW": str(raw), "FEATURES": str(tmp_path / "f.h5")}
    name, value = where.split("=")
    variables[name] = {"file": str(SMALL_CLIPS[0]), "folder": str(tmp_path)}.get(value, value)
    proc = run_main(features.main, "--backbone", "efficientnet_lite0", "--weights", "random", "--frames", "4",
                    "--raw", variables["RAW"], "--features", variables["FEATURES"])
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _without_override(*command: str) -> list[str]:
    """`command` with permission bits applying even to root (whose capability to ignore them is dropped)."""
    if os.geteuid() != 0:
        return list(command)
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to test read-only folders as root"
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--", *command]


def test_outputs_that_cannot_be_written_are_named(tmp_path, clip_features, tiny_run):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    locked = tmp_path / "locked"
    locked.mkdir()
    store = locked / "f.h5"
    extract(lite_config(raw, store))
    run = locked / "run"
    shutil.copytree(tiny_run, run)
    locked.chmod(0o555)
    (run).chmod(0o555)
    try:
        train_args = ["--labels", str(CLIPS_DIR / "labels.json"), "--epochs", "1", "--hidden", "16", "--embed", "16"]
        cases = {
            "features": [*_extract_cmd(raw, locked / "new.h5")],
            "train": [sys.executable, "train.py", "--features", str(clip_features), "--run-dir",
                      str(locked / "new_run"), *train_args],
            "train into /etc/passwd": [sys.executable, "train.py", "--features", str(clip_features), "--run-dir",
                                       "/etc/passwd/run", *train_args],
            "eval": [sys.executable, "evaluate.py", "--run-dir", str(run), "--features", str(clip_features),
                     "--references", str(CLIPS_DIR / "labels.json")],
        }
        for name, command in cases.items():
            proc = subprocess.run(_without_override(*command), cwd=ROOT, capture_output=True, text=True)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, f"{name}: {proc.stderr[-1500:]}"
            assert "cannot write in" in proc.stderr, f"{name}: {proc.stderr[-500:]}"
        (locked / "f.h5").chmod(0o444)
        locked.chmod(0o755)
        proc = subprocess.run(_without_override(*_extract_cmd(copy_clips(SMALL_CLIPS[1:2], raw), store)), cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "cannot be written" in proc.stderr and "move it away" not in proc.stderr
        assert FeatureStore(store).ids() == [SMALL_CLIPS[0].name]
    finally:
        locked.chmod(0o755)
        run.chmod(0o755)


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size (make: BATCH) must be at least 1, not 0"),
    (["--batch-size", "-4"], "--batch-size (make: BATCH) must be at least 1, not -4"),
    (["--epochs", "0"], "--epochs (make: EPOCHS) must be at least 1, not 0"),
    (["--max-len", "0"], "--max-len must be at least 1, not 0"),
    (["--val-fraction", "1.5"], "--val-fraction must be below 1, not 1.5"),
    (["--dropout", "-0.1"], "--dropout must be at least 0, not -0.1"),
])
def test_numeric_training_options_are_checked_where_parsed(tmp_path, clip_features, args, message):
    proc = run_main(training.main, "--features", str(clip_features), "--labels", str(CLIPS_DIR / "labels.json"),
                    "--run-dir", str(tmp_path / "run"), *args)
    assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "run").exists(), proc.stderr
    with pytest.raises(ConfigError, match=message.split(" (")[0]):
        TrainConfig(**{args[0][2:].replace("-", "_"): type(getattr(TrainConfig(), args[0][2:].replace("-", "_")))(
            float(args[1]))})


@pytest.mark.parametrize("command", [
    ["evaluate", "--beam", "0"], ["evaluate", "--beam", "-1"], ["caption", "x.avi", "--beam", "0"]])
def test_a_beam_below_one_is_an_error_line(command):
    proc = run_main({"evaluate": evaluation.main, "caption": caption_files.main}[command[0]], *command[1:])
    assert proc.returncode == 2 and "--beam" in proc.stderr and "at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_no_op_training_run_leaves_the_run_untouched(tmp_path, clip_features, capsys):
    run = tmp_path / "run"
    cfg = dict(features=str(clip_features), labels=str(CLIPS_DIR / "labels.json"), run_dir=str(run), epochs=2,
               hidden=16, embed=16, val_fraction=0)
    train(TrainConfig(**cfg))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    train(TrainConfig(**{**cfg, "lr": 0.5, "epochs": 1}))
    assert "already trained 2 epochs" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# -- a GPU out of memory -------------------------------------------------------------------------------------


def _out_of_memory(after: int):
    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fail.real(*args, **kwargs)
    return fail


def test_out_of_memory_in_training_names_batch_and_keeps_finished_epochs(tmp_path, clip_features, monkeypatch):
    from pipeline import train_step

    fail = _out_of_memory(after=3)  # 1 step per epoch at this size: the fourth epoch runs out
    fail.real = train_step.TrainStep.__call__
    monkeypatch.setattr(train_step.TrainStep, "__call__", lambda self, *a: fail(self, *a))
    run = tmp_path / "run"
    cfg = TrainConfig(features=str(clip_features), labels=str(CLIPS_DIR / "labels.json"), run_dir=str(run),
                      epochs=6, hidden=16, embed=16, batch_size=64, val_fraction=0)
    with pytest.raises(PipelineError, match=r"out of memory training with BATCH=64: lower BATCH \(e.g. BATCH=32\); "
                                            r".*last.pt holds the 3 epochs finished"):
        train(cfg)
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    assert [row["epoch"] for row in train(cfg)] == list(range(6)), "the next run resumes after them"


def test_out_of_memory_in_extraction_names_batch_and_keeps_finished_clips(tmp_path, monkeypatch):
    from pipeline import features

    fail = _out_of_memory(after=2)
    fail.real = features.encode_frames
    monkeypatch.setattr(features, "encode_frames", fail)
    raw, path = copy_clips(SMALL_CLIPS, tmp_path / "raw"), tmp_path / "f.h5"
    with pytest.raises(PipelineError, match=r"out of memory encoding 16 frames at once: lower BATCH .*BATCH=8"):
        extract(lite_config(raw, path))
    assert FeatureStore(path).ids() == sorted(p.name for p in SMALL_CLIPS)[:2]


# -- a refused label file ------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("text", [b'[{"id": "a.avi", "caption": ["un caf\xe9"]}]', b'[{"id": "a.avi" "caption": []}]'],
                         ids=["not-utf8", "malformed-json"])
def test_a_refused_label_file_leaves_no_run_folder_and_an_existing_one_untouched(tmp_path, clip_features, tiny_run,
                                                                                   text):
    labels = tmp_path / "labels.json"
    labels.write_bytes(text)
    existing = tmp_path / "existing"
    shutil.copytree(tiny_run, existing)
    before = _files(existing)
    for run in (tmp_path / "runs" / "new", existing):
        proc = run_main(training.main, "--features", str(clip_features), "--labels", str(labels), "--run-dir",
                        str(run), "--epochs", "61")
        assert proc.returncode == 2 and f"error: {labels}" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists(), "nothing is created for a run refused at its start"
    assert _files(existing) == before


# -- one training per run folder -----------------------------------------------------------------------------


def test_a_second_training_of_a_run_is_refused_untouched_while_evaluation_still_reads_it(tmp_path, clip_features,
                                                                                          tiny_run):
    run, labels = tmp_path / "run", str(CLIPS_DIR / "labels.json")
    shutil.copytree(tiny_run, run)
    before = _files(run)
    # What a first training holds for its whole run; the lock is taken on an open of its own, so it is refused
    # within one process too, as it is between two.
    with training.run_lock(run):
        second = run_main(training.main, "--features", str(clip_features), "--labels", labels, "--run-dir", str(run),
                          "--epochs", "200", "--lr", "0.01")
        assert (run / ".lock").read_text() == str(os.getpid())
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"error: RUN {run} is in use by process {os.getpid()} (another training writing it): wait for it to " \
           f"finish, or pass another RUN folder" in second.stderr
    assert _files(run) == before, "config.json, the checkpoints and metrics.csv are untouched"
    with training.run_lock(run):
        evaluated = run_main(evaluation.main, "--run-dir", str(run), "--features", str(clip_features),
                             "--references", labels)
    assert evaluated.returncode == 0 and (run / "scores.json").is_file(), evaluated.stderr


# -- a full disk ---------------------------------------------------------------------------------------------


class _FailingFile(io.RawIOBase):
    """A file whose writes fail with `code` past its first kilobyte, as on a disk that fills or fails."""

    def __init__(self, code: int):
        self.code, self.written = code, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > 1024:
            raise OSError(self.code, os.strerror(self.code))
        return len(data)


FULL = "no space left on the device to write {last}: free some space"


@pytest.mark.parametrize("target, reason", [
    pytest.param(lambda: open("/dev/full", "wb"), FULL, id="dev-full",  # the kernel's own ENOSPC
                 marks=pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")),
    pytest.param(lambda: _FailingFile(errno.ENOSPC), FULL, id="ENOSPC"),
    pytest.param(lambda: _FailingFile(errno.EIO), "{last} could not be written (Input/output error)", id="EIO"),
])
def test_a_checkpoint_that_cannot_be_written_names_run_and_the_reason_and_keeps_the_finished_epochs(
        tmp_path, clip_features, monkeypatch, target, reason):
    run, labels = tmp_path / "run", str(CLIPS_DIR / "labels.json")
    cfg = TrainConfig(features=str(clip_features), labels=labels, run_dir=str(run), epochs=2, hidden=16, embed=16,
                      val_fraction=0)
    train(cfg)
    real_save = torch.save
    # torch's own writer into that file: a failed write surfaces as an OSError, or as its RuntimeError
    # "unexpected pos ..." raised over one
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, target()))
    proc = run_main(training.main, "--features", str(clip_features), "--labels", labels, "--run-dir", str(run),
                    "--epochs", "4", "--hidden", "16", "--embed", "16", "--val-fraction", "0")
    monkeypatch.undo()
    last = run / "last.pt"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"error: RUN: {reason.format(last=last)}; {last} holds the 2 epochs finished, and the next run " \
           f"resumes from there" in proc.stderr
    assert load_checkpoint(last)["epoch"] == 2 and not list(run.glob(".*tmp*"))
    assert [row["epoch"] for row in train(TrainConfig(**{**cfg.__dict__, "epochs": 4}))] == [0, 1, 2, 3]


# -- what make eval says -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_empty_captions_are_reported_alike_by_make_eval_and_by_scoring_its_captions_file(tmp_path, clip_features,
                                                                                           tiny_run, monkeypatch):
    run, labels = tmp_path / "run", str(CLIPS_DIR / "labels.json")
    shutil.copytree(tiny_run, run)
    monkeypatch.setattr(evaluation, "caption_videos", lambda model, vocab, store, ids, cfg: dict.fromkeys(ids, ""))
    evaluated = run_main(evaluation.main, "--run-dir", str(run), "--features", str(clip_features),
                         "--references", labels)
    scored = run_main(evaluation.main, "--predictions", str(run / "captions.txt"), "--references", labels)
    assert evaluated.returncode == scored.returncode == 0, evaluated.stderr + scored.stderr
    names = sorted(p.name for p in SMALL_CLIPS)
    said = [[line for line in proc.stderr.splitlines() if "empty captions" in line] for proc in (evaluated, scored)]
    assert said[0] == said[1] == [f"warning: {run / 'captions.txt'}: 4 empty captions (e.g. {names[:3]}) score 0"]


# -- values that are not numbers ------------------------------------------------------------------------------


def _poisoned_copy(clip_features: Path, folder: Path) -> tuple[Path, list[str]]:
    """A copy of `clip_features` where, written with plain h5py, one video holds NaN and another +Inf."""
    path = Path(shutil.copy(clip_features, folder / "poisoned.h5"))
    bad = [SMALL_CLIPS[1].name, SMALL_CLIPS[2].name]
    with h5py.File(path, "a") as f:
        f["features"][bad[0]][3, 5] = np.nan
        f["features"][bad[1]][:, 0] = np.inf
    return path, bad


def test_non_finite_features_in_a_store_are_refused_by_every_stage_naming_the_video(tmp_path, clip_features,
                                                                                     tiny_run):
    path, bad = _poisoned_copy(clip_features, tmp_path)
    with pytest.raises(StoreError) as refused:
        FeatureStore(path).read_many(sorted(p.name for p in SMALL_CLIPS))
    assert str(path) in str(refused.value) and all(f"{vid}: non-finite values" in str(refused.value) for vid in bad)
    checked = run_main(store_module.main, str(path))
    assert checked.returncode == 1 and all(f"problem: {vid}: non-finite values" in checked.stdout for vid in bad)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = _files(run)
    train_args = ["--features", str(path), "--labels", str(CLIPS_DIR / "labels.json"), "--epochs", "1",
                  "--hidden", "16", "--embed", "16", "--val-fraction", "0"]
    commands = {"train": (training.main, *train_args, "--run-dir", str(tmp_path / "new")),
                "train, features read batch by batch": (training.main, *train_args, "--run-dir",
                                                         str(tmp_path / "big"), "--feature-memory", "1e-9"),
                "eval": (evaluation.main, "--run-dir", str(run), "--features", str(path), "--references",
                         str(CLIPS_DIR / "labels.json")),
                "captions": (evaluation.main, "--all", "--run-dir", str(run), "--features", str(path))}
    printed = {}
    for name, (main, *args) in commands.items():
        proc = run_main(main, *args)
        error = proc.stderr.splitlines()[-1]
        assert proc.returncode == 2 and error.startswith(f"error: {path}: "), f"{name}: {proc.stderr[-1500:]}"
        assert all(f"{vid}: non-finite values" in error for vid in bad), f"{name}: {error}"
        assert "touch their clips in RAW and run `make features`" in error, error
        printed[name] = proc.stdout
    assert "batch by batch" in printed["train, features read batch by batch"]
    assert not any("Epoch 0" in printed[name] for name in printed if name.startswith("train"))
    assert not list((tmp_path / "new").glob("*.pt")) and not list((tmp_path / "big").glob("*.pt"))
    assert _files(run) == before, "eval and captions refused before writing anything into the run"


def test_a_backbone_giving_non_finite_features_fails_that_clip_in_extraction_and_in_caption_py(tmp_path, tiny_run,
                                                                                                monkeypatch):
    encoded = []

    def overflowing(real):  # the second clip's features overflow, as a backbone at fp16 can
        def encode(*args, **kwargs):
            out = real(*args, **kwargs)
            encoded.append(1)
            return out + np.inf if len(encoded) == 2 else out
        return encode

    monkeypatch.setattr(features, "encode_frames", overflowing(features.encode_frames))
    raw, path = copy_clips(SMALL_CLIPS[:3], tmp_path / "raw"), tmp_path / "f.h5"
    proc = run_main(features.main, "--raw", str(raw), "--features", str(path), "--backbone", "efficientnet_lite0",
                    "--weights", "random", "--frames", "4")
    assert proc.returncode == 1 and f"failed: {raw / SMALL_CLIPS[1].name}: the backbone gave non-finite" in proc.stdout
    failed = json.loads((tmp_path / "f.failures.json").read_text())["failed"]
    assert [Path(f["file"]).name for f in failed] == [SMALL_CLIPS[1].name]
    assert "NaN or infinite" in failed[0]["reason"] and "PRECISION=fp32" in failed[0]["reason"]
    assert FeatureStore(path).ids() == [SMALL_CLIPS[0].name, SMALL_CLIPS[2].name]
    encoded.clear()
    monkeypatch.setattr(caption_files, "encode_clip", overflowing(caption_files.encode_clip))
    proc = run_main(caption_files.main, str(SMALL_CLIPS[0]), str(SMALL_CLIPS[1]), "--run-dir", str(tiny_run))
    assert proc.returncode == 1 and proc.stdout.startswith(f"{SMALL_CLIPS[0].name},") and len(proc.stdout.split()) > 1
    assert f"could not caption {SMALL_CLIPS[1]}: the backbone gave non-finite features" in proc.stderr


def _tiny_training(run: Path, clip_features: Path, *more: str) -> list[str]:
    return ["--features", str(clip_features), "--labels", str(CLIPS_DIR / "labels.json"), "--run-dir", str(run),
            "--hidden", "16", "--embed", "16", "--batch-size", "2", "--val-fraction", "0", *more]


def test_a_loss_turning_non_finite_stops_training_naming_epoch_and_step_and_keeps_last_pt(tmp_path, clip_features,
                                                                                           monkeypatch):
    real_batches, given = training.batches, []

    def poisoned(data, rows, size):  # 2 steps an epoch (4 videos, a caption each, 2 a batch): the fifth step's
        for tokens, batch in real_batches(data, rows, size):  # features are NaN, as a diverging model's are
            given.append(1)
            yield tokens, batch * np.nan if len(given) == 5 else batch

    monkeypatch.setattr(training, "batches", poisoned)
    run = tmp_path / "run"
    proc = run_main(training.main, *_tiny_training(run, clip_features, "--epochs", "4"))
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert proc.stderr.splitlines()[-1] == (f"error: training diverged: the loss became nan at epoch 2, step 1 of 2, "
                                            f"so the run stopped; {run / 'last.pt'} holds the 2 epochs finished "
                                            f"before it, untouched. Run again with a lower --lr (this run's: 0.001) "
                                            f"to resume from there")
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and all(torch.isfinite(t).all() for t in last["model"].values())
    assert len((run / "metrics.csv").read_text().splitlines()) == 3 and "run: " not in proc.stdout
    monkeypatch.setattr(training, "batches", real_batches)
    proc = run_main(training.main, *_tiny_training(run, clip_features, "--epochs", "4"))
    assert proc.returncode == 0 and "resuming" in proc.stdout and len(load_checkpoint(run / "last.pt")["history"]) == 4


def test_weights_turning_non_finite_with_finite_losses_stop_training_too(tmp_path, clip_features, monkeypatch):
    from pipeline import train_step

    real_step, steps = train_step.TrainStep.__call__, []

    def overflowing(self, *args):  # the last step of epoch 1 leaves a weight infinite, its loss finite
        loss = real_step(self, *args)
        steps.append(1)
        if len(steps) == 4:
            next(self.model.parameters()).data[0] = np.inf
        return loss

    monkeypatch.setattr(train_step.TrainStep, "__call__", overflowing)
    run = tmp_path / "run"
    proc = run_main(training.main, *_tiny_training(run, clip_features, "--epochs", "3"))
    assert proc.returncode == 2 and "the weights became NaN or infinite in epoch 1" in proc.stderr, proc.stderr
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_a_checkpoint_holding_non_finite_weights_is_refused_naming_it(tmp_path, clip_features, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    next(iter(checkpoint["model"].values()))[0] = float("nan")
    torch.save(checkpoint, run / "best.pt")
    for main, *args in [(evaluation.main, "--features", str(clip_features), "--references",
                         str(CLIPS_DIR / "labels.json")),
                        (evaluation.main, "--all", "--features", str(clip_features)),
                        (caption_files.main, str(SMALL_CLIPS[0]))]:
        proc = run_main(main, *args, "--run-dir", str(run))
        assert proc.returncode == 2 and f"error: {run / 'best.pt'}: its weights hold NaN or infinite" in proc.stderr


def test_the_last_line_of_a_run_lists_only_the_files_it_wrote(tmp_path, clip_features, monkeypatch):
    monkeypatch.setattr(training, "course_bleu1", lambda *args: float("nan"))  # no epoch improves: no best.pt
    run = tmp_path / "run"
    proc = run_main(training.main, *_tiny_training(run, clip_features, "--epochs", "1", "--val-fraction", "0.5"))
    assert proc.returncode == 0 and not (run / "best.pt").exists()
    assert proc.stdout.splitlines()[-1] == f"run: {run} (last.pt, metrics.csv, curves.png, schedule.png)"


# -- values damaged inside: checksums -------------------------------------------------------------------------


def test_values_damaged_inside_a_video_fail_its_checksum_at_every_stage(tmp_path, clip_features, tiny_run):
    path = Path(shutil.copy(clip_features, tmp_path / "rotted.h5"))
    victim = SMALL_CLIPS[2].name
    with h5py.File(path, "r") as f:
        chunk = f["features"][victim].id.get_chunk_info(0)  # the video's values: one chunk, and its checksum
    with path.open("r+b") as f:  # 4 KB in the middle of its values rot
        f.seek(chunk.byte_offset + chunk.size // 2)
        f.write(np.random.default_rng(0).bytes(4096))
    damaged = f"{victim}: damaged: its checksum does not match"
    store = FeatureStore(path)
    with pytest.raises(StoreError, match=re.escape(f"{path}: video {damaged}; extract it again: touch its clip")):
        store.read_many(store.ids())
    others = [vid for vid in store.ids() if vid != victim]
    assert store.read_many(others).shape == (3, 16, 1280)
    checked = run_main(store_module.main, str(path))
    assert checked.returncode == 1 and f"problem: {damaged}" in checked.stdout and "1 problems" in checked.stdout
    assert "no checksums" not in checked.stdout
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for main, *args in [(training.main, *_tiny_training(tmp_path / "new", path, "--epochs", "1")),
                        (evaluation.main, "--run-dir", str(run), "--features", str(path), "--references",
                         str(CLIPS_DIR / "labels.json"))]:
        proc = run_main(main, *args)
        assert proc.returncode == 2 and f"error: {path}: video {damaged}" in proc.stderr, proc.stderr[-1500:]


def test_a_store_without_checksums_is_read_and_the_validator_says_damage_would_go_unseen(tmp_path):
    ids = ["a.avi", "b.avi"]
    path = tmp_path / "old.h5"
    FeatureStore.open_or_create(path, STORE_SETTINGS, {})
    with h5py.File(path, "a") as f:  # as stores were written before checksums: contiguous, no filter
        for i, vid in enumerate(ids):
            f["features"].create_dataset(vid, data=np.full((4, 6), i, np.float32)).attrs.update(source_attrs(i))
    store = FeatureStore(path)
    assert store.read_many(ids)[1, 0, 0] == 1 and store.without_checksums() == ids
    store.write("c.avi", np.ones((4, 6), np.float32), source_attrs(2))  # what a new extraction adds has them
    assert store.without_checksums() == ids
    checked = run_main(store_module.main, str(path))
    assert checked.returncode == 0 and checked.stdout.endswith("valid\n")
    assert "note: 2 videos have no checksums" in checked.stdout and "damage to their values cannot be detected" \
        in checked.stdout and "into a new FEATURES path" in checked.stdout


# -- names and reasons ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_clip_named_in_decomposed_unicode_matches_its_composed_label(tmp_path, recwarn):
    """macOS writes `café.avi` decomposed (NFD); labels typed on Linux say it composed (NFC), and both print
    alike: extraction, its skip pass, training, scoring, the report, caption.py and --predictions match them."""
    composed, decomposed = "caf\u00e9.avi", "cafe\u0301.avi"
    raw = copy_clips(SMALL_CLIPS[1:2], tmp_path / "raw")
    shutil.copy2(SMALL_CLIPS[0], raw / decomposed)
    given = {e["id"]: e["caption"] for e in json.loads((CLIPS_DIR / "labels.json").read_text())}
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"id": composed, "caption": given[SMALL_CLIPS[0].name]},
                                  {"id": SMALL_CLIPS[1].name, "caption": given[SMALL_CLIPS[1].name]}],
                                 ensure_ascii=False), encoding="utf-8")
    store, run = tmp_path / "f.h5", tmp_path / "run"
    assert sorted(extract(lite_config(raw, store)).done) == sorted([composed, SMALL_CLIPS[1].name])
    assert FeatureStore(store).ids() == sorted([composed, SMALL_CLIPS[1].name])
    again = extract(lite_config(raw, store))
    assert again.done == [] and sorted(again.skipped) == sorted([composed, SMALL_CLIPS[1].name])
    proc = run_main(training.main, "--features", str(store), "--labels", str(labels), "--run-dir", str(run),
                    "--epochs", "1", "--hidden", "16", "--embed", "16", "--val-fraction", "0", "--min-count", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_main(evaluation.main, "--run-dir", str(run), "--features", str(store), "--references", str(labels),
                    "--raw", str(raw))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [w for w in recwarn if "have no features" in str(w.message)]
    assert json.loads((run / "scores.json").read_text())["n_videos"] == 2
    report = (run / "report.html").read_text(encoding="utf-8")
    assert report.count("data:image/gif") == 2 and "clip not found" not in report
    proc = run_main(caption_files.main, str(raw / decomposed), "--run-dir", str(run))
    assert proc.returncode == 0 and proc.stdout.startswith(f"{composed},"), proc.stderr[-2000:]
    predictions = tmp_path / "predictions.txt"
    predictions.write_text(f"{decomposed},a woman is mixing\n{SMALL_CLIPS[1].name},a man cuts\n", encoding="utf-8")
    proc = run_main(evaluation.main, "--predictions", str(predictions), "--references", str(labels))
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copy2(SMALL_CLIPS[2], raw / composed)  # on Linux both names can be there: one id, so one is refused
    videos, unusable = features.find_videos(raw)
    assert [p.name for p in videos] == [SMALL_CLIPS[1].name, decomposed]
    assert unusable == [{"file": str(raw / composed), "reason": f"the same video id as {decomposed!r} (the names "
                         f"differ only in how their accents are encoded): rename or remove one"}]


_READ_EACH = """import sys
from pipeline.errors import PipelineError
from pipeline.labels import load_captions
from pipeline.video import read_clip
for read, path in (read_clip, sys.argv[1]), (load_captions, sys.argv[2]):
    try:
        read(path)
    except PipelineError as exc:
        print(exc)
"""


def test_a_clip_that_cannot_be_read_for_permissions_is_named_so(tmp_path):
    clip = shutil.copy(SMALL_CLIPS[0], tmp_path / "locked.avi")
    labels = shutil.copy(CLIPS_DIR / "labels.json", tmp_path / "locked.json")
    Path(clip).chmod(0)
    Path(labels).chmod(0)
    # root reads any file: the child gives up that right, so the permission bits apply to it as to a user
    proc = subprocess.run(_without_override(sys.executable, "-c", _READ_EACH, str(clip), str(labels)), cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    clip_line, labels_line = proc.stdout.splitlines()
    assert clip_line.startswith(f"{clip}: permission denied") and "cannot be opened" not in clip_line, clip_line
    assert labels_line.startswith(f"{labels}: permission denied"), labels_line


def test_caption_py_on_a_fifo_says_not_a_regular_file(tmp_path, clip_features, tiny_run):
    fifo = tmp_path / "pipe.avi"
    os.mkfifo(fifo)  # never opened: an open would wait for a writer
    proc = run_main(caption_files.main, str(fifo), str(SMALL_CLIPS[0]), "--run-dir", str(tiny_run))
    assert proc.returncode == 1 and proc.stdout.startswith(f"{SMALL_CLIPS[0].name},"), proc.stderr[-2000:]
    assert f"could not caption {fifo}: not a regular file" in proc.stderr and "no such file" not in proc.stderr
    proc = run_main(evaluation.main, "--predictions", str(fifo), "--references", str(CLIPS_DIR / "labels.json"))
    assert proc.returncode == 2 and f"{fifo}: not a regular file, where a captions file" in proc.stderr, proc.stderr
    proc = run_main(training.main, "--labels", str(fifo), "--features", str(clip_features), "--run-dir",
                    str(tmp_path / "run"))
    assert proc.returncode == 2 and f"{fifo}: not a regular file, where a label file" in proc.stderr, proc.stderr


class _RunsCode:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_checkpoint_holding_code_is_refused_without_advice_to_run_it(tmp_path, writer):
    import pickle

    marker, path = tmp_path / "ran", tmp_path / "best.pt"
    checkpoint = {"model": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(checkpoint, path)
    else:
        path.write_bytes(pickle.dumps(checkpoint))
    proc = run_main(caption_files.main, str(SMALL_CLIPS[0]), "--run-dir", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{path} is not a readable checkpoint: not a checkpoint of this project" in proc.stderr, proc.stderr
    assert "weights_only" not in proc.stderr and "False" not in proc.stderr, proc.stderr
    assert not marker.exists()
    (tmp_path / "weights.pth").write_bytes(path.read_bytes())
    proc = run_main(features.main, "--raw", str(tmp_path), "--features", str(tmp_path / "f.h5"), "--backbone",
                    "efficientnet_lite0", "--weights", str(tmp_path / "weights.pth"))
    assert proc.returncode == 2 and "is not a file of weights" in proc.stderr, proc.stderr[-2000:]
    assert "weights_only" not in proc.stderr and not marker.exists(), proc.stderr


@pytest.mark.parametrize("attribute", [b"backbone", b"format\0"])
def test_the_validator_says_what_a_store_damaged_near_its_start_still_holds(pristine_store, tmp_path, attribute):
    data = pristine_store.read_bytes()
    damaged = tmp_path / "damaged.h5"
    settings = data.find(attribute) - 8  # the header of the attribute's message, among the settings
    damaged.write_bytes(data[:settings] + b"\xff" * 8 + data[settings + 8:])
    proc = run_main(store_module.main, str(damaged))
    assert proc.returncode == 2 and "python -m pipeline.store" not in proc.stderr, proc.stderr
    assert proc.stdout.splitlines() == [f"readable: clip_{i:02d}.avi" for i in range(40)], proc.stdout
    assert f"{damaged} is damaged inside" in proc.stderr and "the features of 40 videos can still be read" in \
        proc.stderr and "extract again into a new store" in proc.stderr and "keep this file" in proc.stderr
    damaged.write_bytes(b"\0" * 64 + data[64:])  # the superblock
    proc = run_main(store_module.main, str(damaged))
    assert proc.returncode == 2 and "python -m pipeline.store" not in proc.stderr, proc.stderr
    assert f"{damaged} cannot be opened as HDF5" in proc.stderr and "nothing in it can be read; extract again " \
        "into a new store" in proc.stderr and proc.stdout == "", proc.stderr


@pytest.mark.parametrize("cut", ["in the middle", "after an entry", "inside a character"])
def test_a_label_file_cut_off_is_called_truncated(tmp_path, clip_features, cut):
    entries = [{"id": "caf\u00e9.avi", "caption": ["a man is eating"]}, *json.loads(
        (CLIPS_DIR / "labels.json").read_text())]
    whole = json.dumps(entries, ensure_ascii=False, indent=1).encode()
    end = {"in the middle": len(whole) // 2, "after an entry": whole.index(b"},") + 2,
           "inside a character": whole.index("\u00e9".encode()) + 1}[cut]
    labels = tmp_path / "labels.json"
    labels.write_bytes(whole[:end])
    proc = run_main(training.main, "--features", str(clip_features), "--labels", str(labels), "--run-dir",
                    str(tmp_path / "run"), "--epochs", "1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {labels} is truncated: it is cut off at byte {end:,}" in proc.stderr, proc.stderr
    assert "download or copy it again" in proc.stderr
    labels.write_bytes(whole.replace(b"},", b"}", 1))  # whole, but malformed (a comma missing): not truncated
    proc = run_main(training.main, "--features", str(clip_features), "--labels", str(labels), "--run-dir",
                    str(tmp_path / "run"), "--epochs", "1")
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and "truncated" not in proc.stderr

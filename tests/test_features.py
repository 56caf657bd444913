"""Extraction end to end: incremental runs, failures, killed runs, CLI and make."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePath

import numpy as np
import pytest
import torch

from conftest import ROOT, SMALL_CLIPS, copy_clips, lite_config, run_main, run_script
from pipeline.config import ExtractConfig
from pipeline.features import extract, main, split_current
from pipeline.store import FeatureStore


def _config(raw: Path, store: Path, **kw) -> ExtractConfig:
    """`lite_config` at 8 frames a clip."""
    return lite_config(raw, store, **{"frames": 8, **kw})


def test_incremental_runs(tmp_path):
    raw = copy_clips(SMALL_CLIPS[:2], tmp_path / "raw")
    store_path = tmp_path / "features" / "lite.h5"
    first = extract(_config(raw, store_path))
    assert sorted(first.done) == sorted(p.name for p in SMALL_CLIPS[:2]) and not first.failed
    before = FeatureStore(store_path).read(SMALL_CLIPS[0].name)

    second = extract(_config(raw, store_path))
    assert second.done == [] and len(second.skipped) == 2

    shutil.copy2(SMALL_CLIPS[2], raw / SMALL_CLIPS[2].name)  # a new clip dropped in
    third = extract(_config(raw, store_path))
    assert third.done == [SMALL_CLIPS[2].name] and len(third.skipped) == 2

    changed = raw / SMALL_CLIPS[1].name  # a clip replaced by another file of the same name
    shutil.copyfile(SMALL_CLIPS[3], changed)
    fourth = extract(_config(raw, store_path))
    assert fourth.done == [changed.name]

    store = FeatureStore(store_path)
    assert store.ids() == sorted(p.name for p in SMALL_CLIPS[:3])
    assert store.read(SMALL_CLIPS[0].name).shape == (8, 1280)
    np.testing.assert_array_equal(store.read(SMALL_CLIPS[0].name), before)
    assert int(store.sources()[changed.name]["n_frames"]) == 91  # now the 91-frame clip's content
    assert store.validate() == []


def test_failed_clips_are_reported_and_retried(tmp_path, capsys):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    (raw / "broken.avi").write_bytes(b"\x00" * 1000)
    (raw / "empty.avi").write_bytes(b"")
    store_path = tmp_path / "f.h5"
    args = ["--raw", str(raw), "--features", str(store_path), "--backbone", "efficientnet_lite0",
            "--weights", "random", "--frames", "8"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "failed 2" in out and "broken.avi" in out and "empty.avi" in out
    failures = json.loads((tmp_path / "f.failures.json").read_text())["failed"]
    assert {Path(f["file"]).name for f in failures} == {"broken.avi", "empty.avi"}
    assert all(f["reason"] for f in failures)
    assert FeatureStore(store_path).ids() == [SMALL_CLIPS[0].name]

    shutil.copy2(SMALL_CLIPS[1], raw / "broken.avi")  # the user fixes one clip
    (raw / "empty.avi").unlink()
    assert main(args) == 0
    assert "done 1, skipped 1" in capsys.readouterr().out
    assert json.loads((tmp_path / "f.failures.json").read_text()) == {"failed": [], "warnings": []}
    config = json.loads((tmp_path / "f.config.json").read_text())
    assert config["config"]["backbone"] == "efficientnet_lite0" and config["summary"]["done"] == ["broken.avi"]


def test_changed_clip_that_fails_loses_its_old_features(tmp_path):
    raw = copy_clips(SMALL_CLIPS[:2], tmp_path / "raw")
    store_path = tmp_path / "f.h5"
    extract(_config(raw, store_path))
    (raw / SMALL_CLIPS[1].name).write_bytes(b"now broken")
    summary = extract(_config(raw, store_path))
    assert [Path(f["file"]).name for f in summary.failed] == [SMALL_CLIPS[1].name]
    assert FeatureStore(store_path).ids() == [SMALL_CLIPS[0].name]


def test_the_skip_decision_looks_at_each_clip_once_and_compares_no_two_paths(tmp_path, monkeypatch):
    """A first run over 10,000 clips spent 27 s of its setup asking, for each clip, whether it was among those
    to do (a list of paths): 50 million path comparisons. The decision is one pass now."""
    raw = tmp_path / "raw"
    raw.mkdir()
    videos = [raw / f"c{i:03d}.avi" for i in range(300)]
    for i, path in enumerate(videos):
        path.write_bytes(b"x" * i)
    stamps = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in videos[::2]}  # every other one is done
    stamps[videos[0].name] = (0, 1)  # changed since
    stamps[videos[2].name] = None  # its entry lacks a source attribute
    compared = []
    monkeypatch.setattr(PurePath, "__eq__", lambda self, other: compared.append(other) or self is other)
    todo, current = split_current(videos, stamps)
    assert todo == [p for i, p in enumerate(videos) if i % 2 or i < 3]
    assert current == [p.name for i, p in enumerate(videos) if i % 2 == 0 and i >= 4]
    assert compared == []


@pytest.mark.parametrize("option,value,message", [("--decoder", "ffmpeg", "invalid choice: 'ffmpeg'"),
                                                   ("--dtype", "float64", "invalid choice: 'float64'"),
                                                   ("--frames", "0", "--frames (make: FRAMES) must be at least 1")])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys, option, value, message):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    args = ["--raw", str(raw), "--features", str(tmp_path / "f.h5"), "--backbone", "efficientnet_lite0",
            "--weights", "random", option, value]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err and not (tmp_path / "f.h5").exists()


def test_store_of_another_setting_is_refused(tmp_path, capsys):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    store_path = tmp_path / "f.h5"
    extract(_config(raw, store_path))
    args = ["--raw", str(raw), "--features", str(store_path), "--backbone", "efficientnet_lite0",
            "--weights", "random", "--frames", "16"]
    assert main(args) == 2
    assert "frames: 8 here, 16 there" in capsys.readouterr().err


def test_vgg16_gives_80_by_4096(tmp_path):
    raw = copy_clips(SMALL_CLIPS[3:4], tmp_path / "raw")  # the 91-frame clip
    summary = extract(_config(raw, tmp_path / "vgg.h5", backbone="vgg16", frames=80))
    assert summary.done == [SMALL_CLIPS[3].name]
    x = FeatureStore(tmp_path / "vgg.h5").read(SMALL_CLIPS[3].name)
    assert x.shape == (80, 4096) and x.dtype == np.float32 and np.isfinite(x).all()
    assert (x >= 0).all(), "fc7 is taken after its ReLU"


def test_efficientnet_lite0_gives_80_by_1280(tmp_path):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    extract(_config(raw, tmp_path / "lite.h5", weights="imagenet", frames=80))
    x = FeatureStore(tmp_path / "lite.h5").read(SMALL_CLIPS[0].name)
    assert x.shape == (80, 1280) and x.dtype == np.float32 and np.isfinite(x).all()


def _watch_progress(proc: subprocess.Popen, seen: list[int]) -> None:
    """Track the largest 'N/total' count tqdm printed on the child's stderr."""
    buffer = b""
    while chunk := proc.stderr.read1(4096):
        buffer = (buffer + chunk)[-4096:]
        counts = [int(m) for m in re.findall(rb"\| *(\d+)/\d+ \[", buffer)]
        if counts:
            seen.append(max(counts))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
@pytest.mark.slow
def test_killed_run_leaves_a_valid_store_and_resumes(tmp_path, sig):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(10):  # ten clips under distinct names
        shutil.copy2(SMALL_CLIPS[i % 2], raw / f"clip{i:02d}.avi")
    store_path = tmp_path / "f.h5"
    cmd = [sys.executable, "extract_features.py", "--raw", str(raw), "--features", str(store_path),
           "--backbone", "efficientnet_lite0", "--weights", "random", "--frames", "48", "--precision", "fp32",
           "--batch", "48"]  # slow enough (about 1 s a clip) that the signal lands mid-run
    # A shell's background jobs start with SIGINT ignored, and Python keeps it so: restore the default,
    # so that the signal reaches the run as a Ctrl-C at a terminal would however the tests were started.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[int] = []
    watcher = threading.Thread(target=_watch_progress, args=(proc, seen), daemon=True)
    watcher.start()
    deadline = time.time() + 120
    while (not seen or seen[-1] < 3) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    completed_before_kill = seen[-1]
    proc.send_signal(sig)
    proc.wait(timeout=60)
    watcher.join(timeout=10)
    if sig == signal.SIGINT:
        assert proc.returncode == 130

    store = FeatureStore(store_path)
    assert store.validate() == []
    kept = store.ids()
    assert completed_before_kill <= len(kept) < 10

    done = run_script(*cmd[1:], check=True)
    assert f"done {10 - len(kept)}, skipped {len(kept)}" in done.stdout
    assert FeatureStore(store_path).ids() == [f"clip{i:02d}.avi" for i in range(10)]


def test_cli_help_lists_every_option():
    out = run_main(main, "--help").stdout
    for option in ("--raw", "--features", "--backbone", "--frames", "--weights", "--device", "--batch",
                   "--decoder", "--dtype"):
        assert option in out


def _grouped_like_a_gpu(monkeypatch) -> list[int]:
    """Make the CPU pass several clips' frames through the backbone at once, as a GPU does; returns the
    frame count of every pass."""
    from pipeline import features

    passes = []
    real = features.encode_frames

    def counted(backbone, frames, batch):
        passes.append(len(frames))
        return real(backbone, frames, batch)
    monkeypatch.setattr(features, "GROUPED_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(features, "encode_frames", counted)
    return passes


def test_a_pass_takes_several_clips_up_to_batch_frames_and_each_clip_gets_its_own_features(tmp_path, monkeypatch):
    raw = copy_clips(SMALL_CLIPS, tmp_path / "raw")
    (raw / "broken.avi").write_bytes(b"\x00" * 1000)  # sorted between the clips: failures do not break a group
    alone = extract(_config(raw, tmp_path / "alone.h5", batch=20))
    passes = _grouped_like_a_gpu(monkeypatch)
    grouped = extract(_config(raw, tmp_path / "grouped.h5", batch=20))
    assert passes == [16, 16], "8 distinct frames a clip, at most 20 a pass: two clips each"
    assert grouped.done == alone.done and [f["file"] for f in grouped.failed] == [str(raw / "broken.avi")]
    for video_id in grouped.done:
        np.testing.assert_allclose(FeatureStore(tmp_path / "grouped.h5").read(video_id),
                                   FeatureStore(tmp_path / "alone.h5").read(video_id), rtol=1e-4, atol=1e-5)


def test_when_a_pass_fails_the_pass_before_it_is_still_written(tmp_path, monkeypatch):
    from pipeline import features
    from pipeline.errors import PipelineError

    _grouped_like_a_gpu(monkeypatch)
    counted, calls = features.encode_frames, []

    def out_of_memory_in_the_second_pass(backbone, frames, batch):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return counted(backbone, frames, batch)
    monkeypatch.setattr(features, "encode_frames", out_of_memory_in_the_second_pass)
    raw, store = copy_clips(SMALL_CLIPS, tmp_path / "raw"), tmp_path / "f.h5"
    with pytest.raises(PipelineError, match="out of memory encoding 20 frames at once"):
        extract(_config(raw, store, batch=20))
    assert FeatureStore(store).ids() == sorted(p.name for p in SMALL_CLIPS)[:2], "the first pass's two clips"


def test_the_nvdec_decoder_is_refused_without_a_gpu_saying_what_it_needs(tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="DECODER=nvdec decodes on the GPU: it needs DEVICE=cuda"):
        extract(_config(copy_clips(SMALL_CLIPS[:1], tmp_path / "raw"), tmp_path / "f.h5", decoder="nvdec",
                        device="cpu"))


def test_a_clip_decoded_on_the_cpu_instead_of_nvdec_is_a_warning_and_records_its_decoder(tmp_path, monkeypatch):
    from pipeline import features, video
    from pipeline.backbones import load_backbone

    def no_nvdec(path, gpu):
        raise video.NvdecError("NVDEC has no decoder for its video stream")
    monkeypatch.setattr(video, "_NvdecReader", no_nvdec)
    backbone = load_backbone("efficientnet_lite0", "random")
    decoded = features._decode(SMALL_CLIPS[0], _config(tmp_path, tmp_path / "f.h5", decoder="nvdec"), backbone)
    assert decoded.failure is None and decoded.prepared.source["decoder"] == video.DEFAULT_CPU_DECODER
    assert decoded.warning == f"decoded on the CPU ({video.DEFAULT_CPU_DECODER}): NVDEC has no decoder for its " \
                              f"video stream"


def test_the_summary_names_the_decoder(tmp_path):
    from pipeline.video import DEFAULT_CPU_DECODER

    summary = extract(_config(copy_clips(SMALL_CLIPS[:1], tmp_path / "raw"), tmp_path / "f.h5"))
    assert summary.decoder == DEFAULT_CPU_DECODER and f"decoded by {DEFAULT_CPU_DECODER})" in summary.line()


def test_only_a_gpus_decoding_threads_run_pytorch_single_threaded(tmp_path, monkeypatch):
    """Feeding a GPU, sixteen decoding threads resize at once: one PyTorch thread per operation, the setting
    put back after. A CPU backbone keeps its threads, whatever the number of decoding threads."""
    import torch
    from pipeline import features

    seen = []
    real = features.encode_frames

    def counted(backbone, frames, batch):
        seen.append(torch.get_num_threads())
        return real(backbone, frames, batch)
    monkeypatch.setattr(features, "encode_frames", counted)
    before = torch.get_num_threads()
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    extract(_config(raw, tmp_path / "cpu.h5", workers=3))
    monkeypatch.setattr(features, "GROUPED_DEVICES", ("cuda", "cpu"))  # the CPU taken for a GPU
    extract(_config(raw, tmp_path / "gpu.h5", workers=3))
    assert seen == [before, 1] and torch.get_num_threads() == before

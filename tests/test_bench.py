"""`make bench` runs every benchmark and writes the keys `docs/performance.md` names.

At `--quick` sizes (one repetition, tiny workloads) only: the figures themselves are
measured by `make bench`, never asserted here.
"""

from __future__ import annotations

import pytest
import json
import subprocess

import torch

from bench import bench_extract
from conftest import ROOT, SMALL_CLIPS
from pipeline.video import read_clip

KEYS = {"extract": {"backbone_fps", "pipeline_fps", "ratio"},
        "precision": {"fp32_fps", "bf16_fps", "speedup", "cosine"},
        "decode": {"opencv_fps", "pyav_fps", "speedup", "default"},
        "train": {"ours_s_per_epoch", "reference_s_per_epoch", "speedup"},
        "beam": {"batched_vps", "single_vps", "speedup"},
        "memory": {"short_mb", "long_mb", "ratio"},
        "backbones": {"network_pps", "pipeline_pps", "ratio", "window"},
        "scale": {"extract_ratio", "skip_s", "captions_s", "train_ratio", "scoring_ratio", "scoring_model_s",
                  "scoring_with_baseline_s"}}


@pytest.mark.slow
def test_make_bench_writes_every_benchmark(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(["make", "--no-print-directory", "bench", "DEVICE=cpu", f"BENCH_ARGS=--quick --out {out}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    for name in ("extract", "precision"):
        assert set(results[name]) == {"efficientnet_lite0"}
        assert KEYS[name] <= set(results[name]["efficientnet_lite0"])
    for name in ("decode", "train", "beam", "memory", "scale"):
        assert KEYS[name] <= set(results[name]), name
    figures = [results["extract"]["efficientnet_lite0"]["ratio"], results["train"]["speedup"],
               results["beam"]["speedup"], results["memory"]["ratio"]] + [results["scale"][k] for k in KEYS["scale"]]
    assert all(f > 0 for f in figures)
    assert 0.9 < results["precision"]["efficientnet_lite0"]["cosine"] <= 1.0
    assert "| benchmark | measured | figure | target |" in proc.stdout and "| memory |" in proc.stdout
    assert proc.stdout.count("| scale |") == 5 and "| scale | skip pass over 50 unchanged clips" in proc.stdout
    assert "| decode | sampled frames/s" in proc.stdout
    assert set(results["backbones"]) == {"clip_vitb32", "r2plus1d_18"} and results["backbones"]["r2plus1d_18"][
        "window"] == 16 and all(KEYS["backbones"] <= set(r) for r in results["backbones"].values())
    assert proc.stdout.count("| backbones |") == 2


def test_the_gpu_extraction_bench_runs_its_whole_path_on_clips_of_different_sizes(tmp_path, monkeypatch):
    """What `make bench DEVICE=cuda` runs for extraction, at toy sizes on the CPU: the shared clips differ in
    frame size (320x240 to 1280x720), and the network's batch is made of all of them (here two sizes)."""
    monkeypatch.setattr(bench_extract, "GPU_CLIPS", 2)
    monkeypatch.setattr(bench_extract, "GPU_BATCH", 6)
    monkeypatch.setattr(bench_extract, "FRAMES", 2)
    videos = SMALL_CLIPS[2:]  # 320x240 and 352x288
    assert len({read_clip(v, 1).frames.shape for v in videos}) > 1, "the clips must differ in size"
    row, precision = bench_extract._on_gpu("efficientnet_lite0", videos, 1, torch.device("cpu"), tmp_path)
    assert row["clips"] == 2 and row["backbone_batch"] == 6
    assert {"backbone_fps", "decode_fps", "pipeline_fps", "msvd_projected_s", "ratio"} <= set(row)
    assert 0.9 < precision["cosine"] <= 1.0


def test_the_gpu_training_bench_profile_names_the_epochs_time_and_its_busiest_host_operations():
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    import bench_train

    profile = bench_train.profile_epoch(lambda: float(torch.randn(64, 64).matmul(torch.randn(64, 64)).sum()))
    assert set(profile) == {"wall_s", "gpu_busy_s", "top_host_ops_ms"}
    assert "aten::mm" in profile["top_host_ops_ms"]


def test_a_benchmark_that_fails_is_a_row_saying_why_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    import bench_backbones
    import bench_beam
    import bench_decode
    import bench_memory
    import bench_scale
    import bench_train
    import run_all

    def fails(**kwargs):
        raise RuntimeError("CUDA error: an illegal memory access")
    monkeypatch.setattr(bench_train, "run", fails)  # the others give made-up figures at once
    monkeypatch.setattr(bench_extract, "run", lambda *a, **k: {"extract": {}, "precision": {}, "device": "cpu"})
    monkeypatch.setattr(bench_decode, "run", lambda *a, **k: {"opencv_fps": 2.0, "pyav_fps": 1.0, "clips": 1,
                                                              "threads": 1, "device": "cpu", "default": "opencv",
                                                              "speedup": 0.5})
    monkeypatch.setattr(bench_beam, "run", lambda **k: {5: {"batched_vps": 4.0, "single_vps": 1.0, "speedup": 4.0}})
    monkeypatch.setattr(bench_backbones, "run", lambda *a, **k: {"r2plus1d_18": {
        "network_pps": 2.0, "pipeline_pps": 1.0, "ratio": 0.5, "precision": "bf16", "clips": 1, "positions": 2,
        "window": 16}})
    monkeypatch.setattr(bench_memory, "run", lambda **k: {"short_mb": 1.0, "long_mb": 1.0, "ratio": 1.0,
                                                          "short_seconds": 1, "long_seconds": 2, "resolution": "2x2"})
    monkeypatch.setattr(bench_scale, "run", lambda **k: dict.fromkeys(
        ("extract_small_s_per_clip", "extract_large_s_per_clip", "extract_ratio", "skip_s", "captions_s",
         "train_memory_s", "train_store_s", "train_ratio", "scoring_model_s", "scoring_with_baseline_s",
         "scoring_ratio"), 1.0) | {"entries": [1, 2], "new_clips": 1, "captions": 3, "train_videos": 4,
                                   "scored_videos": 5})
    out = tmp_path / "results.json"
    assert run_all.main(["--quick", "--device", "cpu", "--out", str(out)]) == 1
    results = json.loads(out.read_text())
    assert results["failed"] == {"train": "RuntimeError: CUDA error: an illegal memory access"}
    assert {"decode", "beam", "memory", "scale", "backbones"} <= set(results)
    table = capsys.readouterr().out
    assert "| train | failed: RuntimeError: CUDA error: an illegal memory access | nan | - |" in table
    assert "| beam | beam 5: batched 4.0 videos/s" in table


@pytest.mark.slow
def test_the_msrvtt_cost_multiplies_what_it_measures_by_msrvtts_counts(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import msrvtt_cost

    result = msrvtt_cost.run(clips=1, steps=1, videos=2, backbones=("efficientnet_lite0",), device="cpu", scored=20)
    lite = result["features"]["efficientnet_lite0"]
    assert lite["total_s"] == pytest.approx(lite["setup_s"] + lite["s_per_clip"] * 10_000)
    assert result["epoch"]["steps"] == 102 and result["epoch"]["total_s"] == pytest.approx(
        result["epoch"]["s_per_step"] * 102)
    assert result["eval"]["total_s"] == pytest.approx(result["eval"]["captioning_s"] + result["eval"]["scoring_s"])
    assert min(lite["s_per_clip"], result["epoch"]["s_per_step"], result["eval"]["scoring_s"]) > 0


def test_a_backbone_whose_library_is_missing_is_reported_not_measured_beside_the_others(monkeypatch):
    """A bare GPU machine may lack OpenCLIP: the CLIP rows say so and the video networks' rows stay."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    import bench_backbones
    import run_all

    monkeypatch.setitem(sys.modules, "open_clip", None)  # importing it now raises ImportError
    result = bench_backbones.run(backbones=("clip_vitb32",), positions=1, repeats=1, device="cpu")
    assert "open_clip" in result["clip_vitb32"]["error"]
    measured = {"network_pps": 2.0, "pipeline_pps": 1.0, "ratio": 0.5, "precision": "bf16", "clips": 1,
                "positions": 1, "window": 16}
    rows = run_all._backbones_rows(result | {"r2plus1d_18": measured})
    assert rows[0][1].startswith("clip_vitb32: not measured (") and "open_clip" in rows[0][1] and rows[1][2] == 0.5

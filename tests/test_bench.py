"""`make bench` runs every benchmark and writes the keys the README and the issue name.

At `--quick` sizes (one repetition, tiny workloads) only: the figures themselves are
measured by `make bench`, never asserted here.
"""

from __future__ import annotations

import json
import subprocess

from conftest import ROOT

KEYS = {"extract": {"backbone_fps", "pipeline_fps", "ratio"},
        "precision": {"fp32_fps", "bf16_fps", "speedup", "cosine"},
        "train": {"ours_s_per_epoch", "reference_s_per_epoch", "speedup"},
        "beam": {"batched_vps", "single_vps", "speedup"},
        "memory": {"short_mb", "long_mb", "ratio"}}


def test_make_bench_writes_every_benchmark(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(["make", "--no-print-directory", "bench", "DEVICE=cpu", f"BENCH_ARGS=--quick --out {out}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    for name in ("extract", "precision"):
        assert set(results[name]) == {"efficientnet_lite0"}
        assert KEYS[name] <= set(results[name]["efficientnet_lite0"])
    for name in ("train", "beam", "memory"):
        assert KEYS[name] <= set(results[name]), name
    figures = [results["extract"]["efficientnet_lite0"]["ratio"], results["train"]["speedup"],
               results["beam"]["speedup"], results["memory"]["ratio"]]
    assert all(f > 0 for f in figures)
    assert 0.9 < results["precision"]["efficientnet_lite0"]["cosine"] <= 1.0
    assert "| benchmark | measured | figure | target |" in proc.stdout and "| memory |" in proc.stdout

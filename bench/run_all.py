"""`make bench`: every benchmark in one run, printed as a table, written to `bench/results.json`.

Reads the shared MSVD clips, or without them the four in tests/data (or `--clips`); writes `bench/results.json` with one
object per benchmark: `extract`, `precision`, `backbones` (CLIP and the Kinetics video networks),
`decode`, `train`, `beam`, `memory`, `scale`
(costs at MSR-VTT's size, on generated data), and `machine` (the CPU model and whether it
computes bfloat16 natively, the GPU, the torch version). Each pair inside a benchmark is measured side by side,
alternating, and reports the median of `--repeats` repetitions. Sized to finish
within 10 minutes on any 2-core CPU; on a GPU it measures at the GPU's scale
(256 clips, batch 256, whole training epochs).

    python bench/run_all.py [--device auto] [--repeats 3] [--clips DIR] [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backbones  # noqa: E402
import bench_beam  # noqa: E402
import bench_decode  # noqa: E402
import bench_extract  # noqa: E402
import bench_memory  # noqa: E402
import bench_scale  # noqa: E402
import bench_train  # noqa: E402
import machine  # noqa: E402


def _extract_rows(extract: dict) -> list[tuple[str, str, float, str]]:
    rows = []
    for name, r in extract.items():
        if "decode_fps" in r:  # on a GPU
            rows.append(("extract", f"{name} ({r['precision']}), {r['clips']} clips: network alone "
                         f"{r['backbone_fps']:.0f} frames/s at batch {r['backbone_batch']}, exact decoding "
                         f"({r['decoder']}) {r['decode_fps']:.0f} frames/s, pipeline {r['pipeline_fps']:.0f} "
                         f"frames/s; MSVD projected {r['msvd_projected_s']:.0f} s", r["ratio"],
                         ">= 0.6 ratio, MSVD <= 60 s"))
        else:
            rows.append(("extract", f"{name} ({r['precision']}), {r['clips']} clips: backbone "
                         f"{r['backbone_fps']:.1f} frames/s, pipeline {r['pipeline_fps']:.1f} frames/s", r["ratio"],
                         ">= 0.9 ratio"))
    return rows


def _precision_rows(precision: dict) -> list[tuple[str, str, float, str]]:
    rows = []
    for name, r in precision.items():
        if "not_run" in r:
            rows.append(("precision", f"{name}: not run ({r['not_run']})", float("nan"), "-"))
            continue
        rows.append(("precision", f"{name}: fp32 {r['fp32_fps']:.1f} frames/s, bf16 {r['bf16_fps']:.1f} "
                     f"frames/s, cosine {r['cosine']:.5f}", r["speedup"],
                     ">= 2.5x, cosine >= 0.99" if name == "vgg16" else "-"))
    return rows


def _decode_rows(d: dict) -> list[tuple[str, str, float, str]]:
    rates = ", ".join(f"{key[:-4]} {value:.0f}" for key, value in d.items() if key.endswith("_fps"))
    return [("decode", f"sampled frames/s, {d['clips']} clips in {d['threads']} threads: {rates}", d["speedup"],
             "nvdec / CPU default" if d["device"].startswith("cuda") else
             f"pyav / opencv: > 1 makes pyav the default (now {d['default']})")]


def _train_rows(t: dict) -> list[tuple[str, str, float, str]]:
    extra = f"; ours at bf16 {t['ours_bf16_s_per_epoch']:.1f} s ({t['bf16_speedup']:.2f}x)" \
        if "bf16_speedup" in t else ""
    if "profile" in t:
        profiled = t["profile"]
        extra += f"; a replayed epoch profiled: {profiled['wall_s']:.2f} s, GPU busy {profiled['gpu_busy_s']:.2f} s"
    how = "whole epochs" if t["whole_epoch"] else f"{t['steps_timed']} steps scaled to the epoch"
    return [("train", f"s/MLDS epoch ({t['precision']}, {how}): ours {t['ours_s_per_epoch']:.2f}, stepwise "
             f"reference {t['reference_s_per_epoch']:.2f}{extra}", t["speedup"],
             ">= 5x, <= 0.3 s on a GPU" if t["device"].startswith("cuda") else ">= 1.8x")]


def _beam_rows(b: dict) -> list[tuple[str, str, float, str]]:
    return [("beam", f"beam 5: batched {b['batched_vps']:.1f} videos/s, one at a time {b['single_vps']:.1f} "
             f"videos/s", b["speedup"], ">= 4x")]


def _memory_rows(m: dict) -> list[tuple[str, str, float, str]]:
    return [("memory", f"peak RSS {m['resolution']}: {m['short_seconds']} s clip {m['short_mb']:.0f} MB, "
             f"{m['long_seconds']} s clip {m['long_mb']:.0f} MB", m["ratio"], "<= 1.2 ratio")]


def _scale_rows(s: dict) -> list[tuple[str, str, float, str]]:
    small, large = s["entries"]
    per_clip = f"{s['extract_large_s_per_clip'] * 1e3:.1f} and {s['extract_small_s_per_clip'] * 1e3:.1f} ms"
    return [("scale", f"extraction into a store of {large:,} entries against {small:,}: {per_clip} a clip "
             f"({s['new_clips']} tiny clips)", s["extract_ratio"], "<= 1.2 ratio"),
            ("scale", f"skip pass over {large:,} unchanged clips, s", s["skip_s"], "<= 10 s"),
            ("scale", f"reading and tokenising {s['captions']:,} captions, building the vocabulary, s",
             s["captions_s"], "<= 5 s"),
            ("scale", f"training read from the store a batch at a time against from memory ({s['train_videos']:,} "
             f"videos): {s['train_store_s']:.2f} and {s['train_memory_s']:.2f} s an epoch", s["train_ratio"],
             ">= 0.8 ratio"),
            ("scale", f"scoring {s['scored_videos']:,} videos x 20 references: the model's captions "
             f"{s['scoring_model_s']:.1f} s, with the baseline as make eval does {s['scoring_with_baseline_s']:.1f} s",
             s["scoring_ratio"], "< 2 ratio (2: scored apart)")]


def _backbones_rows(b: dict) -> list[tuple[str, str, float, str]]:
    return [("backbones", f"{name}: not measured ({r['error']})", float("nan"), "-") if "error" in r else
            ("backbones", f"{name} ({r['precision']}), {r['clips']} clip(s) x {r['positions']} positions, a feature "
             f"of {r['window']} frame(s): network {r['network_pps']:.2f}, pipeline {r['pipeline_pps']:.2f} features/s",
             r["ratio"], "-") for name, r in b.items()]


ROWS = {"extract": _extract_rows, "precision": _precision_rows, "backbones": _backbones_rows, "decode": _decode_rows,
        "train": _train_rows, "beam": _beam_rows, "memory": _memory_rows, "scale": _scale_rows}


def table(results: dict) -> list[tuple[str, str, float, str]]:
    """(benchmark, what was measured, the figure its target is about, the target) rows; a benchmark that
    failed is a row saying why."""
    rows = []
    for name, rows_of in ROWS.items():
        if name in results:
            rows += rows_of(results[name])
        elif name in results.get("failed", {}):
            rows.append((name, f"failed: {results['failed'][name]}", float("nan"), "-"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", type=Path, default=bench_extract.DEFAULT_CLIPS)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.json")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and one repetition: checks that every benchmark runs (the tests use it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    small = {"extract": {"backbones": ("efficientnet_lite0",), "max_clips": 2}, "decode": {"max_clips": 2},
             "train": {"steps": 1},
             "beam": {"videos": 8, "single_videos": 2}, "memory": {"seconds": (1, 3), "size": (320, 240)},
             "scale": {"entries": (5, 50), "new_clips": 2, "videos": 200, "train_videos": 128, "scored_videos": 30},
             "backbones": {"backbones": ("clip_vitb32", "r2plus1d_18"), "positions": 1}} \
        if args.quick else {"extract": {}, "decode": {}, "train": {}, "beam": {}, "memory": {}, "scale": {},
                            "backbones": {"positions": 2}}
    print(f"bench: device {args.device}, {args.repeats} repetitions, clips {args.clips}; machine "
          f"{machine.describe()}", flush=True)
    start = time.perf_counter()
    results: dict = {}
    steps = [(("extract", "precision"), lambda: results.update(
                 bench_extract.run(args.clips, args.repeats, args.device, **small["extract"]))),
             (("backbones",), lambda: results.update(
                 backbones=bench_backbones.run(args.clips, args.repeats, args.device, **small["backbones"]))),
             (("decode",), lambda: results.update(
                 decode=bench_decode.run(args.clips, args.repeats, args.device, **small["decode"]))),
             (("train",), lambda: results.update(
                 train=bench_train.run(repeats=args.repeats, device=args.device, **small["train"]))),
             (("beam",), lambda: results.update(
                 beam=bench_beam.run(repeats=args.repeats, device=args.device, **small["beam"])[5])),
             (("memory",), lambda: results.update(memory=bench_memory.run(**small["memory"]))),
             (("scale",), lambda: results.update(
                 scale=bench_scale.run(repeats=args.repeats, device=args.device, **small["scale"])))]
    failed = {}
    for names, step in steps:
        began = time.perf_counter()
        try:
            step()
        except Exception as exc:  # one benchmark failing must not cost the others' figures
            failed |= {name: f"{type(exc).__name__}: {exc}" for name in names}
            traceback.print_exc()
        print(f"  {' + '.join(names)}: {time.perf_counter() - began:.0f} s", flush=True)
    if failed:
        results["failed"] = failed
    results["machine"] = machine.describe() | {"device": results.pop("device", args.device),
                                               "seconds": time.perf_counter() - start}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| benchmark | measured | figure | target |\n|---|---|---|---|")
    for name, what, figure, target in table(results):
        print(f"| {name} | {what} | {figure:.2f} | {target} |")
    print(f"\n{time.perf_counter() - start:.0f} s in all; written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Costs at MSR-VTT's size that must stay linear: the store, the skip pass, the captions, training, scoring.

Reads nothing of the repository's data: it makes what it measures in a temporary folder and writes only there.
Sizes are MSR-VTT's where a figure is about counts (10,000 clips and store entries, 200,000 captions, 2,990
test videos with 20 references each) and small where it would otherwise be about arithmetic: one tiny
generated clip (64 x 48, 30 frames) hard-linked under every clip name, 4 frames a clip through
EfficientNet-Lite0, stores written directly through `FeatureStore` with zero features, a tiny model. The
captions are synthetic English-like sentences (a small grammar, and a long tail of made-up words for
MSR-VTT's vocabulary size). Each pair is measured side by side, alternating, median of `repeats`:

- `extract_ratio`: seconds per clip of `extract()` adding `new_clips` clips to a store of 10,000 entries,
  divided by the same into a store of 100 (setup excluded; each folder also holds its store's clips, which
  are skipped). Target <= 1.2.
- `skip_s`: `extract()` over 10,000 unchanged clips, all skipped, setup included. Target <= 10 s.
- `captions_s`: reading 200,000 captions of 10,000 videos (MLDS JSON), building the vocabulary and
  tokenising every caption into training rows. Target <= 5 s.
- `train_ratio`: an epoch of 1,280 of the store's videos (20 steps at batch 64) with the features held in
  memory, divided by the same read from the store a batch at a time (the path a set too large for memory
  takes). Target >= 0.8.
- `scoring_ratio`: scoring 2,990 videos as `make eval` does (the model's captions and the constant
  baseline), divided by scoring the model's captions alone: what the baseline adds. Scored apart it would
  double the time; scored in one pass, the references' share of the work is done once. Timed once (with
  Java, one side is about 13 s on a 2-core CPU).

    python bench/bench_scale.py [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_memory import write_clip  # noqa: E402
from timing import alternate, timed  # noqa: E402

from pipeline.backbones import load_backbone  # noqa: E402
from pipeline.config import ExtractConfig, TrainConfig  # noqa: E402
from pipeline.dataset import build_set, encode_captions  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.features import extract, store_settings  # noqa: E402
from pipeline.labels import load_captions  # noqa: E402
from pipeline.metrics import score_captions  # noqa: E402
from pipeline.model import S2VT, S2VTConfig  # noqa: E402
from pipeline.precision import resolve_precision  # noqa: E402
from pipeline.scoring import scores_with_baseline  # noqa: E402
from pipeline.store import FeatureStore, package_versions  # noqa: E402
from pipeline.streams import FeatureStreams  # noqa: E402
from pipeline.train_step import TrainStep  # noqa: E402
from pipeline.training import train_one_epoch  # noqa: E402
from pipeline.vocab import Vocab  # noqa: E402

BACKBONE, FRAMES = "efficientnet_lite0", 4
CAPTIONS_PER_VIDEO, MAX_LEN, BATCH, HIDDEN = 20, 20, 64, 128

SUBJECTS = ("a man", "a woman", "a boy", "a girl", "a person", "people", "a group of people", "a dog", "a cat",
            "a child", "a player", "a chef", "a singer", "a cartoon character", "two men", "a team")
ACTIONS = ("is playing", "is cooking", "is singing", "is talking about", "is driving", "is riding", "is showing",
           "is explaining", "is dancing with", "is watching", "is holding", "is throwing", "is fixing", "is eating")
OBJECTS = ("a guitar", "a video game", "some food", "a car", "a song", "a basketball", "a horse", "a new phone",
           "the ball", "a bike", "a movie", "a recipe", "the camera", "a toy", "the news", "a puzzle")
PLACES = ("", "", "in a room", "on a stage", "with friends", "at night", "outside", "on tv", "in the kitchen",
          "on the street", "at the beach", "in a field")
SYLLABLES = ("ba", "ko", "ri", "ta", "ne", "mo", "su", "li", "ve", "da", "pu", "zo", "ha", "ki", "lo", "fe",
             "gi", "nu", "ra", "te")


def synthetic_captions(videos: list[str], per_video: int, seed: int) -> dict[str, list[str]]:
    """`per_video` English-like captions of about nine words for each video: subject, action, object, often
    a place, and in half of them a word from 8,000 made-up ones (MSR-VTT's training vocabulary is about 8,000
    words seen 3 times or more)."""
    rng = np.random.default_rng(seed)
    n = len(videos) * per_video
    tail = [""] + [f"{a}{b}{c} " for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES]
    picks = [rng.integers(len(words), size=n) for words in (SUBJECTS, ACTIONS, OBJECTS, PLACES)]
    made_up = rng.integers(1, len(tail), size=n) * (rng.random(n) < 0.5)  # 0: none
    texts = [" ".join(filter(None, (SUBJECTS[s], ACTIONS[a], OBJECTS[o].replace(" ", f" {tail[j]}", 1),
                                    PLACES[p])))
             for s, a, o, p, j in zip(*picks, made_up)]
    return {vid: texts[i * per_video:(i + 1) * per_video] for i, vid in enumerate(videos)}


def _clip_names(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}{i:05d}.avi" for i in range(n)]


def _linked_folder(folder: Path, clip: Path, names: list[str]) -> Path:
    """`folder` holding `clip` hard-linked under each of `names`: as many files as clips, one clip's bytes."""
    folder.mkdir()
    for name in names:
        os.link(clip, folder / name)
    return folder


def _store_of(path: Path, folder: Path, cfg: ExtractConfig, device: torch.device) -> Path:
    """A store at `path` holding an entry for every clip in `folder`, made from the file as it is (so
    extraction skips them all), with zero features: written directly, one `FeatureStore.write` each."""
    backbone = load_backbone(cfg.backbone, cfg.weights).place(device, resolve_precision("auto", device))
    store = FeatureStore.open_or_create(path, store_settings(backbone, cfg), package_versions())
    features = np.zeros((FRAMES, backbone.spec.feature_dim), np.float32)  # (F, D)
    for clip in sorted(folder.iterdir()):
        stat = clip.stat()
        store.write(clip.name, features, {"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
                                          "n_frames": 30, "fps": 30.0, "indices": np.arange(FRAMES) * 7,
                                          "decoder": "opencv", "claimed_frames": 30})
    return path


def _extraction(cfg: ExtractConfig, new: list[str]):
    """A case adding the `new` clips of `cfg.raw` to its store: seconds per clip, setup excluded. The new
    entries are removed again, so every repetition adds them to a store of the same size."""
    def case() -> float:
        summary = extract(cfg)
        if sorted(summary.done) != new or summary.failed:
            raise RuntimeError(f"the benchmark's clips did not extract as planned: {summary.line()}")
        store = FeatureStore(cfg.features)
        for name in new:
            store.remove(name)
        return (summary.seconds - summary.setup_seconds) / len(new)
    return case


def _skip_pass(cfg: ExtractConfig, n: int):
    def case() -> float:
        summary = extract(cfg)
        if len(summary.skipped) != n or summary.done or summary.failed:
            raise RuntimeError(f"the skip pass did not skip every clip: {summary.line()}")
        return summary.seconds
    return case


def _captions_to_rows(labels: Path):
    """Reading the labels, building the vocabulary and tokenising every caption, as training's setup does."""
    def case() -> float:
        start = time.perf_counter()
        captions = load_captions(labels)
        vocab = Vocab.build(captions)
        encode_captions([c for caps in captions.values() for c in caps], vocab, MAX_LEN)
        return time.perf_counter() - start
    return case


def _epochs(store: FeatureStore, captions: dict[str, list[str]], videos: int, device: torch.device) -> dict:
    """Two cases: an epoch of the store's first `videos` videos with their features in memory, and read from
    the store a batch at a time; each from the same freshly initialised tiny model."""
    ids = store.ids()[:videos]
    vocab = Vocab.build({vid: captions[vid] for vid in ids})
    cfg = TrainConfig(batch_size=BATCH, hidden=HIDDEN, embed=HIDDEN, max_len=MAX_LEN)

    def case(held_on: torch.device | None):
        data = build_set(ids, captions, FeatureStreams(store.path), vocab, MAX_LEN, held_on)

        def epoch() -> float:
            torch.manual_seed(0)
            model = S2VT(S2VTConfig(feature_dim=store.feature_dim, vocab_size=len(vocab), pad_id=vocab.pad_id,
                                    bos_id=vocab.bos_id, eos_id=vocab.eos_id, max_len=MAX_LEN, hidden=HIDDEN,
                                    embed=HIDDEN)).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            step = TrainStep(model, optimizer, device, "fp32", vocab.pad_id, cfg.clip_grad, BATCH, cuda_graphs=False)
            return timed(lambda: train_one_epoch(step, data, 0, cfg, 1.0), device)
        return epoch
    return {"train_memory": case(device), "train_store": case(None)}


def _scoring(videos: int, labels: Path, seed: int) -> dict:
    """Scoring `videos` synthetic videos x 20 references: the model's captions alone, and with the constant
    baseline (the commonest caption of `labels`) as `make eval` scores them; seconds of each, timed once."""
    ids = _clip_names(videos, prefix="test")
    references = synthetic_captions(ids, CAPTIONS_PER_VIDEO, seed)
    model = {vid: caps[0] for vid, caps in synthetic_captions(ids, 1, seed + 1).items()}
    seconds = {}
    start = time.perf_counter()
    score_captions(model, references)
    seconds["scoring_model_s"] = time.perf_counter() - start
    start = time.perf_counter()
    scores_with_baseline(model, references, labels)
    seconds["scoring_with_baseline_s"] = time.perf_counter() - start
    return seconds | {"scoring_ratio": seconds["scoring_with_baseline_s"] / seconds["scoring_model_s"],
                      "scored_videos": videos}


def run(entries: tuple[int, int] = (100, 10_000), new_clips: int = 48, videos: int = 10_000,
        train_videos: int = 1280, scored_videos: int = 2990, repeats: int = 3, device: str = "auto") -> dict:
    """The figures of the module's docstring; `entries` are the small and the large store's sizes (the large
    one is also the skip pass's), `videos` those of the captions figure."""
    target = resolve_device(device)
    small, large = entries
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        clip = work / "clip.avi"
        write_clip(clip, 1, 64, 48)
        new = _clip_names(new_clips, prefix="new")
        configs, built = {}, time.perf_counter()
        for n in entries:
            folder = _linked_folder(work / f"raw{n}", clip, _clip_names(n))
            configs[n] = ExtractConfig(raw=str(folder), features=str(work / f"store{n}.h5"), backbone=BACKBONE,
                                       frames=FRAMES, device=str(target))
            _store_of(Path(configs[n].features), folder, configs[n], target)
            for name in new:  # the clips to extract, beside those in the store
                os.link(clip, folder / name)
        unchanged = replace(configs[large], raw=str(_linked_folder(work / "unchanged", clip, _clip_names(large))))
        labels = work / "labels.json"
        captions = synthetic_captions(_clip_names(videos), CAPTIONS_PER_VIDEO, seed=0)
        labels.write_text(json.dumps([{"id": vid, "caption": caps} for vid, caps in captions.items()]))
        setup_s = time.perf_counter() - built
        seconds = alternate({"extract_small": _extraction(configs[small], new),
                             "extract_large": _extraction(configs[large], new),
                             "skip": _skip_pass(unchanged, large), "captions": _captions_to_rows(labels),
                             **_epochs(FeatureStore(configs[large].features), captions, train_videos, target)},
                            repeats)
        scoring = _scoring(scored_videos, labels, seed=1)
    return {"extract_small_s_per_clip": seconds["extract_small"], "extract_large_s_per_clip": seconds["extract_large"],
            "extract_ratio": seconds["extract_large"] / seconds["extract_small"], "skip_s": seconds["skip"],
            "captions_s": seconds["captions"], "train_memory_s": seconds["train_memory"],
            "train_store_s": seconds["train_store"], "train_ratio": seconds["train_memory"] / seconds["train_store"],
            **scoring, "entries": list(entries), "new_clips": new_clips, "captions": videos * CAPTIONS_PER_VIDEO,
            "train_videos": train_videos, "setup_s": setup_s, "device": str(target)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    for key, value in run(repeats=args.repeats, device=args.device).items():
        print(f"  {key:>26}: {value:.3f}" if isinstance(value, float) else f"  {key:>26}: {value}")


if __name__ == "__main__":
    main()

"""Evaluation: a checkpoint and stored features -> captions, scores and the report.

Reads `RUN/best.pt`, the feature store and the test labels; writes
`RUN/captions.txt` (one `video_id,caption` line per video, the seed's format),
`RUN/scores.json` (the metrics, with the constant-caption baseline under
`baseline`), `RUN/eval_config.json` and `RUN/report.html`. `caption_all` writes
`RUN/captions_all.txt` for every video in the store. `score_file` scores any
captions file against references, with no model.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from .captions import CaptionError, Vocab, load_captions, read_id_caption_lines, tokenize
from .checkpoint import CheckpointError, feature_problems, load_checkpoint, model_from_checkpoint
from .config import (EvalConfig, add_config_arguments, atomic_write, config_from_args, print_config,
                     resolve_device, write_json)
from .dataset import usable_ids
from .decoding import DecodeConfig, beam_search
from .metrics import METRIC_KEYS, score_captions
from .model import S2VT
from .report import write_report
from .store import FeatureStore, StoreError


class PredictionError(Exception):
    """A captions file that cannot be scored as it is; the message says what is wrong."""


def read_predictions(path: str | Path) -> dict[str, str]:
    """`video_id,caption` lines; duplicate ids are an error, empty captions are kept."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"{path}: no such captions file")
    predictions: dict[str, str] = {}
    duplicates = []
    try:
        for _, vid, caption in read_id_caption_lines(path):
            if vid in predictions:
                duplicates.append(vid)
            predictions[vid] = caption
    except CaptionError as exc:
        raise PredictionError(str(exc)) from None
    if duplicates:
        raise PredictionError(f"{path}: {len(duplicates)} ids appear more than once, e.g. {duplicates[:3]}")
    return predictions


def match_ids(predictions: dict[str, str], references: dict[str, list[str]], name: str) -> dict[str, str]:
    """Predictions keyed by reference ids; ids may lack the references' extension.

    Unknown or missing ids are an error: nothing is silently dropped or added.
    """
    by_stem = {Path(vid).stem: vid for vid in references}
    matched, unknown = {}, []
    for vid, caption in predictions.items():
        key = vid if vid in references else by_stem.get(vid)
        if key is None:
            unknown.append(vid)
        else:
            matched[key] = caption
    missing = sorted(set(references) - set(matched))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} ids are not in the references (e.g. {unknown[:3]})")
    if missing:
        problems.append(f"{len(missing)} reference videos have no caption (e.g. {missing[:3]})")
    if problems:
        raise PredictionError(f"{name}: " + "; ".join(problems))
    empty = sorted(vid for vid, caption in matched.items() if not caption)
    if empty:
        warnings.warn(f"{name}: {len(empty)} empty captions (e.g. {empty[:3]}) score 0", stacklevel=2)
    return matched


def score_file(predictions_path: str, references_path: str) -> dict:
    references = load_captions(references_path)
    predictions = match_ids(read_predictions(predictions_path), references, predictions_path)
    return score_captions(predictions, references)


def format_scores(scores: dict) -> str:
    baseline = scores.get("baseline")
    header = f"{'metric':<11}{'model':>9}" + (f"{'baseline':>10}" if baseline else "")
    lines = [header]
    for key in METRIC_KEYS:
        cells = [scores[key]] + ([baseline[key]] if baseline else [])
        lines.append(f"{key:<11}" + "".join(f"{'n/a' if v is None else f'{v:.4f}':>{w}}"
                                           for v, w in zip(cells, (9, 10))))
    baseline_note = f"; baseline caption: \"{baseline['caption']}\"" if baseline else ""
    lines.append(f"{scores['n_videos']} videos{baseline_note}")
    if scores["meteor"] is None:
        lines.append("METEOR needs Java (not found): reported as unavailable")
    if "attributes" in scores:
        lines.append("attribute accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in scores["attributes"].items()))
    return "\n".join(lines)


def most_frequent_caption(captions: dict[str, list[str]]) -> str:
    """The constant-caption baseline: the commonest training caption, normalised."""
    counts = Counter(" ".join(tokenize(c)) for caps in captions.values() for c in caps)
    return counts.most_common(1)[0][0]


def decode_config(cfg: EvalConfig) -> DecodeConfig:
    return DecodeConfig(cfg.beam, cfg.length_penalty, cfg.block_ngram)


def caption_videos(model: S2VT, vocab: Vocab, store: FeatureStore, ids: list[str], cfg: EvalConfig,
                   device: torch.device) -> dict[str, str]:
    model.to(device).eval()
    decode = decode_config(cfg)
    captions = {}
    for i in tqdm(range(0, len(ids), cfg.batch), desc="captions", unit="batch", disable=len(ids) <= cfg.batch):
        chunk = ids[i:i + cfg.batch]
        features = torch.from_numpy(store.read_many(chunk)).float().to(device)  # (b, F, D)
        for vid, tokens in zip(chunk, beam_search(model, features, decode)):
            captions[vid] = vocab.decode(tokens)
    return captions


def load_run(cfg: EvalConfig) -> tuple[dict, S2VT, Vocab, FeatureStore]:
    checkpoint = load_checkpoint(Path(cfg.run_dir) / cfg.checkpoint)
    store = FeatureStore(cfg.features)
    problems = feature_problems(checkpoint, store)
    if problems:
        raise CheckpointError(f"{Path(cfg.run_dir) / cfg.checkpoint} does not fit {cfg.features}:\n  " +
                              "\n  ".join(problems))
    model, vocab = model_from_checkpoint(checkpoint)
    return checkpoint, model, vocab, store


def write_captions(path: Path, captions: dict[str, str]) -> None:
    text = "".join(f"{vid},{caption}\n" for vid, caption in captions.items())
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def evaluate_run(cfg: EvalConfig) -> dict:
    """Caption the test videos with the run's checkpoint, score them and the baseline."""
    run = Path(cfg.run_dir)
    checkpoint, model, vocab, store = load_run(cfg)
    references = load_captions(cfg.references)
    ids = usable_ids(references, store, cfg.references)
    captions = caption_videos(model, vocab, store, ids, cfg, resolve_device(cfg.device))
    write_captions(run / "captions.txt", captions)
    references = {vid: references[vid] for vid in ids}
    scores = score_captions(captions, references)
    train_labels = cfg.train_labels or checkpoint["train_config"]["labels"]
    try:
        baseline_caption = most_frequent_caption(load_captions(train_labels))
    except CaptionError as exc:
        raise CaptionError(f"the baseline needs the training labels ({exc}); pass --train-labels") from None
    scores["baseline"] = {**score_captions({vid: baseline_caption for vid in ids}, references),
                          "caption": baseline_caption}
    if cfg.attributes:
        from .sample import attribute_accuracy

        truth = json.loads(Path(cfg.attributes).read_text())
        scores["attributes"] = attribute_accuracy(captions, truth)
    scores["decoding"] = asdict(decode_config(cfg))
    scores["checkpoint"] = {"file": str(run / cfg.checkpoint), "epoch": checkpoint["epoch"]}
    write_json(run / "scores.json", scores)
    write_json(run / "eval_config.json", asdict(cfg))
    write_report(run, scores, captions, references, cfg.raw, cfg.report_videos)
    return scores


def caption_all(cfg: EvalConfig) -> Path:
    """Caption every video in the store into RUN/captions_all.txt."""
    _, model, vocab, store = load_run(cfg)
    captions = caption_videos(model, vocab, store, store.ids(), cfg, resolve_device(cfg.device))
    path = Path(cfg.run_dir) / "captions_all.txt"
    write_captions(path, captions)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Caption the test videos with a trained run and score them (make eval); caption every "
                    "video in the store (--all, make captions); or score a captions file with no model "
                    "(--predictions P.txt --references R.json [--out scores.json]).")
    parser.add_argument("--predictions", help="a video_id,caption file to score against --references")
    parser.add_argument("--out", help="with --predictions: write the scores JSON here")
    parser.add_argument("--all", action="store_true",
                        help="caption every video in --features into RUN/captions_all.txt")
    add_config_arguments(parser, EvalConfig)
    args = parser.parse_args(argv)
    cfg = config_from_args(EvalConfig, args)
    try:
        if args.predictions:
            scores = score_file(args.predictions, cfg.references)
            print(format_scores(scores))
            if args.out:
                write_json(args.out, scores)
                print(f"scores: {args.out}")
            return 0
        print_config("evaluate", cfg)
        if args.all:
            print(f"captions: {caption_all(cfg)}")
            return 0
        scores = evaluate_run(cfg)
        print(format_scores(scores))
        print(f"captions: {Path(cfg.run_dir) / 'captions.txt'}\nscores: {Path(cfg.run_dir) / 'scores.json'}\n"
              f"report: {Path(cfg.run_dir) / 'report.html'}")
        return 0
    except (PredictionError, CaptionError, CheckpointError, StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

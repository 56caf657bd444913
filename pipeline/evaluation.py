"""Evaluates a trained run: its checkpoint captions stored features, which are scored, then reported.

Reads `RUN/best.pt`, the feature store (or the run's several streams) and the test labels; writes
`RUN/captions.txt` (one `video_id,caption` line per video, the seed's format),
`RUN/scores.json` (the metrics, with the constant-caption baseline under
`baseline`), `RUN/eval_config.json` and `RUN/report.html`. `caption_all` (`--all`,
`make captions`) writes `RUN/captions_all.txt` for every video in the store
instead (the videos every stream holds). Scoring a captions file on its own is `scoring`'s job; `evaluate.py
--predictions` calls it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .labels import format_id_caption, load_captions
from .vocab import Vocab
from .checkpoint import CheckpointError, feature_problems, load_checkpoint, model_from_checkpoint
from .config import EvalConfig, EvalModeConfig, parse_configs, print_config
from .dataset import StoredFeatures, usable_ids
from .decoding import caption_features
from .devices import resolve_device
from .errors import run_command
from .files import atomic_write, ensure_writable_folder, write_json
from .metrics import bleu1_per_video
from .report import write_report
from .scoring import format_scores, score_file, scores_with_baseline, warn_empty_captions
from .streams import FeatureStreams

if TYPE_CHECKING:
    from .model import S2VT


def caption_videos(model: S2VT, vocab: Vocab, store: FeatureStreams, ids: list[str], cfg: EvalConfig) -> dict[str, str]:
    """`{video_id: caption}` for the stored videos `ids`, read and decoded `cfg.batch` at a time, with a
    progress bar."""
    device = resolve_device(cfg.device)
    model.to(device)
    captions = caption_features(model, vocab, StoredFeatures(store, ids), device, cfg.decoding(), progress=True)
    return dict(zip(ids, captions))


def load_run(cfg: EvalConfig) -> tuple[dict, S2VT, Vocab, FeatureStreams]:
    checkpoint = load_checkpoint(Path(cfg.run_dir) / cfg.checkpoint)
    store = FeatureStreams(cfg.features)
    problems = feature_problems(checkpoint, store)
    if problems:
        raise CheckpointError(f"{Path(cfg.run_dir) / cfg.checkpoint} does not fit {store.name}:\n  " +
                              "\n  ".join(problems))
    model, vocab = model_from_checkpoint(checkpoint)
    return checkpoint, model, vocab, store


def write_captions(path: Path, captions: dict[str, str]) -> None:
    text = "".join(format_id_caption(vid, caption) + "\n" for vid, caption in captions.items())
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def evaluate_run(cfg: EvalConfig) -> dict:
    """Caption the test videos with the run's checkpoint, score them and the baseline."""
    checkpoint, model, vocab, store = load_run(cfg)
    run = ensure_writable_folder(cfg.run_dir, "RUN")
    references_all = load_captions(cfg.references, cfg.references_split)
    ids = usable_ids(references_all, store, cfg.references)
    captions = caption_videos(model, vocab, store, ids, cfg)
    write_captions(run / "captions.txt", captions)
    warn_empty_captions(captions, str(run / "captions.txt"))
    references = {vid: references_all[vid] for vid in ids}
    per_video = bleu1_per_video(captions, references)  # the headline score's parts, and the report's ranking
    trained_on = checkpoint["train_config"]  # the run's training captions, and their split (none before splits)
    labels = (cfg.train_labels, "") if cfg.train_labels else (trained_on["labels"], trained_on.get("split", ""))
    scores = scores_with_baseline(captions, references, *labels, per_video=per_video)
    scores["videos_left_out"] = len(references_all) - len(ids)  # warned about by `usable_ids`; said again below
    scores["decoding"] = asdict(cfg.decoding())
    scores["checkpoint"] = {"file": str(run / cfg.checkpoint), "epoch": checkpoint["epoch"]}
    write_json(run / "scores.json", scores)
    write_json(run / "eval_config.json", asdict(cfg))
    write_report(run, scores, captions, references, per_video, cfg.raw, cfg.report_videos)
    return scores


def caption_all(cfg: EvalConfig) -> Path:
    """Caption every video in the store (every stream) into RUN/captions_all.txt."""
    _, model, vocab, store = load_run(cfg)
    ensure_writable_folder(cfg.run_dir, "RUN")
    captions = caption_videos(model, vocab, store, store.ids(), cfg)
    path = Path(cfg.run_dir) / "captions_all.txt"
    write_captions(path, captions)
    return path


def main(argv: list[str] | None = None) -> int:
    mode, cfg = parse_configs("Caption the test videos with a trained run and score them (make eval); caption "
                              "every video in the store (--all, make captions); or score a captions file with no "
                              "model (--predictions P.txt --references R.json [--out scores.json]).", argv,
                              EvalModeConfig, EvalConfig)
    if not mode.predictions:  # scoring a file uses no run: only its scores are printed
        print_config("evaluate", cfg)
    return run_command(lambda: _run(mode, cfg))


def _run(mode: EvalModeConfig, cfg: EvalConfig) -> int:
    if mode.predictions:
        scores = score_file(mode.predictions, cfg.references, cfg.references_split)
        print(format_scores(scores))
        if mode.out:
            write_json(mode.out, scores)
            print(f"scores: {mode.out}")
        return 0
    if mode.all:
        print(f"captions: {caption_all(cfg)}")
        return 0
    scores = evaluate_run(cfg)
    print(format_scores(scores))
    print(f"captions: {Path(cfg.run_dir) / 'captions.txt'}\nscores: {Path(cfg.run_dir) / 'scores.json'}\n"
          f"report: {Path(cfg.run_dir) / 'report.html'}")
    return 0

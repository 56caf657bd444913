"""Trains S2VT epoch by epoch, resuming a run where it stopped.

Reads the feature store (or several, `streams`) and the training labels; writes into the run folder
`config.json`, `last.pt` (every epoch), `best.pt` (the best epoch so far),
`metrics.csv` (one row per epoch) and the plots `curves.png` and `schedule.png`.
The shape of torchvision's reference `main`: build the data and the model, resume
from `last.pt` when there is one, then per epoch train, validate and save. What a
checkpoint holds is `checkpoint`'s business, one optimisation step `train_step`'s,
and under torchrun the processes and their weight check `distributed`'s.

The labels and the store are checked before the run folder is made; one training
holds a run at a time (`RUN/.lock`, holding its process id), and a file of it that
cannot be written (a full disk) stops the run naming `RUN`, `last.pt` keeping the
last finished epoch.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from . import distributed, schedule
from .labels import CaptionError, load_captions
from .vocab import Vocab
from .checkpoint import (CheckpointError, Progress, build_checkpoint, check_resumable, load_checkpoint, restore,
                         save_checkpoint)
from .config import DecodeConfig, TrainConfig, parse_config, print_config
from .dataset import CaptionSet, batches, build_set, epoch_captions, features_fit, split_ids, usable_ids
from .decoding import caption_features
from .devices import resolve_device
from .errors import ConfigError, PipelineError, run_command
from .files import OutputError, atomic_write, ensure_writable_folder, write_json, writer_lock
from .metrics import course_bleu1
from .model import S2VT, S2VTConfig, masked_loss
from .plots import plot_history
from .precision import TRAINING_PRECISIONS, autocast, resolve_precision
from .streams import FeatureStreams
from .train_step import TrainStep

METRICS = ("epoch", "train_loss", "val_loss", "val_bleu", "teacher_forcing", "lr", "seconds")
RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "curves.png", "schedule.png")  # what a run writes
VALIDATION_CHUNK = 256  # videos read (from memory or the store) and captioned at a time in validation
GREEDY = DecodeConfig(beam=1)  # validation scores greedy captions


def train_one_epoch(step: TrainStep, data: CaptionSet, epoch: int, cfg: TrainConfig, teacher_forcing: float,
                    world: distributed.World = distributed.World()) -> float:
    """One pass over this epoch's captions, feeding the true previous word with probability `teacher_forcing`;
    returns the mean training loss.

    Under torchrun each rank takes its share of the epoch's shuffled captions (a
    `DistributedSampler` over them, so the epoch's order decides the split) in batches
    of `batch_size / world size`, and its loss is its share of the global batch's mean
    over real tokens: DDP's gradient average is then exactly the gradient of that mean.
    """
    step.model.train()
    rows = epoch_captions(data, cfg.captions_per_epoch, cfg.seed, epoch)
    if world.distributed:
        rows = rows[list(DistributedSampler(rows, num_replicas=world.size, rank=world.rank, shuffle=False))]
    size = cfg.batch_size // world.size
    n_batches = math.ceil(len(rows) / size)
    losses = torch.zeros(n_batches, device=step.device)  # (n_batches,) on the device: a GPU is not stopped each step
    shown = time.monotonic()
    with tqdm(batches(data, rows, size), total=n_batches, desc=f"Epoch {epoch}", unit="step", leave=False,
              dynamic_ncols=True, disable=not world.is_main) as bar:
        for i, (tokens, features) in enumerate(bar, 1):  # tokens (b, T + 2), features (b, F, D)
            losses[i - 1] = step(tokens, features, teacher_forcing)  # under torchrun this rank's share
            if time.monotonic() - shown > 0.5 or i == n_batches:
                running = losses[:i].sum().item()
                if not math.isfinite(running) and not world.distributed:  # (ranks stop together, below)
                    break  # diverged: the rest of the epoch would train weights that are no longer numbers
                bar.set_postfix_str(f"loss {running / i:.4f}, teacher forcing {teacher_forcing:.2f}")
                shown = time.monotonic()
    _stop_if_diverged(step.model, losses, epoch, cfg, world)
    return distributed.total([losses.sum().item()], world, step.device)[0] / world.size / max(n_batches, 1)


def _stop_if_diverged(model: torch.nn.Module, losses: torch.Tensor, epoch: int, cfg: TrainConfig,
                      world: distributed.World) -> None:
    """An error when a step's loss (`losses`, (n_batches,)), or a weight after the epoch, is not finite: the run
    stops before its checkpoint would overwrite last.pt with weights that caption nothing. Every rank decides
    alike (the first bad step of any rank; DDP keeps the weights equal)."""
    bad = torch.nonzero(~torch.isfinite(losses)).flatten().tolist()
    mine = (bad[0] + 1, losses[bad[0]].item()) if bad else (len(losses) + 1, 0.0)
    step, value = min(distributed.gather(mine, world))
    weights = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all().item()
    if step > len(losses) and weights:
        return
    where = f"the loss became {value} at epoch {epoch}, step {step} of {len(losses)}" if step <= len(losses) else \
        f"the weights became NaN or infinite in epoch {epoch} (its losses were finite: a gradient overflowed)"
    last = Path(cfg.run_dir) / "last.pt"
    kept = f"{last} holds the {epoch} epochs finished before it, untouched" if epoch else "no epoch had finished"
    raise PipelineError(f"training diverged: {where}, so the run stopped; {kept}. Run again with a lower --lr "
                        f"(this run's: {cfg.lr:g}){' to resume from there' if epoch else ''}")


@torch.no_grad()
def validate(model: S2VT, data: CaptionSet, vocab: Vocab, device: torch.device, cfg: TrainConfig,
             precision: str = "fp32", world: distributed.World = distributed.World()) -> dict:
    """Teacher-forced loss over every caption, and course BLEU-1 of greedy captions; under torchrun each
    rank takes every `world.size`-th caption and video, and the results are gathered on every rank."""
    model.eval()
    loss_sum, n_tokens = 0.0, 0
    for tokens, features in batches(data, np.arange(len(data.tokens))[world.rank::world.size], cfg.batch_size):
        tokens, features = tokens.to(device), features.to(device)
        with autocast(device, precision):
            logits = model(features, tokens[:, :-1])
        real = (tokens[:, 1:] != data.pad_id).sum().item()
        loss_sum += masked_loss(logits.float(), tokens[:, 1:], data.pad_id).item() * real
        n_tokens += real
    loss_sum, n_tokens = distributed.total([loss_sum, n_tokens], world, device)
    mine, captions = torch.arange(len(data))[world.rank::world.size], {}
    for chunk in mine.split(VALIDATION_CHUNK):
        ids = [data.ids[i] for i in chunk.tolist()]
        captions.update(zip(ids, caption_features(model, vocab, data.features[chunk], device, GREEDY, precision)))
    captions = {vid: caption for part in distributed.gather(captions, world) for vid, caption in part.items()}
    return {"val_loss": loss_sum / n_tokens, "val_bleu": course_bleu1(captions, data.references)}


def write_metrics(path: Path, history: list[dict]) -> None:
    """`metrics.csv`, one row per epoch; what was not measured (validation without a split) is empty."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS)
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in history)

    atomic_write(path, write)


def _lr_factor(cfg: TrainConfig):
    if cfg.lr_schedule == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, cfg.epochs) / cfg.epochs))
    return lambda epoch: 1.0


def read_inputs(cfg: TrainConfig) -> tuple[FeatureStreams, dict[str, list[str]], list[str], list[str]]:
    """The store, the captions and the (training, validation) video ids: every input a run is refused for
    that is cheap to check, checked before the run folder is made."""
    store = FeatureStreams(cfg.features)
    captions = load_captions(cfg.labels, cfg.split)
    if cfg.val_labels or cfg.val_split:  # the benchmark's own validation split
        train_ids = usable_ids(captions, store, cfg.labels)
        val_labels = cfg.val_labels or cfg.labels
        val_captions = load_captions(val_labels, cfg.val_split)
        val_ids = usable_ids(val_captions, store, val_labels)
        both = sorted(set(train_ids) & set(val_ids))
        if both:
            raise CaptionError(f"{len(both)} videos are in both the training and the validation captions (first: "
                               f"{', '.join(both[:3])}): VAL_LABELS / VAL_SPLIT must name another split")
        captions = captions | {vid: val_captions[vid] for vid in val_ids}
    else:
        train_ids, val_ids = split_ids(usable_ids(captions, store, cfg.labels), cfg.val_fraction, cfg.seed)
    return store, captions, train_ids, val_ids


def prepare(cfg: TrainConfig, inputs: tuple, device: torch.device, processes_per_node: int = 1):
    """Build the vocabulary (from the training split) and the data sets of `read_inputs`' ids. On a GPU
    the features go to its memory when half of what is free holds them."""
    store, captions, train_ids, val_ids = inputs
    vocab = Vocab.build({v: captions[v] for v in train_ids}, cfg.min_count)
    held_on, where = features_fit(store, len(train_ids) + len(val_ids), cfg.feature_memory, processes_per_node,
                                  device)
    print(f"features: {where}")
    train_set = build_set(train_ids, captions, store, vocab, cfg.max_len, held_on)
    val_set = build_set(val_ids, captions, store, vocab, cfg.max_len, held_on) if val_ids else None
    return store, vocab, train_set, val_set


def build(cfg: TrainConfig, store: FeatureStreams, vocab: Vocab, device: torch.device):
    """The model, its optimizer and LR schedule, freshly initialised from `cfg.seed`."""
    torch.manual_seed(cfg.seed)
    model_cfg = S2VTConfig(feature_dim=store.feature_dim, vocab_size=len(vocab), pad_id=vocab.pad_id,
                           bos_id=vocab.bos_id, eos_id=vocab.eos_id, max_len=cfg.max_len, hidden=cfg.hidden,
                           embed=cfg.embed, dropout=cfg.dropout, attention=cfg.attention,
                           bidirectional=cfg.bidirectional, motion=cfg.motion)
    model = S2VT(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))


def resume(cfg: TrainConfig, model: S2VT, optimizer, scheduler, vocab: Vocab, store: FeatureStreams,
           world: distributed.World) -> Progress:
    """The run's progress: restored from `last.pt` when the run has one (checked against `cfg`), else new."""
    last = Path(cfg.run_dir) / "last.pt"
    if len(set(distributed.gather(last.exists(), world))) > 1:
        raise CheckpointError(f"only some processes see {last}: under torchrun on several machines the "
                              f"run folder must be on a filesystem they all share")
    if not last.exists():
        if world.rank:  # every rank starts from rank 0's weights (DDP broadcasts them), with its own dropout
            torch.manual_seed(cfg.seed + 1000 * world.rank)
        return Progress()
    checkpoint = load_checkpoint(last)
    check_resumable(checkpoint, cfg, vocab, store, last)
    progress = restore(checkpoint, model, optimizer, scheduler, world, cfg.seed)
    print(f"resuming {last} after epoch {progress.epoch - 1}")
    return progress


def train(cfg: TrainConfig) -> list[dict]:
    """Train (or resume) the run in `cfg.run_dir`; returns the metrics history.

    Under torchrun (`WORLD_SIZE` > 1) this is one rank of a DistributedDataParallel run:
    NCCL on CUDA, gloo on CPU; only rank 0 prints, writes checkpoints, metrics and plots.
    """
    device = resolve_device(cfg.device)
    world = distributed.start("nccl" if device.type == "cuda" else "gloo")
    try:
        with distributed.rank0_prints():
            return _train(cfg, distributed.device_for(device, world), world)
    finally:
        distributed.stop(world)


def _train(cfg: TrainConfig, device: torch.device, world: distributed.World) -> list[dict]:
    if cfg.batch_size % world.size:
        raise ConfigError(f"the global batch size {cfg.batch_size} must divide by the number of processes "
                          f"{world.size}: pass a BATCH that does")
    precision = resolve_precision(cfg.precision, device, TRAINING_PRECISIONS, auto_bf16_on_cpu=False)
    inputs = read_inputs(cfg)  # a refused label file or store leaves no run folder behind
    run = ensure_writable_folder(cfg.run_dir, "RUN")
    with run_lock(run) if world.is_main else contextlib.nullcontext():
        distributed.barrier(world)  # rank 0 holds RUN: a second training is refused before any rank writes
        return _train_into(cfg, run, inputs, precision, device, world)


def run_lock(run: Path) -> contextlib.AbstractContextManager[None]:
    """Hold `run` for one training: `RUN/.lock`, holding this process's id; another training of the same
    run is refused at its start, naming it. Evaluation reads a run without it."""
    return writer_lock(run / ".lock", f"RUN {run}", "another training", "RUN folder")


def _train_into(cfg: TrainConfig, run: Path, inputs: tuple, precision: str, device: torch.device,
                world: distributed.World) -> list[dict]:
    store, vocab, train_set, val_set = prepare(cfg, inputs, device, world.local_size)
    model, optimizer, scheduler = build(cfg, store, vocab, device)
    progress = resume(cfg, model, optimizer, scheduler, vocab, store, world)
    if progress.epoch >= cfg.epochs:
        print(f"{run} has already trained {progress.epoch} epochs; pass a larger EPOCHS to continue "
              f"(nothing was changed)")
        return progress.history
    _describe(cfg, train_set, val_set, vocab, store, f"device {device} at {precision}", world)
    layout = {"world_size": world.size, "batch_size_per_process": cfg.batch_size // world.size}
    if world.is_main:
        with _write_failure_names_run(run, progress.epoch):
            write_json(run / "config.json", asdict(cfg) | layout)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world.distributed else model
    step = TrainStep(net, optimizer, device, precision, vocab.pad_id, cfg.clip_grad, cfg.batch_size // world.size,
                     cfg.cuda_graphs, world, cfg.label_smoothing)
    in_sync = [e for e in _read_json(run / "ddp.json").get("epochs", []) if e["epoch"] < progress.epoch]
    teacher_forcing = schedule.per_epoch(cfg.schedule, cfg.epochs)
    for epoch in range(progress.epoch, cfg.epochs):
        began = time.perf_counter()
        with _out_of_memory_names_batch(cfg, run, progress):
            train_loss = train_one_epoch(step, train_set, epoch, cfg, float(teacher_forcing[epoch]), world)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            scores = validate(model, val_set, vocab, device, cfg, precision, world) if val_set else \
                {"val_loss": None, "val_bleu": None}
        progress.history.append({"epoch": epoch, "train_loss": train_loss, **scores,
                                 "teacher_forcing": float(teacher_forcing[epoch]), "lr": lr,
                                 "seconds": time.perf_counter() - began})
        score = scores["val_bleu"] if val_set else -train_loss
        improved = score > progress.best
        progress.epoch, progress.best = epoch + 1, max(progress.best, score)
        checkpoint = build_checkpoint(model, optimizer, scheduler, cfg, vocab, store.settings, progress, world)
        if world.distributed:
            in_sync.append(distributed.check_in_sync(model, world, epoch))
            if world.is_main:
                write_json(run / "ddp.json", layout | {"epochs": in_sync})
        if world.is_main:
            _save(run, checkpoint, improved, progress.history)
    if world.is_main:
        plot_history(run, progress.history, teacher_forcing)
    made = [name for name in RUN_FILES if (run / name).exists()]  # best.pt only once an epoch improved
    print(f"run: {run} ({', '.join(made)})")
    return progress.history


def _describe(cfg: TrainConfig, train_set: CaptionSet, val_set: CaptionSet | None, vocab: Vocab,
              store: FeatureStreams, where: str, world: distributed.World) -> None:
    own = cfg.val_labels or cfg.val_split  # the benchmark's own validation split, or a random share
    source = f"{cfg.val_split or 'the captions'} of {Path(cfg.val_labels or cfg.labels).name}" if own else \
        f"a random {cfg.val_fraction:.0%}"
    print(f"train: {len(train_set)} videos, {len(train_set.tokens)} captions; validation: "
          f"{len(val_set) if val_set else 0} videos ({source}); vocabulary: {len(vocab)} words (min count "
          f"{cfg.min_count}); "
          f"features {tuple(train_set.features.shape[1:])} from {store.describe()}; {where}" +
          (f"; {world.size} processes, {cfg.batch_size // world.size} captions per process and step"
           if world.distributed else ""))
    if not val_set:
        print("no validation split (--val-fraction 0): best.pt is the epoch with the lowest training loss")


@contextlib.contextmanager
def _out_of_memory_names_batch(cfg: TrainConfig, run: Path, progress: Progress):
    """A GPU out of memory becomes an error naming the setting to lower; finished epochs are in last.pt."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise PipelineError(f"the GPU ran out of memory training with BATCH={cfg.batch_size}: lower BATCH (e.g. "
                            f"BATCH={max(1, cfg.batch_size // 2)}); {_kept(run, progress.epoch)}") from None


def _kept(run: Path, epochs: int) -> str:
    """What a run stopped now leaves, `epochs` having finished."""
    return f"{run / 'last.pt'} holds the {epochs} epochs finished, and the next run resumes from there" if epochs \
        else "no epoch had finished, and the next run starts afresh"


@contextlib.contextmanager
def _write_failure_names_run(run: Path, epochs: int):
    """A run file that could not be written (a full disk) becomes an error naming RUN and what `last.pt` holds
    (`epochs` finished): it is written atomically, so a failed write leaves the previous one."""
    try:
        yield
    except OutputError as exc:
        raise OutputError(f"RUN: {exc}; {_kept(run, epochs)}") from None


def _save(run: Path, checkpoint: dict, improved: bool, history: list[dict]) -> None:
    with _write_failure_names_run(run, checkpoint["epoch"] - 1):
        save_checkpoint(run / "last.pt", checkpoint)
    with _write_failure_names_run(run, checkpoint["epoch"]):
        if improved:
            save_checkpoint(run / "best.pt", checkpoint)
        write_metrics(run / "metrics.csv", history)
    row = history[-1]
    validation = "no validation" if row["val_loss"] is None else \
        f"val loss {row['val_loss']:.4f}, val BLEU-1 {row['val_bleu']:.4f}"
    print(f"Epoch {row['epoch']}: train loss {row['train_loss']:.4f}, {validation}, teacher forcing "
          f"{row['teacher_forcing']:.2f}, {row['seconds']:.1f} s{' (best)' if improved else ''}", flush=True)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    with distributed.rank0_prints():  # under torchrun, rank 0 alone prints the config
        cfg = parse_config(TrainConfig, "Train S2VT on stored features and captions. Running it again with the "
                           "same --run-dir resumes from last.pt; a larger --epochs continues a finished run.", argv)
        print_config("train", cfg)
        return run_command(lambda: _run(cfg),
                           interrupted=f"{cfg.run_dir}/last.pt holds the last finished epoch; run again to resume")


def _run(cfg: TrainConfig) -> int:
    train(cfg)
    return 0

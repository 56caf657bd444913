"""Training S2VT: the loop, validation, checkpoints and exact resume.

Reads the feature store and the training labels; writes into the run folder
`config.json`, `last.pt` (every epoch), `best.pt` (best validation BLEU),
`metrics.csv` (one row per epoch) and the plots `curves.png` and `schedule.png`.
Checkpoints are plain dicts written atomically, each enough on its own to caption
new videos: model weights and config, vocab, feature-store settings, optimizer
and LR-scheduler state, the epoch, the best score, the torch RNG state (one per
rank under torchrun) and the metrics history. Calling `train` again on the same
run resumes from `last.pt`. Under torchrun, rank 0 also writes `ddp.json`: the
process layout and every rank's weight fingerprint after each epoch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from . import distributed
from .captions import CaptionError, Vocab, load_captions
from .checkpoint import CheckpointError, feature_problems, load_checkpoint, save_checkpoint
from .config import TrainConfig, atomic_write, parse_config, resolve_device, write_json
from .dataset import CaptionSet, batches, build_set, epoch_captions, features_fit, split_ids, usable_ids
from .metrics import course_bleu1
from .model import S2VT, S2VTConfig, masked_loss
from .precision import autocast, resolve_precision
from .schedule import teacher_forcing
from .store import FeatureStore, StoreError

# Config fields that shape the model, its vocabulary or the data split: a run cannot resume with others.
FIXED_FIELDS = ("hidden", "embed", "attention", "bidirectional", "motion", "max_len", "min_count", "seed",
                "val_fraction")
METRICS = ("epoch", "train_loss", "val_loss", "val_bleu", "teacher_forcing", "lr", "seconds")


def check_resumable(checkpoint: dict, cfg: TrainConfig, vocab: Vocab, store: FeatureStore, path: Path) -> None:
    """Refuse a checkpoint made for other features, another vocabulary or another model shape."""
    problems = [f"{f}: checkpoint has {checkpoint['train_config'][f]!r}, asked for {getattr(cfg, f)!r}"
                for f in FIXED_FIELDS if checkpoint["train_config"][f] != getattr(cfg, f)]
    problems += feature_problems(checkpoint, store)
    if checkpoint["vocab"]["words"] != vocab.words:
        problems.append(f"vocabulary: checkpoint has {len(checkpoint['vocab']['words'])} words, the labels "
                        f"{cfg.labels} give {len(vocab)} (other labels or another split)")
    if problems:
        raise CheckpointError(f"{path} cannot be resumed with these settings:\n  " + "\n  ".join(problems) +
                              "\nUse another RUN folder for a new run, or the settings the run was started with.")


def _unwrapped(model) -> S2VT:
    return model.module if isinstance(model, DistributedDataParallel) else model


def train_one_epoch(model: S2VT | DistributedDataParallel, data: CaptionSet, optimizer, device: torch.device,
                    epoch: int, cfg: TrainConfig, p_true: float, precision: str = "fp32",
                    world: distributed.World = distributed.World()) -> float:
    """One pass over this epoch's captions at `precision` (resolved); returns the mean training loss.

    Under torchrun each rank takes its share of the epoch's shuffled captions (a
    `DistributedSampler` over them, so the epoch's order decides the split) in batches
    of `batch_size / world size`, and its loss is its share of the global batch's mean
    over real tokens: DDP's gradient average is then exactly the gradient of that mean.
    """
    model.train()
    pad_id = _unwrapped(model).cfg.pad_id
    rows = epoch_captions(data, cfg.captions_per_epoch, cfg.seed, epoch)
    if world.distributed:
        rows = rows[list(DistributedSampler(rows, num_replicas=world.size, rank=world.rank, shuffle=False))]
    size = cfg.batch_size // world.size
    n_batches = math.ceil(len(rows) / size)
    total = 0.0
    bar = tqdm(batches(data, rows, size), total=n_batches, desc=f"Epoch {epoch}", unit="step",
               leave=False, dynamic_ncols=True, disable=not world.is_main)
    for step, (tokens, features) in enumerate(bar, 1):
        tokens = tokens.to(device)  # (b, T + 1)
        features = features.to(device, non_blocking=True)  # (b, F, D)
        with autocast(device, precision):
            logits = model(features, tokens[:, :-1], teacher_forcing=p_true)  # (b, T, V)
            loss = masked_loss(logits.float(), tokens[:, 1:], pad_id)
        if world.distributed:
            here = (tokens[:, 1:] != pad_id).sum().item()
            loss = loss * (here * world.size / distributed.total([here], world, device)[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        total += loss.item()  # under torchrun this rank's share; the ranks' shares average to the step's loss
        bar.set_postfix_str(f"Training Loss: {total / step:.4f}, samp_prob: {p_true:.4f}")
    return distributed.total([total], world, device)[0] / world.size / max(n_batches, 1)


@torch.no_grad()
def greedy_captions(model: S2VT, features: torch.Tensor, vocab: Vocab, device: torch.device,
                    batch: int = 256) -> list[str]:
    """Greedy captions for `features` `(N, F, D)`, as strings."""
    model.eval()
    out = []
    for i in range(0, len(features), batch):
        tokens = model.generate(features[i:i + batch].to(device))  # (b, T)
        out += [vocab.decode(row) for row in tokens.tolist()]
    return out


@torch.no_grad()
def evaluate(model: S2VT, data: CaptionSet, vocab: Vocab, device: torch.device, cfg: TrainConfig,
             precision: str = "fp32", world: distributed.World = distributed.World()) -> dict:
    """Teacher-forced loss over every caption, and course BLEU-1 of greedy captions; under torchrun each
    rank takes every `world.size`-th caption and video, and the results are gathered on every rank."""
    model.eval()
    loss_sum, n_tokens = 0.0, 0
    for tokens, features in batches(data, np.arange(len(data.tokens))[world.rank::world.size], cfg.batch_size):
        tokens, features = tokens.to(device), features.to(device)
        with autocast(device, precision):
            logits = model(features, tokens[:, :-1])
        real = (tokens[:, 1:] != model.cfg.pad_id).sum().item()
        loss_sum += masked_loss(logits.float(), tokens[:, 1:], model.cfg.pad_id).item() * real
        n_tokens += real
    loss_sum, n_tokens = distributed.total([loss_sum, n_tokens], world, device)
    mine, captions = torch.arange(len(data))[world.rank::world.size], {}
    for chunk in mine.split(256):  # read (from memory or the store) and captioned a chunk at a time
        ids = [data.ids[i] for i in chunk.tolist()]
        captions.update(zip(ids, greedy_captions(model, data.features[chunk], vocab, device)))
    captions = {vid: caption for part in distributed.gather(captions, world) for vid, caption in part.items()}
    return {"val_loss": loss_sum / n_tokens, "val_bleu": course_bleu1(captions, data.references)}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_in_sync(model: S2VT, world: distributed.World, epoch: int) -> dict:
    """Every rank's weight fingerprint after `epoch`; ranks that differ stop the run."""
    prints = distributed.gather(fingerprint(model), world)
    if len(set(prints)) > 1:
        raise RuntimeError(f"after epoch {epoch} the ranks hold different weights: {prints}")
    return {"epoch": epoch, "fingerprints": prints}


def write_metrics(path: Path, history: list[dict]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(path, write)


def plot_history(run: Path, history: list[dict], probs: np.ndarray) -> None:
    """curves.png (losses and validation BLEU per epoch) and schedule.png (teacher forcing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], label="train")
    ax_loss.plot(epochs, [row["val_loss"] for row in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_bleu.plot(epochs, [row["val_bleu"] for row in history], color="tab:green")
    if all(math.isnan(row["val_bleu"]) for row in history):
        ax_bleu.text(0.5, 0.5, "no validation split\n(--val-fraction 0)", ha="center", va="center",
                     transform=ax_bleu.transAxes)
    ax_bleu.set(xlabel="epoch", ylabel="course BLEU-1", title="Validation BLEU-1")
    fig.tight_layout()
    fig.savefig(run / "curves.png", dpi=80)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(len(probs)), probs)
    ax.set(xlabel="epoch", ylabel="P(feed the true word)", title="Scheduled sampling", ylim=(0, 1.05))
    fig.tight_layout()
    fig.savefig(run / "schedule.png", dpi=80)
    plt.close(fig)


def _lr_factor(cfg: TrainConfig):
    if cfg.lr_schedule == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, cfg.epochs) / cfg.epochs))
    if cfg.lr_schedule == "none":
        return lambda epoch: 1.0
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; known: none, cosine")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict | list, world: distributed.World, seed: int) -> None:
    """This rank's saved RNG state (a checkpoint of a torchrun run holds one per rank); a rank the
    checkpoint has no state for starts a fresh, rank-specific stream."""
    if isinstance(state, list):
        state = state[world.rank] if len(state) == world.size else None
    elif world.rank:
        state = None
    if state is None:
        print(f"rank {world.rank}: the checkpoint was written by another number of processes; "
              f"this rank's dropout draws restart from a fresh seed", file=sys.stderr)
        torch.manual_seed(seed + 1000 * world.rank)
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fingerprint(model: S2VT) -> str:
    """A SHA-256 of every parameter's bytes: equal on two ranks exactly when their weights are."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def prepare(cfg: TrainConfig, processes_per_node: int = 1):
    """Load labels and features, split, and build the vocabulary (from the training split)."""
    store = FeatureStore(cfg.features)
    captions = load_captions(cfg.labels)
    train_ids, val_ids = split_ids(usable_ids(captions, store, cfg.labels), cfg.val_fraction, cfg.seed)
    vocab = Vocab.build({v: captions[v] for v in train_ids}, cfg.min_count)
    in_memory, where = features_fit(store, len(train_ids) + len(val_ids), cfg.feature_memory, processes_per_node)
    print(f"features: {where}")
    train_set = build_set(train_ids, captions, store, vocab, cfg.max_len, in_memory)
    val_set = build_set(val_ids, captions, store, vocab, cfg.max_len, in_memory) if val_ids else None
    return store, vocab, train_set, val_set


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
    run = Path(cfg.run_dir)
    if cfg.batch_size % world.size:
        raise ValueError(f"the global batch size {cfg.batch_size} must divide by the number of processes "
                         f"{world.size}: pass a BATCH that does")
    run.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(cfg.precision, device, allowed=("auto", "fp32", "bf16"), auto_bf16_on_cpu=False)
    store, vocab, train_set, val_set = prepare(cfg, world.local_size)
    print(f"train: {len(train_set)} videos, {len(train_set.tokens)} captions; validation: "
          f"{len(val_set) if val_set else 0} videos; vocabulary: {len(vocab)} words (min count {cfg.min_count}); "
          f"features {tuple(train_set.features.shape[1:])} from {store.settings.backbone}; device {device} "
          f"at {precision}" + (f"; {world.size} processes, {cfg.batch_size // world.size} captions per "
                                f"process and step" if world.distributed else ""))

    torch.manual_seed(cfg.seed)
    model_cfg = S2VTConfig(feature_dim=store.feature_dim, vocab_size=len(vocab), max_len=cfg.max_len,
                           hidden=cfg.hidden, embed=cfg.embed, dropout=cfg.dropout, attention=cfg.attention,
                           bidirectional=cfg.bidirectional, motion=cfg.motion)
    model = S2VT(model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
    start, history, best = 0, [], -math.inf
    last_path, best_path = run / "last.pt", run / "best.pt"
    if len(set(distributed.gather(last_path.exists(), world))) > 1:
        raise CheckpointError(f"only some processes see {last_path}: under torchrun on several machines the "
                              f"run folder must be on a filesystem they all share")
    if last_path.exists():
        checkpoint = load_checkpoint(last_path)
        check_resumable(checkpoint, cfg, vocab, store, last_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start, history, best = checkpoint["epoch"], checkpoint["history"], checkpoint["best_score"]
        _set_rng_state(checkpoint["rng"], world, cfg.seed)
        print(f"resuming {last_path} after epoch {start - 1}")
    elif world.rank:  # every rank starts from rank 0's weights (DDP broadcasts them), with its own dropout
        torch.manual_seed(cfg.seed + 1000 * world.rank)
    layout = {"world_size": world.size, "batch_size_per_process": cfg.batch_size // world.size}
    if world.is_main:
        write_json(run / "config.json", asdict(cfg) | layout)
    net = model
    if world.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    in_sync = [e for e in _read_json(run / "ddp.json").get("epochs", []) if e["epoch"] < start]
    if start >= cfg.epochs:
        print(f"{run} has already trained {start} epochs; pass a larger EPOCHS to continue")
        return history

    probs = teacher_forcing(cfg.schedule, cfg.epochs)
    for epoch in range(start, cfg.epochs):
        began = time.perf_counter()
        train_loss = train_one_epoch(net, train_set, optimizer, device, epoch, cfg, float(probs[epoch]),
                                     precision, world)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        scores = evaluate(model, val_set, vocab, device, cfg, precision, world) if val_set else \
            {"val_loss": math.nan, "val_bleu": math.nan}
        history.append({"epoch": epoch, "train_loss": train_loss, **scores, "teacher_forcing": float(probs[epoch]),
                        "lr": lr, "seconds": time.perf_counter() - began})
        score = scores["val_bleu"] if val_set else -train_loss
        improved = score > best
        best = max(best, score)
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "train_config": asdict(cfg),
                      "model_config": asdict(model_cfg), "vocab": vocab.to_dict(),
                      "feature_settings": asdict(store.settings), "epoch": epoch + 1, "best_score": best,
                      "history": history,
                      "rng": distributed.gather(_rng_state(), world) if world.distributed else _rng_state()}
        if world.distributed:
            in_sync.append(_check_in_sync(model, world, epoch))
            if world.is_main:
                write_json(run / "ddp.json", layout | {"epochs": in_sync})
        if not world.is_main:
            continue
        save_checkpoint(last_path, checkpoint)
        if improved:
            save_checkpoint(best_path, checkpoint)
        write_metrics(run / "metrics.csv", history)
        row = history[-1]
        print(f"Epoch {epoch}: train loss {train_loss:.4f}, val loss {row['val_loss']:.4f}, "
              f"val BLEU-1 {row['val_bleu']:.4f}, samp_prob {row['teacher_forcing']:.4f}, "
              f"{row['seconds']:.1f} s{' (best)' if improved else ''}", flush=True)
    if world.is_main:
        plot_history(run, history, probs)
    print(f"run: {run} (best.pt, last.pt, metrics.csv, curves.png, schedule.png)")
    return history


def main(argv: list[str] | None = None) -> int:
    with distributed.rank0_prints():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    cfg = parse_config(TrainConfig, "train",
                       "Train S2VT on stored features and captions. Running it again with the same --run-dir "
                       "resumes from last.pt; a larger --epochs continues a finished run.", argv)
    try:
        train(cfg)
    except (CheckpointError, StoreError, CaptionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: {cfg.run_dir}/last.pt holds the last finished epoch; run again to resume",
              file=sys.stderr)
        return 130
    return 0

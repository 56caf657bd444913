"""Caption decoding: frame features -> caption strings, the one path every caller uses.

Reads nothing from disk; takes a trained `S2VT`, its `Vocab`, features `(N, F, D)`
and a `DecodeConfig` (`config.py`). `beam_search` decodes a whole batch of videos
at once; beam size 1 is greedy decoding. Options: a length penalty
(((5 + length) / 6) ** alpha, as in GNMT; 0 ranks by plain log-probability) and an
n-gram repeat block against S2VT's "a man is a a a a" loops (off by default).
`caption_features` turns features into strings `cfg.batch` videos at a time:
validation (greedy), `make eval`, `make captions` and `caption.py` all call it.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .config import DecodeConfig
from .model import S2VT
from .precision import autocast
from .vocab import Vocab


def _banned_words(history: list[int], n: int) -> list[int]:
    """Words that would complete an n-gram already in `history`."""
    if n <= 0 or len(history) < n - 1:
        return []
    prefix = history[len(history) - (n - 1):] if n > 1 else []
    return [history[i + n - 1] for i in range(len(history) - n + 1) if history[i:i + n - 1] == prefix]


@torch.no_grad()
def beam_search(model: S2VT, features: torch.Tensor, cfg: DecodeConfig) -> list[list[int]]:
    """The best caption of each video as token ids (up to and without <eos>); `model` in eval mode."""
    B, K, mc = features.shape[0], cfg.beam, model.cfg
    device = features.device
    state = model.start(features)
    state.repeat(K)  # (B * K) rows: video b's beams are rows b*K .. b*K + K-1
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    words = torch.full((B * K,), mc.bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(B * K, dtype=torch.bool, device=device)
    history: list[list[int]] = [[] for _ in range(B * K)]
    for _ in range(mc.steps):
        logp = state.step_words(words).float().log_softmax(dim=-1)  # (B*K, V)
        logp[finished] = float("-inf")
        logp[finished, mc.pad_id] = 0.0  # a finished beam carries its score unchanged
        if cfg.block_ngram:
            for row, hist in enumerate(history):
                if not finished[row]:
                    logp[row, _banned_words(hist, cfg.block_ngram)] = float("-inf")
        V = logp.shape[-1]
        candidates = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        scores, best = candidates.topk(K, dim=-1)  # (B, K)
        origin = (best // V + torch.arange(B, device=device)[:, None] * K).view(-1)  # (B*K,)
        words = (best % V).view(-1)
        state.reorder(origin)
        finished = finished[origin]
        history = [history[o] + ([] if finished[i] else [w]) for i, (o, w) in
                   enumerate(zip(origin.tolist(), words.tolist()))]
        finished = finished | (words == mc.eos_id)
        if finished.all():
            break
    return _pick_best(history, scores, cfg, mc.eos_id)


def _pick_best(history, scores, cfg: DecodeConfig, eos_id: int) -> list[list[int]]:
    B, K = scores.shape
    lengths = torch.tensor([len(h) for h in history], dtype=torch.float, device=scores.device).view(B, K)
    ranked = scores / ((5.0 + lengths) / 6.0) ** cfg.length_penalty
    best = ranked.argmax(dim=-1).tolist()
    return [[w for w in history[b * K + k] if w != eos_id] for b, k in enumerate(best)]


@torch.no_grad()
def caption_features(model: S2VT, vocab: Vocab, features, device: torch.device, cfg: DecodeConfig,
                     precision: str = "fp32", progress: bool = False) -> list[str]:
    """Captions of `features` `(N, F, D)` (a tensor, an array, or anything that slices into one, such as
    features left in the store), decoded `cfg.batch` videos at a time on `device` at `precision`; with
    `progress`, a bar counts the batches when there are several."""
    model.eval()
    captions = []
    starts = range(0, len(features), cfg.batch)
    for i in tqdm(starts, desc="captions", unit="batch", disable=not progress or len(starts) <= 1):
        chunk = torch.as_tensor(features[i:i + cfg.batch], dtype=torch.float32).to(device)  # (b, F, D)
        with autocast(device, precision):
            captions += [vocab.decode(tokens) for tokens in beam_search(model, chunk, cfg)]
    return captions

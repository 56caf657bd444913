"""Caption decoding: frame features -> caption strings, the one path every caller uses.

Reads nothing from disk; takes a trained `S2VT`, its `Vocab` and features
`(N, F, D)`. `beam_search` decodes a whole batch of videos at once; beam size 1 is
greedy decoding. Options: a length penalty (((5 + length) / 6) ** alpha, as in GNMT;
0 ranks by plain log-probability) and an n-gram repeat block against S2VT's
"a man is a a a a" loops (off by default). `caption_features` turns features into
strings batch by batch: validation, `make eval`, `make captions` and `caption.py`
all call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Checked, opt
from .model import S2VT
from .precision import autocast
from .vocab import Vocab


@dataclass
class DecodeConfig(Checked):
    beam: int = opt(1, "beams per video; 1 is greedy", at_least=1, make="BEAM")
    length_penalty: float = opt(0.0, "alpha in ((5 + length) / 6) ** alpha", at_least=0)
    block_ngram: int = opt(0, "forbid repeating any n-gram of this size (0 = off)", at_least=0)


def _banned_words(history: list[int], n: int) -> list[int]:
    """Words that would complete an n-gram already in `history`."""
    if n <= 0 or len(history) < n - 1:
        return []
    prefix = history[len(history) - (n - 1):] if n > 1 else []
    return [history[i + n - 1] for i in range(len(history) - n + 1) if history[i:i + n - 1] == prefix]


@torch.no_grad()
def beam_search(model: S2VT, features: torch.Tensor, cfg: DecodeConfig = DecodeConfig()) -> list[list[int]]:
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
def caption_features(model: S2VT, vocab: Vocab, features, device: torch.device,
                     cfg: DecodeConfig = DecodeConfig(), batch: int = 64, precision: str = "fp32") -> list[str]:
    """Captions of `features` `(N, F, D)` (a tensor, an array, or anything that slices into one),
    decoded `batch` videos at a time on `device` at `precision`."""
    model.eval()
    captions = []
    for i in range(0, len(features), batch):
        chunk = torch.as_tensor(features[i:i + batch], dtype=torch.float32).to(device)  # (b, F, D)
        with autocast(device, precision):
            captions += [vocab.decode(tokens) for tokens in beam_search(model, chunk, cfg)]
    return captions

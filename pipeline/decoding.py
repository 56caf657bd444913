"""Caption decoding: beam search over a whole batch of videos at once.

Reads nothing from disk; takes a trained `S2VT` and features `(B, F, D)`, returns
token ids. Beam size 1 is greedy decoding. Options: a length penalty
(((5 + length) / 6) ** alpha, as in GNMT; 0 ranks by plain log-probability) and an
n-gram repeat block against S2VT's "a man is a a a a" loops (off by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import S2VT


@dataclass
class DecodeConfig:
    beam: int = 1  # beams per video; 1 is greedy
    length_penalty: float = 0.0  # alpha in ((5 + length) / 6) ** alpha
    block_ngram: int = 0  # forbid repeating any n-gram of this size (0 = off)


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
    memory, h1_words, (h, c) = model.encode(features)
    expand = torch.arange(B, device=features.device).repeat_interleave(K)  # (B*K,)
    gates, state = model.word_gates(h1_words)[expand], (h[expand], c[expand])
    if mc.attention != "none":  # only attention reads the frame outputs; copying them is costly
        memory = memory[expand]
    scores = torch.full((B, K), float("-inf"), device=features.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    words = torch.full((B * K,), mc.bos_id, dtype=torch.long, device=features.device)
    finished = torch.zeros(B * K, dtype=torch.bool, device=features.device)
    history: list[list[int]] = [[] for _ in range(B * K)]
    for t in range(mc.steps):
        logits, state = model.step(words, gates[:, t], state, memory)  # (B*K, V)
        logp = logits.float().log_softmax(dim=-1)
        logp[finished] = float("-inf")
        logp[finished, mc.pad_id] = 0.0  # a finished beam carries its score unchanged
        if cfg.block_ngram:
            for row, hist in enumerate(history):
                if not finished[row]:
                    logp[row, _banned_words(hist, cfg.block_ngram)] = float("-inf")
        V = logp.shape[-1]
        candidates = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        scores, best = candidates.topk(K, dim=-1)  # (B, K)
        origin = (best // V + torch.arange(B, device=features.device)[:, None] * K).view(-1)  # (B*K,)
        words = (best % V).view(-1)
        state = (state[0][origin], state[1][origin])
        finished = finished[origin]
        history = [history[o] + ([] if finished[i] else [w]) for i, (o, w) in
                   enumerate(zip(origin.tolist(), words.tolist()))]
        finished = finished | (words == mc.eos_id)
        if finished.all():
            break
    return _pick_best(history, scores, finished, cfg, mc.eos_id)


def _pick_best(history, scores, finished, cfg: DecodeConfig, eos_id: int) -> list[list[int]]:
    B, K = scores.shape
    lengths = torch.tensor([len(h) for h in history], dtype=torch.float, device=scores.device).view(B, K)
    ranked = scores / ((5.0 + lengths) / 6.0) ** cfg.length_penalty
    best = ranked.argmax(dim=-1).tolist()
    return [[w for w in history[b * K + k] if w != eos_id] for b, k in enumerate(best)]

"""S2VT: two stacked LSTMs that read a clip's frame features, then write its caption.

Reads and writes nothing; imports nothing of the data side. As in Venugopalan et
al. (ICCV 2015): frame features are projected; the first LSTM reads the frames and
then padding; the second LSTM reads [zeros or the previous word's embedding,
first-LSTM output], and decoding starts after the last frame.

Variants (by config): attention over the first LSTM's frame outputs, Luong's
"general" score on the output side or Bahdanau's additive score feeding the
second LSTM's input; a bidirectional first LSTM; and a motion stream (each
frame's features minus the first frame's, beside the features themselves), a
cheap stand-in for the optical-flow stream of the S2VT paper.

The second LSTM is built from public modules, one per part of its input: `decoder`
(an `nn.LSTM` holding the first-LSTM-output input weights, the recurrent weights and
the biases), `word_in` (the word embedding's input weights) and, with Bahdanau
attention, `context_in`. At the frame steps the word and context inputs are zero,
so those steps are one fused `decoder` call. At the word steps `DecoderState` adds
the parts itself, with every step's first-LSTM part computed in one product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ATTENTIONS = ("none", "luong", "bahdanau")


@dataclass
class S2VTConfig:
    feature_dim: int  # from the feature store, never assumed
    vocab_size: int
    pad_id: int  # the special token ids, from the vocabulary the model is trained with
    bos_id: int
    eos_id: int
    max_len: int = 20  # words per caption; the decoder runs max_len + 1 steps (the last emits <eos>)
    hidden: int = 512  # LSTM state size (and the projected frame size)
    embed: int = 512  # word embedding size
    dropout: float = 0.3  # on projected frames, word embeddings and the output layer's input
    attention: str = "none"  # none | luong | bahdanau
    bidirectional: bool = False  # a bidirectional first LSTM
    motion: float = 0.0  # weight of the motion stream (features minus the first frame's); 0 = off

    @property
    def steps(self) -> int:
        return self.max_len + 1


class S2VT(nn.Module):
    def __init__(self, cfg: S2VTConfig):
        super().__init__()
        if cfg.attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {cfg.attention!r}; known: {', '.join(ATTENTIONS)}")
        self.cfg = cfg
        enc = cfg.hidden * (2 if cfg.bidirectional else 1)  # first-LSTM output size
        gates = 4 * cfg.hidden  # the LSTM gates i, f, g, o
        self.frame_proj = nn.Linear(cfg.feature_dim * (2 if cfg.motion else 1), cfg.hidden)
        self.encoder = nn.LSTM(cfg.hidden, cfg.hidden, batch_first=True, bidirectional=cfg.bidirectional)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed, padding_idx=cfg.pad_id)
        self.decoder = nn.LSTM(enc, cfg.hidden, batch_first=True)
        self.word_in = nn.Linear(cfg.embed, gates, bias=False)
        if cfg.attention == "luong":
            self.attn_general = nn.Linear(enc, cfg.hidden, bias=False)
            self.attn_combine = nn.Linear(cfg.hidden + enc, cfg.hidden)
        elif cfg.attention == "bahdanau":
            self.attn_query = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
            self.attn_key = nn.Linear(enc, cfg.hidden)
            self.attn_v = nn.Linear(cfg.hidden, 1, bias=False)
            self.context_in = nn.Linear(enc, gates, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)
        bound = cfg.hidden ** -0.5  # the input-weight parts start as nn.LSTM's own input weights would
        for part in (self.word_in, getattr(self, "context_in", None)):
            if part is not None:
                nn.init.uniform_(part.weight, -bound, bound)

    def encode(self, features: torch.Tensor, steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first LSTM over the frames `(B, F, D)`, then `steps` padding steps (at most, and by default,
        `cfg.steps`): its outputs at the frame steps `(B, F, E)` and at the word steps `(B, T, E)`. A
        bidirectional LSTM always runs all `cfg.steps`, since its backward half reads them all."""
        B, n_frames, _ = features.shape
        steps = self.cfg.steps if steps is None or self.cfg.bidirectional else min(steps, self.cfg.steps)
        if self.cfg.motion:  # appearance and how it changed since the first frame, a cheap flow stream
            features = torch.cat([features, self.cfg.motion * (features - features[:, :1])], dim=-1)  # (B, F, 2D)
        frames = self.drop(self.frame_proj(features))  # (B, F, H)
        padding = frames.new_zeros(B, steps, frames.shape[-1])  # (B, T, H)
        h1, _ = self.encoder(torch.cat([frames, padding], dim=1))  # (B, F + T, E)
        return h1[:, :n_frames], h1[:, n_frames:]

    def start(self, features: torch.Tensor, steps: int | None = None) -> "DecoderState":
        """Read the frames `(B, F, D)`: everything that does not depend on the words, ready to write
        `steps` words (by default `cfg.steps`)."""
        memory, h1_words = self.encode(features, steps)
        _, (h, c) = self.decoder(memory)  # the frame steps: no word, no context; (1, B, H) each
        d = self.decoder
        h1_part = F.linear(h1_words, d.weight_ih_l0, d.bias_ih_l0 + d.bias_hh_l0)  # (B, T, 4H), biases included
        return DecoderState(self, h[0], c[0], h1_part.unbind(1), memory if self.cfg.attention != "none" else None)

    def word_part(self, words: torch.Tensor) -> torch.Tensor:
        """The words' part of the second LSTM's gates: ids `(...)` -> `(..., 4H)`."""
        return self.word_in(self.drop(self.embed(words)))

    def readout(self, h: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        """Logits `(B, T, V)` from the second LSTM's outputs `(B, T, H)`."""
        if self.cfg.attention == "luong":
            scores = self.attn_general(memory) @ h.transpose(1, 2)  # (B, F, T)
            context = scores.softmax(dim=1).transpose(1, 2) @ memory  # (B, T, E)
            h = torch.tanh(self.attn_combine(torch.cat([h, context], dim=-1)))
        return self.out(self.drop(h))

    def context_part(self, h: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Bahdanau attention's part of the gates, from the previous state `(B, H)`: `(B, 4H)`."""
        energy = self.attn_v(torch.tanh(self.attn_key(memory) + self.attn_query(h)[:, None]))  # (B, F, 1)
        return self.context_in((energy.softmax(dim=1) * memory).sum(dim=1))

    def forward(self, features: torch.Tensor, captions: torch.Tensor,
                teacher_forcing: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Logits `(B, T, V)` for decoder inputs `captions` `(B, T)` = [<bos>, w1, w2, ...].

        With `teacher_forcing` < 1 (a number or a 0-d tensor), each input word after the
        first is, with probability 1 - teacher_forcing, replaced by the model's own
        previous choice. The true words' gate parts are computed in one product.
        """
        state = self.start(features, captions.shape[1])  # features: (B, F, D)
        true_parts = self.word_part(captions).unbind(1)  # T x (B, 4H), in one product
        if not isinstance(teacher_forcing, torch.Tensor) and teacher_forcing >= 1.0:  # read out all steps at once
            outputs = [state.advance(part) for part in true_parts]
            return self.readout(torch.stack(outputs, dim=1), state.memory)
        logits = [state.step(true_parts[0])]
        for part in true_parts[1:]:
            keep = torch.rand(captions.shape[0], 1, device=captions.device) < teacher_forcing  # (B, 1)
            own = self.word_part(logits[-1].argmax(dim=-1))  # (B, 4H)
            logits.append(state.step(torch.where(keep, part, own)))
        return torch.stack(logits, dim=1)


class DecoderState:
    """The second LSTM while it writes: its state `(h, c)`, each `(B, H)`, the word step it is at,
    and what each step reads besides the word (the first LSTM's part of the gates, one `(B, 4H)`
    per step, and the frame outputs where attention reads them). It steps, and reorders its rows
    for beam search."""

    def __init__(self, model: S2VT, h: torch.Tensor, c: torch.Tensor, h1_parts: tuple[torch.Tensor, ...],
                 memory: torch.Tensor | None):
        self.model, self.h, self.c, self.h1_parts, self.memory = model, h, c, h1_parts, memory
        self.t = 0

    def advance(self, word_part: torch.Tensor) -> torch.Tensor:
        """One word step from the previous word's gate part `(B, 4H)`: returns the output `(B, H)`."""
        m = self.model
        gates = self.h1_parts[self.t] + word_part + F.linear(self.h, m.decoder.weight_hh_l0)  # (B, 4H)
        if m.cfg.attention == "bahdanau":
            gates = gates + m.context_part(self.h, self.memory)
        i, f, g, o = gates.chunk(4, dim=-1)  # nn.LSTM's gate order
        self.c = torch.sigmoid(f) * self.c + torch.sigmoid(i) * torch.tanh(g)
        self.h = torch.sigmoid(o) * torch.tanh(self.c)
        self.t += 1
        return self.h

    def step(self, word_part: torch.Tensor) -> torch.Tensor:
        """One word step from the previous word's gate part `(B, 4H)`: returns logits `(B, V)`."""
        return self.model.readout(self.advance(word_part)[:, None], self.memory)[:, 0]

    def step_words(self, words: torch.Tensor) -> torch.Tensor:
        """One word step from the previous words' ids `(B,)`: returns logits `(B, V)`."""
        return self.step(self.model.word_part(words))

    def repeat(self, k: int) -> None:
        """Make every row `k` consecutive rows (a video's `k` beams)."""
        if k > 1:
            rows = torch.arange(self.h.shape[0], device=self.h.device).repeat_interleave(k)  # (B * k,)
            self.h, self.c = self.h[rows], self.c[rows]
            self.h1_parts = tuple(part[rows] for part in self.h1_parts)
            self.memory = None if self.memory is None else self.memory[rows]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row `rows[i]`, a row of the same video (beam search following its best
        beams): what the frames gave is the same for all of a video's rows, so only `(h, c)` move."""
        self.h, self.c = self.h[rows], self.c[rows]


def masked_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the non-padding target tokens, against targets smoothed by `label_smoothing`.
    logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id,
                           label_smoothing=label_smoothing)

"""S2VT: two stacked LSTMs that read a clip's frame features, then write its caption.

Reads and writes nothing; imports nothing of the data side. As in Venugopalan et
al. (ICCV 2015): frame features are projected; the first LSTM reads the frames and
then padding; the second LSTM reads [zeros or the previous word's embedding,
first-LSTM output], and decoding starts after the last frame.

Variants (by config): attention over the first LSTM's frame outputs, Luong's
"general" score on the output side or Bahdanau's additive score feeding the
second LSTM's input; a bidirectional first LSTM; and a motion stream (each
frame's features minus the first frame's, beside the features themselves), a
cheap stand-in for the optical-flow stream of the S2VT paper. The first LSTM and the
frame steps of the second never depend on the words, so they run as fused
`nn.LSTM` calls; only the decoding steps of the second layer loop, and only for
scheduled sampling, Bahdanau attention and generation.
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
    max_len: int = 20  # words per caption; the decoder runs max_len + 1 steps (the last emits <eos>)
    hidden: int = 512  # LSTM state size (and the projected frame size)
    embed: int = 512  # word embedding size
    dropout: float = 0.3  # on projected frames, word embeddings and the output layer's input
    attention: str = "none"  # none | luong | bahdanau
    bidirectional: bool = False  # a bidirectional first LSTM
    motion: float = 0.0  # weight of the motion stream (features minus the first frame's); 0 = off
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

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
        self.frame_proj = nn.Linear(cfg.feature_dim * (2 if cfg.motion else 1), cfg.hidden)
        self.encoder = nn.LSTM(cfg.hidden, cfg.hidden, batch_first=True, bidirectional=cfg.bidirectional)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed, padding_idx=cfg.pad_id)
        context = enc if cfg.attention == "bahdanau" else 0
        self.decoder = nn.LSTM(cfg.embed + enc + context, cfg.hidden, batch_first=True)
        if cfg.attention == "luong":
            self.attn_general = nn.Linear(enc, cfg.hidden, bias=False)
            self.attn_combine = nn.Linear(cfg.hidden + enc, cfg.hidden)
        elif cfg.attention == "bahdanau":
            self.attn_query = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
            self.attn_key = nn.Linear(enc, cfg.hidden)
            self.attn_v = nn.Linear(cfg.hidden, 1, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)

    def _input_columns(self, part: str) -> torch.Tensor:
        """The second LSTM's input weights for one part of its input: [word | h1 | context]."""
        E, enc = self.cfg.embed, self.encoder.hidden_size * (2 if self.cfg.bidirectional else 1)
        start, stop = {"word": (0, E), "h1": (E, E + enc), "context": (E + enc, None)}[part]
        return self.decoder.weight_ih_l0[:, start:stop]

    def encode(self, features: torch.Tensor):
        """Run everything that does not depend on the words.

        Returns `(memory, h1_words, state)`: the first LSTM's outputs at the frame
        steps `(B, F, E)` and at the word steps `(B, T, E)`, and the second LSTM's
        state `(h, c)`, each `(B, H)`, after the frame steps.
        """
        B, n_frames, _ = features.shape
        if self.cfg.motion:  # appearance and how it changed since the first frame, a cheap flow stream
            features = torch.cat([features, self.cfg.motion * (features - features[:, :1])], dim=-1)  # (B, F, 2D)
        frames = self.drop(self.frame_proj(features))  # (B, F, H)
        padding = frames.new_zeros(B, self.cfg.steps, frames.shape[-1])  # (B, T, H)
        h1, _ = self.encoder(torch.cat([frames, padding], dim=1))  # (B, F + T, E)
        memory, h1_words = h1[:, :n_frames], h1[:, n_frames:]
        # At the frame steps the second LSTM reads [zeros, h1, zeros]: only the h1 columns of its input
        # weights contribute, so only they run (the same state, a third fewer products).
        d, zeros = self.decoder, memory.new_zeros(1, B, self.cfg.hidden)
        weights = [self._input_columns("h1"), d.weight_hh_l0, d.bias_ih_l0, d.bias_hh_l0]
        # torch.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        _, h, c = torch.lstm(memory, (zeros, zeros), weights, True, 1, 0.0, self.training, False, True)
        return memory, h1_words, (h[0], c[0])

    def word_gates(self, h1_words: torch.Tensor) -> torch.Tensor:
        """The first LSTM's part of the second LSTM's gates at every word step, in one product, biases
        included: `(B, T, E)` -> `(B, T, 4H)`. `step` adds the word's (and the context's) part."""
        d = self.decoder
        return F.linear(h1_words, self._input_columns("h1"), d.bias_ih_l0 + d.bias_hh_l0)

    def _luong(self, h: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # h: (B, T, H), memory: (B, F, E) -> attentional state (B, T, H)
        scores = self.attn_general(memory) @ h.transpose(1, 2)  # (B, F, T)
        context = scores.softmax(dim=1).transpose(1, 2) @ memory  # (B, T, E)
        return torch.tanh(self.attn_combine(torch.cat([h, context], dim=-1)))

    def _bahdanau(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # query: previous decoder state (B, H), memory: (B, F, E) -> context (B, E)
        energy = self.attn_v(torch.tanh(self.attn_key(memory) + self.attn_query(query)[:, None]))  # (B, F, 1)
        return (energy.softmax(dim=1) * memory).sum(dim=1)

    def _readout(self, h: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # h: (B, T, H) -> logits (B, T, V)
        if self.cfg.attention == "luong":
            h = self._luong(h, memory)
        return self.out(self.drop(h))

    def step(self, words: torch.Tensor, gates_t: torch.Tensor, state, memory: torch.Tensor):
        """One decoding step of the second LSTM (the gates of `nn.LSTM`, i f g o), from the previous
        words `(B,)` and this step's `word_gates` `(B, 4H)`: logits `(B, V)` and the new state."""
        h, c = state  # (B, H) each
        gates = gates_t + F.linear(self.drop(self.embed(words)), self._input_columns("word")) + \
            F.linear(h, self.decoder.weight_hh_l0)  # (B, 4H)
        if self.cfg.attention == "bahdanau":
            gates = gates + F.linear(self._bahdanau(h, memory), self._input_columns("context"))
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self._readout(h[:, None], memory)[:, 0], (h, c)

    def forward(self, features: torch.Tensor, captions: torch.Tensor, teacher_forcing: float = 1.0) -> torch.Tensor:
        """Logits `(B, T, V)` for decoder inputs `captions` `(B, T)` = [<bos>, w1, w2, ...].

        With `teacher_forcing` < 1, each input word after the first is, with
        probability 1 - teacher_forcing, replaced by the model's own previous choice.
        """
        memory, h1_words, (h, c) = self.encode(features)  # features: (B, F, D)
        if teacher_forcing >= 1.0 and self.cfg.attention != "bahdanau":
            inputs = torch.cat([self.drop(self.embed(captions)), h1_words], dim=-1)  # (B, T, embed + E)
            out, _ = self.decoder(inputs, (h[None], c[None]))  # (B, T, H): all word steps in one fused call
            return self._readout(out, memory)
        gates, state = self.word_gates(h1_words), (h, c)
        logits = []
        words = captions[:, 0]
        for t in range(captions.shape[1]):
            step_logits, state = self.step(words, gates[:, t], state, memory)
            logits.append(step_logits)
            if t + 1 < captions.shape[1]:
                own = step_logits.argmax(dim=-1)
                keep = torch.rand(own.shape, device=own.device) < teacher_forcing
                words = torch.where(keep, captions[:, t + 1], own)
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def generate(self, features: torch.Tensor) -> torch.Tensor:
        """Greedy captions `(B, T)` of token ids; positions after <eos> hold <pad>."""
        memory, h1_words, state = self.encode(features)
        gates, B = self.word_gates(h1_words), features.shape[0]
        words = torch.full((B,), self.cfg.bos_id, dtype=torch.long, device=features.device)
        finished = torch.zeros(B, dtype=torch.bool, device=features.device)
        tokens = []
        for t in range(self.cfg.steps):
            logits, state = self.step(words, gates[:, t], state, memory)
            words = logits.argmax(dim=-1).masked_fill(finished, self.cfg.pad_id)
            tokens.append(words)
            finished |= words == self.cfg.eos_id
            if finished.all():
                break
        return torch.stack(tokens, dim=1)


def masked_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over the non-padding target tokens. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id)

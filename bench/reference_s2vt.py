"""The seed's way of running S2VT, kept as a speed reference: two `LSTMCell`s stepped one time step at a time.

They step over all 80 frame steps, then all word steps.

Same layers and sizes as `pipeline.model.S2VT` (plain variant); reads and writes
nothing; imports nothing of the pipeline.
"""

from __future__ import annotations

import torch
from torch import nn


class StepwiseS2VT(nn.Module):
    def __init__(self, feature_dim: int, vocab_size: int, hidden: int = 512, embed: int = 512, dropout: float = 0.3):
        super().__init__()
        self.frame_proj = nn.Linear(feature_dim, hidden)
        self.cell1 = nn.LSTMCell(hidden, hidden)
        self.cell2 = nn.LSTMCell(embed + hidden, hidden)
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, features: torch.Tensor, captions: torch.Tensor, teacher_forcing: float = 1.0) -> torch.Tensor:
        B, n_frames, _ = features.shape
        frames = self.drop(self.frame_proj(features))  # (B, F, H)
        h1 = c1 = h2 = c2 = frames.new_zeros(B, self.cell1.hidden_size)
        no_word = frames.new_zeros(B, self.embed.embedding_dim)
        for t in range(n_frames):
            h1, c1 = self.cell1(frames[:, t], (h1, c1))
            h2, c2 = self.cell2(torch.cat([no_word, h1], dim=-1), (h2, c2))
        padding = torch.zeros_like(frames[:, 0])
        logits, words = [], captions[:, 0]
        for t in range(captions.shape[1]):
            h1, c1 = self.cell1(padding, (h1, c1))
            h2, c2 = self.cell2(torch.cat([self.drop(self.embed(words)), h1], dim=-1), (h2, c2))
            logits.append(self.out(self.drop(h2)))
            if t + 1 < captions.shape[1]:
                keep = torch.rand(B, device=features.device) < teacher_forcing
                words = torch.where(keep, captions[:, t + 1], logits[-1].argmax(dim=-1))
        return torch.stack(logits, dim=1)  # (B, T, V)

"""Beam search: beam 1 is greedy, a batch equals one video at a time, n-gram block."""

from __future__ import annotations

import pytest
import torch

from pipeline.decoding import DecodeConfig, _banned_words, beam_search
from pipeline.model import S2VT, S2VTConfig


def _model(eos_bias: float = 0.0, **kw) -> S2VT:
    torch.manual_seed(1)
    model = S2VT(S2VTConfig(feature_dim=6, vocab_size=9, max_len=7, hidden=16, embed=8, dropout=0.0, **kw))
    with torch.no_grad():  # a peaked output layer, so greedy captions have several words
        model.out.weight.mul_(8)
        model.out.bias[2] += eos_bias
    return model.eval()


def _strip(row: list[int]) -> list[int]:
    out = []
    for w in row:
        if w in (0, 2):
            break
        out.append(w)
    return out


@pytest.mark.parametrize("attention", ["none", "luong", "bahdanau"])
def test_beam_one_is_greedy(attention):
    model = _model(attention=attention)
    features = torch.randn(12, 5, 6)
    greedy = [_strip(row) for row in model.generate(features).tolist()]
    assert beam_search(model, features, DecodeConfig(beam=1)) == greedy
    assert any(len(c) > 1 for c in greedy)


@pytest.mark.parametrize("beam", [3, 5])
def test_batch_equals_one_video_at_a_time(beam):
    model = _model()
    features = torch.randn(10, 5, 6)
    cfg = DecodeConfig(beam=beam, length_penalty=0.7)
    batched = beam_search(model, features, cfg)
    single = [beam_search(model, features[i:i + 1], cfg)[0] for i in range(10)]
    assert batched == single


def test_beam_finds_at_least_the_greedy_log_probability():
    model = _model(eos_bias=0.3)  # most captions end before max_len
    features = torch.randn(8, 5, 6) * 3

    def logprob(i, caption):
        tokens = torch.tensor([[1] + caption + [2] + [0] * (model.cfg.steps - len(caption) - 1)])
        with torch.no_grad():
            lp = model(features[i:i + 1], tokens[:, :-1]).log_softmax(-1)
        return lp[0, torch.arange(len(caption) + 1), tokens[0, 1:len(caption) + 2]].sum().item()

    greedy = beam_search(model, features, DecodeConfig(beam=1))
    beam = beam_search(model, features, DecodeConfig(beam=5))
    compared = [i for i in range(8) if len(greedy[i]) < model.cfg.max_len and len(beam[i]) < model.cfg.max_len]
    assert len(compared) >= 4, "most captions should end with <eos> before max_len"
    for i in compared:
        assert logprob(i, beam[i]) >= logprob(i, greedy[i]) - 1e-5


def test_banned_words():
    assert _banned_words([5, 6, 5], 2) == [6]
    assert _banned_words([5, 5], 2) == [5]
    assert _banned_words([4, 5, 6], 1) == [4, 5, 6]
    assert _banned_words([4], 3) == []


@pytest.mark.parametrize("beam", [1, 3])
def test_ngram_block_removes_repeats(beam):
    model = _model()
    features = torch.randn(16, 5, 6)
    for caption in beam_search(model, features, DecodeConfig(beam=beam, block_ngram=2)):
        bigrams = list(zip(caption, caption[1:]))
        assert len(bigrams) == len(set(bigrams)), caption

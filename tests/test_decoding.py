"""Decoding: beam 1 is greedy, a batch equals one video at a time, n-gram block, captions as strings."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import DecodeConfig
from pipeline.decoding import _banned_words, beam_search, caption_features
from pipeline.errors import ConfigError
from pipeline.model import S2VT, DecoderState, S2VTConfig
from pipeline.vocab import Vocab

GREEDY = DecodeConfig(beam=1)


def _model(eos_bias: float = 0.0, **kw) -> S2VT:
    torch.manual_seed(1)
    model = S2VT(S2VTConfig(feature_dim=6, vocab_size=9, max_len=7, hidden=16, embed=8, dropout=0.0, pad_id=0,
                            bos_id=1, eos_id=2, **kw))
    with torch.no_grad():  # a peaked output layer, so greedy captions have several words
        model.out.weight.mul_(8)
        model.out.bias[2] += eos_bias
    return model.eval()


def _greedy(model: S2VT, features: torch.Tensor) -> list[list[int]]:
    """Greedy decoding the plain way: each video alone, the argmax word fed back until <eos>."""
    out = []
    for video in features:
        with torch.no_grad():
            state, word, caption = model.start(video[None]), torch.tensor([1]), []
            for _ in range(model.cfg.steps):
                word = state.step_words(word).argmax(-1)
                caption.append(word.item())
                if word.item() == 2:
                    break
        out.append([w for w in caption if w != 2])
    return out


@pytest.mark.parametrize("attention", ["none", "luong", "bahdanau"])
def test_beam_one_is_greedy(attention):
    model = _model(attention=attention)
    features = torch.randn(12, 5, 6)
    greedy = _greedy(model, features)
    assert beam_search(model, features, DecodeConfig(beam=1)) == greedy
    assert any(len(c) > 1 for c in greedy)


def test_greedy_is_the_argmax_of_forward_over_its_own_words():
    model = _model()
    features = torch.randn(1, 5, 6)
    tokens = (beam_search(model, features, GREEDY)[0] + [2])[:model.cfg.steps]  # <eos>, unless it ran to max_len
    inputs = torch.tensor([[1] + tokens[:-1] + [0] * (model.cfg.steps - len(tokens))])
    with torch.no_grad():
        logits = model(features, inputs)
    assert logits[0, : len(tokens)].argmax(-1).tolist() == tokens


def test_decoding_stops_once_every_caption_has_ended(monkeypatch):
    """Video i says word 5 until it says <eos> at step i; ended captions are fed <pad>."""
    model = _model()
    fed = []

    def scripted(self, words):
        t = len(fed)
        fed.append(words.clone())
        logits = torch.zeros(len(words), 9)
        logits[:, 5] = 1.0
        if t < len(words):
            logits[t, 2] = 2.0
        return logits

    monkeypatch.setattr(DecoderState, "step_words", scripted)
    assert beam_search(model, torch.randn(3, 5, 6), GREEDY) == [[], [5], [5, 5]]
    assert len(fed) == 3, "decoding stops once every caption has ended"
    assert fed[0].tolist() == [1, 1, 1] and fed[2].tolist() == [0, 2, 5]


def test_caption_features_batches_and_decodes_to_strings():
    """The one features -> strings path: any batch size gives the same captions, as vocabulary words."""
    model = _model()
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog", "runs", "cat", "sits"], 1)
    features = torch.randn(7, 5, 6)
    expected = [vocab.decode(caption) for caption in beam_search(model, features, GREEDY)]
    for batch in (1, 3, 64):
        assert caption_features(model, vocab, features, torch.device("cpu"), DecodeConfig(beam=1, batch=batch)) \
            == expected
    assert caption_features(model, vocab, features.numpy(), torch.device("cpu"), GREEDY) == expected


def test_a_beam_below_one_is_refused():
    with pytest.raises(ConfigError, match="--beam .*BEAM.* at least 1, not 0"):
        DecodeConfig(beam=0)


@pytest.mark.parametrize("beam", [3, 5])
def test_batch_equals_one_video_at_a_time(beam):
    model = _model()
    features = torch.randn(10, 5, 6)
    cfg = DecodeConfig(beam=beam, length_penalty=0.7)
    batched = beam_search(model, features, cfg)
    single = [beam_search(model, features[i:i + 1], cfg)[0] for i in range(10)]
    assert batched == single


def test_beam_finds_at_least_the_greedy_log_probability():
    model = _model(eos_bias=1.0)  # most captions end before max_len
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

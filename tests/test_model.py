"""S2VT: shapes, gradients, the decoder state against the fused paths, public-module weights, padding."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pipeline.checkpoint import LAYOUT, model_from_checkpoint
from pipeline.model import S2VT, S2VTConfig, masked_loss
from pipeline.train_step import TrainStep

VARIANTS = {"s2vt": {}, "luong": {"attention": "luong"}, "bahdanau": {"attention": "bahdanau"},
            "bidirectional": {"bidirectional": True}, "bidirectional-luong": {"bidirectional": True,
                                                                                "attention": "luong"},
            "bidirectional-bahdanau": {"bidirectional": True, "attention": "bahdanau"},
            "motion": {"motion": 4.0}}
IDS = {"pad_id": 0, "bos_id": 1, "eos_id": 2}


def _model(**kw) -> S2VT:
    torch.manual_seed(0)
    cfg = S2VTConfig(feature_dim=7, vocab_size=11, max_len=5, hidden=16, embed=8, dropout=0.1, **IDS, **kw)
    return S2VT(cfg)


def _batch(B=3, F=6):
    features = torch.randn(B, F, 7)
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 4, 2, 0, 0, 0, 0], [1, 8, 9, 10, 4, 5, 2]])[:B]
    return features, tokens  # tokens: (B, T + 1), T = max_len + 1


@pytest.mark.parametrize("teacher_forcing", [1.0, 0.5])
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_every_variant(variant, teacher_forcing):
    model = _model(**VARIANTS[variant]).train()
    features, tokens = _batch()
    logits = model(features, tokens[:, :-1], teacher_forcing=teacher_forcing)
    assert logits.shape == (3, 6, 11)
    loss = masked_loss(logits, tokens[:, 1:], pad_id=0)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("variant", VARIANTS)
def test_teacher_forcing_equals_stepping_the_decoder_state_word_by_word(variant):
    """forward's one-product word parts and all-at-once readout give what decoding step by step gives."""
    model = _model(**VARIANTS[variant]).eval()
    features, tokens = _batch()
    inputs = tokens[:, :-1]
    with torch.no_grad():
        forward = model(features, inputs)
        sampling_path = model(features, inputs, teacher_forcing=torch.tensor(1.0))  # keeps every true word
        state = model.start(features)
        stepped = torch.stack([state.step_words(inputs[:, t]) for t in range(inputs.shape[1])], dim=1)
    torch.testing.assert_close(forward, stepped, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sampling_path, stepped, rtol=1e-5, atol=1e-5)


def _paper_decoder(model: S2VT) -> nn.LSTM:
    """The paper's second LSTM as one nn.LSTM over [word | h1 | context], from the model's per-part weights."""
    parts = [model.word_in.weight, model.decoder.weight_ih_l0] + \
        ([model.context_in.weight] if model.cfg.attention == "bahdanau" else [])
    full = nn.LSTM(sum(p.shape[1] for p in parts), model.cfg.hidden, batch_first=True)
    with torch.no_grad():
        full.weight_ih_l0.copy_(torch.cat(parts, dim=1))
        for name in ("weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(full, name).copy_(getattr(model.decoder, name))
    return full


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_frame_steps_equal_the_papers_lstm_fed_zero_words(variant):
    """The second LSTM's frame steps read only the first LSTM's output; the full LSTM fed
    [no word, h1, no context] at every frame step ends in the same state."""
    model = _model(**VARIANTS[variant]).eval()
    features, _ = _batch()
    with torch.no_grad():
        state = model.start(features)
        memory, _ = model.encode(features)
        full = _paper_decoder(model)
        zeros = torch.zeros(3, 6, full.input_size - memory.shape[-1])
        words = zeros[..., :model.cfg.embed]
        _, (h, c) = full(torch.cat([words, memory, zeros[..., model.cfg.embed:]], dim=-1))
    torch.testing.assert_close(state.h, h[0])
    torch.testing.assert_close(state.c, c[0])


class _LSTMCalls(TorchFunctionMode):
    """Records the weights every fused LSTM call (`torch.lstm`, what nn.LSTM runs on) is handed."""

    def __init__(self):
        super().__init__()
        self.weights: list[list[torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "lstm":
            self.weights.append(list(args[2]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("teacher_forcing", [1.0, 0.7])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_lstm_calls_get_exactly_a_modules_own_weights(variant, teacher_forcing):
    """cuDNN flattens what torch.lstm is handed: a slice of a weight crashed the first CUDA step, a copy makes
    it compact the weights on every call. Every call must get one nn.LSTM's own, contiguous parameters."""
    model = _model(**VARIANTS[variant]).train()
    features, tokens = _batch()
    owned = [[p for p in m._flat_weights] for m in model.modules() if isinstance(m, nn.LSTM)]
    with _LSTMCalls() as calls:
        masked_loss(model(features, tokens[:, :-1], teacher_forcing=teacher_forcing), tokens[:, 1:], 0).backward()
    assert len(calls.weights) == 2, "the first LSTM and the second LSTM's frame steps each run fused once"
    for weights in calls.weights:
        assert all(w.is_contiguous() for w in weights)
        assert any(len(weights) == len(own) and all(w is o for w, o in zip(weights, own)) for own in owned), \
            "a fused LSTM call was handed tensors that are not one nn.LSTM's parameters"


@pytest.mark.parametrize("variant", ["s2vt", "bahdanau", "bidirectional-luong"])
def test_a_checkpoint_of_the_one_matrix_layout_loads_into_the_per_part_modules(variant):
    """Runs trained before the second LSTM's input weights were split keep captioning, with the same logits."""
    model = _model(**VARIANTS[variant]).eval()
    state = model.state_dict()
    old = {k: v for k, v in state.items() if not k.startswith(("word_in.", "context_in."))}
    old["decoder.weight_ih_l0"] = _paper_decoder(model).weight_ih_l0.detach().clone()
    loaded, _ = model_from_checkpoint({"model": old, "model_config": asdict(model.cfg),
                                       "vocab": {"words": ["<pad>", "<bos>", "<eos>", "<unk>"], "min_count": 1}})
    features, tokens = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(features, tokens[:, :-1]), model(features, tokens[:, :-1]))
    assert LAYOUT == 2


@pytest.mark.parametrize("variant", ["s2vt", "luong"])
def test_padding_changes_nothing(variant):
    model = _model(**VARIANTS[variant]).eval()
    features, tokens = _batch()
    targets = tokens[:, 1:]
    noisy = tokens.clone()
    pad = noisy == 0
    noisy[pad] = torch.randint(3, 11, (int(pad.sum()),))  # garbage where padding was
    with torch.no_grad():
        clean_logits = model(features, tokens[:, :-1])
        noisy_logits = model(features, noisy[:, :-1])
    real = targets != 0  # positions whose target is a real token or <eos>
    torch.testing.assert_close(clean_logits[real], noisy_logits[real])
    assert masked_loss(clean_logits, targets, 0) == masked_loss(noisy_logits, targets, 0)
    # the loss is the mean over real tokens only
    manual = torch.nn.functional.cross_entropy(clean_logits[real], targets[real])
    torch.testing.assert_close(masked_loss(clean_logits, targets, 0), manual)


def test_scheduled_sampling_feeds_the_models_own_words():
    """At teacher forcing 0 every input after <bos> is the model's previous choice: the same logits as
    feeding its greedy words; at 1 the true words."""
    model = _model().eval()
    features, tokens = _batch()
    with torch.no_grad():
        own = model(features, tokens[:, :-1], teacher_forcing=0.0)
        greedy = torch.cat([tokens[:, :1], own.argmax(-1)[:, :-1]], dim=1)
        torch.testing.assert_close(own, model(features, greedy))
        assert not torch.allclose(own, model(features, tokens[:, :-1]))


def test_unknown_attention():
    with pytest.raises(ValueError, match="luong"):
        _model(attention="transformer")


@pytest.mark.parametrize("variant", ["s2vt", "bidirectional"])
def test_an_eager_step_runs_only_to_the_longest_caption_and_gives_the_full_length_loss(variant):
    """Columns that are padding in every row are cut before the step: the encoder runs fewer word steps
    (all of them when bidirectional, whose backward half reads every step) and the loss is unchanged."""
    model = _model(**VARIANTS[variant])
    model.drop.p = 0.0  # the same arithmetic with and without the cut
    features, tokens = _batch()
    features, tokens = features[:2], tokens[:2]  # the longer of these two rows uses 5 of 7 columns
    with torch.no_grad():
        full_loss = masked_loss(model(features, tokens[:, :-1]), tokens[:, 1:], pad_id=0)
    lengths = []
    model.encoder.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), torch.device("cpu"), "fp32", 0, 5.0, 2)
    loss = step(tokens, features, 1.0)
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert lengths == [features.shape[1] + (model.cfg.steps if model.cfg.bidirectional else 4)]


def test_label_smoothing_mixes_the_target_with_the_whole_vocabulary_over_real_tokens_only():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 11), torch.tensor([[4, 5, 0], [6, 0, 0]])  # 0 is padding
    log_p = logits.log_softmax(dim=-1)
    target_term = -log_p.gather(-1, targets[..., None])[..., 0]  # (B, T)
    vocabulary_term = -log_p.mean(dim=-1)  # (B, T)
    expected = (0.8 * target_term + 0.2 * vocabulary_term)[targets != 0].mean()
    torch.testing.assert_close(masked_loss(logits, targets, pad_id=0, label_smoothing=0.2), expected)
    torch.testing.assert_close(masked_loss(logits, targets, pad_id=0), target_term[targets != 0].mean())
